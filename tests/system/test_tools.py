"""The tools around snapshots: `cprctl snapshot` / `migrate-status` over QMP,
and `cprvm-stream dump` / `verify` on the files they write, including files
that have been damaged on purpose. A snapshot made with cprctl must restore
(`cprvm ... --incoming file:PATH`) with the guest's heartbeat unbroken."""
import json
import os
import re
import struct
import subprocess

import pytest

from conftest import (BUILD, CPRCTL, GUEST, assert_hb_continuous, crc32c, heartbeats,
                      stream_span)

STREAM = os.path.join(BUILD, "cprvm-stream")
CMDLINE = "heartbeat=20000 verify=32"
MEMORY = "256M"
SECTIONS = ["machine", "vcpu/0", "irqchip", "pit", "clock", "serial/0"]


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kw)


def ctl(vm, *args, **kw):
    return run([CPRCTL, "--qmp", vm.qmp_path] + list(args), **kw)


def stream_tool(*args):
    return run([STREAM] + list(args))


def boot(vms, mem_path=None):
    vm = vms(cmdline=CMDLINE, memory=MEMORY, serial="stdio", mem_path=mem_path)
    vm.serial.wait(r"^OK 1 cpu=0$", timeout=60)
    return vm


def snapshot(vm, path, bypass=False, **kw):
    r = ctl(vm, "snapshot", str(path), *(["--bypass"] if bypass else []), **kw)
    assert r.returncode == 0, r.stderr
    return r.stdout


