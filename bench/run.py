#!/usr/bin/env python3
"""cprvm benchmarks: one JSON object per line, medians of repeated runs,
QEMU 7.2 measured in the same run on the same guest image.

boot: process start -> first heartbeat line on the serial console (a unix
socket for both), with 1 GiB of RAM. cprvm enters the PVH entry point
directly; QEMU goes through SeaBIOS and its PVH option ROM.

snapshot: save a running guest (256 MiB touched) to a file and restore it,
at 1G/4G/16G of RAM, full (RAM in the file) and bypass (RAM stays in a
/dev/shm file, only device state is saved). See bench/README.md.

Usage: run.py [boot] [snapshot]   (default: both)"""
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, os.environ.get("CPRVM_BUILD", "build"))
CPRVM = os.path.join(BUILD, "cprvm")
GUEST = os.path.join(BUILD, "guest", "guest.elf")
QEMU = shutil.which("qemu-system-x86_64")
RUNS = int(os.environ.get("CPRVM_BENCH_RUNS", "5"))


def time_to_first_heartbeat(argv, sock_path, timeout=60.0, connected=None):
    """Milliseconds from spawning argv to the first "HB " on its serial
    socket; connected(t0, process) runs once the serial socket is connected
    (QEMU -incoming defer uses it to start the incoming migration)."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        while True:
            try:
                s.connect(sock_path)
                break
            except OSError:
                if time.monotonic() - t0 > timeout or p.poll() is not None:
                    raise RuntimeError("no serial socket from %s" % argv[0])
                time.sleep(0.0005)
        if connected:
            connected(t0, p)
        buf = b""
        s.settimeout(timeout)
        while b"HB " not in buf:
            d = s.recv(4096)
            if not d:
                raise RuntimeError("serial closed before a heartbeat")
            buf += d
        return (time.monotonic() - t0) * 1000.0
    finally:
        s.close()
        p.kill()
        p.wait()


def bench_boot():
    tmp = tempfile.mkdtemp(prefix="cprvm-bench-")
    try:
        sock = os.path.join(tmp, "s.sock")
        ours = []
        for _ in range(RUNS):
            ours.append(time_to_first_heartbeat(
                [CPRVM, "--kernel", GUEST, "--memory", "1G", "--cmdline", "heartbeat",
                 "--serial", "unix:" + sock], sock))
        res = {"bench": "boot", "mem": "1G", "runs": RUNS,
               "first_heartbeat_ms": round(statistics.median(ours), 2)}
        if QEMU:
            theirs = []
            for _ in range(max(1, RUNS // 2)):
                if os.path.exists(sock):
                    os.unlink(sock)
                theirs.append(time_to_first_heartbeat(
                    [QEMU, "-enable-kvm", "-cpu", "qemu64", "-nodefaults", "-display", "none",
                     "-m", "1024", "-kernel", GUEST, "-append", "heartbeat",
                     "-serial", "unix:%s,server=on,wait=off" % sock], sock))
            q = statistics.median(theirs)
            res["qemu_first_heartbeat_ms"] = round(q, 2)
            res["speedup_vs_qemu"] = round(q / res["first_heartbeat_ms"], 1)
        print(json.dumps(res), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- snapshot ---------------------------------------------------------------

SNAP_CMDLINE = "heartbeat=10000 verify=256"
SHM = "/dev/shm"
GIB = 1 << 30


class Qmp:
    """Just enough QMP for the benchmark (works with cprvm and QEMU): skips
    events, raises on errors."""

    def __init__(self, path, timeout=30.0):
        end = time.monotonic() + timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                self.sock.connect(path)
                break
            except OSError:
                if time.monotonic() > end:
                    raise RuntimeError("no QMP socket at %s" % path)
                time.sleep(0.0005)
        self.sock.settimeout(600.0)
        self.f = self.sock.makefile("rb")
        self.events = []
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.f.readline()
        if not line:
            raise RuntimeError("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, **args):
        req = {"execute": name}
        if args:
            req["arguments"] = args
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        while True:
            msg = self._read()
            if "event" in msg:
                self.events.append(msg)
                continue
            if "error" in msg:
                raise RuntimeError("QMP %s: %s" % (name, msg["error"]))
            return msg["return"]

    def wait_migration(self):
        """Waits for the MIGRATION event (capability "events") that ends an
        incoming migration."""
        while True:
            msg = self.events.pop(0) if self.events else self._read()
            if msg.get("event") == "MIGRATION":
                st = msg["data"]["status"]
                if st == "completed":
                    return
                if st in ("failed", "cancelled"):
                    raise RuntimeError("QEMU incoming migration %s" % st)

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass


def wait_serial(sock_path, regex, proc, timeout):
    """Connects to a serial socket and reads until a line matches regex; returns
    the connected socket (kept open so that the console stays attached)."""
    end = time.monotonic() + timeout
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        while True:
            try:
                s.connect(sock_path)
                break
            except OSError:
                if time.monotonic() > end or proc.poll() is not None:
                    raise RuntimeError("no serial socket at %s" % sock_path)
                time.sleep(0.001)
        rx = re.compile(regex.encode(), re.M)
        buf = b""
        while not rx.search(buf):
            s.settimeout(max(0.01, end - time.monotonic()))
            d = s.recv(65536)
            if not d:
                raise RuntimeError("serial closed before %r" % regex)
            buf += d
            if re.search(rb"^(BAD|FAIL|PANIC|ERR)", buf, re.M):
                raise RuntimeError("guest reported an error: %r" % buf[-300:])
        return s
    except BaseException:
        s.close()
        raise


def unlink(*paths):
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


class Procs:
    """Processes started by the benchmark: all killed on the way out, whatever
    happened."""

    def __init__(self):
        self.procs = []

    def start(self, argv):
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def stop(self, p, qmp=None):
        """Asks for a clean exit over QMP, then kills."""
        if qmp is not None:
            with contextlib.suppress(Exception):
                qmp.cmd("quit")
            qmp.close()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        with contextlib.suppress(ValueError):
            self.procs.remove(p)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()
        self.procs = []


def file_sizes(path):
    st = os.stat(path)
    return st.st_size, st.st_blocks * 512


def check_space(size, mode, bench="snapshot"):
    """The guest touches ~256 MiB wherever its RAM is; a full snapshot holds
    about that much (sparse), QEMU's stream a little more. Refuse to start
    when /tmp or /dev/shm is too full rather than fill the machine's RAM."""
    need = 2 * GIB
    for d in (tempfile.gettempdir(), SHM):
        free = shutil.disk_usage(d).free
        if free < need:
            raise RuntimeError("bench %s %s %s: only %d MiB free in %s"
                               % (bench, size, mode, free >> 20, d))


