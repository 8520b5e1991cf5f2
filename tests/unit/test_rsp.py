"""The remote-protocol client against the in-process fake stub: one behaviour per test."""

from __future__ import annotations

import os
import random
import socket
import time

import pytest
from hypothesis import given, settings, strategies as st

from gdbext.core.memory import MemoryFault
from gdbext.targets.rsp import (RemoteTarget, StopReply, TargetError, WriteForbidden,
                                check_read_only, checksum, decode_payload, frame,
                                parse_hostport)
from fake_gdbstub import FakeGdbStub, StubConfig, escape, rle_encode

BASE = 0x8000
IMAGE = bytes(random.Random(5).randrange(256) for _ in range(64 * 1024)) + bytes(16 * 1024)
WRITE_COMMANDS = (b"M", b"X", b"G", b"P", b"Z", b"z", b"c", b"s", b"v", b"C", b"S", b"R", b"k", b"Q", b"T")


def stub(**knobs) -> FakeGdbStub:
    knobs.setdefault("image", IMAGE)
    knobs.setdefault("base", BASE)
    return FakeGdbStub(StubConfig(**knobs))


def connect(s: FakeGdbStub, **kw) -> RemoteTarget:
    kw.setdefault("timeout", 2.0)
    return RemoteTarget("127.0.0.1", s.port, **kw)


def assert_never_wrote(s: FakeGdbStub) -> None:
    for p in s.received:
        assert not (p[:1] in WRITE_COMMANDS and p != b"QStartNoAckMode"), p


# -- framing -------------------------------------------------------------------------------
def test_frame_and_checksum():
    assert frame(b"g") == b"$g#67"
    assert frame(b"m8000,4") == b"$m8000,4#%02x" % checksum(b"m8000,4")
    assert checksum(b"") == 0


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=5000),
                 st.text(alphabet="0123456789abcdef", max_size=9000).map(str.encode),
                 st.integers(0, 9000).map(lambda n: b"\xff" * n),
                 st.integers(0, 9000).map(lambda n: b"\x7f" * n)))
def test_checksum_is_the_byte_sum_modulo_256(payload):
    # The Adler-32 shortcut must equal the protocol's definition on every length, at the
    # largest byte values (all 0xff, all 0x7f: the worst case of each slice width) and on hex.
    assert checksum(payload) == sum(payload) % 256
    assert checksum(bytearray(payload)) == sum(payload) % 256


def test_decode_rle_and_escapes():
    assert decode_payload(b"0* ") == b"0000"          # ' ' = 32 -> 3 more
    assert decode_payload(b"}\x03") == b"#"
    assert decode_payload(b"a}]b") == b"a}b"
    assert decode_payload(b"}\x0a*!") == b"*" * 5     # a repeat applies to the unescaped byte


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_rle_roundtrip(data):
    hexed = data.hex().encode()
    assert decode_payload(rle_encode(hexed)) == hexed
    assert decode_payload(escape(data)) == data


@pytest.mark.parametrize("text,expected", [
    ("localhost:1234", ("localhost", 1234)), (":1234", ("127.0.0.1", 1234)),
    ("1234", ("127.0.0.1", 1234)), ("[::1]:99", ("::1", 99)), ("10.0.0.2:65535", ("10.0.0.2", 65535)),
])
def test_parse_hostport(text, expected):
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["", "host", "host:", "host:0", "host:70000", "a:b:c"])
def test_parse_hostport_rejects(text):
    with pytest.raises(TargetError):
        parse_hostport(text)


def test_stop_reply_parse():
    r = StopReply.parse("T05thread:01;core:0;")
    assert r.signal == 5 and r.thread == "01" and r.info["core"] == "0"
    with pytest.raises(TargetError):
        StopReply.parse("OK")


# -- the write guard -----------------------------------------------------------------------
@pytest.mark.parametrize("payload", [b"M8000,4:00000000", b"X8000,1:\x00", b"G00", b"P0=00",
                                     b"Z0,8000,4", b"c", b"s", b"vCont;c", b"k", b"R00",
                                     b"QNonStop:1", b"m8000,4;M0,1:00", b"qRcmd,7265736574"])
