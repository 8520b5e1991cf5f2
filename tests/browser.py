"""Headless Chromium driven over the DevTools protocol on a pipe, with the standard library only.

Chromium started with ``--remote-debugging-pipe`` reads protocol commands on its fd 3 and
writes replies and events on its fd 4, each message a JSON text ending in a NUL byte: no
websocket library, no port. :class:`Chromium` opens one page and offers what the tests and the
bench need: load a file, evaluate a script, click or hover at an element (real mouse events
through ``Input.dispatchMouseEvent``), take a screenshot, and collect the page's exceptions.

    with Chromium() as browser:
        page = browser.open("/tmp/heap.html")
        page.evaluate("document.title")
"""

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
         "--remote-debugging-pipe"]


def find_chromium():
    """The path of Debian's chromium (or another Chrome on PATH), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Chromium:
    """One headless Chromium process and its pipe; use as a context manager (it is killed at exit)."""

    def __init__(self, binary=None, width=1280, height=900, timeout=30.0):
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise BrowserError("chromium is not installed (install.sh installs it)")
        self.width, self.height, self.timeout = width, height, timeout
        self.profile = tempfile.mkdtemp(prefix="kheap-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # The child must see them as fds 3 and 4: move them above 10 first so the dup2 calls
        # in the child cannot clobber each other.
        high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
        high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def child_fds():
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        argv = [self.binary, *FLAGS, f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}", "about:blank"]
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, pass_fds=(3, 4), preexec_fn=child_fds,
                                     start_new_session=True)
        os.close(high_r)
        os.close(high_w)
        self._buffer = b""
        self._next_id = 0
        self.events = []

    # -- the protocol ------------------------------------------------------------------------
    def _read_message(self, deadline):
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise BrowserError("chromium closed its pipe: " + self._stderr_tail())
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method, params=None, session=None, timeout=None):
        """Send one command and wait for its reply (events that arrive meanwhile are kept)."""
        self._next_id += 1
        ident = self._next_id
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_child, data):]
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == ident:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method, session=None, timeout=None):
        """The first event ``method`` (already received or arriving within ``timeout``)."""
        for k, event in enumerate(self.events):
            if event.get("method") == method and (session is None or event.get("sessionId") == session):
                return self.events.pop(k)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            event = self._read_message(deadline)
            if event.get("method") == method and (session is None or event.get("sessionId") == session):
                return event
            self.events.append(event)

    def open(self, path_or_url, wait_for="document.documentElement.dataset.rendered"):
        """A new tab showing ``path_or_url``; returns a :class:`Page` once it has loaded and,
        with ``wait_for``, once that expression is truthy."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        for domain in ("Page", "Runtime"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                          "deviceScaleFactor": 1, "mobile": False},
                  session=session)
        page.navigate(path_or_url, wait_for)
        return page

    def _stderr_tail(self):
        try:
            self.stderr.seek(0)
            return self.stderr.read()[-2000:].decode(errors="replace")
        except (OSError, ValueError):
            return ""

    def close(self):
        if self.proc.poll() is None:
            try:
                self.send("Browser.close", timeout=5)
            except (BrowserError, OSError):
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, 9)     # its own session: the renderers go too
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Page:
    """One tab: evaluate scripts, click and hover, screenshots, exceptions thrown in it."""

    def __init__(self, browser, target, session):
        self.browser, self.target, self.session = browser, target, session
        self.load_seconds = None

    def send(self, method, params=None, timeout=None):
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def navigate(self, path_or_url, wait_for=None):
        url = path_or_url if "://" in str(path_or_url) else Path(path_or_url).resolve().as_uri()
        started = time.monotonic()
        self.send("Page.navigate", {"url": url})
        self.browser.wait_event("Page.loadEventFired", self.session)
        if wait_for:
            deadline = time.monotonic() + self.browser.timeout
            while not self.evaluate(f"!!({wait_for})"):
                if time.monotonic() > deadline:
                    raise BrowserError(f"{wait_for} never became true; exceptions: {self.exceptions()}")
                time.sleep(0.02)
        self.load_seconds = time.monotonic() - started

    def evaluate(self, expression):
        """The value of a JavaScript expression (JSON-able values; promises are awaited)."""
        reply = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                               "awaitPromise": True})
        if "exceptionDetails" in reply:
            detail = reply["exceptionDetails"]
            raise BrowserError(f"{expression[:80]!r} threw: "
                               f"{detail.get('exception', {}).get('description') or detail.get('text')}")
        return reply["result"].get("value")

    def exceptions(self):
        """Uncaught exceptions the page threw so far (their descriptions)."""
        out = []
        for event in self.browser.events:
            if event.get("method") == "Runtime.exceptionThrown" and event.get("sessionId") == self.session:
                d = event["params"]["exceptionDetails"]
                out.append(d.get("exception", {}).get("description") or d.get("text"))
        return out

    def center_of(self, selector):
        """The viewport point at the middle of the first element matching ``selector``, scrolled
        into view first."""
        point = self.evaluate(
            "(() => { const e = document.querySelector(%s); if (!e) return null;"
            " e.scrollIntoView({block: 'center', inline: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()" % json.dumps(selector))
        if point is None:
            raise BrowserError(f"no element matches {selector}")
        return point

    def mouse(self, kind, x, y, button="none", clicks=0):
        self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": button,
                                               "clickCount": clicks})

    def hover(self, selector):
        x, y = self.center_of(selector)
        self.mouse("mouseMoved", x, y)
        return x, y

    def click(self, selector):
        x, y = self.hover(selector)
        self.mouse("mousePressed", x, y, "left", 1)
        self.mouse("mouseReleased", x, y, "left", 1)
        return x, y

    def screenshot(self, path, full_page=True):
        """A PNG of the page (the whole document with ``full_page``), written to ``path``."""
        params = {"format": "png"}
        if full_page:
            w, h = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": w, "height": min(h, 12000),
                                                            "scale": 1})
        data = self.send("Page.captureScreenshot", params, timeout=60)["data"]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(base64.b64decode(data))
        return path
