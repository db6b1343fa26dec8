"""A restore that KVM refuses names what was refused (issue 17).

KVM answers vCPU state it cannot take with a bare EINVAL, or with a short
count for MSRs; "Input/output error" tells a user nothing. cprvm then sets the
parts again one by one and names the first refused one, in one line, and exits
with status 2 (src/vcpu/vcpu_compat.c, restore_refused() in
src/cpr/snapshot.c).

To get such a snapshot, a golden one (tests/golden/) is patched in place:
vCPU 0's state gets a value that every KVM refuses whatever the CPU vendor,
and every checksum over the patched bytes is recomputed. `cprvm-stream
verify` accepts the result (the stream is well-formed and its tables load),
so only KVM can refuse it. The restore fails before the guest runs a single
instruction, and it must leave the snapshot file as it was. That the
unpatched golden restores is test_golden.py's business.
"""
import gzip
import json
import os
import shutil
import struct
import subprocess

import pytest

from conftest import BUILD, crc32c, stream_span

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "golden", "v0.1.0-svm-full-1cpu")
STREAM = os.path.join(BUILD, "cprvm-stream")

# src/vcpu/vcpu_state.c: section "vcpu/N" fields (id 5 sregs2: struct
# kvm_sregs2 as raw bytes; id 8 msrs: an array of {1 index u32, 2 data u64}).
SREGS2, MSRS = 5, 8
SREGS2_CR4 = 248  # offsetof(struct kvm_sregs2, cr4): 8 segments, 2 dtables, cr0, cr2, cr3
ARRAY = 7         # wire type of an array (docs/stream-format.md)


def sections(snap):
    """Yields (name, start, payload offset, payload length) for each section;
    ends at the end marker. Offsets are in the file."""
    at = stream_span(snap)[0] + 32
    while snap[at] == 0x01:
        n = struct.unpack_from("<H", snap, at + 2)[0]
        name = bytes(snap[at + 4:at + 4 + n]).decode()
        length = struct.unpack_from("<I", snap, at + 8 + n)[0]
        yield name, at, at + 12 + n, length
        at += 12 + n + length + 4
    assert snap[at] == 0xff, "neither a section nor the end marker at %d" % at


def fields(snap, at, length):
    """{id: (wire type, data offset, data length)} of a field list."""
    out, end = {}, at + length
    while at < end:
        fid, wire, _, n = struct.unpack_from("<HBBI", snap, at)
        out[fid] = (wire, at + 8, n)
        at += 8 + n
    return out


def vcpu0(snap):
    for name, _, payload, length in sections(snap):
        if name == "vcpu/0":
            return fields(snap, payload, length)
    raise AssertionError("no section vcpu/0")


def msr_data_offset(snap, index):
    """File offset of the u64 data of MSR `index` in vcpu/0's msrs array."""
    wire, at, _ = vcpu0(snap)[MSRS]
    assert wire == ARRAY
    count, at = struct.unpack_from("<I", snap, at)[0], at + 4
    for _ in range(count):
        n = struct.unpack_from("<I", snap, at)[0]
        msr = fields(snap, at + 4, n)
        if struct.unpack_from("<I", snap, msr[1][1])[0] == index:
            return msr[2][1]
        at += 4 + n
    raise AssertionError("MSR 0x%x is not in vcpu/0" % index)


def cr4_offset(snap):
    _, at, n = vcpu0(snap)[SREGS2]
    assert n == 320, "struct kvm_sregs2 is 320 bytes"
    return at + SREGS2_CR4


def reseal(snap):
    """Recomputes every section's CRC and the end marker's stream CRC."""
    start, length = stream_span(snap)
    for _, sec, payload, n in sections(snap):
        struct.pack_into("<I", snap, payload + n, crc32c(snap[sec:payload + n]))
    end = start + length - 4
    struct.pack_into("<I", snap, end, crc32c(snap[start:end]))


# (test id, where() -> the file offset of the u64 to patch, change(old) -> the
#  value KVM refuses, what the message must name)
CASES = [
    # IA32_PAT: each byte is a memory type, and 2 and 3 are reserved;
    # kvm_pat_valid() refuses them on Intel and AMD alike.
    ("msr-pat", lambda s: msr_data_offset(s, 0x277), lambda v: (v & ~0xff) | 0x02,
     "KVM refused MSR 0x277"),
    # CR4 bits 32..63 are reserved on every x86 CPU; KVM_SET_SREGS2 refuses
    # a CR4 with any of them set (kvm_is_valid_cr4).
    ("sregs-cr4", cr4_offset, lambda v: v | 1 << 63,
     "KVM refused the special registers"),
]


def patched_golden(tmp_path, where, change):
    """The golden snapshot, gunzipped, with the u64 at where() changed:
    (path, old value, new value)."""
    path = tmp_path / "refused.snap"
    with gzip.open(GOLDEN + ".snap.gz", "rb") as f, open(path, "wb") as g:
        shutil.copyfileobj(f, g)
    snap = bytearray(path.read_bytes())
    at = where(snap)
    old = struct.unpack_from("<Q", snap, at)[0]
    new = change(old)
    assert new != old
    struct.pack_into("<Q", snap, at, new)
    reseal(snap)
    path.write_bytes(snap)
    return path, old, new


@pytest.mark.parametrize("where,change,names", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_refused_vcpu_state_is_named(vms, tmp_path, where, change, names):
    meta = json.load(open(GOLDEN + ".json"))
    path, _, new = patched_golden(tmp_path, where, change)
    r = subprocess.run([STREAM, "verify", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, "the patched stream must be well-formed:\n" + r.stderr
    before = path.read_bytes()

    vm = vms(cmdline=meta["cmdline"], memory=meta["memory"], cpus=meta["cpus"],
             serial="stdio", qmp=False, extra=["--incoming", "file:" + str(path)])
    assert vm.wait_exit() == 2, vm.stderr()
    lines = vm.stderr().splitlines()
    assert len(lines) == 1, "expected one line, got:\n" + vm.stderr()
    line = lines[0]
    assert line.startswith("cprvm: cannot restore vCPU 0: "), line
    assert names in line, line
    assert "0x%x" % new in line, line  # the refused value, as KVM got it
    assert "incompatible CPU" in line, line
    assert path.read_bytes() == before, "a refused restore changed the snapshot file"
