"""QMP over the real binary: negotiation, commands, events, clients (issue 2)."""
import os
import stat
import subprocess

from conftest import CPRCTL, Qmp


def test_greeting_and_negotiation(vms):
    vm = vms()
    q = vm.qmp(negotiate=False)
    assert "QMP" in q.greeting and q.greeting["QMP"]["capabilities"] == []
    assert "version" in q.greeting["QMP"]
    r = q.cmd("query-status")
    assert r["error"]["class"] == "CommandNotFound"
    assert q.cmd("qmp_capabilities") == {"return": {}}
    assert q.ok("query-status")["status"] == "running"
    v = q.ok("query-version")
    assert set(v["qemu"]) == {"major", "minor", "micro"}
    assert stat.S_IMODE(os.stat(vm.qmp_path).st_mode) == 0o600


def test_id_echoed(vms):
    vm = vms()
    q = vm.qmp()
    q.send_raw(b'{"execute": "query-status", "id": "abc-1"}\n')
    r = q.reply()
    assert r["id"] == "abc-1" and r["return"]["status"] == "running"


def test_clients_one_after_another_and_together(vms):
    vm = vms()
    for _ in range(5):
        q = Qmp(vm.qmp_path)
        assert q.ok("query-status")["running"] is True
        q.close()
    a, b = vm.qmp(), vm.qmp()
    a.ok("stop")
    assert b.wait_event("STOP")
    assert b.ok("query-status")["status"] == "paused"
    b.ok("cont")
    assert a.wait_event("RESUME")


def test_quit_event_and_exit(vms):
    vm = vms()
    q = vm.qmp()
    watcher = vm.qmp()
    assert q.cmd("quit") == {"return": {}}
    ev = watcher.wait_event("SHUTDOWN")
    assert ev["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert "seconds" in ev["timestamp"] and "microseconds" in ev["timestamp"]
    assert vm.wait_exit() == 0
    assert not os.path.exists(vm.qmp_path)


def cprctl(vm, *args):
    p = subprocess.run([CPRCTL, "--qmp", vm.qmp_path] + list(args), capture_output=True,
                       timeout=20)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_cprctl(vms):
    vm = vms()
    vm.serial.wait(r"^HB \d+$")
    rc, out, _ = cprctl(vm, "status")
    assert rc == 0 and "running" in out
    rc, out, _ = cprctl(vm, "stop")
    assert rc == 0
    rc, out, _ = cprctl(vm, "status")
    assert rc == 0 and "paused" in out
    rc, out, _ = cprctl(vm, "cont")
    assert rc == 0
    rc, out, _ = cprctl(vm, "status")
    assert rc == 0 and "running" in out
    rc, _, err = cprctl(vm, "frobnicate")
    assert rc == 2 and err
    rc, out, _ = cprctl(vm, "quit")
    assert rc == 0
    assert vm.wait_exit() == 0
    rc, _, err = cprctl(vm, "status")
    assert rc == 3 and "cannot connect" in err
    p = subprocess.run([CPRCTL, "--help"], capture_output=True)
    assert p.returncode == 0 and b"status" in p.stdout
