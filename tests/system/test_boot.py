"""Boot, serial backends, pause/resume (issue 2)."""
import os
import time

import pytest

from conftest import assert_hb_continuous, heartbeats


@pytest.mark.parametrize("backend", ["unix", "stdio", "file", "pty"])
def test_heartbeat_on_every_backend(vms, backend):
    vm = vms(cmdline="heartbeat", serial=backend)
    vm.serial.wait(r"^HB \d+$", timeout=10)
    i, _ = vm.serial.wait(r"^HB \d+$", timeout=5)
    # 50 more heartbeats arrive, in order.
    vm.serial.wait(r"^HB \d+$", timeout=5, start=i + 50)
    assert_hb_continuous(heartbeats(vm.serial))
    assert vm.quit() == 0


def test_serial_none_runs(vms):
    vm = vms(cmdline="heartbeat", serial="none")
    q = vm.qmp()
    time.sleep(0.3)
    assert q.ok("query-status")["status"] == "running"
    assert vm.proc.poll() is None
    assert vm.quit() == 0


def test_banner_reports_config(vms):
    # stdio: a unix client connecting after boot would miss the banner.
    vm = vms(cmdline="heartbeat", memory="1G", cpus=2, serial="stdio")
    _, m = vm.serial.wait(r"^GUEST ready cpus=(\d+) mem=(\d+)")
    assert int(m.group(1)) == 2
    # The guest sees (almost) all of its RAM: reserved low areas aside.
    assert 1000 <= int(m.group(2)) <= 1024


def test_stop_cont_sequence_continues(vms):
    vm = vms(cmdline="heartbeat=1000")
    q = vm.qmp()
    vm.serial.wait(r"^HB 20$", timeout=10)
    q.ok("stop")
    q.wait_event("STOP")
    assert q.ok("query-status") == {"running": False, "singlestep": False, "status": "paused"}
    time.sleep(0.2)  # let in-flight output drain
    n = len(heartbeats(vm.serial))
    time.sleep(0.5)
    assert len(heartbeats(vm.serial)) == n, "heartbeats continued while paused"
    q.ok("cont")
    q.wait_event("RESUME")
    assert q.ok("query-status")["status"] == "running"
    last = heartbeats(vm.serial)[-1][1]
    vm.serial.wait(r"^HB %d$" % (last + 30), timeout=10)
    hbs = heartbeats(vm.serial)
    assert_hb_continuous(hbs)
    # The pause shows as one long gap between consecutive heartbeats.
    gaps = [b[0] - a[0] for a, b in zip(hbs, hbs[1:])]
    assert max(gaps) >= 0.5
    # stop/cont twice more, and stop while stopped is harmless.
    for _ in range(2):
        q.ok("stop")
        q.ok("stop")
        q.ok("cont")
    last = heartbeats(vm.serial)[-1][1]
    vm.serial.wait(r"^HB %d$" % (last + 10), timeout=10)
    assert_hb_continuous(heartbeats(vm.serial))


def test_guest_shutdown_exits_zero(vms):
    vm = vms(cmdline="heartbeat shutdown=300")
    q = vm.qmp()
    vm.serial.wait(r"^SHUTDOWN$", timeout=10)
    ev = q.wait_event("SHUTDOWN", timeout=10)
    assert ev["data"] == {"guest": True, "reason": "guest-shutdown"}
    assert vm.wait_exit() == 0
    # Sockets it created are gone.
    assert not os.path.exists(vm.qmp_path)
    assert not os.path.exists(vm.serial_path)


def test_guest_crash_reported(vms):
    # The guest loads an empty IDT and raises an exception at CPL0: a triple
    # fault on hardware; this nested KVM reports it as an emulation failure.
    # Either way: an error naming the cause, with the vCPU's registers.
    vm = vms(cmdline="crash", serial="stdio")
    rc = vm.wait_exit()
    assert rc == 1
    err = vm.stderr()
    assert "guest crashed" in err, err
    assert "triple fault" in err or "KVM internal error" in err, err
    assert "rip=0x" in err and "cr0=0x" in err and "vCPU 0" in err, err


def test_sigterm_exits_cleanly(vms):
    vm = vms(cmdline="heartbeat")
    vm.serial.wait(r"^HB \d+$")
    vm.proc.terminate()
    assert vm.wait_exit() == 0
    assert not os.path.exists(vm.qmp_path)


def test_pit_channel2_calibrates_the_tsc(vms):
    # The classic calibration (Linux's quick_pit_calibrate, the guest's own
    # PIT fallback): gate PIT channel 2 through port 0x61 and poll its OUT
    # bit there. It must agree with the TSC rate cprvm advertises (CPUID
    # 0x40000010, from KVM): without port 0x61 it read 400-600x too low.
    vm = vms(cmdline="pitcal", serial="stdio")
    _, m = vm.serial.wait(r"^PITCAL khz=(\d+) ref_khz=(\d+) ref=(\S+)$", timeout=60)
    pit, ref = int(m.group(1)), int(m.group(2))
    assert m.group(3) == "cpuid-40000010"
    assert abs(pit - ref) <= ref * 0.02, "PIT says %d kHz, KVM %d kHz" % (pit, ref)
    assert vm.quit() == 0
