"""The guest's own checks: verify, echo, mem-path contents (issue 2)."""
import os
import random
import socket
import time

import pytest

from conftest import assert_hb_continuous, connect_unix, heartbeats


@pytest.mark.parametrize("cpus", [1, 2])
def test_verify_1g(vms, cpus):
    vm = vms(cmdline="heartbeat verify=1000", memory="1G", cpus=cpus)
    # Two full passes on every CPU, and never a BAD page.
    for cpu in range(cpus):
        vm.serial.wait(r"^OK 2 cpu=%d$" % cpu, timeout=60)
    assert not vm.serial.matching(r"^(BAD|PANIC|ERR)"), vm.serial.lines[-5:]
    assert_hb_continuous(heartbeats(vm.serial))
    assert vm.quit() == 0


def echo_roundtrip(sock, nbytes, seed):
    rnd = random.Random(seed)
    data = bytes(rnd.getrandbits(8) for _ in range(nbytes))
    got = bytearray()
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 600
    while len(got) < nbytes:
        assert time.monotonic() < deadline, "echo stalled at %d/%d bytes" % (len(got), nbytes)
        if sent < nbytes:
            try:
                sent += sock.send(data[sent:sent + 4096])
            except BlockingIOError:
                pass
        try:
            chunk = sock.recv(65536)
            assert chunk, "serial socket closed after %d bytes" % len(got)
            got += chunk
        except BlockingIOError:
            time.sleep(0.0005)
    sock.setblocking(True)
    assert bytes(got) == data, "echoed bytes differ (first at %d)" % next(
        i for i in range(nbytes) if got[i] != data[i])


ECHO_BYTES = int(os.environ.get("CPRVM_ECHO_BYTES", 1 << 20))


def test_echo_unix_reconnect(vms):
    vm = vms(cmdline="echo", serial="unix", connect=False)
    s = connect_unix(vm.serial_path)
    echo_roundtrip(s, ECHO_BYTES, 1)
    s.close()
    # The VM survives the client leaving; a new client gets exact echo too.
    s2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s2.connect(vm.serial_path)
    echo_roundtrip(s2, ECHO_BYTES, 2)
    s2.close()
    assert vm.quit() == 0
