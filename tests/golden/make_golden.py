#!/usr/bin/env python3
"""Writes golden snapshots for tests/system/test_golden.py. Run once per
release whose stream format changed (never rewrite an existing golden: every
later cprvm must still load it). Run it where the tests run:
scripts/with-kvm tests/golden/make_golden.py VERSION

The test guest's state depends on no CPU feature beyond long mode (general
registers only, no CR4 bit past PAE), so a golden made on one CPU
restores on another, MSRs this host lacks aside (restore skips those saved
at their reset value). It records where it was made (made_on) and how its
guest reaches its ports at CPL3 (guest_port_io: iopl3 since v0.1.0-svm; the
v0.1.0 ones through the TSS bitmap alone, which QEMU's TCG ignores after a
restore)."""
import gzip
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "system"))
from conftest import Vm, heartbeats  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def made_on():
    """The platform and the CPU that KVM ran the guest on."""
    vendor = model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k.strip() == "vendor_id":
                vendor = v.strip()
            elif k.strip() == "model name":
                model = v.strip()
                break
    return "%s, %s (%s)" % (os.environ.get("CPRVM_PLATFORM_NAME", "native-kvm"), model, vendor)


def make(version, mode, cpus):
    d = tempfile.mkdtemp()
    ram = os.path.join(d, "ram") if mode == "bypass" else None
    cmdline = "heartbeat=20000 verify=1"
    vm = Vm(d, cmdline=cmdline, memory="16M", cpus=cpus, serial="stdio", mem_path=ram)
    try:
        for cpu in range(cpus):
            vm.serial.wait(r"^OK 2 cpu=%d$" % cpu, timeout=60)
        q = vm.qmp()
        q.ok("migrate-set-capabilities",
             capabilities=[{"capability": "x-ignore-shared", "state": mode == "bypass"}])
        q.ok("migrate", uri="file:" + os.path.join(d, "snap"))
        raw = bytes(vm.serial.raw)
        vm.quit()
    finally:
        vm.kill()
    base = os.path.join(HERE, "%s-%s-%dcpu" % (version, mode, cpus))
    with open(os.path.join(d, "snap"), "rb") as f, gzip.open(base + ".snap.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    if ram:
        with open(ram, "rb") as f, gzip.open(base + ".ram.gz", "wb") as g:
            shutil.copyfileobj(f, g)
    seqs = [int(l[3:]) for l in raw.decode("latin-1").splitlines() if l.startswith("HB ")]
    meta = {"cmdline": cmdline, "memory": "16M", "cpus": cpus, "mode": mode,
            "last_hb": seqs[-1], "console_tail": raw[-64:].decode("latin-1"),
            "made_on": made_on(), "guest_port_io": "iopl3"}
    with open(base + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    shutil.rmtree(d)


if __name__ == "__main__":
    make(sys.argv[1], "full", 1)
    make(sys.argv[1], "bypass", 2)
