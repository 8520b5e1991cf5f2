"""A small in-process gdbstub that serves a byte image, with knobs for every failure we handle.

It speaks just enough of the remote protocol to stand in for QEMU's stub in unit tests, and it
misbehaves on request: packet-size limits (``E22``), unmapped ranges (``E14``), corrupted
checksums, run-length-encoded replies, nacks, garbage, silence, hang-ups and a running target
that only listens to ``\\x03``. Every packet it receives is logged so tests can prove that no
write was ever sent.

Stubs other than QEMU's system emulator: ``stop_and_wait`` behaves as qemu-user 7.2's stub
does (it waits for the ack of every reply by reading single bytes from the socket and sends the
reply again for every byte that is not ``+``, so a pipelined request is eaten), ``short_reads``
as a stub with a tiny packet buffer, ``m_delay`` with ``corrupt_m`` or ``nack_m`` as a slow
stub on a bad line, and ``latency`` as a link with a round trip.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

ARM_XML_CORE = """<?xml version="1.0"?>
<!DOCTYPE feature SYSTEM "gdb-target.dtd">
<feature name="org.gnu.gdb.arm.core">
  <!-- escapes on the wire: } * # $ -->
  <reg name="r0" bitsize="32"/><reg name="r1" bitsize="32"/><reg name="r2" bitsize="32"/>
  <reg name="r3" bitsize="32"/><reg name="r4" bitsize="32"/><reg name="r5" bitsize="32"/>
  <reg name="r6" bitsize="32"/><reg name="r7" bitsize="32"/><reg name="r8" bitsize="32"/>
  <reg name="r9" bitsize="32"/><reg name="r10" bitsize="32"/><reg name="r11" bitsize="32"/>
  <reg name="r12" bitsize="32"/><reg name="sp" bitsize="32" type="data_ptr"/>
  <reg name="lr" bitsize="32"/><reg name="pc" bitsize="32" type="code_ptr"/>
  <reg name="cpsr" bitsize="32" regnum="25"/>