def assert_one_line_error(r, *words):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("cprvm-stream: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def container(path):
    """(stream offset, stream length) from a snapshot's container header."""
    with open(path, "rb") as f:
        return stream_span(f.read(52))


def damaged_copy(src, dst, edit):
    """A copy of a device-state-only snapshot with edit(bytearray) applied."""
    data = bytearray(open(src, "rb").read())
    edit(data)
    open(dst, "wb").write(data)
    return dst


@pytest.fixture
def snaps(vms, tmp_path):
    """One guest, two snapshots of it by cprctl: full, then bypass."""
    ram = str(tmp_path / "guest.ram")
    vm = boot(vms, mem_path=ram)
    full, bypass = tmp_path / "full.snap", tmp_path / "bypass.snap"
    out_full = snapshot(vm, full)
    out_bypass = snapshot(vm, bypass, bypass=True)
    return vm, full, bypass, out_full, out_bypass


def test_cprctl_snapshot_and_verify(snaps):
    vm, full, bypass, out_full, out_bypass = snaps
    assert re.fullmatch(r"snapshot written to %s \(full: device state and RAM\) in "
                        r"[0-9.]+ ms, VM paused\n" % re.escape(str(full)), out_full), out_full
    assert re.fullmatch(r"snapshot written to %s \(bypass: device state only\) in "
                        r"[0-9.]+ ms, VM paused\n" % re.escape(str(bypass)), out_bypass)
    assert ctl(vm, "status").stdout == "postmigrate\n"
    st = ctl(vm, "migrate-status")
    assert st.returncode == 0 and st.stdout.startswith("completed: downtime "), st
    # a bypass snapshot carries no RAM; a full one does (sparse)
    assert os.stat(bypass).st_size < 1 << 20
    assert os.stat(full).st_size >= 256 << 20
    for path in (full, bypass):
        r = stream_tool("verify", str(path))
        assert r.returncode == 0, r.stderr
        assert re.fullmatch(r"ok: 6 sections, format version 1, written by cprvm "
                            r"\d+\.\d+\.\d+\n", r.stdout), r.stdout
    # the guest goes on after cont, and can be snapshotted again
    assert ctl(vm, "cont").returncode == 0
    assert ctl(vm, "status").stdout == "running\n"


def test_dump_is_json_with_named_fields(snaps):
    _, full, bypass, _, _ = snaps
    for path, ram in ((full, True), (bypass, False)):
        r = stream_tool("dump", str(path))
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        c = d["container"]
        assert c["version"] == 1 and c["stream_offset"] == 4096
        assert (c["flags"] & 1 == 1) == ram
        if ram:
            assert c["ram_offset"] % (2 << 20) == 0 and c["ram_length"] == 256 << 20
        else:
            assert c["ram_offset"] == 0 and c["ram_length"] == 0
        s = d["stream"]
        assert s["format_version"] == 1
        assert [x["name"] for x in s["sections"]] == SECTIONS
        by_name = {x["name"]: x for x in s["sections"]}
        fields = {sec: {f.get("name") for f in by_name[sec]["fields"]} for sec in SECTIONS}
        assert {"mem_size", "nr_cpus", "ram_mode"} <= fields["machine"]
        assert {"regs", "lapic", "msrs", "xsave"} <= fields["vcpu/0"]
        assert fields["vcpu/0"] & {"sregs", "sregs2"}
        mem = [f for f in by_name["machine"]["fields"] if f["name"] == "mem_size"][0]
        assert int(mem["value"], 16) == 256 << 20
        for sec in SECTIONS:
            assert by_name[sec]["required"] is True
            assert not any("error" in f for f in by_name[sec]["fields"]), by_name[sec]


def test_bare_stream(snaps, tmp_path):
    _, _, bypass, _, _ = snaps
    off, length = container(bypass)
    bare = tmp_path / "bare.stream"
    bare.write_bytes(open(bypass, "rb").read()[off:off + length])
    r = stream_tool("verify", str(bare))
    assert r.returncode == 0 and r.stdout.startswith("ok: 6 sections"), r
    d = json.loads(stream_tool("dump", str(bare)).stdout)
    assert "container" not in d
    assert [x["name"] for x in d["stream"]["sections"]] == SECTIONS


def test_verify_refuses_damaged_files(snaps, tmp_path):
    _, full, bypass, _, _ = snaps
    off, length = container(bypass)

    def flip(at):
        def edit(d):
            d[at] ^= 0x40
        return edit

    # a byte in the middle of the stream (inside vcpu/0): a section checksum
    bad = damaged_copy(bypass, tmp_path / "flip-stream", flip(off + length // 2))
    assert_one_line_error(stream_tool("verify", str(bad)), "checksum")
    # the stream's own end CRC
    bad = damaged_copy(bypass, tmp_path / "flip-end", flip(off + length - 1))
    assert_one_line_error(stream_tool("verify", str(bad)), "checksum")
    # the container header
    bad = damaged_copy(bypass, tmp_path / "flip-hdr", flip(20))
    assert_one_line_error(stream_tool("verify", str(bad)), "container header checksum")
    # dump refuses what verify refuses at the framing level
    r = stream_tool("dump", str(bad))
    assert r.returncode == 1 and r.stdout == ""

    # truncated: in the stream, right after the header, and before the header ends
    for n in (off + length - 1, off + length // 2, off + 10, 4096, 30):
        def cut(d, n=n):
            del d[n:]
        bad = damaged_copy(bypass, tmp_path / ("cut%d" % n), cut)
        assert_one_line_error(stream_tool("verify", str(bad)), "truncated")
    # a full snapshot whose RAM area was cut short (built sparse: no 256 MiB copy)
    bad = tmp_path / "cut-ram"
    with open(full, "rb") as f:
        bad.write_bytes(f.read(off + length))
    os.truncate(bad, os.stat(full).st_size - (1 << 20))
    assert_one_line_error(stream_tool("verify", str(bad)), "RAM area")

    # not snapshots at all
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for path, words in ((GUEST, ["bad magic"]), (empty, ["too short"]),
                        (tmp_path, ["not a regular file"]),
                        (tmp_path / "absent", ["No such file"])):
        assert_one_line_error(stream_tool("verify", str(path)), *words)
        assert stream_tool("dump", str(path)).returncode == 1


def test_hostile_bytes_never_crash(snaps, tmp_path):
    """A sample of single-byte flips and truncations all over a snapshot:
    every one refused with one line (flips in the container's padding
    change nothing), never a crash or a sanitizer report."""
    _, _, bypass, _, _ = snaps
    src = open(bypass, "rb").read()
    off, length = container(bypass)
    cases = [("flip", i) for i in list(range(0, 52)) + list(range(off, off + length, 97))]
    cases += [("cut", n) for n in range(0, len(src), 331)]
    bad = tmp_path / "bad"
    for kind, at in cases:
        data = bytearray(src)
        if kind == "flip":
            data[at] ^= 0x40
        else:
            del data[at:]
        bad.write_bytes(data)
        for cmd in ("verify", "dump"):
            r = stream_tool(cmd, str(bad))
            assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr
            assert r.returncode == 1, (kind, at, cmd, r.returncode, r.stderr)
            assert len(r.stderr.strip().splitlines()) == 1, (kind, at, r.stderr)


def test_verify_loads_sections(snaps, tmp_path):
    """Framing and checksums intact, content wrong: verify loads the tables
    as restore would and names the culprit."""
    _, _, bypass, _, _ = snaps
    off, length = container(bypass)
    d = json.loads(stream_tool("dump", str(bypass)).stdout)
    machine = d["stream"]["sections"][0]
    assert machine["name"] == "machine"

    def patch_machine(data, field_hdr, value):
        sec = off + machine["offset"]
        n = len("machine")
        payload = sec + 12 + n
        end = payload + machine["length"]
        at = data.index(field_hdr, payload, end) + len(field_hdr)
        data[at:at + len(value)] = value
        struct.pack_into("<I", data, end, crc32c(data[sec:end]))
        struct.pack_into("<I", data, off + length - 4, crc32c(data[off:off + length - 4]))

    # nr_cpus (id 4, u32, required) = 2: but there is only vcpu/0
    bad = damaged_copy(bypass, tmp_path / "cpus",
                       lambda x: patch_machine(x, struct.pack("<HBBI", 4, 3, 1, 4),
                                               struct.pack("<I", 2)))
    assert_one_line_error(stream_tool("verify", str(bad)), "vcpu/1", "missing")
    # ram_mode (id 6) = 7: unknown
    bad = damaged_copy(bypass, tmp_path / "mode",
                       lambda x: patch_machine(x, struct.pack("<HBBI", 6, 3, 1, 4),
                                               struct.pack("<I", 7)))
    assert_one_line_error(stream_tool("verify", str(bad)), "RAM mode")
    # mem_size (id 1) turned into a u32 field: the table load refuses the wire type
    bad = damaged_copy(bypass, tmp_path / "type",
                       lambda x: patch_machine(x, struct.pack("<H", 1), struct.pack("<B", 3)))
    assert_one_line_error(stream_tool("verify", str(bad)), "section 'machine'")


def test_usage():
    r = stream_tool("--help")
    assert r.returncode == 0 and "verify" in r.stdout and "dump" in r.stdout
    for args in ([], ["verify"], ["frobnicate", "x"], ["dump", "a", "b"]):
        r = stream_tool(*args)
        assert r.returncode == 2, (args, r)
    r = run([CPRCTL, "--help"])
    assert "snapshot PATH [--bypass]" in r.stdout and "--incoming file:PATH" in r.stdout


def test_cprctl_snapshot_errors(vms, tmp_path):
    vm = boot(vms)
    # bypass needs --mem-path: refused, the guest keeps running
    r = ctl(vm, "snapshot", str(tmp_path / "s"), "--bypass")
    assert r.returncode == 1 and "--mem-path" in r.stderr, r
    assert ctl(vm, "status").stdout == "running\n"
    assert "failed: " in ctl(vm, "migrate-status").stdout
    assert not os.path.exists(tmp_path / "s")
    assert ctl(vm, "snapshot").returncode == 2
    assert ctl(vm, "status", "--bypass").returncode == 2
    r = run([CPRCTL, "--qmp", str(tmp_path / "nope.sock"), "snapshot", "x"])
    assert r.returncode == 3
    # a relative PATH is ours, not the VMM's working directory
    sub = tmp_path / "sub"
    sub.mkdir()
    r = ctl(vm, "snapshot", "rel.snap", cwd=str(sub))
    assert r.returncode == 0, r.stderr
    assert str(sub / "rel.snap") in r.stdout
    assert stream_tool("verify", str(sub / "rel.snap")).returncode == 0


def hb_seqs(raw):
    return [(0, int(m.group(1))) for m in re.finditer(rb"^HB (\d+)$", raw, re.M)]


@pytest.mark.parametrize("mode", ["full", "bypass"])
def test_restore_cprctl_snapshot(vms, tmp_path, mode):
    ram = str(tmp_path / "guest.ram") if mode == "bypass" else None
    path = tmp_path / "snap"
    vm = boot(vms, mem_path=ram)
    snapshot(vm, path, bypass=(mode == "bypass"))
    assert stream_tool("verify", str(path)).returncode == 0
    # paused since the snapshot: once it has exited, its reader holds every
    # line the guest printed (taken earlier, the last may still be in flight)
    assert vm.quit() == 0
    before = vm.serial.all_bytes()
    vm2 = vms(cmdline=CMDLINE, memory=MEMORY, serial="stdio", mem_path=ram,
              extra=["--incoming", "file:" + str(path)])
    vm2.serial.wait(r"^OK \d+ cpu=0$", timeout=60)
    n = vm2.serial.count()
    vm2.serial.wait(r"^HB \d+$", start=n + 3)
    assert not vm2.serial.errors()
    assert_hb_continuous(heartbeats(vm2.serial))
    # the old process's console and the new one's read as one unbroken
    # heartbeat sequence (a line cut by the snapshot is finished by the new
    # process, so join the bytes rather than the lines)
    hbs = hb_seqs(before + bytes(vm2.serial.raw))
    assert len(hbs) > 10
    assert_hb_continuous(hbs)
    assert vm2.quit() == 0


def test_cprctl_restore_into_deferred_vm(vms, tmp_path):
    vm = vms(cmdline="heartbeat=20000 verify=32", memory="256M", serial="stdio")
    vm.serial.wait(r"^OK 1 cpu=0$", timeout=60)
    snap = tmp_path / "snap"
    p = subprocess.run([CPRCTL, "--qmp", vm.qmp_path, "snapshot", str(snap)],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert vm.quit() == 0
    before = vm.serial.all_bytes()  # see test_restore_cprctl_snapshot
    vm2 = vms(cmdline="heartbeat=20000 verify=32", memory="256M", serial="stdio",
              extra=["--incoming", "defer"])
    vm2.qmp()  # wait for the socket
    p = subprocess.run([CPRCTL, "--qmp", vm2.qmp_path, "restore", str(tmp_path / "nope")],
                       capture_output=True, timeout=60)
    assert p.returncode == 1 and b"nope" in p.stderr
    p = subprocess.run([CPRCTL, "--qmp", vm2.qmp_path, "restore", str(snap)],
                       capture_output=True, timeout=60)
    assert p.returncode == 0 and b"guest running" in p.stdout, p.stderr
    vm2.serial.wait(r"^OK \d+ cpu=0$", timeout=30)
    seqs = [int(x) for x in re.findall(rb"^HB (\d+)$", before + bytes(vm2.serial.raw), re.M)]
    assert all(b == a + 1 for a, b in zip(seqs, seqs[1:]))
