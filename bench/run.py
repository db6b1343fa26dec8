#!/usr/bin/env python3
"""cprvm benchmarks: one JSON object per line, medians of repeated runs,
QEMU 7.2 measured in the same run on the same guest image.

boot: process start -> first heartbeat line on the serial console (a unix
socket for both), with 1 GiB of RAM. cprvm enters the PVH entry point
directly; QEMU goes through SeaBIOS and its PVH option ROM."""
import json
import os
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


def time_to_first_heartbeat(argv, sock_path, timeout=60.0):
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                s.connect(sock_path)
                break
            except OSError:
                if time.monotonic() - t0 > timeout or p.poll() is not None:
                    raise RuntimeError("no serial socket from %s" % argv[0])
                time.sleep(0.0005)
        buf = b""
        s.settimeout(timeout)
        while b"HB " not in buf:
            d = s.recv(4096)
            if not d:
                raise RuntimeError("serial closed before a heartbeat")
            buf += d
        return (time.monotonic() - t0) * 1000.0
    finally:
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


if __name__ == "__main__":
    for name in sys.argv[1:] or ["boot"]:
        globals()["bench_" + name]()