</feature>
"""
ARM_XML_TARGET = """<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">
<target><architecture>arm</architecture><xi:include href="arm-core.xml"/>
<xi:include href="arm-extra.xml"/></target>"""
ARM_XML_EXTRA = """<?xml version="1.0"?><feature name="x"><reg name="d0" bitsize="64"/></feature>"""

ARM_REGS = [f"r{i}" for i in range(13)] + ["sp", "lr", "pc", "cpsr"]
AARCH64_REGS = [f"x{i}" for i in range(31)] + ["sp", "pc", "cpsr"]


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def rle_encode(data: bytes) -> bytes:
    """GDB run-length encoding: ``c*N`` repeats ``c`` ``ord(N) - 29`` more times."""
    out = bytearray()
    i = 0
    while i < len(data):
        c = data[i]
        j = i + 1
        while j < len(data) and data[j] == c and j - i < 98:
            j += 1
        extra = j - i - 1
        if extra in (6, 7):            # '#' and '$' are not allowed as counts
            extra = 5
        if extra >= 3:
            out.append(c)
            out += b"*" + bytes([extra + 29])
            i += extra + 1
        else:
            out.append(c)
            i += 1
    return bytes(out)


def escape(data: bytes) -> bytes:
    out = bytearray()
    for c in data:
        if c in b"#$}*":
            out += bytes([0x7D, c ^ 0x20])
        else:
            out.append(c)
    return bytes(out)


@dataclass
class StubConfig:
    image: bytes = b""
    base: int = 0x8000
    unmapped: List[Tuple[int, int]] = field(default_factory=list)   # [start, end) -> E14
    max_read: int = 2048              # an ``m`` above this answers E22 (QEMU 7.2)
    packet_size: Optional[int] = 0x1000
    corrupt_every: int = 0            # every Nth reply goes out with a wrong checksum (1: always)
    rle: bool = False                 # run-length encode replies
    nack_every: int = 0               # answer every Nth received packet with '-'
    garbage_every: int = 0            # answer every Nth ``m`` with a garbage payload
    noise: bool = False               # line noise before each reply
    silent: bool = False              # read everything, answer nothing
    close_after: Optional[int] = None  # hang up after this many packets
    running: bool = False             # ignore input until \x03, then stop with T02
    unsolicited_stop: bool = False    # send T02 on connect (QEMU pausing a running VM)
    no_ack: bool = False              # offer QStartNoAckMode
    xml: bool = True                  # offer qXfer:features:read
    arch: str = "arm"
    registers: Dict[str, int] = field(default_factory=dict)
    threads: int = 1
    short_reads: int = 0              # answer ``m`` with at most N bytes (legal short reply)
    fpa_block: bool = False           # 32-bit g with the legacy FPA registers (no-xml QEMU)
    stop_and_wait: bool = False       # qemu-user: wait for each reply's ack, resend per other byte
    m_delay: float = 0.0              # seconds before every answer to an ``m`` (and its resends)
    corrupt_m: bool = False           # every ``m`` reply, resends included, has a bad checksum
    nack_m: bool = False              # every ``m`` packet is answered '-' (after ``m_delay``)
    latency: float = 0.0              # seconds between receiving bytes and acting on them
    # QEMU's system emulator as kheap blame drives it: qRcmd answers the monitor's output as O
    # packets then OK (None: no qRcmd, as qemu-user); Z/z keep a set of points; each ``c`` stops
    # with the next run_script entry (its stop reply, the registers there, the store the next
    # ``s`` makes: (address, bytes) or None), and runs forever (until \x03) when none is left.
    monitor: Optional[Dict[str, str]] = None
    run_script: Optional[List[Tuple[bytes, Dict[str, int], Optional[Tuple[int, bytes]]]]] = None


class FakeGdbStub:
    """Threaded TCP stub on 127.0.0.1, one connection at a time: ``with FakeGdbStub(cfg) as s``."""

    def __init__(self, config: Optional[StubConfig] = None, **knobs) -> None:
        self.config = config or StubConfig(**knobs)
        self.received: List[bytes] = []       # every packet payload, in order
        self.raw: bytearray = bytearray()     # every byte received
        self.interrupts = 0
        self.detached = False
        self.connections = 0
        self.m_requests = 0
        self.swallowed = 0                    # bytes eaten while waiting for an ack (stop_and_wait)
        self.rounds = 0                       # receives that brought bytes: the client's round trips
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(4)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._conns: List[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self._stop.set()
        for s in [self._server] + self._conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FakeGdbStub":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # like QEMU: no Nagle delays
            self._conns.append(conn)
            try:
                _Session(self, conn).run()
            except OSError:
                pass
            finally:
                conn.close()


class _Session:
    def __init__(self, stub: FakeGdbStub, conn: socket.socket) -> None:
        self.stub, self.conn, self.cfg = stub, conn, stub.config
        self.ack = True
        self.running = self.cfg.running
        self.buf = bytearray()
        self.last = b""
        self.last_delay = 0.0
        self.packets = 0
        self.replies = 0
        self.thread = 1
        self.mem = bytearray(self.cfg.image)
        self.points: set = set()
        self.script = list(self.cfg.run_script or [])
        self.store: Optional[Tuple[int, bytes]] = None

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def reply(self, payload: bytes, encode: bool = True, m: bool = False) -> None:
        self.replies += 1
        cfg = self.cfg
        body = rle_encode(payload) if (cfg.rle and encode) else payload
        good = b"$%s#%02x" % (body, checksum(body))
        bad = b"$%s#%02x" % (body, (checksum(body) + 1) & 0xFF)
        self.last = good
        self.last_delay = cfg.m_delay if m else 0.0
        if self.last_delay:
            time.sleep(self.last_delay)
        if cfg.noise:
            self.send(b"\r\nnoise\x00")
        if (cfg.corrupt_every and self.replies % cfg.corrupt_every == 0) or (cfg.corrupt_m and m):
            if cfg.corrupt_every == 1 or (cfg.corrupt_m and m):
                self.last = bad           # a broken line: retransmissions are corrupt too
            sent = bad
        else:
            sent = good
        self.send(sent)
        if cfg.stop_and_wait and self.ack:
            self.wait_for_ack()

    def wait_for_ack(self) -> None:
        """qemu-user's put_packet: read single bytes until a '+', resending the reply for every
        other one (as ``last``: a corrupt reply was line noise, unless the line is broken).
        Bytes already taken into ``buf`` are not looked at: QEMU reads them from the socket."""
        while True:
            c = self.conn.recv(1)
            if not c:
                raise OSError("closed while waiting for an ack")
            self.stub.raw += c
            if c == b"+":
                return
            self.stub.swallowed += 1
            if self.last_delay:
                time.sleep(self.last_delay)
            self.send(self.last)

    def run(self) -> None:
        if self.cfg.unsolicited_stop:
            self.reply(b"T02thread:01;")
        while True:
            # qemu-user reads at most 256 bytes at a time while it waits for a command.
            data = self.conn.recv(256 if self.cfg.stop_and_wait else 65536)
            if not data:
                return
            self.stub.rounds += 1
            if self.cfg.latency:
                time.sleep(self.cfg.latency)
            self.stub.raw += data
            self.buf += data
            if not self.process():
                return

    def process(self) -> bool:
        buf = self.buf
        while buf:
            if self.running:
                if 0x03 in buf:
                    self.stub.interrupts += 1
                    del buf[:buf.index(0x03) + 1]
                    self.running = False
                    self.reply(b"T02thread:01;")
                    continue
                buf.clear()               # a running target drops everything else
                return True
            c = buf[0]
            if c == 0x03:
                self.stub.interrupts += 1
                del buf[:1]
                continue
            if c == ord("+"):
                del buf[:1]
                continue
            if c == ord("-"):
                del buf[:1]
                if self.last:
                    if self.last_delay:
                        time.sleep(self.last_delay)
                    self.send(self.last)
                continue
            if c != ord("$"):
                del buf[:1]
                continue
            end = buf.find(b"#")
            if end < 0 or len(buf) < end + 3:
                return True
            payload = bytes(buf[1:end])
            cs = bytes(buf[end + 1:end + 3])
            del buf[:end + 3]
            self.stub.received.append(payload)
            self.packets += 1
            if int(cs, 16) != checksum(payload):
                self.send(b"-")
                continue
            if self.cfg.nack_every and self.packets % self.cfg.nack_every == 0:
                self.send(b"-")
                continue
            if self.cfg.nack_m and payload.startswith(b"m"):
                if self.cfg.m_delay:
                    time.sleep(self.cfg.m_delay)
                self.send(b"-")
                continue
            if self.cfg.close_after is not None and self.packets > self.cfg.close_after:
                return False
            if self.ack:
                self.send(b"+")
            if self.cfg.silent:
                continue
            if not self.handle(payload):
                return False
        return True

    # -- commands ------------------------------------------------------------------------
    def memory(self, addr: int, size: int) -> Optional[bytes]:
        cfg = self.cfg
        lo, hi = addr - cfg.base, addr - cfg.base + size
        if lo < 0 or hi > len(cfg.image):
            return None
        for start, end in cfg.unmapped:
            if addr < end and start < addr + size:
                return None
        return bytes(self.mem[lo:hi])

    def regs_bytes(self) -> bytes:
        cfg = self.cfg
        if cfg.arch == "aarch64":
            out = b"".join(cfg.registers.get(n, i).to_bytes(8 if n != "cpsr" else 4, "little")
                           for i, n in enumerate(AARCH64_REGS))
        else:
            vals = [cfg.registers.get(n, i * 0x11 + self.thread * 0x1000) for i, n in enumerate(ARM_REGS)]
            out = b"".join(v.to_bytes(4, "little") for v in vals[:16])
            if cfg.fpa_block:
                out += bytes(8 * 12 + 4)
            out += vals[16].to_bytes(4, "little")
        return out

    def handle(self, p: bytes) -> bool:
        cfg = self.cfg
        if p.startswith(b"qSupported"):
            feats = []
            if cfg.packet_size:
                feats.append(b"PacketSize=%x" % cfg.packet_size)
            if cfg.xml:
                feats.append(b"qXfer:features:read+")
            if cfg.no_ack:
                feats.append(b"QStartNoAckMode+")
            self.reply(b";".join(feats))
        elif p == b"QStartNoAckMode":
            self.reply(b"OK")
            self.ack = False
        elif p == b"?":
            self.reply(b"T05thread:%02x;" % self.thread)
        elif p == b"g":
            self.reply(self.regs_bytes().hex().encode())
        elif p.startswith(b"m"):
            self.stub.m_requests += 1
            addr, size = (int(x, 16) for x in p[1:].split(b","))
            if cfg.garbage_every and self.stub.m_requests % cfg.garbage_every == 0:
                self.reply(b"zz-not-hex")
            elif size > cfg.max_read:
                self.reply(b"E22", m=True)
            else:
                if cfg.short_reads:
                    size = min(size, cfg.short_reads)
                data = self.memory(addr, size)
                self.reply(b"E14" if data is None else data.hex().encode(), m=True)
        elif p.startswith(b"qXfer:features:read:") and cfg.xml:
            annex, span = p[len(b"qXfer:features:read:"):].rsplit(b":", 1)
            off, length = (int(x, 16) for x in span.split(b","))
            docs = {b"target.xml": ARM_XML_TARGET, b"arm-core.xml": ARM_XML_CORE,
                    b"arm-extra.xml": ARM_XML_EXTRA}
            if cfg.arch == "aarch64":
                docs = {b"target.xml": "<target><architecture>aarch64</architecture>"
                        "<feature name='c'>" + "".join(
                            f"<reg name='{n}' bitsize='{32 if n == 'cpsr' else 64}'/>"
                            for n in AARCH64_REGS) + "</feature></target>"}
            doc = docs.get(annex)
            if doc is None:
                self.reply(b"E00")
            else:
                chunk = doc.encode()[off:off + length]
                more = off + length < len(doc.encode())
                self.reply((b"m" if more else b"l") + escape(chunk), encode=False)
        elif p == b"qfThreadInfo":
            self.reply(b"m" + b",".join(b"%02x" % (i + 1) for i in range(cfg.threads)))
        elif p == b"qsThreadInfo":
            self.reply(b"l")
        elif p.startswith(b"Hg"):
            tid = p[2:]
            try:
                n = int(tid, 16)
            except ValueError:
                n = -2
            if 1 <= n <= cfg.threads or n in (0, -1):
                self.thread = max(n, 1)
                self.reply(b"OK")
            else:
                self.reply(b"E22")
        elif p.startswith(b"qRcmd,") and cfg.monitor is not None:
            command = bytes.fromhex(p[6:].decode()).decode()
            for line in filter(None, cfg.monitor.get(command, "").splitlines(keepends=True)):
                self.reply(b"O" + line.encode().hex().encode())
            self.reply(b"OK")
        elif p[:1] in (b"Z", b"z") and cfg.run_script is not None:
            point = tuple(p[1:].split(b","))
            if p[:1] == b"Z":
                self.points.add(point)
                self.reply(b"OK")
            elif point in self.points:
                self.points.discard(point)
                self.reply(b"OK")
            else:
                self.reply(b"E22")
        elif p == b"c" and cfg.run_script is not None:
            if not self.script:
                self.running = True       # runs on until \x03
                return True
            stop, registers, self.store = self.script.pop(0)
            cfg.registers.update(registers)
            self.reply(stop)
        elif p == b"s" and cfg.run_script is not None:
            if self.store is not None:
                address, data = self.store
                self.mem[address - cfg.base:address - cfg.base + len(data)] = data
                self.store = None
            cfg.registers["pc"] = cfg.registers.get("pc", 0) + 4
            self.reply(b"T05thread:%02x;" % self.thread)
        elif p == b"D":
            self.stub.detached = True
            self.reply(b"OK")
            return False
        else:
            self.reply(b"")               # unsupported: empty reply, as the protocol says
        return True