def test_write_guard_refuses(payload):
    with pytest.raises(WriteForbidden):
        check_read_only(payload)


def test_write_guard_allows_what_we_use():
    for p in (b"?", b"g", b"D", b"m8000,800", b"qSupported:xmlRegisters=arm", b"Hg01", b"Hgp1.2",
              b"qfThreadInfo", b"qsThreadInfo", b"QStartNoAckMode", b"qXfer:features:read:target.xml:0,7f0"):
        check_read_only(p)


def test_write_guard_is_on_the_wire_path():
    with stub() as s, connect(s) as t:
        with pytest.raises(WriteForbidden):
            t._send_packet(b"M8000,1:00")
        with pytest.raises(WriteForbidden):
            t._command(b"X8000,1:\x00")
        assert t.read(BASE, 4) == IMAGE[:4]
    assert_never_wrote(s)


# -- reads ---------------------------------------------------------------------------------
def test_read_small_and_exact():
    with stub() as s, connect(s) as t:
        assert t.read(BASE, 1) == IMAGE[:1]
        assert t.read(BASE + 3, 13) == IMAGE[3:16]
        assert t.read(BASE, 0) == b""
    assert_never_wrote(s)


def test_read_split_at_packet_size():
    with stub(packet_size=0x400) as s, connect(s, pipeline=1) as t:
        assert t.chunk_size == 0x200
        assert t.read(BASE, 10000) == IMAGE[:10000]
        sizes = [int(p.split(b",")[1], 16) for p in s.received if p.startswith(b"m")]
        assert max(sizes) == 0x200 and len(sizes) == -(-10000 // 0x200)


@pytest.mark.parametrize("pipeline", [1, 16])
def test_e22_halves_and_remembers(pipeline):
    with stub(max_read=700) as s, connect(s, pipeline=pipeline) as t:
        assert t.chunk_size == 2048
        assert t.read(BASE, 5000) == IMAGE[:5000]
        assert t.chunk_size == 512
        before = len(s.received)
        assert t.read(BASE, 1024) == IMAGE[:1024]
        assert len(s.received) - before == 2          # no E22 probing the second time
        assert t.read(BASE, 60000) == IMAGE[:60000]


def test_e22_from_an_odd_request_lands_on_the_cap():
    with stub(max_read=2048) as s, connect(s, pipeline=1) as t:
        t.chunk_size = 8669
        assert t.read(BASE, 8669) == IMAGE[:8669]
        assert t.chunk_size == 2048


def test_no_packet_size_uses_default():
    with stub(packet_size=None, max_read=2048) as s, connect(s) as t:
        assert t.read(BASE, 9000) == IMAGE[:9000]


def test_pipelined_bulk_read():
    with stub() as s, connect(s, pipeline=8) as t:
        assert t.read(BASE, len(IMAGE)) == IMAGE
        assert t.read(BASE + 5, 30001) == IMAGE[5:30006]
    assert_never_wrote(s)


@pytest.mark.parametrize("pipeline", [1, 16])
def test_short_replies_are_continued(pipeline):
    with stub(short_reads=100) as s, connect(s, pipeline=pipeline) as t:
        assert t.read(BASE, 1000) == IMAGE[:1000]
        assert t.read(BASE + 1, 30000) == IMAGE[1:30001]


def test_pipelined_reads_keep_a_window_in_flight():
    with stub() as s, connect(s, pipeline=8) as t:
        assert t.read(BASE, 64 * 1024) == IMAGE[:64 * 1024]
        reads = [p for p in s.received if p.startswith(b"m")]
        assert len(reads) == 32 and len(set(reads)) == 32     # each chunk asked for once


def test_rle_replies():
    zeros = BASE + len(IMAGE) - 16 * 1024                   # the zero tail compresses well
    with stub(rle=True) as s, connect(s) as t:
        assert t.read(zeros, 8192) == bytes(8192)
        assert t.read(BASE, 4096) == IMAGE[:4096]
        assert t.registers()["pc"] == 15 * 0x11 + 0x1000


# -- faults --------------------------------------------------------------------------------
def test_unmapped_read_faults_at_exact_address():
    hole = (BASE + 5000, BASE + 6000)
    with stub(unmapped=[hole]) as s, connect(s) as t:
        with pytest.raises(MemoryFault) as e:
            t.read(BASE, 20000)
        assert e.value.address == hole[0]
        assert e.value.size == BASE + 20000 - hole[0]
        with pytest.raises(MemoryFault) as e:
            t.read(hole[0] + 10, 4)
        assert e.value.address == hole[0] + 10
        assert t.read(hole[1], 100) == IMAGE[hole[1] - BASE:hole[1] - BASE + 100]
        assert t.read(hole[0] - 8, 8) == IMAGE[hole[0] - BASE - 8:hole[0] - BASE]


@pytest.mark.parametrize("pipeline", [1, 16])
@pytest.mark.parametrize("offset", [0, 1, 2047, 2048, 2049, 4095, 12345])
def test_fault_bisection_everywhere(offset, pipeline):
    start = BASE + 100 + offset
    with stub(unmapped=[(start, start + 3)]) as s, connect(s, pipeline=pipeline) as t:
        with pytest.raises(MemoryFault) as e:
            t.read(BASE, 20000)
        assert e.value.address == start


def test_read_past_end_of_memory():
    end = BASE + len(IMAGE)
    with stub() as s, connect(s) as t:
        with pytest.raises(MemoryFault) as e:
            t.read(end - 10, 100)
        assert e.value.address == end
        with pytest.raises(MemoryFault):
            t.read(0x10, 4)
        with pytest.raises(MemoryFault):
            t.read(-4, 4)


def test_fault_is_one_line():
    with stub(unmapped=[(BASE, BASE + 16)]) as s, connect(s) as t:
        with pytest.raises(MemoryFault) as e:
            t.read(BASE, 4)
        assert "\n" not in str(e.value) and "0x8000" in str(e.value)


# -- unreliable stubs ----------------------------------------------------------------------
@pytest.mark.parametrize("every", [2, 3, 7])
@pytest.mark.parametrize("pipeline", [1, 16])
def test_corrupt_checksums_are_retransmitted(every, pipeline):
    with stub(corrupt_every=every) as s, connect(s, pipeline=pipeline) as t:
        assert t.read(BASE, 40000) == IMAGE[:40000]
        assert t.registers()["r1"] == 0x11 + 0x1000
        assert t.retransmissions > 0


@pytest.mark.parametrize("every", [2, 3, 5])
@pytest.mark.parametrize("pipeline", [1, 16])
def test_nacks_are_retransmitted(every, pipeline):
    with stub(nack_every=every) as s, connect(s, pipeline=pipeline) as t:
        assert t.read(BASE, 40000) == IMAGE[:40000]
        assert t.retransmissions > 0
    assert_never_wrote(s)


def test_every_reply_corrupt_gives_up():
    with stub(corrupt_every=1) as s:
        with pytest.raises(TargetError, match="bad checksum"):
            connect(s)


def test_every_packet_nacked_gives_up():
    with stub(nack_every=1) as s:
        with pytest.raises(TargetError, match="rejected"):
            connect(s)


def test_line_noise_is_skipped():
    with stub(noise=True) as s, connect(s) as t:
        assert t.read(BASE, 9000) == IMAGE[:9000]


@pytest.mark.parametrize("pipeline", [1, 16])
def test_garbage_reply_is_one_line_error(pipeline):
    with stub(garbage_every=3) as s, connect(s, pipeline=pipeline) as t:
        with pytest.raises(TargetError) as e:
            t.read(BASE, 40000)
        assert "garbage" in str(e.value) and "\n" not in str(e.value)


def test_silent_stub_times_out():
    with stub(silent=True) as s:
        t0 = time.monotonic()
        with pytest.raises(TargetError, match="no reply"):
            connect(s, timeout=0.6, halt_probe=0.2)
        assert time.monotonic() - t0 < 3


def test_stub_that_hangs_up():
    with stub() as s, connect(s) as t:
        s.config.close_after = len(s.received) + 1      # the handshake's packets, then one read
        t.read(BASE, 4)
        with pytest.raises(TargetError, match="closed|lost") as e:
            t.read(BASE, 4)
            t.read(BASE, 4)
        assert "\n" not in str(e.value)


def test_nothing_listening():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(TargetError, match="cannot connect"):
        RemoteTarget("127.0.0.1", port, timeout=1)


def test_connect_timeout():
    # A listener with a full backlog that never accepts: further SYNs are dropped, so
    # connect() hangs until our timeout.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
            fillers.append(f)
        time.sleep(0.1)
        t0 = time.monotonic()
        with pytest.raises(TargetError, match="cannot connect|no reply"):
            RemoteTarget("127.0.0.1", port, timeout=0.5, halt_probe=0.2)
        assert time.monotonic() - t0 < 3
    finally:
        for f in fillers:
            f.close()
        server.close()


# -- stubs other than QEMU's system emulator ----------------------------------------------------
MARGIN = 0.45        # what a deadline may be overshot by on this shared 2-core machine


def m_packets(s: FakeGdbStub):
    return [p for p in s.received if p.startswith(b"m")]


@pytest.mark.parametrize("pipeline", [1, 16])
def test_a_stub_that_waits_for_acks_is_read_one_request_at_a_time(pipeline):
    """qemu-user's stub eats a request sent before the previous reply's ack: found at connect,
    the connection keeps one request in flight and reads exactly what a pipelining stub gives."""
    seen = []
    with stub(stop_and_wait=True) as s, connect(s, pipeline=pipeline) as t:
        t0 = time.monotonic()
        assert t.read(BASE, 64 * 1024) == IMAGE[:64 * 1024]
        assert not t.pipelining
        got = t.read_many([(BASE + 0x100, 0x3000), (BASE + 0x8000, 0x1800)],
                          progress=lambda a, chunks: seen.append((a, len(chunks))))
        assert got == [IMAGE[0x100:0x3100], IMAGE[0x8000:0x9800]]
        assert t.registers()["r1"] == 0x11 + 0x1000
        assert time.monotonic() - t0 < 1.0
        # Only the probe's request was eaten; every read was asked for once.
        assert s.swallowed == len(frame(b"qC"))
        reads = m_packets(s)
        assert len(reads) == 32 + 6 + 3 and len(set(reads[:32])) == 32
    assert (pipeline > 1) == bool(seen)            # a stream of depth 1 still reports progress
    assert_never_wrote(s)


def test_a_stub_that_pipelines_keeps_pipelining():
    with stub() as s, connect(s, pipeline=16) as t:
        assert t.pipelining and t._depth() == 16
        sends = []
        real = t._send_raw
        t._send_raw = lambda data: (sends.append(data), real(data))[1]
        assert t.read(BASE, 64 * 1024) == IMAGE[:64 * 1024]
        assert sends[0].count(b"$m") == 16
        assert t.pipelining


@pytest.mark.parametrize("pipeline", [4, 16, 64])
@pytest.mark.parametrize("corrupt", [0, 3])
def test_a_stream_that_meets_a_stub_waiting_for_acks_falls_back(pipeline, corrupt, monkeypatch):
    """The safety net behind the probe: the first packet where an ack belongs stops the
    stream, the line is brought back in step, and what was eaten is read again serially."""
    monkeypatch.setattr(RemoteTarget, "_probe_pipelining", lambda self: None, raising=False)
    with stub(stop_and_wait=True, corrupt_every=corrupt) as s, connect(s, pipeline=pipeline) as t:
        t0 = time.monotonic()
        assert t.read(BASE, 64 * 1024) == IMAGE[:64 * 1024]
        assert not t.pipelining and s.swallowed > 0
        assert t.read_many([(BASE, 0x5000), (BASE + 0x9000, 0x800)]) == [IMAGE[:0x5000], IMAGE[0x9000:0x9800]]
        assert t.read(BASE + 3, 10) == IMAGE[3:13]
        assert time.monotonic() - t0 < 1.5
    assert_never_wrote(s)


@pytest.mark.parametrize("size,pipeline", [(4, 1), (64 * 1024, 1), (64 * 1024, 16)])
@pytest.mark.parametrize("fault", ["corrupt_m", "nack_m"])
def test_the_timeout_bounds_a_request_and_its_retransmissions(fault, size, pipeline):
    """A stub that answers 0.6 s late with a bad checksum (or a nack), every time: the client
    retransmits, but gives up when the request's 1 s are over, not 1 s after the last try."""
    with stub(m_delay=0.6, **{fault: True}) as s, connect(s, timeout=1.0, pipeline=pipeline) as t:
        t0 = time.monotonic()
        with pytest.raises(TargetError, match="within 1s") as e:
            t.read(BASE, size)
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0 + MARGIN, f"gave up after {elapsed:.2f}s"
        assert "\n" not in str(e.value)


def test_a_retransmission_that_arrives_in_time_is_taken():
    with stub(m_delay=0.2, corrupt_every=2) as s, connect(s, timeout=1.0, pipeline=1) as t:
        for i in range(3):
            assert t.read(BASE + 16 * i, 16) == IMAGE[16 * i:16 * i + 16]
        assert t.retransmissions >= 2


def test_tiny_replies_cost_few_round_trips():
    """A stub that answers at most 7 bytes per ``m`` behind a 2 ms link: once the cap is
    known, reads are cut to it and pipelined; serially they would cost ~2300 round trips."""
    with stub(short_reads=7, latency=0.002) as s, connect(s, pipeline=16) as t:
        rounds = s.rounds
        t0 = time.monotonic()
        data = t.read(BASE + 1, 16 * 1024)
        elapsed = time.monotonic() - t0
        assert data == IMAGE[1:16 * 1024 + 1]
        assert t.chunk_size == 7
        reads = m_packets(s)
        assert len(reads) == len(set(reads))         # no chunk asked for twice
        assert s.rounds - rounds < 60, s.rounds - rounds
        assert elapsed < 1.0, f"{elapsed:.2f}s"
        got = t.read_many([(BASE, 700), (BASE + 5000, 30)])
        assert got == [IMAGE[:700], IMAGE[5000:5030]]


def test_a_stub_held_by_another_debugger_is_called_busy():
    with stub() as s, connect(s) as first:
        t0 = time.monotonic()
        with pytest.raises(TargetError, match="likely busy with another debugger") as e:
            connect(s, timeout=1.0, halt_probe=0.2)
        assert time.monotonic() - t0 < 1.0 + MARGIN
        assert "\n" not in str(e.value) and "no reply" in str(e.value)
        assert first.read(BASE, 16) == IMAGE[:16]     # the first debugger is undisturbed


# -- modes and state -----------------------------------------------------------------------
def test_no_ack_mode_when_offered():
    with stub(no_ack=True) as s, connect(s) as t:
        assert not t._ack_mode
        assert t.read(BASE, 20000) == IMAGE[:20000]
        assert b"QStartNoAckMode" in s.received


def test_running_target_is_halted_and_resumed():
    with stub(running=True) as s:
        with connect(s, halt_probe=0.1) as t:
            assert t.was_running and s.interrupts == 1
            assert t.read(BASE, 16) == IMAGE[:16]
            assert t.stop_reason().signal == 5
        assert s.detached                           # it ran before, so it runs again
    assert_never_wrote(s)


def test_halted_target_stays_halted():
    with stub() as s:
        with connect(s) as t:
            assert not t.was_running
            assert t.stop_reason().signal == 5
        assert not s.detached and s.interrupts == 0


def test_qemu_style_unsolicited_stop_means_it_was_running():
    with stub(unsolicited_stop=True) as s:
        with connect(s) as t:
            assert t.was_running and t.last_stop.signal == 2
            assert t.stop_reason().signal == 5
        assert s.detached


def test_detach_override():
    with stub() as s:
        with connect(s, detach=True):
            pass
        assert s.detached


def test_read_after_close():
    with stub() as s:
        t = connect(s)
        t.close()
        t.close()
        with pytest.raises(TargetError):
            t.read(BASE, 4)


# -- registers and threads -----------------------------------------------------------------
def test_registers_from_target_xml_with_includes():
    regs = {"r0": 0x11223344, "sp": 0x7FF0, "pc": 0x8000, "cpsr": 0x600001D3}
    with stub(registers=regs) as s, connect(s) as t:
        got = t.registers()
        assert t.arch == "arm"
        assert {k: got[k] for k in regs} == regs
        assert list(got)[:3] == ["r0", "r1", "r2"] and "d0" not in got
        assert any(p.startswith(b"qXfer:features:read:arm-core.xml") for p in s.received)


def test_registers_fallback_arm_with_fpa_block():
    with stub(xml=False, fpa_block=True, registers={"pc": 0x8004, "cpsr": 0x1D3}) as s, connect(s) as t:
        got = t.registers()
        assert got["pc"] == 0x8004 and got["cpsr"] == 0x1D3 and t.arch == "arm"


def test_registers_fallback_arm_compact():
    with stub(xml=False, registers={"pc": 0x8004, "cpsr": 0x1D3}) as s, connect(s) as t:
        got = t.registers()
        assert got["pc"] == 0x8004 and got["cpsr"] == 0x1D3


@pytest.mark.parametrize("xml", [True, False])
def test_registers_aarch64(xml):
    regs = {"x0": 0x1122334455667788, "sp": 0x80000, "pc": 0x80004, "cpsr": 0x3C5}
    with stub(arch="aarch64", xml=xml, registers=regs) as s, connect(s) as t:
        got = t.registers()
        assert t.arch == "aarch64"
        assert {k: got[k] for k in regs} == regs and len(got) == 34


def test_threads_and_per_thread_registers():
    with stub(threads=4) as s, connect(s) as t:
        assert t.threads() == ["01", "02", "03", "04"]
        assert t.registers("03")["r0"] == 0x3000
        assert t.registers("01")["r0"] == 0x1000
        with pytest.raises(TargetError):
            t.registers("09")


def test_memory_read_speed_is_per_packet_not_per_byte():
    big = bytes(1 << 20)
    with stub(image=big) as s, connect(s) as t:
        t0 = time.perf_counter()
        assert t.read(BASE, len(big)) == big
        elapsed = time.perf_counter() - t0
        assert t.packets_sent < 600
    assert elapsed < 10          # generous: a sanity bound, the real figure is in bench/


# -- the client against a model ------------------------------------------------------------
@given(holes=st.lists(st.tuples(st.integers(0, 40000), st.integers(1, 3000)), max_size=3),
       reads=st.lists(st.tuples(st.integers(-100, 42000), st.integers(0, 12000)), min_size=1, max_size=4),
       pipeline=st.sampled_from([1, 3, 16]), corrupt=st.sampled_from([0, 4]),
       nack=st.sampled_from([0, 5]), max_read=st.sampled_from([2048, 600]),
       short=st.sampled_from([0, 0, 100, 7]), stop_and_wait=st.booleans())
@settings(max_examples=80, deadline=None)
def test_reads_match_a_model(holes, reads, pipeline, corrupt, nack, max_read, short, stop_and_wait):
    """Whatever the stub's flaws, a read returns the image's bytes or faults at the first hole."""
    image = IMAGE[:40000]
    unmapped = [(BASE + a, BASE + a + n) for a, n in holes]

    def readable(addr):
        return BASE <= addr < BASE + len(image) and not any(a <= addr < b for a, b in unmapped)

    with stub(image=image, unmapped=unmapped, corrupt_every=corrupt, nack_every=nack,
              max_read=max_read, short_reads=short, stop_and_wait=stop_and_wait) as s, \
            connect(s, pipeline=pipeline) as t:
        for off, size in reads:
            addr = BASE + off
            bad = next((a for a in range(addr, addr + size) if not readable(a)), None)
            if bad is None:
                assert t.read(addr, size) == image[off:off + size]
            else:
                with pytest.raises(MemoryFault) as e:
                    t.read(addr, size)
                assert e.value.address == bad and e.value.size == addr + size - bad
    assert_never_wrote(s)


# -- read_many: several ranges in one stream, with progress ---------------------------------------

@pytest.mark.parametrize("pipeline", [1, 16])
def test_read_many_returns_each_range_or_its_fault(pipeline):
    hole = (BASE + 0x3000, BASE + 0x3010)
    with stub(unmapped=[hole]) as s, connect(s, pipeline=pipeline) as t:
        got = t.read_many([(BASE, 0x2000), (BASE + 0x2800, 0x1000), (BASE + 0x5000, 10), (BASE, 0)])
        assert got[0] == IMAGE[:0x2000]
        assert isinstance(got[1], MemoryFault) and got[1].address == hole[0]
        assert got[2] == IMAGE[0x5000:0x500A]
        assert got[3] == b""
        assert t.read(BASE + 0x100, 16) == IMAGE[0x100:0x110]      # the connection is in step
    assert_never_wrote(s)


def test_read_many_is_one_stream_for_all_ranges():
    with stub() as s, connect(s, pipeline=16) as t:
        sends = []
        real = t._send_raw
        t._send_raw = lambda data: (sends.append(data), real(data))[1]
        t.read_many([(BASE, 0x1000), (BASE + 0x4000, 0x1000)])
        # The window's first send carries requests of both ranges.
        assert b"m%x," % BASE in sends[0] and b"m%x," % (BASE + 0x4000) in sends[0]


@pytest.mark.parametrize("every", [0, 3])
def test_progress_sees_each_range_grow_and_never_blocks_the_stream(every):
    seen = []

    def progress(address, chunks):
        data = b"".join(chunks)
        assert IMAGE[address - BASE:address - BASE + len(data)] == data
        seen.append((address, len(data)))

    with stub(corrupt_every=every) as s, connect(s, pipeline=8) as t:
        got = t.read_many([(BASE, 0x6000), (BASE + 0x7000, 0x800)], progress=progress)
        assert got == [IMAGE[:0x6000], IMAGE[0x7000:0x7800]]
    assert seen, "the client never waited? the stub answers after a thread switch"
    for address in {a for a, _ in seen}:
        lengths = [n for a, n in seen if a == address]
        assert lengths == sorted(lengths)


def test_block_cache_keeps_a_streamed_run_whole():
    from gdbext.core.memory import BlockCache

    with stub() as s, connect(s, pipeline=16) as t:
        cache = BlockCache(t, 4096)
        cache.prefetch_ranges([(BASE, 0x4000), (BASE + 0x6000, 0x2000)])
        reads = s.m_requests
        whole = cache.read(BASE, 0x4000)
        assert whole == IMAGE[:0x4000] and cache.read(BASE, 0x4000) is whole   # no copy
        assert cache.read(BASE + 0x6100, 8) == IMAGE[0x6100:0x6108]
        assert s.m_requests == reads                                            # all hits


def test_block_cache_prefetch_finds_the_readable_part_of_a_faulting_run():
    from gdbext.core.memory import BlockCache

    with stub(unmapped=[(BASE + 0x1800, BASE + 0x1900)]) as s, connect(s, pipeline=16) as t:
        cache = BlockCache(t, 4096)
        cache.prefetch_ranges([(BASE, 0x3000), (BASE + 0x4000, 0x1000)])
        assert cache.read(BASE + 0x4000, 0x1000) == IMAGE[0x4000:0x5000]
        assert cache.read_prefix(BASE, 0x3000) == IMAGE[:0x1800]
        with pytest.raises(MemoryFault) as fault:
            cache.read(BASE + 0x1000, 0x1000)
        assert fault.value.address == BASE + 0x1800


@pytest.mark.parametrize("block_size", [4096, 65536])
@pytest.mark.parametrize("corruption", ["none", "poison", "back link", "flag", "page flags", "page link"])
def test_a_check_over_the_remote_protocol_equals_one_over_plain_memory(corruption, block_size):
    """The whole remote path (read_many over the stub, the cache) finds exactly what a check of
    the same memory finds without a link."""
    from gdbext.core.check import check
    from gdbext.core.memory import BlockCache
    from gdbext.core.program import Program
    from heapbuilder import SyntheticKernel

    # The page entries checked are a range of their own, before the heap.
    k = SyntheticKernel(4, "<", heap_size=64 * 1024, num_pages=16384)
    ptrs = [k.kmalloc(16 + 40 * (i % 7)) for i in range(300)]
    for p in ptrs[::3]:
        k.kfree(p)
    segs = [s[0] for s in k.segments()]
    if corruption == "poison":
        free = [s for s in k.segments() if s[2] == 0 and s[1] > 64]
        k.write(free[len(free) // 2][0] + 40, b"\x00\x01")
    elif corruption == "back link":
        k.set_seg(segs[200], prev=segs[10])
    elif corruption == "flag":
        k.set_seg(segs[150], is_allocated=7)
    elif corruption == "page flags":
        k.set_page(k.heap_start // 4096 + 3, flags=1)
    elif corruption == "page link":
        k.set_page(2, nextpage=k.page_addr(5000 % k.num_pages))
    plain = check(k.program(block_size=4096))
    with stub(image=bytes(k.mem), base=k.image_base) as s, connect(s, pipeline=8) as t:
        remote = check(Program(k.elf_info(), BlockCache(t, block_size)))
    assert remote.findings == plain.findings
    assert list(remote.walk.headers()) == list(plain.walk.headers())
    assert (corruption == "none") == (remote.findings == [])


@pytest.mark.parametrize("corruption", ["none", "back link"])
@pytest.mark.parametrize("knobs", [{"stop_and_wait": True}, {"short_reads": 7},
                                   {"stop_and_wait": True, "short_reads": 100}],
                         ids=["waits-for-acks", "7-byte-replies", "both"])
def test_a_check_through_other_stubs_equals_one_over_plain_memory(knobs, corruption):
    """Same result through a stub that waits for acks (qemu-user) or caps its replies."""
    from gdbext.core.memory import BlockCache
    from gdbext.core.program import Program
    from gdbext.core.check import check
    from heapbuilder import SyntheticKernel

    k = SyntheticKernel(4, "<", heap_size=32 * 1024, num_pages=4096)
    ptrs = [k.kmalloc(16 + 40 * (i % 7)) for i in range(150)]
    for p in ptrs[::3]:
        k.kfree(p)
    if corruption == "back link":
        segs = [s[0] for s in k.segments()]
        k.set_seg(segs[100], prev=segs[10])
    plain = check(k.program(block_size=4096))
    with stub(image=bytes(k.mem), base=k.image_base, **knobs) as s, connect(s, pipeline=16) as t:
        t0 = time.monotonic()
        remote = check(Program(k.elf_info(), BlockCache(t, 4096)))
        elapsed = time.monotonic() - t0
        assert t.pipelining == (not knobs.get("stop_and_wait"))
    assert remote.findings == plain.findings
    assert list(remote.walk.headers()) == list(plain.walk.headers())
    assert (corruption == "none") == (remote.findings == [])
    assert elapsed < 5, f"{elapsed:.1f}s"
    assert_never_wrote(s)


def test_a_stream_whose_caller_works_in_the_waits_keeps_more_requests_at_the_stub():
    """With ``progress`` the caller works while the stub answers: the stream asks for
    FOLLOW_DEPTH times as many chunks at once, so the stub never waits for the caller."""
    from gdbext.targets.rsp import FOLLOW_DEPTH
    sent_first = []
    with stub() as s, connect(s, pipeline=4) as t:
        before = t.packets_sent
        t.read_many([(BASE, 0x10000)], progress=lambda a, c: sent_first.append(t.packets_sent - before))
        assert t.read(BASE, 0x10000) == IMAGE[:0x10000]
        plain = [p for p in s.received if p.startswith(b"m")]
    assert sent_first and sent_first[0] == min(32, 4 * FOLLOW_DEPTH) > 4   # 0x10000 is 32 chunks
    assert len(plain) == 64
