"""A read-only client of the GDB Remote Serial Protocol, written for QEMU's gdbstub.

Why our own client: the CLI must read a live kernel's heap with no debugger installed. It
needs a small part of the protocol: memory (``m``), registers (``g``), the stop reason (``?``),
threads (``qfThreadInfo``), the target description (``qXfer:features:read``) and detach (``D``).

What QEMU 7.2 does (measured, see tests/integration/test_targets_qemu.py):
- ``qSupported`` answers ``PacketSize=1000`` and no ``QStartNoAckMode``, so acks stay on.
- an ``m`` of more than 2048 bytes answers ``E22``; an unmapped address answers ``E14``.
- a debugger connecting to a running VM pauses it and QEMU sends an unsolicited ``T02`` stop
  packet at once; to a VM started with ``-S`` it sends nothing.
- ``D`` resumes the VM; closing the socket without ``D`` leaves it paused.
So "leave the target as it was" means: detach (resume) only if it was running when we came.

The system emulator's stub takes requests whenever they come and never waits for our acks, so a
bulk read keeps many ``m`` requests in flight (see :meth:`RemoteTarget._stream`). Other stubs
do not (measured on qemu-user 7.2, ``qemu-aarch64 -g PORT prog``; see
tests/integration/test_rsp_stubs.py):
- qemu-user waits for the ack of every reply by reading one byte from the socket; any byte but
  ``+`` makes it send the reply again and read the next one. A request that arrives before our
  ack is eaten that way, a byte at a time, one retransmission per byte. ``QStartNoAckMode`` is
  neither offered nor accepted (empty reply), so this cannot be switched off; one request in
  flight is the only safe way. (It reads up to 256 bytes at a time when idle, so a batch that
  lands in one read is answered, which makes the failure depend on segment boundaries.)
- its ``qSupported`` adds ``qXfer:auxv:read+`` to the system stub's features; the program waits
  at its entry point for the debugger and no stop packet comes on connect. After ``D``, or
  when the socket closes without it, the program runs on with no debugger: the stub answers
  nothing more. (So "leave it as it was" cannot keep it stopped; kheap never resumes it
  while connected.)
- it accepts one debugger in its life: a later connection is accepted by the kernel's listen
  backlog and then never answered.
:meth:`RemoteTarget._probe_pipelining` asks at connect which kind of stub this is (one request
sent before the previous reply is acked: a stub that answers it pipelines; one that sends the
previous reply again waits for acks), and a stream that meets a reply where the stub's ack of
a request belongs still falls back to one request in flight for the rest of the connection.

A QEMU system stub already held by another debugger behaves like qemu-user's later connections:
the TCP connect succeeds at once (the listen backlog) and nothing is ever answered, so the
handshake times out having received not one byte, and we say the stub is likely busy. QEMU
accepts the waiting connection when the other debugger leaves, and accepting a connection
pauses the VM: even one we have closed by then leaves the VM paused.

Timeouts: ``timeout`` bounds one request from its first send to its reply, retransmissions
after nacks or bad checksums and the continuations of short replies included. A stub whose
replies are shorter than asked twice in a row with the same length has shown its cap: reads
are cut to that size and pipelined, so a stub answering a few bytes per ``m`` costs few round
trips rather than one per reply.

Never a write: every packet goes through :func:`check_read_only`, an allowlist of read-only
commands, so no code path can send ``M``, ``X``, ``G``, ``P``, ``Z``, ``c`` or ``s``.

Run control, for ``kheap blame`` only: after :meth:`RemoteTarget.allow_run_control` a second,
fixed allowlist (:func:`check_run_control`) also lets through QEMU's ``qRcmd`` for exactly
``system_reset`` and ``info status``, ``Z``/``z`` of breakpoints and watchpoints (types 0-2; QEMU's
system emulator keeps them inside TCG and writes no memory for them), ``c``, ``s`` and
``vCont``. Memory and register writes stay impossible. What QEMU 7.2 does (measured, see
tests/integration/test_blame.py):
- ``qRcmd,<hex>`` answers the monitor's output as ``O<hex>`` packets, then ``OK``;
  ``system_reset`` leaves the VM stopped at the reset vector, with the ``-kernel`` image and
  ``-device loader`` blobs loaded again (RAM is not cleared). qemu-user answers it empty.
- ``Z2,addr,len`` takes any length; a write stops every CPU with ``T05thread:<id>;watch:<addr>;``
  (the watchpoint's start, not the byte written) *before* the store: the pc is the storing
  instruction and memory is unchanged. ``c`` from there stops at the same store again; the
  client removes the watchpoint, steps (``s``: the CPU that stopped) and inserts it again.
- a ``Z0`` breakpoint stops with a plain ``T05thread:<id>;`` (no ``swbreak``); any byte sent
  while the VM runs stops it (``\\x03`` is the polite one: ``T02``).
"""

from __future__ import annotations

import binascii
import re
import socket
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

from .errors import MemoryFault, TargetError
from .regs import RegisterLayout, fallback_layout, layout_from_target_xml

__all__ = ["RemoteTarget", "StopReply", "WriteForbidden", "parse_hostport", "checksum",
           "frame", "decode_payload", "check_read_only", "check_run_control", "TargetError", "MemoryFault"]

MAX_RETRIES = 5            # retransmissions of one packet (a '-' from the stub or a bad reply)
DEFAULT_TIMEOUT = 5.0      # seconds for connect and for every request, retransmissions included
HALT_PROBE = 0.5           # silence after our first packet that makes us send \x03
PIPELINE_DEPTH = 16        # ``m`` requests in flight during a bulk read (see bench/bench_rsp.py)
MAX_DEPTH = 256            # ... at most, when the stub's replies are small (see _depth)
FOLLOW_DEPTH = 8           # ... times as many when the caller works in the waits (see _depth)
STALL_FLUSH = 0.002        # a stream that waits this long sends the acks it owes at once
PROBE_WAIT = 0.25          # at least this long for the stub's answer to the pipelining probe
QUIET = 0.05               # at least this much silence means a confused stub has finished
RESYNC_MARKER = b"?"       # its reply (a stop packet) cannot be mistaken for an ``m`` reply


# ``progress(address, chunks_so_far)``: see :meth:`RemoteTarget.read_many`.
Progress = Callable[[int, List[bytes]], None]


