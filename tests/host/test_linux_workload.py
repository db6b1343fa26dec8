"""The Linux guest's workload (tests/linux/workload.c), run natively on this
host: it is an ordinary static Linux program, so its lines, options and
checks can be tested without a VM. Timings here are only lower bounds: the
host may be busy (the runs are a few seconds; nothing asserts latency)."""
import os
import re
import signal
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("CPRVM_BUILD", "build"))
WORKLOAD = os.path.join(BUILD, "linux", "cprvm-workload")
# Every line the workload may print: anything else is a mixed or broken line.
LINE = re.compile(r"^(WORKLOAD ready( .*)?|HB \d+|STALL \d+|OK \d+ cpu=\d+|"
                  r"BAD 0x[0-9a-f]+ cpu=\d+|FAIL \d+ cpu=\d+ bad=\d+|CLOCK \d+ \d+|"
                  r"KMSG ok|BAD kmsg .*|CORRUPT 0x[0-9a-f]+|ERR .*)$")
ERRORS = re.compile(r"^(BAD|FAIL|PANIC|ERR)")  # as tests/system/conftest.py's errors()


@pytest.fixture(autouse=True)
def built():
    assert os.access(WORKLOAD, os.X_OK), "%s is missing: run make" % WORKLOAD


def run(args, seconds):
    """(exit status, lines) of the workload run for at most `seconds`."""
    p = subprocess.Popen([WORKLOAD] + args, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = p.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    lines = out.splitlines()
    bad = [l for l in lines if not LINE.match(l)]
    assert not bad, "lines in no known format: %r" % bad[:5]
    return p.returncode, lines


def numbers(lines, regex):
    rx = re.compile(regex)
    return [tuple(int(g, 0) for g in m.groups()) for m in map(rx.match, lines) if m]


def test_heartbeat_verify_clock():
    rc, lines = run(["heartbeat=100000", "verify=16", "clock"], 3.5)
    assert rc == -signal.SIGKILL, "it exited by itself: %r" % lines[-5:]
    assert lines[0] == "WORKLOAD ready heartbeat=100000 verify=16 clock"
    assert not [l for l in lines if ERRORS.match(l)]
    hb = [s for s, in numbers(lines, r"^HB (\d+)$")]
    assert len(hb) >= 10 and hb == list(range(len(hb))), hb
    passes = {}
    for n, cpu in numbers(lines, r"^OK (\d+) cpu=(\d+)$"):
        passes.setdefault(cpu, []).append(n)
    assert len(passes) == len(os.sched_getaffinity(0)), "a CPU's worker never passed"
    for cpu, ns in passes.items():
        assert ns == list(range(1, len(ns) + 1)), (cpu, ns)
    clock = numbers(lines, r"^CLOCK (\d+) (\d+)$")
    assert len(clock) >= 2
    for (m0, r0), (m1, r1) in zip(clock, clock[1:]):
        assert m1 - m0 >= 0.5e9 and r1 > r0, clock
        assert abs((r1 - r0) - (m1 - m0)) < 0.1e9, "realtime and monotonic drift apart"
    assert len(numbers(lines, r"^STALL (\d+)$")) >= 2


def test_verify_detects_corruption():
    rc, lines = run(["verify=4", "corrupt-after=200"], 2.5)
    (off,), = numbers(lines, r"^CORRUPT (0x[0-9a-f]+)$")
    bad = numbers(lines, r"^BAD (0x[0-9a-f]+) cpu=(\d+)$")
    assert bad and all(o == off for o, _ in bad), (off, bad)
    fails = numbers(lines, r"^FAIL (\d+) cpu=(\d+) bad=(\d+)$")
    assert fails and all(cpu == bad[0][1] and n == 1 for _, cpu, n in fails), fails
    # Before the flip, every pass of that CPU was clean.
    first_bad = next(i for i, l in enumerate(lines) if l.startswith("BAD "))
    assert lines.index("CORRUPT 0x%x" % off) < first_bad


@pytest.mark.parametrize("token,err", [
    ("bogus", "ERR unknown option bogus"),
    ("verify", "ERR unknown option verify"),
    ("clock=1", "ERR unknown option clock=1"),
    ("heartbeat=abc", "ERR bad value heartbeat=abc"),
    ("heartbeat=0", "ERR bad value heartbeat=0"),
    ("verify=1x", "ERR bad value verify=1x"),
    ("dirty=5,wss=0", "ERR bad value dirty=5,wss=0"),
    ("dirty=5,foo=1", "ERR bad value dirty=5,foo=1"),
    ("corrupt-after=0", "ERR bad value corrupt-after=0"),
])
def test_bad_option(token, err):
    rc, lines = run(["heartbeat", token], 5)
    assert rc not in (0, -signal.SIGKILL), (rc, lines)
    assert lines == ["WORKLOAD ready heartbeat " + token, err]


def test_no_option_is_heartbeat():
    rc, lines = run([], 1.5)
    assert lines[0] == "WORKLOAD ready"
    assert numbers(lines, r"^HB (\d+)$")[:3] == [(0,), (1,), (2,)]


def dirty_writes(pid, start, end, nworkers):
    """How many pages the dirty workers have written so far. Each worker
    stores 1, 2, 3... into the first word of the pages of its slice, in
    turn, so its count is the largest of those words."""
    pages = (end - start) // 4096
    words = []
    with open("/proc/%d/mem" % pid, "rb") as f:
        for i in range(pages):
            f.seek(start + i * 4096)
            words.append(int.from_bytes(f.read(8), "little"))
    return sum(max(words[pages * w // nworkers:pages * (w + 1) // nworkers])
               for w in range(nworkers))


def test_dirty_rate():
    """dirty=4 is 4 MB/s = 1024 pages/s in all, next to a verify it must not
    touch; the pages written are counted from outside, in the process's memory."""
    wss = 64 << 20
    p = subprocess.Popen([WORKLOAD, "dirty=4,wss=64", "verify=8"], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline() == "WORKLOAD ready dirty=4,wss=64 verify=8\n"
        time.sleep(0.5)
        with open("/proc/%d/maps" % p.pid) as f:
            spans = [tuple(int(x, 16) for x in l.split()[0].split("-")) for l in f
                     if l.split()[1] == "rw-p"]
        (start, end), = [s for s in spans if s[1] - s[0] == wss]
        nworkers = len(os.sched_getaffinity(0))
        t0, n0 = time.monotonic(), dirty_writes(p.pid, start, end, nworkers)
        time.sleep(1.5)
        t1, n1 = time.monotonic(), dirty_writes(p.pid, start, end, nworkers)
        expect = 1024 * (t1 - t0)
        # It writes, and never faster than asked (a busy host may starve a
        # worker for a while, so no lower bound on the rate: this is a
        # behaviour check, not a benchmark). The margin covers the time the
        # two counts take to read.
        assert 0 < n1 - n0 < 1.5 * expect + 256, (n1 - n0, expect)
    finally:
        p.kill()
        out, _ = p.communicate()
    lines = out.splitlines()
    assert not [l for l in lines if ERRORS.match(l)]
    assert numbers(lines, r"^OK (\d+) cpu=\d+$"), "verify never passed next to dirty"
    assert numbers(lines, r"^HB (\d+)$"), "dirty turns the heartbeat on"


def test_kmsg_starts():
    rc, lines = run(["kmsg"], 1.5)
    if any(l.startswith("ERR kmsg: /dev/kmsg:") for l in lines):
        pytest.skip("/dev/kmsg is not readable here: %s" % lines)
    assert "KMSG ok" in lines and not [l for l in lines if ERRORS.match(l)]
