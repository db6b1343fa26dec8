"""Bad input: a clear one-line error, non-zero exit, nothing left behind;
and a VM that garbage on QMP does not disturb (issue 2)."""
import json
import os
import subprocess
import time

import pytest

from conftest import CPRVM, GUEST, assert_hb_continuous, heartbeats


def run_cprvm(args, timeout=20):
    p = subprocess.run([CPRVM] + args, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=timeout)
    return p.returncode, p.stderr.decode(errors="replace")


def assert_one_line_error(rc, err, *words):
    assert rc != 0, "expected failure"
    lines = err.strip().splitlines()
    assert len(lines) == 1, "expected one line, got:\n" + err
    for w in words:
        assert w in lines[0], "%r not in %r" % (w, lines[0])


def test_missing_kernel(tmp_path):
    rc, err = run_cprvm(["--kernel", str(tmp_path / "nope.elf"), "--serial", "none"])
    assert_one_line_error(rc, err, "nope.elf", "No such file")


def test_no_kernel_option():
    rc, err = run_cprvm(["--serial", "none"])
    assert_one_line_error(rc, err, "--kernel")


def test_non_elf_kernel(tmp_path):
    k = tmp_path / "k.txt"
    k.write_text("hello, I am not a kernel\n")
    rc, err = run_cprvm(["--kernel", str(k), "--serial", "none"])
    assert_one_line_error(rc, err, "k.txt", "not an ELF")


def test_empty_kernel(tmp_path):
    k = tmp_path / "empty"
    k.write_bytes(b"")
    rc, err = run_cprvm(["--kernel", str(k), "--serial", "none"])
    assert_one_line_error(rc, err, "empty")


def test_elf_without_pvh_note():
    rc, err = run_cprvm(["--kernel", "/bin/true", "--serial", "none"])
    assert_one_line_error(rc, err, "/bin/true", "PVH")


def test_truncated_guest_elf(tmp_path):
    data = open(GUEST, "rb").read()
    k = tmp_path / "trunc.elf"
    k.write_bytes(data[:len(data) // 3])
    rc, err = run_cprvm(["--kernel", str(k), "--serial", "none"])
    assert_one_line_error(rc, err, "trunc.elf")


def test_memory_more_than_host(tmp_path):
    ram = tmp_path / "ram"
    rc, err = run_cprvm(["--kernel", GUEST, "--memory", "64T", "--mem-path", str(ram),
                         "--serial", "none"])
    assert_one_line_error(rc, err, "--memory")
    assert not ram.exists()


@pytest.mark.parametrize("args,word", [
    (["--memory", "12Q"], "--memory"),
    (["--memory", ""], "--memory"),
    (["--memory", "1M"], "--memory"),
    (["--cpus", "0"], "--cpus"),
    (["--cpus", "two"], "--cpus"),
    (["--cpus", "65"], "--cpus"),
    (["--serial", "tcp:localhost:4444"], "--serial"),
    (["--serial", "unix:"], "--serial"),
    (["--serial", "file:" + "x" * 200], "--serial"),
    (["--bogus"], "--bogus"),
    (["extra-arg"], "extra-arg"),
    (["--cmdline", "x" * 5000], "--cmdline"),
])
def test_bad_arguments(args, word):
    rc, err = run_cprvm(["--kernel", GUEST] + args)
    assert rc == 2
    assert_one_line_error(rc, err, word)


def test_unwritable_qmp_leaves_nothing(tmp_path):
    ram = tmp_path / "ram"
    ser = tmp_path / "serial.sock"
    rc, err = run_cprvm(["--kernel", GUEST, "--mem-path", str(ram), "--serial",
                         "unix:" + str(ser), "--qmp", "/nonexistent/dir/qmp.sock"])
    assert_one_line_error(rc, err, "/nonexistent/dir/qmp.sock")
    assert not ram.exists() and not ser.exists()
    assert sorted(os.listdir(tmp_path)) == []


def test_bad_mem_path_is_directory(tmp_path):
    rc, err = run_cprvm(["--kernel", GUEST, "--mem-path", str(tmp_path), "--serial", "none"])
    assert_one_line_error(rc, err, str(tmp_path))


def test_mem_path_larger_than_memory_is_kept(tmp_path):
    ram = tmp_path / "ram"
    ram.write_bytes(b"\x5a" * (4 << 20))
    rc, err = run_cprvm(["--kernel", GUEST, "--memory", "2M", "--mem-path", str(ram),
                         "--serial", "none"])
    assert_one_line_error(rc, err, "larger")
    assert ram.read_bytes() == b"\x5a" * (4 << 20)


def test_help_and_version():
    p = subprocess.run([CPRVM, "--help"], capture_output=True)
    assert p.returncode == 0
    out = p.stdout.decode()
    for opt in ["--kernel", "--initrd", "--cmdline", "--memory", "--cpus", "--mem-path",
                "--serial", "--qmp", "--incoming", "--name"]:
        assert opt in out
    p = subprocess.run([CPRVM, "--version"], capture_output=True)
    assert p.returncode == 0 and p.stdout.startswith(b"cprvm ")


def test_qmp_garbage_vm_unaffected(vms):
    vm = vms(cmdline="heartbeat")
    vm.serial.wait(r"^HB 10$")
    q = vm.qmp()
    for junk in [b"garbage\n", b"{\"execute\": }\n", b"[1, 2, 3]\n", b"42\n",
                 b"{\"no-execute\": 1}\n", b"{\"execute\": 5}\n",
                 b"{\"execute\": \"query-status\", \"arguments\": [1]}\n",
                 b"\xff\xfe\x00\x01\n"]:
        q.send_raw(junk)
        r = q.reply()
        assert r["error"]["class"] == "GenericError", (junk, r)
    # An oversized line (4 MiB without a complete object).
    q.send_raw(b"{\"execute\": \"" + b"a" * (4 << 20) + b"\n")
    r = q.reply()
    assert "error" in r, r
    assert q.ok("query-status")["status"] == "running"
    r = q.cmd("no-such-command")
    assert r["error"]["class"] == "CommandNotFound"
    # Random bytes from a second client, which then vanishes.
    q2 = vm.qmp(negotiate=False)
    q2.send_raw(os.urandom(100000))
    q2.close()
    last = heartbeats(vm.serial)[-1][1]
    vm.serial.wait(r"^HB %d$" % (last + 20), timeout=10)
    assert_hb_continuous(heartbeats(vm.serial))
    assert q.ok("query-status")["status"] == "running"
