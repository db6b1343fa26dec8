"""The same guest image under QEMU 7.2 (issue 2): benchmarks compare like
with like only if QEMU runs it unchanged."""
import os
import shutil
import subprocess
import time

import pytest

from conftest import (GUEST, NESTED, LineReader, assert_hb_continuous, connect_unix,
                      heartbeats)

QEMU = shutil.which("qemu-system-x86_64")
# Nested, a heartbeat line costs ~2.5 ms of exits: at 1 ms it would starve a
# single CPU's verify pass.
HB_US = 20000 if NESTED else 1000


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
@pytest.mark.parametrize("smp", [1, 2])
def test_guest_under_qemu(tmp_path, smp):
    sock = str(tmp_path / "serial.sock")
    p = subprocess.Popen([QEMU, "-enable-kvm", "-cpu", "qemu64", "-nodefaults",
                          "-display", "none", "-m", "256", "-smp", str(smp),
                          "-kernel", GUEST, "-append", "heartbeat=%d verify=32" % HB_US,
                          "-serial", "unix:%s,server=on,wait=off" % sock],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        s = connect_unix(sock, timeout=20)
        r = LineReader(s.recv)
        _, m = r.wait(r"^GUEST ready cpus=(\d+)", timeout=60)
        assert int(m.group(1)) == smp
        i, _ = r.wait(r"^HB \d+$", timeout=30)
        r.wait(r"^HB \d+$", timeout=30, start=i + 30)
        for cpu in range(smp):
            r.wait(r"^OK 1 cpu=%d$" % cpu, timeout=30)
        assert not r.errors(r"^(BAD|PANIC|ERR)")
        assert_hb_continuous(heartbeats(r))
        s.close()
    finally:
        p.kill()
        p.wait()
