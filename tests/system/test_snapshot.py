"""Snapshot and restore (issue 3): QMP migrate to file:PATH, cprvm
--incoming file:PATH. The guest checks itself: heartbeat sequence and the
verify pattern continue across save and restore."""
import os
import re
import struct
import subprocess

import pytest

from conftest import CPRVM, GUEST, Vm

CMDLINE = "heartbeat=20000 verify=64"


def hb_seqs(raw):
    return [int(m.group(1)) for m in re.finditer(rb"^HB (\d+)$", raw, re.M)]


def assert_continues(before, after):
    """The guest's console across a save and restore: the bytes of the old
    process then the new one read as one unbroken heartbeat sequence."""
    seqs = hb_seqs(bytes(before) + bytes(after))
    assert len(seqs) > 10
    for a, b in zip(seqs, seqs[1:]):
        assert b == a + 1, "heartbeat sequence broken across restore: %d then %d" % (a, b)


def save(vm, path, bypass=False):
    q = vm.qmp()
    q.ok("migrate-set-capabilities",
         capabilities=[{"capability": "x-ignore-shared", "state": bypass}])
    q.ok("migrate", uri="file:" + str(path))
    assert q.ok("query-status")["status"] == "postmigrate"
    m = q.ok("query-migrate")
    assert m["status"] == "completed"
    return q


def restore(vms, path, **kw):
    kw.setdefault("cmdline", CMDLINE)
    kw.setdefault("serial", "stdio")
    extra = list(kw.pop("extra", [])) + ["--incoming", "file:" + str(path)]
    return vms(extra=extra, **kw)


def boot(vms, cpus=1, mem_path=None, memory="512M"):
    vm = vms(cmdline=CMDLINE, cpus=cpus, memory=memory, serial="stdio", mem_path=mem_path)
    for cpu in range(cpus):
        vm.serial.wait(r"^OK 2 cpu=%d$" % cpu, timeout=60)
    return vm


def assert_guest_healthy(vm, cpus, passes_from=0):
    for cpu in range(cpus):
        # verify passes continue on every CPU after the restore
        _, m = vm.serial.wait(r"^OK (\d+) cpu=%d$" % cpu, timeout=60)
        assert int(m.group(1)) > passes_from
    vm.serial.wait(r"^HB \d+$", timeout=10, start=vm.serial.count())
    assert not vm.serial.errors()


@pytest.mark.parametrize("cpus", [1, 2])
@pytest.mark.parametrize("mode", ["full", "bypass"])
def test_save_restore_continues(vms, tmp_path, cpus, mode):
    ram = str(tmp_path / "guest.ram") if mode == "bypass" else None
    snap = tmp_path / "snap"
    vm = boot(vms, cpus, mem_path=ram)
    save(vm, snap, bypass=(mode == "bypass"))
    assert vm.quit() == 0
    before = vm.serial.all_bytes()  # paused: every line it printed
    size = os.stat(snap).st_size
    if mode == "bypass":
        assert size < 1 << 20, "bypass snapshot carries RAM (%d bytes)" % size
    else:
        # RAM is in the file, sparse: only touched pages take space.
        assert size >= 512 << 20 and os.stat(snap).st_blocks * 512 < 300 << 20
    vm2 = restore(vms, snap, cpus=cpus, memory="512M", mem_path=ram)
    assert_guest_healthy(vm2, cpus)
    assert_continues(before, vm2.serial.raw)
    assert vm2.quit() == 0


def test_restore_same_snapshot_five_times(vms, tmp_path):
    snap = tmp_path / "snap"
    vm = boot(vms)
    save(vm, snap)
    assert vm.quit() == 0
    before = vm.serial.all_bytes()  # paused: every line it printed
    image = snap.read_bytes()
    for _ in range(5):
        r = restore(vms, snap, memory="512M")
        assert_guest_healthy(r, 1)
        assert_continues(before, r.serial.raw)
        r.kill()
    # Restoring maps the snapshot privately: the file is never written.
    assert snap.read_bytes() == image


def test_save_cont_save_again(vms, tmp_path):
    vm = boot(vms)
    q = save(vm, tmp_path / "s1")
    q.ok("cont")
    assert q.ok("query-status")["status"] == "running"
    n = vm.serial.count()
    vm.serial.wait(r"^HB \d+$", start=n + 5)
    save(vm, tmp_path / "s2")
    assert vm.quit() == 0
    before = vm.serial.all_bytes()  # paused: every line it printed
    r = restore(vms, tmp_path / "s2", memory="512M")
    assert_guest_healthy(r, 1)
    assert_continues(before, r.serial.raw)


def test_bypass_needs_mem_path(vms, tmp_path):
    vm = vms(cmdline=CMDLINE, memory="256M")
    q = vm.qmp()
    q.ok("migrate-set-capabilities",
         capabilities=[{"capability": "x-ignore-shared", "state": True}])
    r = q.cmd("migrate", uri="file:" + str(tmp_path / "s"))
    assert "--mem-path" in r["error"]["desc"]
    assert not os.path.exists(tmp_path / "s") and not os.path.exists(tmp_path / "s.tmp")
    # A failed save leaves the VM running as it was.
    assert q.ok("query-status")["status"] == "running"
    assert q.ok("query-migrate")["status"] == "failed"