class WriteForbidden(TargetError):
    """A packet outside the read-only allowlist: a bug in kheap, never sent."""


_READ_ONLY = re.compile(
    r"\?|g|D|qC|qAttached|qfThreadInfo|qsThreadInfo|QStartNoAckMode"
    r"|qSupported(:[^$#]*)?"
    r"|m[0-9a-f]+,[0-9a-f]+"
    r"|Hg(-1|0|p?[0-9a-f]+(\.-?[0-9a-f]+)?)"
    r"|qXfer:features:read:[A-Za-z0-9_.-]+:[0-9a-f]+,[0-9a-f]+")


_MONITOR_COMMANDS = ("system_reset", "info status")
_RUN_CONTROL = re.compile(
    r"qRcmd,(?:" + "|".join(c.encode().hex() for c in _MONITOR_COMMANDS) + r")"
    r"|[Zz][012],[0-9a-f]+,[0-9a-f]+"
    r"|c|s|vCont\?|vCont(;[cs](:[0-9a-fp.-]+)?)+")


def check_run_control(payload: bytes) -> None:
    """Raise :class:`WriteForbidden` unless ``payload`` is read-only or one of the run-control
    packets ``kheap blame`` sends (see the module docstring)."""
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if not _RUN_CONTROL.fullmatch(text):
        check_read_only(payload)


def check_read_only(payload: bytes) -> None:
    """Raise :class:`WriteForbidden` unless ``payload`` is a read-only command we know."""
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if not text or not _READ_ONLY.fullmatch(text):
        raise WriteForbidden(f"refusing to send {payload[:24]!r}: kheap never writes to a target")


