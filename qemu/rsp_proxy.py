"""Hold qemu-user's one gdbstub connection and serve it to any number of debuggers in turn.

qemu-user (QEMU 7.2) accepts exactly one debugger per process (qemu/README.md, "qemu-user's
gdbstub"): the guest waits before its first instruction until one connects, runs on its own
once that one detaches or disconnects, and the stub never accepts again. A target that must
stay stopped at its checkpoint for gdb, then lldb, then ``kheap --remote``, one after the
other, therefore needs someone to keep that connection: this proxy. Stdlib only.

- ``StubClient``: a minimal synchronous RSP client (ack mode: qemu-user 7.2 has no
  ``QStartNoAckMode``) for the launcher's own work before serving: handshake, a breakpoint,
  continue until it is hit, read a register.
- ``RspProxy``: listens on 127.0.0.1 (port 0: no race) and relays one client at a time to the
  stub, packet by packet. The stub stays in ack mode and answers the next packet only once
  its previous answer is acked, so the proxy acks the stub itself and sends it one packet at
  a time (a client's pipelined packets wait in a queue); clients get their acks from the
  proxy, in whatever mode they asked for. What would end the one stub session is answered here and not
  forwarded: ``D`` (detach) and ``vKill`` get ``OK``, ``k`` closes the client; the target
  stays as it was for the next client. ``QStartNoAckMode`` is answered ``OK`` by the proxy
  (the stub does not know it), which switches only that client to no-ack mode.
"""
from __future__ import annotations

import selectors
import socket
import threading
import time


class StubError(RuntimeError):
    """The stub closed the connection, timed out, or answered something unexpected."""


def frame(payload: bytes) -> bytes:
    return b"$" + payload + b"#%02x" % (sum(payload) & 0xFF)


def split_frames(buf: bytes):
    """Yields ('ack', b'+'/b'-'), ('break', b'\\x03'), ('packet', raw_frame, payload) tokens
    from the front of buf; returns (tokens, rest) where rest is an incomplete tail."""
    tokens, i, n = [], 0, len(buf)
    while i < n:
        c = buf[i:i + 1]
        if c in (b"+", b"-"):
            tokens.append(("ack", c))
            i += 1
        elif c == b"\x03":
            tokens.append(("break", c))
            i += 1
        elif c == b"$":
            end = buf.find(b"#", i + 1)
            if end < 0 or end + 3 > n:
                break
            tokens.append(("packet", buf[i:end + 3], buf[i + 1:end]))
            i = end + 3
        else:
            i += 1                                  # noise between packets
    return tokens, buf[i:]


class StubClient:
    """A synchronous RSP client for the launcher's own requests (ack mode)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def _read_packet(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            tokens, rest = split_frames(self.buf)
            for index, token in enumerate(tokens):
                if token[0] == "packet":
                    consumed = sum(len(t[1]) for t in tokens[:index + 1])
                    self.buf = self.buf[consumed:]
                    self.sock.sendall(b"+")
                    return token[2]
            left = deadline - time.monotonic()
            if left <= 0:
                raise StubError(f"no reply from the gdbstub within {timeout:.0f}s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise StubError(f"no reply from the gdbstub within {timeout:.0f}s") from None
            if not chunk:
                raise StubError("the gdbstub closed the connection")
            self.buf += chunk

    def command(self, payload: str, timeout: float = 10.0) -> str:
        """Sends one packet and returns the reply's payload (a stop reply for c/C/s)."""
        self.sock.sendall(frame(payload.encode()))
        return self._read_packet(timeout).decode(errors="replace")


def stop_thread(reply: str) -> str | None:
    """The thread id of a T stop reply (``T05thread:p01.2ee0;`` -> ``p01.2ee0``)."""
    for part in reply[3:].split(";"):
        if part.startswith("thread:"):
            return part[len("thread:"):]
    return None


