"""Headless Chromium driven over the DevTools protocol on a pipe (no port, no network).

Chromium started with ``--remote-debugging-pipe`` reads protocol commands on its fd 3 and
writes replies and events on fd 4, one JSON message per NUL-terminated chunk. This helper
opens one page, collects its console messages, exceptions, log entries and requests, and
waits on protocol events (never sleeps), each wait bounded by a deadline.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-quic", "--no-first-run",
                  "--disable-component-update", "--disable-sync", "--mute-audio",
                  "--disable-default-apps", "--disable-extensions", "--hide-scrollbars")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class ProtocolError(RuntimeError):
    pass


class Chromium:
    """One headless browser with one page; use as a context manager."""

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0):
        self.width, self.height, self.timeout = width, height, timeout
        self.console: list[dict[str, Any]] = []  # Runtime.consoleAPICalled params
        self.exceptions: list[dict[str, Any]] = []  # Runtime.exceptionThrown params
        self.log: list[dict[str, Any]] = []  # Log.entryAdded entries
        self.requests: list[str] = []  # URLs of Network.requestWillBeSent
        self._events: list[dict[str, Any]] = []
        self._buf = b""
        self._id = 0
        self.session: str | None = None

    def __enter__(self) -> Chromium:
        exe = chromium_path()
        if exe is None:
            raise FileNotFoundError("chromium is not installed (make setup installs it)")
        self._profile = tempfile.mkdtemp(prefix="ac-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds() -> None:  # the child's fd 3 reads commands, fd 4 writes replies
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.stderr = open(Path(self._profile) / "stderr.log", "wb")
        self.proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr,
            preexec_fn=fds, pass_fds=(3, 4))  # fds() runs before the others are closed
        os.close(to_child_r)
        os.close(from_child_w)
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        self.session = self.call("Target.attachToTarget",
                                 {"targetId": target["targetId"], "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1,
                   "mobile": False})
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc.poll() is None:
                self._send("Browser.close", {}, session=False)
                self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired, ProtocolError):
            self.proc.kill()
            self.proc.wait(timeout=20)
        finally:
            os.close(self._to_child)
            os.close(self._from_child)
            self.stderr.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    # --- protocol -------------------------------------------------------------------------

    def _send(self, method: str, params: dict[str, Any], session: bool) -> int:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        return self._id

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from chromium in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise ProtocolError(f"chromium exited (code {self.proc.poll()})")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg = json.loads(raw)
        if "method" in msg:
            self._note(msg)
        return msg

    def _note(self, msg: dict[str, Any]) -> None:
        method, params = msg["method"], msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            self.console.append(params)
        elif method == "Runtime.exceptionThrown":
            self.exceptions.append(params)
        elif method == "Log.entryAdded":
            self.log.append(params["entry"])
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        self._events.append(msg)

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: bool = True) -> dict[str, Any]:
        """Send a command and wait for its reply (events that arrive meanwhile are kept)."""
        mid = self._send(method, params or {}, session)
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._read(deadline)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise ProtocolError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def wait_event(self, method: str) -> dict[str, Any]:
        """The next event ``method`` (one that already arrived counts)."""
        deadline = time.monotonic() + self.timeout
        while True:
            for i, ev in enumerate(self._events):
                if ev["method"] == method:
                    del self._events[: i + 1]
                    return ev.get("params", {})
            self._events.clear()
            self._read(deadline)

    # --- page helpers ---------------------------------------------------------------------

    def open(self, url: str) -> None:
        self._events.clear()
        self.call("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page, awaiting a returned promise; its JSON value."""
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True})
        if "exceptionDetails" in result:
            raise ProtocolError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, x: float, y: float) -> None:
        """A real mouse click (a user gesture, as a person's click is)."""
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                   "button": "left", "clickCount": 1})

    def fit_to_content(self) -> None:
        """Make the viewport as tall as the page, so that what is measured in the page is
        where it is in :meth:`screenshot` (nothing re-lays out during the capture)."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": int(size["height"] + 0.999),
                   "deviceScaleFactor": 1, "mobile": False})
        self.evaluate("window.scrollTo(0, 0)")

    def screenshot(self, path: Path) -> Path:
        """The viewport (the whole page after :meth:`fit_to_content`) as a PNG, 1 px per CSS
        px."""
        shot = self.call("Page.captureScreenshot", {"format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