def checksum(payload: bytes, _adler32=zlib.adler32) -> int:
    """The RSP checksum: the sum of the payload's bytes, modulo 256.

    Why not ``sum(payload)``: a 1 MiB heap arrives as 2 MiB of hex, and ``sum`` makes a Python
    int of every byte (about 6 ns each here, half the CPU time of a bulk read). zlib's Adler-32
    starts its first half at 1 and adds every byte modulo 65521, in C; over a slice whose
    bytes cannot add up to 65520 that half is the exact sum plus one. 512 ASCII bytes sum to
    at most 65024, 256 arbitrary ones to at most 65280. About 8x faster on a 4 KiB reply.
    """
    n = len(payload)
    if n <= 16:
        return sum(payload) & 0xFF
    step = 512 if payload.isascii() else 256
    total = -((n + step - 1) // step)             # the ``1 +`` of every slice's Adler-32
    for i in range(0, n, step):
        total += _adler32(payload[i:i + step]) & 0xFFFF
    return total & 0xFF


def frame(payload: bytes) -> bytes:
    """``$payload#cs`` (our commands never need escaping)."""
    return b"$%s#%02x" % (payload, checksum(payload))


def decode_payload(raw: bytes) -> bytes:
    """Undo the stub's binary escapes (``}x`` = ``x ^ 0x20``) and run-length encoding.

    ``X*n`` repeats the previous byte ``ord(n) - 29`` more times. Both are decoded in one pass,
    as GDB does, because a repeat count applies to the already unescaped byte.
    """
    if b"}" not in raw and b"*" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x7D and i + 1 < n:                      # '}'
            out.append(raw[i + 1] ^ 0x20)
            i += 2
        elif c == 0x2A and out and i + 1 < n:            # '*'
            count = raw[i + 1] - 29
            if count < 0:
                raise TargetError(f"bad run-length count {raw[i + 1]!r} in a reply")
            out += bytes([out[-1]]) * count
            i += 2
        else:
            out.append(c)
            i += 1
    return bytes(out)


def parse_hostport(text: str, default_host: str = "127.0.0.1") -> Tuple[str, int]:
    """``"HOST:PORT"``, ``"[v6]:PORT"``, ``":PORT"`` or ``"PORT"`` -> ``(host, port)``."""
    text = text.strip()
    m = re.fullmatch(r"(?:\[([^\]]+)\]|([^:\s]*)):(\d+)|(\d+)", text)
    if not m:
        raise TargetError(f"bad remote address {text!r}: expected HOST:PORT")
    host = m.group(1) or m.group(2) or default_host
    port = int(m.group(3) or m.group(4))
    if not 0 < port < 65536:
        raise TargetError(f"bad remote address {text!r}: port out of range")
    return host, port


@dataclass(frozen=True)
class StopReply:
    """A decoded stop reply (``T05thread:01;``): why the target is stopped, and which thread."""

    signal: int
    thread: Optional[str]
    raw: str
    info: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "StopReply":
        if not text or text[0] not in "TS" or len(text) < 3:
            raise TargetError(f"not a stop reply: {text[:40]!r}")
        try:
            signal = int(text[1:3], 16)
        except ValueError:
            raise TargetError(f"not a stop reply: {text[:40]!r}") from None
        info = {}
        for part in text[3:].split(";"):
            if ":" in part:
                k, v = part.split(":", 1)
                info[k] = v
        return cls(signal, info.get("thread"), text, info)


def _is_stop(text: bytes) -> bool:
    return text[:1] in (b"T", b"S") and len(text) >= 3 and all(
        c in b"0123456789abcdefABCDEF" for c in text[1:3])


def _is_console(text: bytes) -> bool:
    return text[:1] == b"O" and text != b"OK" and len(text) % 2 == 1


@dataclass
class _Packet:
    payload: bytes        # raw, still RLE/escape encoded
    ok: bool              # checksum matched


class _AckAwaited(Exception):
    """In a stream, a packet came where the stub's ack of our request belongs: the stub is
    sending an earlier reply again because it waits for our ack (qemu-user), and the request
    that should have been acked was eaten."""

    def __init__(self, deadline: float) -> None:
        super().__init__("stub waits for acks")
        self.deadline = deadline


class RemoteTarget:
    """One TCP connection to a gdbstub; ``read(address, size)`` is the core's reader protocol.

    ``detach``: ``None`` (default) sends ``D`` on close only if the target was running when we
    connected (so it runs again), ``True`` always, ``False`` never (the target stays stopped).

    ``timeout`` bounds every request, retransmissions included (see the module docstring).
    ``pipelining`` says whether the stub takes requests before the previous reply's ack: probed
    at connect, and cleared for good if a stream finds out otherwise; bulk reads keep up to
    ``pipeline`` requests in flight only when it is true.
    """

    def __init__(self, host: str, port: int, timeout: float = DEFAULT_TIMEOUT,
                 detach: Optional[bool] = None, halt_probe: float = HALT_PROBE,
                 pipeline: int = PIPELINE_DEPTH, max_chunk: Optional[int] = None,
                 byteorder: str = "little") -> None:
        self.host, self.port, self.timeout = host, int(port), float(timeout)
        self.detach_on_close = detach
        self.halt_probe = min(float(halt_probe), self.timeout)
        self.pipeline = max(1, int(pipeline))
        self.byteorder = byteorder
        self.packet_size: Optional[int] = None
        self.chunk_size = 2048             # bytes per ``m``; refined by PacketSize, E22, short replies
        self._max_chunk = max_chunk
        self.features: Dict[str, str] = {}
        self.was_running = False           # it was running when we connected (QEMU or \x03)
        self.last_stop: Optional[StopReply] = None
        self.packets_sent = 0
        self.retransmissions = 0
        self.pipelining = True             # the stub takes pipelined requests (probed at connect)
        self._ack_mode = True
        self._buf = bytearray()
        self._received = 0                 # bytes from the stub, ever (0: it never said a word)
        self._rtt = 0.0                    # one short exchange, measured by the probe
        self._carry: Optional[Tuple[int, float]] = None   # (address, deadline) a stream hands on
        self._layout: Optional[RegisterLayout] = None
        self._closed = False
        self._run_control = False          # kheap blame may reset, watch and continue
        self.running = False               # we resumed it and have not seen it stop yet
        self._sock = self._connect()
        self._in_handshake = True
        try:
            self._handshake()
            self._in_handshake = False
        except BaseException:
            self._sock.close()
            self._closed = True
            raise

    @classmethod
    def from_hostport(cls, text: str, **kwargs) -> "RemoteTarget":
        host, port = parse_hostport(text)
        return cls(host, port, **kwargs)

    def __repr__(self) -> str:
        return f"RemoteTarget({self.host}:{self.port})"

    # -- connection ----------------------------------------------------------------------------
    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except socket.timeout:
            raise TargetError(f"cannot connect to {self._where()}: timed out after {self.timeout:g}s") from None
        except OSError as exc:
            raise TargetError(f"cannot connect to {self._where()}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _handshake(self) -> None:
        # qSupported first: its reply is never a stop packet, so a stop packet that arrives
        # before it is QEMU's "I paused a running VM for you" notice.
        reply = self._command(b"qSupported:xmlRegisters=arm,aarch64", halt_probe=True)
        for item in reply.decode("ascii", "replace").split(";"):
            if "=" in item:
                k, v = item.split("=", 1)
                self.features[k] = v
            elif item[-1:] in "+-?" and item[:-1]:
                self.features[item[:-1]] = item[-1]
        if "PacketSize" in self.features:
            try:
                self.packet_size = int(self.features["PacketSize"], 16)
            except ValueError:
                raise TargetError(f"garbage PacketSize in qSupported reply: {reply[:60]!r}") from None
            if self.packet_size < 16:
                raise TargetError(f"stub PacketSize {self.packet_size} is unusable")
            # GDB's rule: a reply of 2n hex digits must fit in the stub's packet buffer.
            self.chunk_size = max(1, self.packet_size // 2)
        if self._max_chunk:
            self.chunk_size = min(self.chunk_size, self._max_chunk)
        if self.features.get("QStartNoAckMode") == "+":
            if self._command(b"QStartNoAckMode") == b"OK":
                self._ack_mode = False
        if self._ack_mode:
            self._probe_pipelining()

    def _probe_pipelining(self) -> None:
        """Find out whether the stub takes a request while a reply of its own is unacked.

        ``qC`` is sent and answered, and before we ack that answer a second ``qC`` goes out. A
        stub that pipelines (QEMU's system emulator) acks the second request and answers it. A
        stub that waits for acks (qemu-user) takes the request's first byte for a bad ack and
        sends its first answer again, once per byte; we ack, and the marker (``?``) brings the
        line back in step. A stub that says nothing at all is treated as the latter. Costs two
        round trips; on a stub that waits for acks, about four.
        """
        deadline = time.monotonic() + self.timeout
        t0 = time.monotonic()
        self._command(b"qC", deadline=deadline, ack=False)       # its reply stays unacked
        self._rtt = time.monotonic() - t0
        self._send_packet(b"qC")
        wait = min(self.timeout / 2, max(PROBE_WAIT, 20 * self._rtt))
        tok = self._next_token(min(deadline, time.monotonic() + wait))
        if tok in (b"+", b"-"):
            # It took the request (a '-' too: it read it as a packet, with a bad checksum).
            self._send_raw(b"+")                 # the first answer's ack, late: never waited for
            if tok == b"+":
                self._await_reply(b"qC", deadline, self.timeout, acked=True)
            return
        self.pipelining = False
        self._resync(deadline, settle=False)

    def _resync(self, deadline: float, settle: bool = True) -> None:
        """Bring a stub that waits for acks back in step after it ate requests of ours.

        Acks and drops everything the stub sends until it answers :data:`RESYNC_MARKER`. The
        marker goes out once the line has been quiet for a while (``settle``; at once when
        nothing can be queued on the stub's side), and again after every later silence: a stub
        that was still waiting for an ack may have eaten it. A duplicate answer is harmless: a
        stop packet nobody asked for is skipped everywhere.
        """
        self._send_raw(b"+")                     # for the packet that showed the confusion
        quiet = min(self.timeout / 4, max(QUIET, 4 * self._rtt))
        sent = False
        if not settle:
            self._send_packet(RESYNC_MARKER)
            sent = True
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise TargetError(f"stub at {self._where()} waits for an ack after every reply and "
                                  f"did not get back in step within {self.timeout:g}s")
            tok = self._next_token(min(deadline, now + quiet))
            if tok is None:
                if time.monotonic() < deadline:
                    self._send_packet(RESYNC_MARKER)
                    sent = True
                continue
            if not isinstance(tok, _Packet):
                continue
            self._send_raw(b"+")                 # even a corrupt one: we never want it again
            if sent and tok.ok:
                data = decode_payload(tok.payload)
                if _is_stop(data):
                    self.last_stop = StopReply.parse(data.decode("ascii", "replace"))
                    return

    def close(self) -> None:
        """Detach if the target should run again (see ``detach``), then drop the connection."""
        if self._closed:
            return
        try:
            detach = self.was_running if self.detach_on_close is None else self.detach_on_close
            if detach:
                try:
                    self._command(b"D", timeout=min(self.timeout, 2.0))
                except TargetError:
                    pass
        finally:
            self._closed = True
            try:
                self._sock.close()
            except OSError:
                pass

    def __enter__(self) -> "RemoteTarget":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- wire ----------------------------------------------------------------------------------
    def _send_raw(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise TargetError(f"connection to {self._where()} lost: {exc.strerror or exc}") from None

    def _send_packet(self, payload: bytes) -> None:
        # The single gate every command passes through.
        (check_run_control if self._run_control else check_read_only)(payload)
        self.packets_sent += 1
        self._send_raw(frame(payload))

    def _fill(self, deadline: float) -> bool:
        """Receive more bytes; False when ``deadline`` passed first."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(1 << 18)
        except socket.timeout:
            return False
        except OSError as exc:
            raise TargetError(f"connection to {self._where()} lost: {exc.strerror or exc}") from None
        if not data:
            raise TargetError(f"connection to {self._where()} closed by the stub")
        self._received += len(data)
        self._buf += data
        return True

    def _next_token(self, deadline: float) -> Union[bytes, _Packet, None]:
        """The next ``+``, ``-`` or packet from the stub; None on timeout. Noise is skipped."""
        buf = self._buf
        while True:
            i = 0
            n = len(buf)
            while i < n and buf[i] not in b"+-$%":
                i += 1                       # line noise between packets
            if i:
                del buf[:i]
            if buf:
                c = buf[0]
                if c in b"+-":
                    del buf[:1]
                    return b"+" if c == 0x2B else b"-"
                end = buf.find(b"#", 1)
                if end >= 0 and len(buf) >= end + 3:
                    raw = bytes(buf[1:end])
                    cs = bytes(buf[end + 1:end + 3])
                    del buf[:end + 3]
                    try:
                        ok = int(cs, 16) == checksum(raw)
                    except ValueError:
                        ok = False
                    if c == 0x25:            # '%' notification (non-stop mode): not for us
                        continue
                    return _Packet(raw, ok)
                if len(buf) > (1 << 22):
                    raise TargetError(f"stub at {self._where()} sent over 4 MiB without a packet end")
            if not self._fill(deadline):
                return None

    def _timed_out(self, payload: bytes, timeout: float, bad: int = 0, nacks: int = 0) -> TargetError:
        """The one-line error for a request that got no usable reply in time."""
        what = payload[:24].decode("ascii", "replace")
        if self._in_handshake and self._received == 0:
            return TargetError(
                f"no reply from {self._where()} to {what!r} within {timeout:g}s: the stub accepted "
                f"the connection but has not sent a byte, so it is likely busy with another debugger "
                f"(a QEMU gdbstub serves one at a time and pauses the VM when it later takes this "
                f"connection; qemu-user's takes only its first)")
        why = []
        if bad:
            why.append(f"{bad} with a bad checksum")
        if nacks:
            why.append(f"{nacks} nacked")
        extra = f" ({', '.join(why)})" if why else ""
        return TargetError(f"no reply from {self._where()} to {what!r} within {timeout:g}s{extra}")

    def _command(self, payload: bytes, *, expect_stop: bool = False, halt_probe: bool = False,
                 timeout: Optional[float] = None, deadline: Optional[float] = None,
                 ack: bool = True, console: Optional[List[bytes]] = None) -> bytes:
        """Send one command and return its decoded reply, with acks and bounded retries.

        One deadline (``deadline``, else now + ``timeout``) bounds the whole exchange,
        retransmissions included. ``ack=False`` leaves the reply unacked (the pipelining probe).
        """
        timeout = self.timeout if timeout is None else timeout
        if deadline is None:
            deadline = time.monotonic() + timeout
        self._send_packet(payload)
        return self._await_reply(payload, deadline, timeout, expect_stop=expect_stop,
                                 halt_probe=halt_probe, ack=ack, console=console)

    def _await_reply(self, payload: bytes, deadline: float, timeout: float, *, acked: bool = False,
                     expect_stop: bool = False, halt_probe: bool = False, ack: bool = True,
                     console: Optional[List[bytes]] = None) -> bytes:
        """The reply to ``payload``, already sent (``acked``: and acked by the stub).

        Stop packets that arrive when no stop reply is expected are recorded (QEMU's notice
        that it paused a running VM, or the answer to our ``\\x03``) and skipped, as are
        console ``O`` packets.
        """
        acked = acked or not self._ack_mode
        retries = bad = 0
        halted = False
        while True:
            wait_until = deadline
            probing = halt_probe and not halted and not acked
            if probing:
                wait_until = min(deadline, time.monotonic() + self.halt_probe)
            tok = self._next_token(wait_until)
            if tok is None:
                if probing and time.monotonic() < deadline:
                    # Silence: a running target ignores packets until interrupted.
                    halted = True
                    self._send_raw(b"\x03")
                    continue
                raise self._timed_out(payload, timeout, bad, retries)
            if tok == b"+":
                acked = True
                continue
            if tok == b"-":
                if acked:
                    continue                 # a stale nack: nothing of ours is pending
                retries += 1
                self.retransmissions += 1
                if retries > MAX_RETRIES:
                    raise TargetError(f"stub at {self._where()} rejected {payload[:24]!r} {retries} times")
                self._send_packet(payload)   # same deadline: the timeout bounds the whole request
                continue
            assert isinstance(tok, _Packet)
            if not tok.ok:
                if not self._ack_mode:
                    raise TargetError(f"reply with a bad checksum from {self._where()} in no-ack mode")
                bad += 1
                self.retransmissions += 1
                if bad > MAX_RETRIES:
                    raise TargetError(f"{bad} replies with bad checksums from {self._where()}")
                self._send_raw(b"-")
                continue
            data = decode_payload(tok.payload)
            if _is_console(data):
                if self._ack_mode:
                    self._send_raw(b"+")
                if console is not None:
                    console.append(data[1:])
                continue                     # target output: not a reply
            if not expect_stop and _is_stop(data):
                if self._ack_mode:
                    self._send_raw(b"+")
                self.last_stop = StopReply.parse(data.decode("ascii", "replace"))
                if self._in_handshake:
                    self.was_running = True
                if halted and not acked:
                    # The running target dropped our packet: send it again now it listens.
                    self._send_packet(payload)
                continue
            if self._ack_mode and ack:
                self._send_raw(b"+")
            return data

    # -- commands ------------------------------------------------------------------------------
    def stop_reason(self) -> StopReply:
        """Why the target is stopped (``?``)."""
        reply = self._command(b"?", expect_stop=True)
        if reply.startswith((b"W", b"X")):
            raise TargetError(f"the target at {self._where()} has exited ({reply[:20].decode('ascii', 'replace')})")
        self.last_stop = StopReply.parse(reply.decode("ascii", "replace"))
        return self.last_stop

    def threads(self) -> List[str]:
        """Thread ids (one per CPU on QEMU), from ``qfThreadInfo``/``qsThreadInfo``."""
        ids: List[str] = []
        reply = self._command(b"qfThreadInfo")
        for _ in range(4096):
            if not reply or reply == b"l":
                break
            if reply[:1] not in (b"m", b"l"):
                raise TargetError(f"garbage thread list from {self._where()}: {reply[:40]!r}")
            ids += [t for t in reply[1:].decode("ascii", "replace").split(",") if t]
            if reply[:1] == b"l":
                break
            reply = self._command(b"qsThreadInfo")
        return ids

    def _xfer(self, annex: str) -> str:
        out = bytearray()
        step = max(256, min(0x7F0, (self.packet_size or 0x800) - 16))
        for _ in range(1024):
            reply = self._command(b"qXfer:features:read:%s:%x,%x" % (annex.encode(), len(out), step))
            if reply.startswith(b"E") or not reply or reply[:1] not in (b"m", b"l"):
                raise TargetError(f"cannot read target description {annex!r} from {self._where()}: {reply[:20]!r}")
            out += reply[1:]
            if reply[:1] == b"l":
                break
        return out.decode("utf-8", "replace")

    def register_layout(self) -> RegisterLayout:
        """From the stub's target description when offered, else by the size of ``g``."""
        if self._layout is None:
            layout = None
            if self.features.get("qXfer:features:read") == "+":
                try:
                    layout = layout_from_target_xml(self._xfer)
                except TargetError:
                    raise
                except Exception:       # a malformed description: fall back, do not fail
                    layout = None
                if layout is not None and not layout.registers:
                    layout = None
            if layout is None:
                layout = fallback_layout(len(self._g()))
            self._layout = layout
        return self._layout

    @property
    def arch(self) -> Optional[str]:
        """``"arm"``, ``"aarch64"`` or None, from the target description or the ``g`` size."""
        return self.register_layout().arch

    def _g(self) -> bytes:
        return self._parse_g(self._command(b"g"))

    def _parse_g(self, reply: bytes) -> bytes:
        if reply.startswith(b"E") and len(reply) == 3:
            raise TargetError(f"stub at {self._where()} cannot read registers ({reply.decode()})")
        try:
            return bytes.fromhex(reply.decode("ascii").replace("x", "0"))   # 'x' = unavailable
        except (ValueError, UnicodeDecodeError):
            raise TargetError(f"garbage register reply from {self._where()}: {reply[:40]!r}") from None

    def registers(self, thread: Optional[str] = None) -> Dict[str, int]:
        """The core registers by name (``r0``..``pc``, ``cpsr`` or ``x0``..``pc``, ``cpsr``).

        ``thread`` (an id from :meth:`threads`) selects another CPU with ``Hg`` first; QEMU keeps
        that selection, which does not matter to us because all CPUs share physical memory.
        """
        layout = self.register_layout()
        if thread is not None:
            if self._command(b"Hg" + thread.encode("ascii")) != b"OK":
                raise TargetError(f"stub at {self._where()} has no thread {thread!r}")
        return self.decode_registers(self._g())

    def decode_registers(self, g: bytes) -> Dict[str, int]:
        """The registers of a ``g`` reply (already hex-decoded: see :meth:`batch`)."""
        layout = self.register_layout()
        if not layout.fits(len(g)):
            # The description and the packet disagree (QEMU sends the FPA block until a client
            # has read target.xml): trust the packet's size.
            layout = fallback_layout(len(g))
        return layout.decode(g, self.byteorder)

    # -- run control (kheap blame only) ----------------------------------------------------------
    def allow_run_control(self) -> None:
        """Let this connection reset QEMU, set breakpoints and watchpoints and run the target
        (the packets :func:`check_run_control` allows). Memory is still never written."""
        self._run_control = True

    def monitor(self, command: str, timeout: Optional[float] = None) -> str:
        """Run a QEMU monitor command (``qRcmd``) and return its output. Only the commands of
        the run-control allowlist go out; a stub without monitor commands answers empty."""
        out: List[bytes] = []
        reply = self._command(b"qRcmd," + command.encode().hex().encode(), console=out,
                              timeout=timeout)
        text = b"".join(bytes.fromhex(o.decode("ascii", "replace")) for o in out
                        if re.fullmatch(rb"(?:[0-9a-fA-F]{2})*", o)).decode("utf-8", "replace")
        if reply == b"":
            raise TargetError(f"the stub at {self._where()} takes no monitor commands (qRcmd)")
        if reply != b"OK":
            if re.fullmatch(rb"(?:[0-9a-fA-F]{2})+", reply):
                return text + bytes.fromhex(reply.decode()).decode("utf-8", "replace")
            raise TargetError(f"monitor command {command!r} failed at {self._where()}: "
                              f"{reply[:40].decode('ascii', 'replace')}")
        return text

    def insert_point(self, kind: int, address: int, length: int) -> bool:
        """``Z<kind>``: 0 software breakpoint, 1 hardware breakpoint, 2 write watchpoint.
        False when the stub does not support that kind (empty reply)."""
        reply = self._command(b"Z%d,%x,%x" % (kind, address, length))
        if reply == b"OK":
            return True
        if reply == b"":
            return False
        raise TargetError(f"stub at {self._where()} refused Z{kind} at 0x{address:x} "
                          f"({length} bytes): {reply[:20].decode('ascii', 'replace')}")

    def remove_point(self, kind: int, address: int, length: int) -> bool:
        """``z<kind>``; False when the stub did not remove it."""
        return self._command(b"z%d,%x,%x" % (kind, address, length)) == b"OK"

    def resume(self, step: bool = False) -> None:
        """``c`` (every CPU runs) or ``s`` (the CPU that last stopped runs one instruction);
        the stop comes from :meth:`wait_stop`."""
        self._send_packet(b"s" if step else b"c")
        self.running = True

    def interrupt(self) -> None:
        """``\\x03``: stop a running target (its stop reply comes from :meth:`wait_stop`)."""
        self._send_raw(b"\x03")

    def wait_stop(self, timeout: Optional[float] = None,
                  poll: Optional[Callable[[], None]] = None, every: float = 0.1) -> StopReply:
        """The stop reply of a resumed target. ``timeout`` None waits as long as it runs;
        ``poll()`` is called every ``every`` seconds of waiting (it may :meth:`interrupt`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = time.monotonic() + every
            if deadline is not None:
                wait = min(wait, deadline)
            tok = self._next_token(wait)
            if tok is None:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TargetError(f"the target at {self._where()} did not stop within {timeout:g}s")
                if poll is not None:
                    poll()
                continue
            if tok == b"-":
                self.retransmissions += 1
                self._send_packet(b"c")      # our resume was garbled: the only one in flight
                continue
            if not isinstance(tok, _Packet):
                continue
            if not tok.ok:
                if self._ack_mode:
                    self._send_raw(b"-")
                continue
            if self._ack_mode:
                self._send_raw(b"+")
            data = decode_payload(tok.payload)
            if _is_console(data):
                continue
            if data[:1] in (b"W", b"X"):
                self.running = False
                raise TargetError(f"the target at {self._where()} has exited "
                                  f"({data[:20].decode('ascii', 'replace')})")
            if _is_stop(data):
                self.running = False
                self.last_stop = StopReply.parse(data.decode("ascii", "replace"))
                return self.last_stop

    def batch(self, payloads: List[bytes], resume: Optional[bytes] = None) -> List[bytes]:
        """Several commands in one send, their replies in order; ``resume`` (``c`` or ``s``) goes
        last in the same send and its stop comes from :meth:`wait_stop`. Only while the target
        is stopped: any byte reaching a running QEMU stops it. A ``g`` reply comes back
        hex-decoded (for :meth:`decode_registers`), an ``m`` reply as bytes."""
        if not self.pipelining:
            out = [self._command(p) for p in payloads]
        else:
            deadline = time.monotonic() + self.timeout
            frames = []
            for p in payloads:
                (check_run_control if self._run_control else check_read_only)(p)
                frames.append(frame(p))
            self.packets_sent += len(frames)
            self._send_raw(b"".join(frames))
            out = [self._await_reply(p, deadline, self.timeout) for p in payloads]
        if resume is not None:
            self._send_packet(resume)
            self.running = True
        decoded = []
        for p, reply in zip(payloads, out):
            if p == b"g":
                decoded.append(self._parse_g(reply))
            elif p[:1] == b"m" and not (reply.startswith(b"E") and len(reply) == 3):
                decoded.append(bytes.fromhex(reply.decode("ascii", "replace")))
            else:
                decoded.append(reply)
        return decoded

    def step(self, timeout: Optional[float] = None) -> StopReply:
        """One instruction of the CPU that last stopped."""
        self.resume(step=True)
        return self.wait_stop(self.timeout if timeout is None else timeout)

    # -- memory --------------------------------------------------------------------------------
    def _parse_m(self, reply: bytes, address: int, size: int) -> Union[bytes, str]:
        """Bytes, or the error code (``"E14"``) as a string."""
        if reply.startswith(b"E") and len(reply) == 3:
            return reply.decode("ascii")
        if not reply:
            raise TargetError(f"stub at {self._where()} does not support memory reads")
        try:
            data = bytes.fromhex(reply.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise TargetError(f"garbage reply from {self._where()} to a read at 0x{address:x}: {reply[:24]!r}") from None
        if len(data) > size:
            raise TargetError(f"stub at {self._where()} returned {len(data)} bytes for a {size}-byte read")
        return data

    def _m(self, address: int, size: int, deadline: Optional[float] = None) -> Union[bytes, str]:
        reply = self._command(b"m%x,%x" % (address, size), deadline=deadline)
        return self._parse_m(reply, address, size)

    def _depth(self, following: bool = False) -> int:
        """How many ``m`` requests a stream keeps in flight.

        ``following``: the caller works in the stream's waits (``progress``): the stub is given
        :data:`FOLLOW_DEPTH` times as many requests, so it never runs out of work while the
        caller does its own (stress heap, aarch64, one VM, check and raw read alternating: a
        check took 1.28x a raw read with 16 in flight, 1.16x with 64, 1.05x with 128; a raw
        read itself gains 0-5% from going deeper, so its default stays).

        ``pipeline`` counts requests of a 2 KiB chunk; a stub that caps its replies lower gets
        proportionally more of them (up to :data:`MAX_DEPTH`), so the bytes in flight, and the
        round trips a read costs, stay about the same. A stub that waits for acks gets one: its
        stream sends each ack and the next request together, ack first, which such a stub
        reads correctly, and still calls ``progress`` in every wait. (``pipeline=1`` means no
        stream at all: every request through :meth:`_command`.)
        """
        if self.pipeline <= 1 or not self.pipelining:
            return 1
        depth = self.pipeline * (FOLLOW_DEPTH if following else 1)
        return min(MAX_DEPTH, max(depth, depth * 2048 // max(1, self.chunk_size)))

    def _read_chunk(self, address: int, size: int) -> bytes:
        """A prefix of ``size`` <= chunk bytes, or MemoryFault at the first bad address.

        All of it, unless the stub turns out to cap its replies (the same short length twice in
        a row): then what has arrived, and the chunk size is that cap, so the caller streams the
        rest in requests the stub answers whole. One deadline bounds the chunk, the
        continuations of short replies included (a stream that stopped at this chunk hands its
        own deadline on, see ``_carry``).
        """
        carry, self._carry = self._carry, None
        deadline = carry[1] if carry and carry[0] == address else time.monotonic() + self.timeout
        out = bytearray()
        short = 0                            # the length of the previous reply, if it was short
        while len(out) < size:
            cur, want = address + len(out), min(size - len(out), self.chunk_size)
            got = self._m(cur, want, deadline)
            if isinstance(got, bytes):
                if not got:
                    raise MemoryFault(cur, size - len(out), "the stub returned no data")
                out += got                   # a short reply: continue where it stopped
                if len(got) < want:
                    if len(got) == short:
                        self.chunk_size = short      # the stub's cap: stream the rest with it
                        break
                    short = len(got)
                else:
                    short = 0
                continue
            if got == "E22" and want > 1:
                # Too big for the stub: halve and remember, QEMU 7.2 caps ``m`` at 2048 bytes.
                # Halving to a power of two lands on such a cap exactly, whatever ``want`` was.
                self.chunk_size = 1 << ((want - 1).bit_length() - 1)
                continue
            out += self._bisect(cur, want, got)   # raises at the first unreadable byte
        return bytes(out)

    def _bisect(self, address: int, size: int, error: str) -> bytes:
        """``[address, address+size)`` failed: find its readable prefix and fault after it."""
        good = bytearray()
        lo, hi = 0, size                 # [0, lo) readable; reading [lo, hi) failed
        while hi - lo > 1:
            mid = (lo + hi) // 2
            got = self._m(address + lo, mid - lo)
            if isinstance(got, bytes) and len(got) == mid - lo:
                good += got
                lo = mid
            else:
                hi = mid
        if lo < size:
            got = self._m(address + lo, 1)
            if isinstance(got, bytes) and len(got) == 1:
                good += got                  # flaky region: it reads now, let the caller go on
                return bytes(good)
            error = got if isinstance(got, str) else error
        raise MemoryFault(address + lo, size - lo, f"stub error {error}")

    def read(self, address: int, size: int) -> bytes:
        """``size`` bytes at physical ``address``; MemoryFault at the first unreadable byte."""
        if size < 0:
            raise MemoryFault(address, 0, "negative size")
        if address < 0:
            raise MemoryFault(address, size, "negative address")
        if size == 0:
            return b""
        self._check_open()
        prefix = b""
        if self.pipeline > 1 and size > self.chunk_size:
            prefix = self._stream([(address, address + size)])[0]
        return self._complete(address, size, prefix)

    def read_many(self, requests: List[Tuple[int, int]],
                  progress: Optional[Progress] = None) -> List[Union[bytes, MemoryFault]]:
        """Every ``(address, size)`` of ``requests`` in one pipelined stream.

        The answer has one entry per request: its bytes, or the :class:`MemoryFault` that
        :meth:`read` would have raised for it. Why: a check needs the heap and a slice of the
        page array, and streaming both together pays the link's round trip once.

        ``progress(address, chunks)``, if given, is called whenever the client is about to
        wait for the stub, with what has arrived so far of the request at ``address``: a list
        of replies, in order and contiguous, that keeps growing (read it, never change it). A
        caller can work there in time that would otherwise be spent waiting; it must not use
        this connection. The chunks are the very objects the answer is joined from: following
        the read costs no copy.
        """
        self._check_open()
        wanted = [(a, a + n) for a, n in requests if n > 0 and a >= 0]
        prefixes = iter(self._stream(wanted, progress) if self.pipeline > 1 and wanted
                        else [b""] * len(wanted))
        out: List[Union[bytes, MemoryFault]] = []
        for address, size in requests:
            if size <= 0 or address < 0:
                try:
                    out.append(self.read(address, size))
                except MemoryFault as fault:
                    out.append(fault)
                continue
            try:
                out.append(self._complete(address, size, next(prefixes)))
            except MemoryFault as fault:
                out.append(fault)
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise TargetError(f"connection to {self._where()} is closed")

    def _complete(self, address: int, size: int, prefix: bytes) -> bytes:
        """``[address, address+size)`` from what a stream read of it (``prefix``) and the rest."""
        if len(prefix) == size:
            return prefix
        return prefix + self._read_rest(address + len(prefix), address + size)

    def _read_rest(self, cur: int, end: int) -> bytes:
        """``[cur, end)`` after a stream stopped early (or a small read): the chunk that needs
        care on its own (E22 halving, short replies, fault bisection), then streaming again."""
        parts: List[bytes] = []
        try:
            while cur < end:
                got = self._read_chunk(cur, min(self.chunk_size, end - cur))
                parts.append(got)
                cur += len(got)
                if self.pipeline > 1 and end - cur > self.chunk_size:
                    got = self._stream([(cur, end)])[0]
                    parts.append(got)
                    cur += len(got)
        except MemoryFault as fault:
            # The core's contract: ``size`` counts what was wanted from the fault address on.
            raise MemoryFault(fault.address, end - fault.address, fault.reason) from None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _stream(self, ranges: List[Tuple[int, int]], progress: Optional[Progress] = None) -> List[bytes]:
        """Read each ``[start, end)`` of ``ranges`` with up to ``_depth()`` requests in flight
        (a sliding window), and return what was read of each, in order.

        A returned prefix shorter than its range means the stream stopped at the first chunk
        that needs care (an error reply, a nack, a bad checksum, a short reply); the later
        ranges then hold whatever came before it, and the caller re-reads the rest serially,
        where every case is handled, within the deadline the stopped chunk already had
        (``_carry``): once a request has failed, the replies still in flight are drained within
        that deadline too, since its second try is answered only after them.

        Why this is safe: the stub answers in order, one ack and one reply per request, so the
        k-th ack and reply belong to the k-th request. A nacked request gets no reply; a reply
        with a bad checksum is acked (so the stub does not resend it out of order) and re-read.
        Each reply's ack travels in the same send as new requests, in batches when half the
        window has been answered: QEMU does not wait for acks, and a send costs more than
        decoding a 2 KiB reply. A wait of more than :data:`STALL_FLUSH` sends what is owed at
        once, so a stub that does wait for acks is never stuck on us; if such a stub shows
        itself (a packet where the ack of a request belongs: it sent a reply again and ate a
        request), the stream stops, the line is brought back in step and the connection stays
        at one request in flight.
        """
        step = self.chunk_size
        depth = self._depth(following=progress is not None)
        chunks = ((k, a, min(step, end - a)) for k, (start, end) in enumerate(ranges)
                  for a in range(start, end, step))
        parts: List[List[bytes]] = [[] for _ in ranges]
        pending: deque = deque()
        more = True
        streaming = [0]                     # the range the replies are arriving for
        unsent: List[bytes] = []            # requests of ``pending`` not yet on the wire
        owed = [0]                          # acks owed to the stub
        self._carry = None

        def idle() -> None:
            k = streaming[0]
            progress(ranges[k][0], parts[k])        # type: ignore[misc]

        def request() -> bytes:
            nonlocal more
            item = next(chunks, None)
            if item is None:
                more = False
                return b""
            k, addr, n = item
            payload = b"m%x,%x" % (addr, n)
            check_read_only(payload)
            self.packets_sent += 1
            pending.append((k, addr, n, payload))
            return frame(payload)

        def flush() -> None:
            # Acks first: a stub that waits for one must find it before any new request.
            if owed[0] or unsent:
                self._send_raw(b"+" * owed[0] + b"".join(unsent))
                owed[0] = 0
                unsent.clear()

        first = []
        while more and len(pending) < depth:
            first.append(request())
        self._send_raw(b"".join(first))
        failed: Optional[float] = None       # the deadline of the first chunk that failed
        refill = max(1, depth // 2)
        while pending:
            if len(pending) - len(unsent) <= 0 or ((unsent or owed[0]) and len(pending) - len(unsent) < refill):
                # Acks and new requests go out in batches: a send costs more than a decode.
                flush()
            k, addr, n, payload = pending.popleft()
            streaming[0] = k
            try:
                got, owe_ack, deadline = self._stream_reply(
                    addr, n, payload, idle if progress and failed is None else None, flush, failed)
            except _AckAwaited as exc:
                # The stub waits for acks: what was in flight is lost. Never send the rest.
                self.packets_sent -= len(unsent)
                unsent.clear()
                flush()
                self.pipelining = False
                self._resync(exc.deadline)
                if failed is None:
                    self._carry = (addr, exc.deadline)
                    failed = exc.deadline
                pending.clear()
                break
            if owe_ack:
                owed[0] += 1
            if got is None or len(got) != n:
                if failed is None:
                    failed = deadline       # stop asking; drain what is in flight
                    if got:
                        parts[k].append(got)         # a short reply: keep it, go on after it
                    self._carry = (addr + len(got or b""), deadline)
                    for _ in range(len(unsent)):     # never sent: forget them
                        pending.pop()
                    self.packets_sent -= len(unsent)
                    unsent.clear()
            elif failed is None and more:
                req = request()
                if req:
                    unsent.append(req)
            if got is not None and failed is None:
                parts[k].append(got)
        flush()
        return [p[0] if len(p) == 1 else b"".join(p) for p in parts]

    def _stream_reply(self, address: int, size: int, payload: bytes,
                      idle: Optional[Callable[[], None]] = None,
                      flush: Optional[Callable[[], None]] = None,
                      deadline: Optional[float] = None) -> Tuple[Optional[bytes], bool, float]:
        """The reply to one streamed ``m``: (bytes or None to redo, whether we owe a '+', the
        deadline it had: ``deadline``, else now + timeout).

        ``idle`` runs once if the reply has not arrived whole, before the first wait for it;
        ``flush`` sends what the stream owes the stub, once the wait has lasted
        :data:`STALL_FLUSH`. Raises :class:`_AckAwaited` if the stub shows it waits for acks.
        """
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        # Fast path, nearly every reply of a bulk read: ``+$<2*size hex digits>#cs`` is in the
        # buffer whole. Anything else (a nack, an error, a short, run-length encoded or
        # corrupt reply, a stop packet) fails one of these tests and takes the general path.
        buf = self._buf
        skip = 1 if self._ack_mode else 0
        need = skip + 2 * size + 4
        while len(buf) < need:
            # Wait only while what is here can still become our reply, so a short reply
            # that has already ended is never waited for.
            if buf[:1] not in (b"", b"+" if skip else b"$") or buf.find(b"#", skip) >= 0:
                break
            if idle is not None:
                idle()
                idle = None
                continue
            if flush is not None:
                if self._fill(min(deadline, time.monotonic() + STALL_FLUSH)):
                    continue
                flush()
                flush = None
                continue
            if not self._fill(deadline):
                raise self._timed_out(payload, self.timeout)
        if (len(buf) >= need and buf[need - 3] == 0x23 and buf[skip] == 0x24
                and (not skip or buf[0] == 0x2B)):
            raw = bytes(buf[skip + 1:need - 3])
            try:
                ok = int(buf[need - 2:need], 16) == checksum(raw)
                data = binascii.unhexlify(raw) if ok else None
            except (ValueError, binascii.Error):
                data = None                  # not plain hex: '*', '}', 'E', another packet
            if data is not None:
                del buf[:need]
                return data, self._ack_mode, deadline
        if flush is not None:
            flush()                          # the general path may wait: owe the stub nothing
        if self._ack_mode:
            while True:
                tok = self._next_token(deadline)
                if tok is None:
                    raise self._timed_out(payload, self.timeout)
                if tok == b"-":
                    self.retransmissions += 1
                    return None, False, deadline    # dropped by the stub: re-read serially
                if tok == b"+":
                    break
                assert isinstance(tok, _Packet)
                data = decode_payload(tok.payload) if tok.ok else b""
                if _is_stop(data) or _is_console(data):
                    self._send_raw(b"+")     # a notification, not a reply: the ack is still to come
                    continue
                # A reply where the ack of our request belongs: the stub sent an earlier reply
                # again because it waits for acks, and ate this request (qemu-user).
                raise _AckAwaited(deadline)
        while True:
            tok = self._next_token(deadline)
            if tok is None:
                raise self._timed_out(payload, self.timeout)
            if not isinstance(tok, _Packet):
                continue                     # a stray ack
            if not tok.ok:
                if not self._ack_mode:
                    raise TargetError(f"reply with a bad checksum from {self._where()} in no-ack mode")
                self.retransmissions += 1
                return None, True, deadline
            data = decode_payload(tok.payload)
            if _is_stop(data) or _is_console(data):
                if self._ack_mode:
                    self._send_raw(b"+")
                continue
            got = self._parse_m(data, address, size)
            return (got if isinstance(got, bytes) else None), self._ack_mode, deadline