class RspProxy:
    """Relays successive client connections on 127.0.0.1:``port`` to one upstream socket."""

    def __init__(self, upstream: socket.socket, host: str = "127.0.0.1", port: int = 0,
                 pending: bytes = b""):
        self.upstream = upstream
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.sessions = 0                          # clients served so far
        self.upstream_closed = False
        self.last_unclaimed = None                 # a reply that arrived with no client
        self._ubuf = pending
        self._client = None
        self._cbuf = b""
        self._client_noack = False
        self._close_after_send = False
        self._queue = []                           # client frames waiting for the stub
        self._inflight = None                      # the frame the stub is answering
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"rsp-proxy-{self.port}",
                                        daemon=True)

    def start(self) -> "RspProxy":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        for sock in (self._client, self.listener, self._wake_r, self._wake_w):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        self._client = None

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        sel.register(self.upstream, selectors.EVENT_READ, "upstream")
        sel.register(self.listener, selectors.EVENT_READ, "listener")
        try:
            if self._ubuf:
                self._from_upstream(b"")
            while not self._stop:
                for key, _ in sel.select(timeout=1.0):
                    if key.data == "wake":
                        self._wake_r.recv(64)
                    elif key.data == "listener":
                        if self._client is None:
                            client, _ = self.listener.accept()
                            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            self._client, self._cbuf, self._client_noack = client, b"", False
                            self._close_after_send = False
                            self.sessions += 1
                            sel.unregister(self.listener)        # one client at a time
                            sel.register(client, selectors.EVENT_READ, "client")
                    elif key.data == "client":
                        self._from_client(sel)
                    elif key.data == "upstream":
                        try:
                            chunk = self.upstream.recv(65536)
                        except OSError:
                            chunk = b""
                        if not chunk:
                            self.upstream_closed = True
                            self._drop_client(sel)
                            return
                        self._from_upstream(chunk)
                    if self._stop:
                        break
                self._pump()
                if self._close_after_send and self._client is not None:
                    self._drop_client(sel)
        finally:
            sel.close()

    def _drop_client(self, sel) -> None:
        if self._client is None:
            return
        try:
            sel.unregister(self._client)
        except (KeyError, ValueError):
            pass
        try:
            self._client.close()
        except OSError:
            pass
        self._client = None
        self._queue.clear()
        self._close_after_send = False
        if not self.upstream_closed and not self._stop:
            try:
                sel.register(self.listener, selectors.EVENT_READ, "listener")
            except (KeyError, ValueError):
                pass

    def _to_client(self, data: bytes) -> None:
        if self._client is not None:
            try:
                self._client.sendall(data)
            except OSError:
                pass

    def _from_client(self, sel) -> None:
        try:
            chunk = self._client.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            self._drop_client(sel)
            return
        tokens, self._cbuf = split_frames(self._cbuf + chunk)
        for token in tokens:
            kind = token[0]
            if kind == "ack":
                continue                           # the proxy acks the stub itself
            if kind == "break":
                self.upstream.sendall(b"\x03")
                continue
            raw, payload = token[1], token[2]
            if not self._client_noack:
                self._to_client(b"+")
            if payload == b"QStartNoAckMode":
                self._to_client(frame(b"OK"))
                self._client_noack = True
            elif payload == b"D" or payload.startswith(b"D;"):
                self._to_client(frame(b"OK"))      # detach: the target stays as it is
                self._close_after_send = True
            elif payload.startswith(b"vKill"):
                self._to_client(frame(b"OK"))
                self._close_after_send = True
            elif payload == b"k":
                self._close_after_send = True
            else:
                self._queue.append(raw)

    def _from_upstream(self, chunk: bytes) -> None:
        tokens, self._ubuf = split_frames(self._ubuf + chunk)
        for token in tokens:
            if token[0] == "ack":
                if token[1] == b"-" and self._inflight is not None:
                    self.upstream.sendall(self._inflight)          # asked to resend
                continue
            if token[0] != "packet":
                continue
            self.upstream.sendall(b"+")
            self._inflight = None
            if self._client is not None:
                self._to_client(token[1])
            else:
                self.last_unclaimed = token[2]

    def _pump(self) -> None:
        """Sends the next queued client packet once the stub has answered the previous one."""
        if self._inflight is None and self._queue and not self.upstream_closed:
            self._inflight = self._queue.pop(0)
            self.upstream.sendall(self._inflight)
