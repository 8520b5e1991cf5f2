"""The remote-protocol client against stubs other than a free QEMU system emulator.

- qemu-user 7.2 (``qemu-aarch64 -g PORT prog``): a stub that waits for the ack of every reply
  and eats a request sent before it (see the module docstring of gdbext/targets/rsp.py). The
  program's 1 MiB ``kheap_pattern`` must read back byte for byte, pipelined or not.
- a QEMU system stub already held by another debugger: accepted, then silent.

Every process started here is killed by a finalizer.
"""

from __future__ import annotations

import socket
import time

import pytest

from gdbext.targets.rsp import RemoteTarget, TargetError, frame
from qemu_user import PATTERN_SIZE, QemuUser, listening, build_program, missing, pattern, symbols

pytestmark = pytest.mark.qemu

TIMEOUT = 3.0


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    why = missing()
    if why:
        pytest.skip(why)
    return build_program(tmp_path_factory.mktemp("qemu-user"))


@pytest.fixture
def qemu_user(program, request):
    proc = QemuUser(program)
    request.addfinalizer(proc.kill)
    return proc


def recv_for(sock: socket.socket, seconds: float) -> bytes:
    sock.settimeout(seconds)
    out = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            out += data
    except socket.timeout:
        pass
    return out


# -- qemu-user ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pipeline", [16, 1])
def test_qemu_user_reads_the_whole_array(qemu_user, pipeline):
    """Before the probe, a pipelined read here ended in "no reply ... within 3s"."""
    address, entry = symbols(qemu_user.elf)
    want = pattern()
    with RemoteTarget("127.0.0.1", qemu_user.port, timeout=TIMEOUT, pipeline=pipeline) as t:
        t0 = time.monotonic()
        assert t.read(address, PATTERN_SIZE) == want
        elapsed = time.monotonic() - t0
        assert not t.pipelining                  # found at connect: one request in flight
        seen = []
        got = t.read_many([(address + 5, 0x3000), (address + 0x80000, 0x10000)],
                          progress=lambda a, chunks: seen.append(a))
        assert got == [want[5:0x3005], want[0x80000:0x90000]]
        assert t.read(address + PATTERN_SIZE - 3, 3) == want[-3:]
        assert t.arch == "aarch64"
        assert t.registers()["pc"] == entry       # stopped at the entry point, never resumed
        assert t.retransmissions == 0
    assert elapsed < TIMEOUT, f"1 MiB took {elapsed:.2f}s"
    assert qemu_user.proc.poll() is None


@pytest.mark.parametrize("pipeline", [16, 256])
def test_qemu_user_without_the_probe_falls_back_in_the_stream(qemu_user, pipeline, monkeypatch):
    """The safety net behind the probe, against the real stub: the first reply sent again
    stops the stream, and the read ends as it would have with one request in flight."""
    monkeypatch.setattr(RemoteTarget, "_probe_pipelining", lambda self: None, raising=False)
    address, entry = symbols(qemu_user.elf)
    want = pattern()
    with RemoteTarget("127.0.0.1", qemu_user.port, timeout=TIMEOUT, pipeline=pipeline) as t:
        t0 = time.monotonic()
        assert t.read(address, PATTERN_SIZE) == want
        assert not t.pipelining
        assert t.read_many([(address, 5000), (address + 9999, 70000)]) == [want[:5000], want[9999:79999]]
        assert t.registers()["pc"] == entry
        assert time.monotonic() - t0 < TIMEOUT


def test_qemu_user_stub_facts(qemu_user):
    """What the client's docstring says about qemu-user 7.2, checked on the wire."""
    with socket.create_connection(("127.0.0.1", qemu_user.port), timeout=TIMEOUT) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert recv_for(s, 0.2) == b""                       # no stop packet on connect
        s.sendall(frame(b"qSupported:xmlRegisters=aarch64"))
        reply = recv_for(s, 0.3)
        assert reply.startswith(b"+$PacketSize=1000;") and b"qXfer:auxv:read+" in reply
        assert b"QStartNoAckMode" not in reply
        s.sendall(b"+" + frame(b"QStartNoAckMode"))
        assert recv_for(s, 0.3) == b"+$#00"                  # not supported: acks stay on
        s.sendall(b"+" + frame(b"qC"))
        first = recv_for(s, 0.3)
        assert first.startswith(b"+$QC")
        # A request before the ack of the previous reply: that reply again, once per byte.
        request = frame(b"qC")
        s.sendall(request)
        again = recv_for(s, 0.5)
        assert again == first[1:] * len(request)
        s.sendall(b"+")
        assert recv_for(s, 0.3) == b""                       # the request is gone
        s.sendall(frame(b"?"))
        assert recv_for(s, 0.3).startswith(b"+$T05")         # and the line is in step again


def test_qemu_user_serves_only_its_first_debugger(qemu_user):
    address, _ = symbols(qemu_user.elf)
    with RemoteTarget("127.0.0.1", qemu_user.port, timeout=TIMEOUT) as t:
        assert t.read(address, 16) == pattern()[:16]
    # The program now runs on without a debugger; the port still accepts, and never answers.
    t0 = time.monotonic()
    with pytest.raises(TargetError, match="likely busy with another debugger"):
        RemoteTarget("127.0.0.1", qemu_user.port, timeout=1.0, halt_probe=0.2)
    assert time.monotonic() - t0 < 1.5
    assert qemu_user.proc.poll() is None


# -- a QEMU system stub held by another debugger -----------------------------------------------
def test_qemu_system_stub_held_by_another_debugger(start_vm):
    vm = start_vm("arm", "clean", halt=True)
    deadline = time.monotonic() + 10
    while not listening(vm.gdb_port):                      # QMP comes up before the gdbstub
        assert time.monotonic() < deadline, "QEMU did not open its gdbstub"
        time.sleep(0.02)
    with socket.create_connection(("127.0.0.1", vm.gdb_port), timeout=TIMEOUT) as other:
        other.sendall(frame(b"qSupported"))
        assert recv_for(other, 0.3).startswith(b"+$PacketSize=")
        other.sendall(b"+")
        # The kernel completes our TCP connect from QEMU's listen backlog; QEMU never reads it.
        t0 = time.monotonic()
        with pytest.raises(TargetError, match="likely busy with another debugger") as e:
            RemoteTarget("127.0.0.1", vm.gdb_port, timeout=1.0, halt_probe=0.2)
        assert time.monotonic() - t0 < 1.5
        assert "\n" not in str(e.value)
        other.sendall(frame(b"?"))                           # the other debugger is undisturbed
        assert recv_for(other, 0.3).startswith(b"+$T05")
    # Once it has gone, a new client is served at once.
    with RemoteTarget("127.0.0.1", vm.gdb_port, timeout=TIMEOUT) as t:
        assert t.pipelining and len(t.read(0x8000, 4096)) == 4096
