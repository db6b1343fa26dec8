"""Helpers for cprvm's system tests: start real VMs, read their serial
console, talk QMP. Every test runs the real binary on /dev/kvm."""
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

# scripts/with-kvm says where the tests run. On the nested platform (KVM in
# an L1 that QEMU's TCG emulates) every exit costs ~100x more: tests shrink
# their workloads there (longer heartbeat periods, fewer rounds), never what
# they assert.
NESTED = os.environ.get("CPRVM_PLATFORM_NAME") == "nested-tcg"
# How long a test waits for what it expects is patience, not an assertion:
# nested, a guest's progress also depends on the emulator's scheduling, and
# under the sanitizers (CPRVM_PATIENCE=2 from the Makefile) the VMM is slower.
PATIENCE = (3 if NESTED else 1) * float(os.environ.get("CPRVM_PATIENCE") or 1)
# A process's own exit, e.g. the old side after a cpr-transfer: ~40 ms on
# the earlier hosts, 0.5-2 s on the nested platform with 2 busy vCPUs.
EXIT_S = 20 * PATIENCE
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("CPRVM_BUILD", "build"))
CPRVM = os.path.join(BUILD, "cprvm")
CPRCTL = os.path.join(BUILD, "cprctl")
GUEST = os.path.join(BUILD, "guest", "guest.elf")


def wait_for(pred, timeout, what):
    timeout *= PATIENCE
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))


class LineReader:
    """Collects lines (with arrival times) from a file object or socket in a
    background thread."""

    def __init__(self, read_fn, close_fn=None):
        self.lines = []  # (monotonic time, text)
        self.raw = bytearray()
        self.cond = threading.Condition()
        self.eof = False
        self._read = read_fn
        self._close = close_fn
        self._buf = b""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                data = self._read(65536)
            except OSError:
                data = b""
            now = time.monotonic()
            with self.cond:
                if not data:
                    self.eof = True
                    self.cond.notify_all()
                    return
                self.raw += data
                self._buf += data
                while b"\n" in self._buf:
                    line, self._buf = self._buf.split(b"\n", 1)
                    self.lines.append((now, line.decode("latin-1").rstrip("\r")))
                self.cond.notify_all()

    def wait(self, regex, timeout=10.0, start=0):
        """Waits for a line matching regex at index >= start; returns
        (index, match)."""
        rx = re.compile(regex)
        timeout *= PATIENCE
        end = time.monotonic() + timeout
        with self.cond:
            i = start
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i][1])
                    if m:
                        return i, m
                    i += 1
                left = end - time.monotonic()
                if left <= 0 or self.eof:
                    tail = "\n".join(l for _, l in self.lines[-10:])
                    raise AssertionError("no line matching %r within %.1fs; last lines:\n%s"
                                         % (regex, timeout, tail))
                self.cond.wait(left)

    def all_bytes(self, timeout=10.0):
        """Every byte, once the writer has closed its end: what a console
        client has seen by the time the VMM is gone."""
        timeout *= PATIENCE
        end = time.monotonic() + timeout
        with self.cond:
            while not self.eof:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError("console not closed within %.1fs" % timeout)
                self.cond.wait(left)
            return bytes(self.raw)

    def matching(self, regex):
        rx = re.compile(regex)
        with self.cond:
            return [(t, rx.search(l)) for t, l in self.lines if rx.search(l)]

    def errors(self, regex=r"^(BAD|FAIL|PANIC|ERR)"):
        """The lines a guest prints when something went wrong, whole, so that
        a failed assertion shows them."""
        rx = re.compile(regex)
        with self.cond:
            return [l for _, l in self.lines if rx.search(l)]

    def count(self):
        with self.cond:
            return len(self.lines)

    def close(self):
        if self._close:
            self._close()