def cprvm_once(tmp, size, mode):
    """One boot -> save -> restore cycle of cprvm."""
    sock, qsock = os.path.join(tmp, "s.sock"), os.path.join(tmp, "q.sock")
    snap = os.path.join(tmp, "cprvm.snap")
    ram = os.path.join(SHM, "cprvm-bench-%d.ram" % os.getpid()) if mode == "bypass" else None
    mem = ["--mem-path", ram] if ram else []
    unlink(sock, qsock, snap, *([ram] if ram else []))
    try:
        with Procs() as procs:
            p = procs.start([CPRVM, "--kernel", GUEST, "--memory", size, "--cpus", "1",
                             "--cmdline", SNAP_CMDLINE, "--serial", "unix:" + sock,
                             "--qmp", qsock] + mem)
            con = wait_serial(sock, r"^OK 1 cpu=0\r?$", p, 120)
            q = Qmp(qsock)
            q.cmd("migrate-set-capabilities",
                  capabilities=[{"capability": "x-ignore-shared", "state": mode == "bypass"}])
            t0 = time.monotonic()
            q.cmd("migrate", uri="file:" + snap)
            wall = (time.monotonic() - t0) * 1000.0
            m = q.cmd("query-migrate")
            if m.get("status") != "completed":
                raise RuntimeError("cprvm migrate: %r" % m)
            procs.stop(p, q)
            con.close()
            unlink(sock, qsock)
            apparent, alloc = file_sizes(snap)
            restore = time_to_first_heartbeat(
                [CPRVM, "--kernel", GUEST, "--memory", size, "--cpus", "1",
                 "--serial", "unix:" + sock, "--incoming", "file:" + snap] + mem, sock, 120)
        return {"save_ms": m["x-downtime-us"] / 1000.0, "save_total_ms": m["x-total-time-us"] / 1000.0,
                "save_wall_ms": wall, "file_bytes": apparent, "file_alloc_bytes": alloc,
                "restore_ms": restore}
    finally:
        unlink(sock, qsock, snap, *([ram] if ram else []))


def qemu_argv(size, mode, sock, ram, extra):
    argv = [QEMU, "-enable-kvm", "-cpu", "qemu64", "-nodefaults", "-display", "none",
            "-m", size, "-kernel", GUEST, "-append", SNAP_CMDLINE,
            "-serial", "unix:%s,server=on,wait=off" % sock]
    if mode == "bypass":
        argv += ["-object", "memory-backend-file,id=mem,size=%s,mem-path=%s,share=on"
                 % (size, ram), "-machine", "memory-backend=mem"]
    return argv + extra


