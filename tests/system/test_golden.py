"""Golden snapshots (tests/golden/): every cprvm must restore the snapshots
earlier versions wrote, and the guest in them must go on exactly where it
stopped. Never regenerate an existing golden; add new ones beside it."""
import glob
import gzip
import json
import os
import re
import shutil

import pytest

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden")
CASES = sorted(glob.glob(os.path.join(GOLDEN, "*.json")))


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
    _, m = vm.serial.wait(r"^HB (\d+)$", timeout=10)
    # The old console ended on a complete line; the restored guest's next
    # heartbeat is the next number.
    assert int(m.group(1)) == meta["last_hb"] + 1
    for cpu in range(meta["cpus"]):
        _, m = vm.serial.wait(r"^OK (\d+) cpu=%d$" % cpu, timeout=30)
        assert int(m.group(1)) >= 3
    assert not vm.serial.matching(r"^(BAD|FAIL|PANIC|ERR)")
    assert vm.quit() == 0