class Qmp:
    """A minimal QMP client: greeting, negotiation, commands, events."""

    def __init__(self, path, timeout=10.0, negotiate=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.f = self.sock.makefile("rb")
        self.events = []
        self.greeting = self._read()
        if negotiate:
            r = self.cmd("qmp_capabilities")
            assert r == {"return": {}}, r

    def _read(self):
        line = self.f.readline()
        if not line:
            raise EOFError("QMP connection closed")
        return json.loads(line)

    def send_raw(self, data):
        self.sock.sendall(data)

    def reply(self):
        """Next reply (not event)."""
        while True:
            msg = self._read()
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    def cmd(self, name, **args):
        req = {"execute": name}
        if args:
            req["arguments"] = args
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        return self.reply()

    def ok(self, name, **args):
        r = self.cmd(name, **args)
        assert "return" in r, r
        return r["return"]

    def wait_event(self, name, timeout=10.0):
        for i, e in enumerate(self.events):
            if e["event"] == name:
                return self.events.pop(i)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                msg = self._read()
            except socket.timeout:
                break
            if "event" in msg:
                if msg["event"] == name:
                    return msg
                self.events.append(msg)
        raise AssertionError("no %s event within %.1fs" % (name, timeout))

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass


def connect_unix(path, timeout=10.0):
    def attempt():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            return None
    return wait_for(attempt, timeout, "unix socket %s" % path)


def wait_echo_ready(sock, timeout=30.0):
    """Bytes that reach the UART before the guest has set it up are dropped
    by the guest's own FIFO reset (as on real hardware): ping until the echo
    guest answers, then drain the extra pings."""
    end = time.monotonic() + timeout
    sock.settimeout(0.2)
    try:
        while True:
            assert time.monotonic() < end, "the echo guest never answered"
            sock.sendall(b"?")
            try:
                if sock.recv(64):
                    break
            except socket.timeout:
                pass
        while True:
            try:
                if not sock.recv(64):
                    break
            except socket.timeout:
                break
    finally:
        sock.settimeout(None)


# Nested, a heartbeat line costs ~2.5 ms of exits, more on a busy host: at a
# line every few ms, CPU 0 does little else (its verify pass stalls, and
# other CPUs wait for the serial lock). There, no heartbeat runs faster.
NESTED_HB_US = 20000


def nested_cmdline(cmdline):
    """The test guest's cmdline with its heartbeat slowed to NESTED_HB_US on
    the nested platform (a bare `heartbeat`, `dirty=` and an empty cmdline
    mean one every 1 ms); unchanged natively."""
    if not NESTED:
        return cmdline
    toks, hb = [], False
    for t in cmdline.split():
        if t == "heartbeat" or t.startswith("heartbeat="):
            hb = True
            us = int(t[len("heartbeat="):]) if "=" in t else 1000
            t = "heartbeat=%d" % max(us, NESTED_HB_US)
        toks.append(t)
    if not hb and (not toks or any(t.startswith("dirty=") for t in toks)):
        toks.append("heartbeat=%d" % NESTED_HB_US)
    return " ".join(toks)


class Vm:
    """One cprvm process. serial: 'unix' (default), 'stdio', 'file', 'pty',
    'none'."""

    def __init__(self, tmp, cmdline="heartbeat", memory="256M", cpus=1, serial="unix",
                 mem_path=None, qmp=True, extra=(), kernel=None, binary=None, connect=True,
                 env=None, initrd=None):
        self.tmp = str(tmp)
        self.serial_kind = serial
        self.qmp_path = os.path.join(self.tmp, "qmp.sock") if qmp else None
        self.serial_path = None
        args = [binary or CPRVM, "--kernel", kernel or GUEST, "--memory", memory,
                "--cpus", str(cpus), "--cmdline", nested_cmdline(cmdline)]
        if serial == "unix":
            self.serial_path = os.path.join(self.tmp, "serial.sock")
            args += ["--serial", "unix:" + self.serial_path]
        elif serial == "file":
            self.serial_path = os.path.join(self.tmp, "serial.txt")
            args += ["--serial", "file:" + self.serial_path]
        else:
            args += ["--serial", serial]
        if mem_path:
            args += ["--mem-path", mem_path]
        if initrd:
            args += ["--initrd", initrd]
        if self.qmp_path:
            args += ["--qmp", self.qmp_path]
        args += list(extra)
        self.args = args
        self.stderr_path = os.path.join(self.tmp, "stderr.txt")
        self.stderr_f = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE if serial == "stdio" else subprocess.DEVNULL,
                                     stderr=self.stderr_f,
                                     env=dict(os.environ, **(env or {})))
        self.extra_procs = []  # processes that took the guest over (live update)
        self.serial = None
        self.serial_sock = None
        self.pty_fd = None
        self._qmps = []
        if serial == "stdio":
            out = self.proc.stdout
            self.serial = LineReader(lambda n: os.read(out.fileno(), n))
        elif serial == "unix" and connect:
            self.connect_serial()
        elif serial == "file":
            wait_for(lambda: os.path.exists(self.serial_path), 10, "serial file")
            f = open(self.serial_path, "rb")

            def read_file(n, f=f):
                while True:
                    d = f.read(n)
                    if d:
                        return d
                    if self.proc.poll() is not None:
                        return f.read(n)
                    time.sleep(0.005)
            self.serial = LineReader(read_file)
        elif serial == "pty":
            path = wait_for(self._pty_path, 10, "pty path on stderr")
            import tty
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
            tty.setraw(fd)
            self.pty_fd = fd
            self.serial = LineReader(lambda n: os.read(fd, n))

    def _pty_path(self):
        with open(self.stderr_path, "rb") as f:
            m = re.search(rb"char device redirected to (/dev/pts/\d+)", f.read())
        return m.group(1).decode() if m else None

    def connect_serial(self):
        s = connect_unix(self.serial_path)
        self.serial_sock = s
        self.serial = LineReader(s.recv)
        return s

    def qmp(self, **kw):
        wait_for(lambda: os.path.exists(self.qmp_path) or self.proc.poll() is not None,
                 10, "QMP socket")
        q = Qmp(self.qmp_path, **kw)
        self._qmps.append(q)
        return q

    def stderr(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_exit(self, timeout=20):
        timeout *= PATIENCE
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("cprvm did not exit within %ds" % timeout)

    def quit(self):
        q = self.qmp()
        q.cmd("quit")
        return self.wait_exit()

    def kill(self):
        for p in [self.proc] + self.extra_procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for q in self._qmps:
            q.close()
        if self.serial_sock:
            self.serial_sock.close()
        if self.pty_fd is not None:
            os.close(self.pty_fd)
            self.pty_fd = None
        self.stderr_f.close()


def vmm_messages(tmp, lines=15):
    """The end of each VMM's stderr under tmp: what a failure report shows."""
    out = []
    for path in sorted(tmp.rglob("*")):
        if path.name == "stderr.txt" or path.suffix == ".err":
            text = path.read_text(errors="replace").splitlines()
            if text:
                out.append("--- %s\n%s" % (path.relative_to(tmp), "\n".join(text[-lines:])))
    return "\n".join(out)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    rep = (yield).get_result()
    if rep.when != "call":
        return
    item.passed_call = rep.passed
    tmp = item.funcargs.get("tmp_path")
    if rep.failed and tmp is not None:
        # Nested, the files go with the L1: the report carries what they said.
        msgs = vmm_messages(tmp)
        if msgs:
            rep.sections.append(("VMM stderr", msgs))


@pytest.fixture(autouse=True)
def drop_files_of_passed_tests(request, tmp_path):
    """A passed test's files go when it ends (its VMs are gone by then):
    snapshots and RAM files add up to GiBs over a run, and nested they would
    live in the L1's RAM. A failed test's stay, to be read."""
    yield
    if getattr(request.node, "passed_call", False):
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture
def vms(tmp_path):
    """Factory: vms(cmdline=..., ...) starts a VM; all are killed at the end."""
    started = []
    n = [0]

    def make(**kw):
        n[0] += 1
        d = tmp_path / ("vm%d" % n[0])
        d.mkdir()
        vm = Vm(d, **kw)
        started.append(vm)
        return vm
    yield make
    for vm in started:
        vm.kill()
    left = wait_gone(str(tmp_path), EXIT_S)
    assert not left, "processes left behind by the test's VMs: %s" % left


def pids_mentioning(text):
    """PIDs (not this one's) whose command line mentions text: a VMM's, or a
    task that shares its address space (a live update's keeper or runner)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                if text.encode() in f.read():
                    found.append(int(d))
        except OSError:
            pass
    return found


def wait_gone(text, timeout):
    """Waits until no process mentions text; kills what is still there
    then, and returns those ("pid comm" each)."""
    end = time.monotonic() + timeout
    while pids_mentioning(text) and time.monotonic() < end:
        time.sleep(0.1)
    left = []
    for pid in pids_mentioning(text):
        try:
            with open("/proc/%d/comm" % pid) as f:
                left.append("%d %s" % (pid, f.read().strip()))
            os.kill(pid, 9)
        except OSError:
            pass
    return left


def heartbeats(reader):
    """[(time, seq)] of the HB lines seen so far."""
    return [(t, int(m.group(1))) for t, m in reader.matching(r"^HB (\d+)$")]


def assert_hb_continuous(hbs):
    """No gap, no repeat: consecutive sequence numbers."""
    assert len(hbs) > 1, "no heartbeats"
    seqs = [s for _, s in hbs]
    for a, b in zip(seqs, seqs[1:]):
        assert b == a + 1, "heartbeat sequence broken: %d then %d" % (a, b)


def _crc_table_entry(n):
    for _ in range(8):
        n = (n >> 1) ^ (0x82f63b78 if n & 1 else 0)
    return n


_CRC_TABLE = [_crc_table_entry(n) for n in range(256)]


def crc32c(data):
    """CRC32C (Castagnoli): reflected 0x82f63b78, init and final xor ~0."""
    crc = 0xffffffff
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xff] ^ (crc >> 8)
    return crc ^ 0xffffffff


assert crc32c(b"123456789") == 0xe3069283


def stream_span(snap):
    """(offset, length) of the state stream in a snapshot's bytes, from its
    container header (src/cpr/snapshot.h)."""
    assert snap[:8] == b"CPRVMSNP"
    return struct.unpack_from("<QQ", snap, 16)