def test_bad_migrate_arguments(vms, tmp_path):
    vm = vms(cmdline=CMDLINE, memory="256M")
    q = vm.qmp()
    assert "error" in q.cmd("migrate")
    assert "error" in q.cmd("migrate", uri="tcp:127.0.0.1:1")
    assert "error" in q.cmd("migrate", uri="file:/nonexistent/dir/snap")
    assert "error" in q.cmd("migrate-set-capabilities", capabilities=[{"capability": "bogus",
                                                                      "state": True}])
    assert q.ok("query-status")["status"] == "running"


# --- hostile snapshot files -------------------------------------------------

def crc32c(data, crc=0):
    table = crc32c.table
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


crc32c.table = _table()
STREAM_OFF = 4096


def sections(stream):
    """[(start, end, name)] of the stream's sections."""
    out, p = [], 32
    while stream[p] == 1:
        nlen = struct.unpack_from("<H", stream, p + 2)[0]
        name = stream[p + 4:p + 4 + nlen].decode()
        plen = struct.unpack_from("<I", stream, p + 4 + nlen + 4)[0]
        end = p + 4 + nlen + 8 + plen + 4
        out.append((p, end, name))
        p = end
    return out


def rebuild(stream_parts, nsections):
    """Header + sections + end marker with a correct total CRC."""
    body = b"".join(stream_parts)
    end = struct.pack("<BBHI", 0xFF, 0, 0, nsections)
    return body + end + struct.pack("<I", crc32c(body + end))


def container(image, stream):
    """image with its stream replaced (container header fixed up)."""
    hdr = bytearray(image[:4096])
    struct.pack_into("<Q", hdr, 24, len(stream))
    struct.pack_into("<I", hdr, 48, crc32c(bytes(hdr[:48])))
    ram_off = struct.unpack_from("<Q", hdr, 32)[0]
    tail = image[ram_off:] if ram_off else b""
    out = bytes(hdr) + stream
    if ram_off:
        assert len(out) <= ram_off
        out += b"\0" * (ram_off - len(out)) + tail
    return out


@pytest.fixture(scope="module")
def bypass_snapshot(tmp_path_factory):
    d = tmp_path_factory.mktemp("snapsrc")
    ram = d / "guest.ram"
    vm = Vm(d, cmdline=CMDLINE, memory="256M", serial="stdio", mem_path=str(ram))
    try:
        vm.serial.wait(r"^OK 1 cpu=0$", timeout=60)
        save(vm, d / "snap", bypass=True)
        vm.quit()
    finally:
        vm.kill()
    return d / "snap", ram


