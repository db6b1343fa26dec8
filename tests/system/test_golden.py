"""Golden snapshots (tests/golden/): every cprvm must restore the snapshots
earlier versions wrote, and the guest in them must go on exactly where it
stopped. Never regenerate an existing golden; add new ones beside it."""
import glob
import gzip
import json
import os
import shutil

import pytest


GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden")
CASES = sorted(glob.glob(os.path.join(GOLDEN, "*.json")))


def emulator_cannot_run(meta):
    """QEMU's TCG consults the TSS I/O bitmap only for an available TSS
    (type 9); KVM on SVM restores TR as busy (type 11), which hardware
    accepts. A guest that reaches its ports at CPL3 through the bitmap alone
    (the v0.1.0 goldens) takes #GP there after any restore on the nested
    platform. Its restore is still checked up to that point."""
    return (meta.get("guest_port_io") == "tss-bitmap" and
            os.environ.get("CPRVM_PLATFORM_NAME") == "nested-tcg")


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
    if emulator_cannot_run(meta):
        # KVM took the whole state (a refusal ends cprvm with status 2);
        # the guest's first port access then faults, in the emulator.
        _, m = vm.serial.wait(r"^PANIC vec=(\d+) ", timeout=30)
        assert m.group(1) == "13"
        assert vm.proc.poll() is None, vm.stderr()
        assert vm.quit() == 0
        pytest.xfail("restored; the guest's CPL3 port I/O through the TSS bitmap faults "
                     "under QEMU's TCG after a restore (see emulator_cannot_run)")
    _, m = vm.serial.wait(r"^HB (\d+)$", timeout=30)
    # The old console ended on a complete line; the restored guest's next
    # heartbeat is the next number.
    assert int(m.group(1)) == meta["last_hb"] + 1
    for cpu in range(meta["cpus"]):
        _, m = vm.serial.wait(r"^OK (\d+) cpu=%d$" % cpu, timeout=30)
        assert int(m.group(1)) >= 3
    assert not vm.serial.errors()
    assert vm.quit() == 0
