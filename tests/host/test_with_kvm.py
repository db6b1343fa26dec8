"""scripts/with-kvm on this host (issue 17): the L1 path, forced with
CPRVM_PLATFORM=nested, passes a command's status and output through, leaves
nothing behind when interrupted or killed, and retries once after a hang; and
cprvm without /dev/kvm says what is missing."""
import os
import signal
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WITH_KVM = os.path.join(ROOT, "scripts", "with-kvm")
BUILD = os.path.join(ROOT, os.environ.get("CPRVM_BUILD", "build"))
NESTED_LINE = "platform: nested KVM in QEMU TCG (emulated; timings are not comparable with native)"


def nested_env(**extra):
    env = dict(os.environ, CPRVM_PLATFORM="nested")
    env.pop("CPRVM_IN_L1", None)
    env.update(extra)
    return env


def qemus_of_this_tree():
    """PIDs of QEMU processes that share this tree (a with-kvm L1)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and \
                any(a.startswith(b"local,path=" + ROOT.encode() + b",") for a in argv):
            found.append(int(pid))
    return found


def run_dirs():
    d = os.path.join(ROOT, "build", "l1")
    return sorted(n for n in os.listdir(d) if n.startswith("run.")) if os.path.isdir(d) else []


def test_status_and_output_pass_through():
    before = run_dirs()
    p = subprocess.run([WITH_KVM, "sh", "-c",
                        "echo out-$((6*7)); echo err >&2; test -c /dev/kvm && test \"$FOO\" = bar"
                        " && test \"$PWD\" = %s && exit 7" % ROOT],
                       cwd=ROOT, env=nested_env(FOO="bar"), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 7, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == NESTED_LINE
    assert "out-42" in lines and "err" in lines
    assert run_dirs() == before, "the run's directory was left behind"


def test_platform_line():
    p = subprocess.run([WITH_KVM, "--platform"], env=nested_env(), capture_output=True,
                       text=True)
    assert p.returncode == 0 and p.stdout.strip() == NESTED_LINE
    p = subprocess.run([WITH_KVM, "true"], env=dict(os.environ, CPRVM_PLATFORM="bogus"),
                       capture_output=True, text=True)
    assert p.returncode != 0 and "CPRVM_PLATFORM must be" in p.stderr


def start_sleeper(tmp):
    out = open(os.path.join(tmp, "out"), "w+")
    p = subprocess.Popen([WITH_KVM, "sh", "-c", "echo started; exec sleep 600"], cwd=ROOT,
                         env=nested_env(), stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True)
    end = time.monotonic() + 240
    while time.monotonic() < end:
        out.seek(0)
        if "started" in out.read():
            break
        assert p.poll() is None, "with-kvm ended early"
        time.sleep(0.2)
    else:
        raise AssertionError("the command never started in the L1")
    assert qemus_of_this_tree(), "no L1 running"
    return p


def gone_within(pred, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


# SIGTERM then SIGINT at once: as from timeout(1) and a Ctrl-C on the group;
# the second must not cut the clean-up short.
@pytest.mark.parametrize("sigs", [[signal.SIGINT], [signal.SIGKILL],
                                  [signal.SIGTERM, signal.SIGINT]])
def test_interrupt_leaves_nothing(sigs):
    before = run_dirs()
    with tempfile.TemporaryDirectory() as tmp:
        p = start_sleeper(tmp)
        for s in sigs:
            os.kill(p.pid, s)
        rc = p.wait(timeout=60)
    # Two at once: Python runs the handler of the lower-numbered one first,
    # whichever was sent first; the status names the one that interrupted.
    assert rc in [128 + s if s != signal.SIGKILL else -s for s in sigs]
    assert gone_within(lambda: not qemus_of_this_tree(), 10), "the L1 outlived with-kvm"
    if signal.SIGKILL not in sigs:
        assert run_dirs() == before


def test_timeout_ends_the_run():
    p = subprocess.run([WITH_KVM, "sleep", "600"], cwd=ROOT,
                       env=nested_env(CPRVM_L1_TIMEOUT="45"), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 124, p.stderr
    assert not qemus_of_this_tree()


def test_hung_l1_is_killed_and_the_command_retried():
    # The first run stops the L1's pulse and waits: the watchdog takes that
    # for a hang, kills the L1 and runs the command once more, in a new one.
    marker = tempfile.mkdtemp(prefix="hang.", dir=os.path.join(ROOT, "build"))
    try:
        job = ("if [ ! -e %s/first ]; then touch %s/first; kill -STOP $(cat /run/with-kvm-pulse.pid);"
               " exec sleep 600; fi; echo second-run; exit 3" % (marker, marker))
        p = subprocess.run([WITH_KVM, "sh", "-c", job], cwd=ROOT,
                           env=nested_env(CPRVM_L1_WATCHDOG="20"), capture_output=True,
                           text=True, timeout=400)
    finally:
        subprocess.run(["rm", "-rf", marker])
    assert p.returncode == 3, p.stdout + p.stderr
    assert "no pulse on its console for 20 s" in p.stderr
    assert "running the command once more" in p.stderr
    assert p.stdout.splitlines().count("second-run") == 1
    assert not qemus_of_this_tree()


def test_cprvm_without_kvm_says_what_is_missing():
    # A private mount namespace with an empty /dev: no /dev/kvm, whatever
    # this host has.
    cprvm = os.path.join(BUILD, "cprvm")
    guest = os.path.join(BUILD, "guest", "guest.elf")
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        'mount -t tmpfs tmpfs /dev && exec "$0" --kernel "$1"', cprvm, guest],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1, p.stderr
    assert "/dev/kvm is missing" in err[0]
    for way in ("kvm_intel", "kvm_amd", "nested virtualisation", "scripts/with-kvm"):
        assert way in err[0]
