"""Golden snapshots (tests/golden/): every cprvm must restore the snapshots
earlier versions wrote, and the guest in them must go on exactly where it
stopped. Never regenerate an existing golden; add new ones beside it."""
import glob
import gzip
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import BUILD

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden")
CASES = sorted(glob.glob(os.path.join(GOLDEN, "*.json")))
IA32_TSC = 0x10


def host_tsc():
    """The host's TSC, read by four instructions in an executable page."""
    import ctypes
    import mmap
    code = bytes([0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0xc3])
    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    fn = ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    value = fn()
    del fn
    return value


def snapshot_tsc_and_khz(snap):
    """vCPU 0's IA32_TSC and the TSC rate in a snapshot (cprvm-stream dump)."""
    out = subprocess.run([os.path.join(BUILD, "cprvm-stream"), "dump", str(snap)],
                         capture_output=True, check=True, text=True).stdout
    secs = {s["name"]: s for s in json.loads(out)["stream"]["sections"]}
    khz = next(f["value"] for f in secs["machine"]["fields"] if f["name"] == "tsc_khz")
    msrs = next(f for f in secs["vcpu/0"]["fields"] if f["name"] == "msrs")
    for el in msrs["elements"]:
        vals = {f["name"]: f["value"] for f in (el["fields"] if isinstance(el, dict) else el)}
        if vals["index"] == IA32_TSC:
            return int(vals["data"], 16), khz
    raise AssertionError("no IA32_TSC in the snapshot")


@pytest.mark.parametrize("meta_path", CASES, ids=[os.path.basename(c)[:-5] for c in CASES])
def test_golden_snapshot_restores(vms, tmp_path, meta_path):
    meta = json.load(open(meta_path))
    base = meta_path[:-5]
    snap = tmp_path / "snap"
    with gzip.open(base + ".snap.gz", "rb") as f, open(snap, "wb") as g:
        shutil.copyfileobj(f, g)
    ram = None
    if meta["mode"] == "bypass":
        ram = str(tmp_path / "ram")
        with gzip.open(base + ".ram.gz", "rb") as f, open(ram, "wb") as g:
            shutil.copyfileobj(f, g)
    vm = vms(cmdline=meta["cmdline"], memory=meta["memory"], cpus=meta["cpus"],
             serial="stdio", mem_path=ram, extra=["--incoming", "file:" + str(snap)])
    # On this host's KVM (PVM) a guest reads the host's TSC as it is: the
    # TSC offset a restore sets is not applied. The guest's heartbeat waits
    # for TSC deadlines taken on the host that wrote the snapshot; on a host
    # whose TSC is still behind those (up for less time), it waits until
    # the TSC gets there. The restore itself is checked either way.
    guest_tsc, khz = snapshot_tsc_and_khz(snap)
    behind_s = (guest_tsc - host_tsc()) / (khz * 1000.0)
    if behind_s > 20:
        time.sleep(1)
        assert vm.proc.poll() is None, vm.stderr()
        assert not vm.serial.matching(r"^(BAD|FAIL|PANIC|ERR)")
        assert vm.quit() == 0
        pytest.skip("restored; but this host's TSC is %.0f s behind the snapshot's and KVM "
                    "here does not offset a guest's TSC, so the guest's heartbeat waits "
                    "that long" % behind_s)
    _, m = vm.serial.wait(r"^HB (\d+)$", timeout=10 + max(0.0, behind_s))
    # The old console ended on a complete line; the restored guest's next
    # heartbeat is the next number.
    assert int(m.group(1)) == meta["last_hb"] + 1
    for cpu in range(meta["cpus"]):
        _, m = vm.serial.wait(r"^OK (\d+) cpu=%d$" % cpu, timeout=30)
        assert int(m.group(1)) >= 3
    assert not vm.serial.matching(r"^(BAD|FAIL|PANIC|ERR)")
    assert vm.quit() == 0