def try_restore(tmp_path, image, ram, args=("--memory", "256M")):
    bad = tmp_path / "bad.snap"
    bad.write_bytes(image)
    ram_before = ram.read_bytes()[:1 << 20] if ram and ram.exists() else None
    p = subprocess.run([CPRVM, "--kernel", GUEST, "--serial", "none", "--incoming",
                        "file:" + str(bad)] + list(args) +
                       (["--mem-path", str(ram)] if ram else []),
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    err = p.stderr.decode()
    assert p.returncode == 2, "restore of a bad snapshot did not fail: " + err
    assert len(err.strip().splitlines()) == 1, err
    assert bad.read_bytes() == image, "the snapshot file was modified"
    if ram_before is not None:
        assert ram.read_bytes()[:1 << 20] == ram_before, "the RAM file was modified"
    return err


def test_refuses_bad_snapshots(tmp_path, bypass_snapshot):
    path, ram = bypass_snapshot
    image = path.read_bytes()
    stream = image[STREAM_OFF:]
    secs = sections(stream)
    names = [n for _, _, n in secs]
    assert names[:2] == ["machine", "vcpu/0"] and "serial/0" in names

    assert "magic" in try_restore(tmp_path, b"XXXXXXXX" + image[8:], ram)
    assert "newer" in try_restore(tmp_path, image[:8] + b"\x09" + image[9:], ram)
    # The stream's own format version (offset 8 of the stream).
    s = bytearray(stream)
    s[8] = 9
    assert "newer" in try_restore(tmp_path, container(image, bytes(s)), ram)
    # A flipped byte inside a section: its CRC catches it.
    start, end, name = secs[1]
    s = bytearray(stream)
    s[(start + end) // 2] ^= 0x40
    assert "checksum" in try_restore(tmp_path, image[:STREAM_OFF] + bytes(s), ram)
    # Truncated at every section boundary (and mid-section).
    for cut in [32] + [e for _, e, _ in secs] + [(secs[0][0] + secs[0][1]) // 2]:
        try_restore(tmp_path, image[:STREAM_OFF + cut], ram)
    # A section whose length lies (CRCs recomputed, so only the length is wrong).
    start, end, name = secs[-1]
    s = bytearray(stream)
    nlen = struct.unpack_from("<H", s, start + 2)[0]
    struct.pack_into("<I", s, start + 4 + nlen + 4, 1 << 20)
    try_restore(tmp_path, container(image, bytes(s)), ram)
    # An unknown section marked required, with every checksum right.
    payload = b"\x01\x00\x03\x01\x04\x00\x00\x00\x2a\x00\x00\x00"
    sec = struct.pack("<BBH", 1, 1, 7) + b"gpu/0xx" + struct.pack("<II", 1, len(payload)) + payload
    sec += struct.pack("<I", crc32c(sec))
    body = [stream[:secs[-1][1]], sec]
    err = try_restore(tmp_path, container(image, rebuild(body, len(secs) + 1)), ram)
    assert "gpu/0xx" in err
    # Configuration mismatches and a missing RAM file.
    assert "--memory" in try_restore(tmp_path, image, ram, ["--memory", "512M"])
    assert "--cpus" in try_restore(tmp_path, image, ram, ["--memory", "256M", "--cpus", "2"])
    assert "--mem-path" in try_restore(tmp_path, image, None)
    err = try_restore(tmp_path, image, tmp_path / "missing.ram")
    assert "missing.ram" in err
    assert not (tmp_path / "missing.ram").exists()
    # Not a snapshot at all.
    assert "magic" in try_restore(tmp_path, b"hello world\n" * 100, ram)
    assert "truncated" in try_restore(tmp_path, b"", ram)


@pytest.mark.parametrize("mode", ["full", "bypass"])
def test_incoming_defer(vms, tmp_path, mode):
    ram = str(tmp_path / "guest.ram") if mode == "bypass" else None
    vm = boot(vms, 1, mem_path=ram)
    save(vm, tmp_path / "snap", bypass=(mode == "bypass"))
    assert vm.quit() == 0
    before = vm.serial.all_bytes()  # paused: every line it printed
    vm2 = vms(cmdline=CMDLINE, memory="512M", serial="stdio", mem_path=ram,
              extra=["--incoming", "defer"])
    q = vm2.qmp()
    assert q.ok("query-status")["status"] == "inmigrate"
    assert "error" in q.cmd("cont")
    # A bad file is refused and the VM keeps waiting, untouched.
    (tmp_path / "junk").write_bytes(b"junk" * 1000)
    r = q.cmd("migrate-incoming", uri="file:" + str(tmp_path / "junk"))
    assert "magic" in r["error"]["desc"]
    assert "error" in q.cmd("migrate-incoming", uri="tcp:1.2.3.4:5")
    assert q.ok("query-status")["status"] == "inmigrate"
    q.ok("migrate-incoming", uri="file:" + str(tmp_path / "snap"))
    assert q.ok("query-status")["status"] == "running"
    assert_guest_healthy(vm2, 1)
    assert_continues(before, vm2.serial.raw)
    assert "error" in q.cmd("migrate-incoming", uri="file:" + str(tmp_path / "snap"))
    assert vm2.quit() == 0


def test_incoming_defer_needs_qmp(tmp_path):
    p = subprocess.run([CPRVM, "--kernel", GUEST, "--incoming", "defer"], capture_output=True,
                       timeout=20, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and b"--qmp" in p.stderr


def test_uart_pending_bytes_survive(vms, tmp_path):
    """Bytes the guest had not read yet live in the UART's FIFO: they are in
    the snapshot and reach the restored guest."""
    from conftest import connect_unix, wait_echo_ready
    vm = vms(cmdline="echo serial=cpl0", memory="256M", serial="unix", connect=False)
    s = connect_unix(vm.serial_path)
    wait_echo_ready(s)  # the guest has set up its UART and echoes
    q = vm.qmp()
    q.ok("stop")
    s.sendall(b"0123456789")  # fits the 16-byte FIFO; cprvm moves it there
    import fcntl
    import termios
    import time
    # Wait until cprvm has read them off the socket (into the UART's FIFO).
    end = time.monotonic() + 20
    while struct.unpack("i", fcntl.ioctl(s, termios.TIOCOUTQ, b"\0" * 4))[0]:
        assert time.monotonic() < end, "cprvm never read the bytes"
        time.sleep(0.01)
    save(vm, tmp_path / "snap")
    s.close()
    vm.quit()
    # defer: the client must be there before the guest echoes (output with
    # no client connected is dropped, as on an unplugged line).
    vm2 = vms(cmdline="echo serial=cpl0", memory="256M", serial="unix", connect=False,
              extra=["--incoming", "defer"])
    s2 = connect_unix(vm2.serial_path)
    vm2.qmp().ok("migrate-incoming", uri="file:" + str(tmp_path / "snap"))
    s2.settimeout(10)
    got = b""
    while len(got) < 10:
        got += s2.recv(16)
    assert got == b"0123456789"
    s2.close()