def qemu_once(tmp, size, mode):
    """One boot -> save -> restore cycle of QEMU, done the way virsh save and
    restore do it: stop the guest, migrate to a pipe at unlimited bandwidth
    (the guest is stopped for all of total-time, as cprvm's is for its
    save); restore with -incoming defer, migrate-incoming, and 'cont' when
    the MIGRATION event says completed (a guest saved stopped is restored
    stopped: QEMU does not autostart it)."""
    sock, qsock = os.path.join(tmp, "qs.sock"), os.path.join(tmp, "qq.sock")
    snap = os.path.join(tmp, "qemu.snap")
    ram = os.path.join(SHM, "qemu-bench-%d.ram" % os.getpid()) if mode == "bypass" else None
    caps = [{"capability": "x-ignore-shared", "state": True}] if mode == "bypass" else []
    unlink(sock, qsock, snap, *([ram] if ram else []))
    try:
        with Procs() as procs:
            p = procs.start(qemu_argv(size, mode, sock, ram,
                                      ["-qmp", "unix:%s,server=on,wait=off" % qsock]))
            con = wait_serial(sock, r"^OK 1 cpu=0\r?$", p, 120)
            q = Qmp(qsock)
            if caps:
                q.cmd("migrate-set-capabilities", capabilities=caps)
            q.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
            t0 = time.monotonic()
            q.cmd("stop")
            q.cmd("migrate", uri="exec:cat > " + snap)
            while True:
                m = q.cmd("query-migrate")
                if m.get("status") == "completed":
                    break
                if m.get("status") in ("failed", "cancelled"):
                    raise RuntimeError("QEMU migrate: %r" % m)
                time.sleep(0.001)
            wall = (time.monotonic() - t0) * 1000.0
            procs.stop(p, q)
            con.close()
            unlink(sock, qsock)
            apparent, alloc = file_sizes(snap)

            def incoming(t0, proc):
                qi = Qmp(qsock)
                qi.cmd("migrate-set-capabilities",
                       capabilities=caps + [{"capability": "events", "state": True}])
                qi.cmd("migrate-incoming", uri="exec:cat " + snap)
                qi.wait_migration()
                qi.cmd("cont")
                qi.close()

            argv = qemu_argv(size, mode, sock, ram,
                             ["-qmp", "unix:%s,server=on,wait=off" % qsock, "-incoming", "defer"])
            restore = time_to_first_heartbeat(argv, sock, 300, incoming)
        # QEMU's "downtime" is left out: with the guest stopped before the
        # migration it covers only the last pass, not the time stopped.
        return {"save_ms": float(m["total-time"]), "save_wall_ms": wall,
                "file_bytes": apparent, "restore_ms": restore}
    finally:
        unlink(sock, qsock, snap, *([ram] if ram else []))


def median_of(runs, key):
    return round(statistics.median(r[key] for r in runs), 2)


def bench_snapshot():
    runs = int(os.environ.get("CPRVM_BENCH_RUNS", "3"))
    sizes = os.environ.get("CPRVM_BENCH_SIZES", "1G,4G,16G").replace(",", " ").split()
    tmp = tempfile.mkdtemp(prefix="cprvm-bench-")
    try:
        for size in sizes:
            for mode in ("full", "bypass"):
                check_space(size, mode)
                ours = [cprvm_once(tmp, size, mode) for _ in range(runs)]
                res = {"bench": "snapshot", "mode": mode, "mem": size, "cpus": 1,
                       "runs": runs}
                for k in ("save_ms", "save_total_ms", "save_wall_ms", "restore_ms",
                          "file_bytes", "file_alloc_bytes"):
                    res[k] = median_of(ours, k)
                for k in ("file_bytes", "file_alloc_bytes"):
                    res[k] = int(res[k])
                if QEMU:
                    # ~5 s per cycle even at 16G here: as many runs as cprvm.
                    theirs = [qemu_once(tmp, size, mode) for _ in range(runs)]
                    res["qemu_runs"] = runs
                    for k in ("save_ms", "save_wall_ms", "restore_ms", "file_bytes"):
                        res["qemu_" + k] = median_of(theirs, k)
                    res["qemu_file_bytes"] = int(res["qemu_file_bytes"])
                    res["save_speedup"] = round(res["qemu_save_ms"] / res["save_ms"], 1)
                    res["restore_speedup"] = round(res["qemu_restore_ms"] / res["restore_ms"], 1)
                print(json.dumps(res), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    for name in sys.argv[1:] or ["boot", "snapshot"]:
        globals()["bench_" + name]()
