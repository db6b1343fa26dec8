#!/usr/bin/env python3
"""Live-update A/B: the guest-visible pause of two (or more) cprvm builds,
measured in turns. A developer's tool, not part of `make bench`.

On this host the medians of one `make bench` run move by about 0.05 ms from
run to run, as much as most changes to the blackout: comparing two runs made
apart says little. This drives bench/run.py's live-update case with each
build in turn, the order swapped every round, and prints after each round,
per build, the pauses so far (the guest's own gap over the blackout, or
where the guest cannot place it, the longest heartbeat gap the host saw):
median, 25th and 75th percentile, the
median downtime (query-migrate), and the longest other gap the guest saw
during each update (hiccup_ms): median and 75th percentile.

  python3 bench/ab_live_update.py [--mode cpr-exec|cpr-transfer] [--size 1G]
                                  [--rounds 6] [--updates 8] BUILD BUILD...

BUILD is a build directory (cprvm and guest/guest.elf in it), e.g. a copy
of build/ made before a change: `cp -a build /tmp/base`. On a host without
/dev/kvm, run it through `scripts/with-kvm /usr/bin/python3 bench/...`.
"""
import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (bench/run.py)


def summary(res):
    # The guest's own gap over the blackout where the guest reads the host's
    # TSC (every run could place it), else the host's view of the pause: the
    # longest heartbeat gap (nested SVM/VMX), as bench/run.py decides.
    basis = ("pause_gap_ms" if all(r["pause_gap_ms"] is not None for r in res)
             else "hb_gap_ms")
    pauses = sorted(r[basis] for r in res)
    downs = sorted(r["downtime_ms"] for r in res)
    hiccups = sorted(r["hiccup_ms"] for r in res)
    n = len(pauses)
    return ("n=%d pause (%s) median %.3f p25 %.3f p75 %.3f ms | downtime median %.3f ms"
            " | other gaps (hiccup) median %.3f p75 %.3f ms") % (
        n, basis, statistics.median(pauses), pauses[n // 4], pauses[(3 * n) // 4],
        statistics.median(downs), statistics.median(hiccups), hiccups[(3 * n) // 4])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["cpr-exec", "cpr-transfer"], default="cpr-exec")
    ap.add_argument("--size", default="1G", help="guest RAM (default 1G)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--updates", type=int, default=8, help="updates per build per round")
    ap.add_argument("builds", nargs="+", metavar="BUILD")
    a = ap.parse_args()
    if a.rounds < 1 or a.updates < 1:
        ap.error("--rounds and --updates must be at least 1")
    for b in a.builds:
        for f in ("cprvm", os.path.join("guest", "guest.elf")):
            if not os.path.exists(os.path.join(b, f)):
                ap.error("%s: no %s (not a build directory?)" % (b, f))
    res = {b: [] for b in a.builds}
    for rnd in range(a.rounds):
        for b in (a.builds if rnd % 2 == 0 else a.builds[::-1]):
            run.CPRVM = os.path.join(os.path.abspath(b), "cprvm")
            run.GUEST = os.path.join(os.path.abspath(b), "guest", "guest.elf")
            with tempfile.TemporaryDirectory() as tmp:
                res[b] += run.lu_cprvm(tmp, a.size, a.mode, a.updates)
        for b in a.builds:
            print("round %d %s: %s" % (rnd + 1, b, summary(res[b])), flush=True)


if __name__ == "__main__":
    main()
