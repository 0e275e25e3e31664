"""Headless Chromium for the viewer tests, driven over the DevTools protocol on a pipe.

``--remote-debugging-pipe``: commands go to the browser on fd 3 and replies come back on fd 4 as
NUL-separated JSON. We fix the viewport, open the file, wait until the page says it has drawn,
and evaluate expressions in it. (Plain ``--screenshot``/``--dump-dom`` lay the page out in a
smaller window than they capture.) Tests skip, saying why, when no Chromium is installed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


class DevTools:
    """The smallest DevTools-protocol client: JSON messages, NUL-separated, over fds 3 and 4."""

    def __init__(self, binary: str, profile: Path):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        os.set_inheritable(to_chrome_r, True)
        os.set_inheritable(from_chrome_w, True)

        def _fds():  # in the child: move the pipe ends out of the way, then onto fds 3 and 4
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_fds,
            close_fds=False,
            start_new_session=True,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
                if "method" in reply:
                    self.events.append(reply)
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise TimeoutError(f"no reply to {method} from chromium")
            ready, _, _ = select.select([self._r], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # only the process we started
            self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass


class Page:
    """One open tab: ``evaluate`` a JavaScript expression (promises awaited; JSON-encoded results
    are decoded), ``screenshot`` it, ``click``/``move`` the mouse."""

    def __init__(self, dt: DevTools, session: str):
        self.dt, self.session = dt, session

    def evaluate(self, expression: str, timeout: float = 30):
        res = self.dt.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            self.session,
            timeout=timeout,
        )
        if "exceptionDetails" in res:
            raise AssertionError(f"page script failed: {res['exceptionDetails']}")
        value = res["result"].get("value")
        return json.loads(value) if isinstance(value, str) else value

    def errors(self) -> list[str]:
        """Uncaught exceptions and console errors the page has reported so far."""
        out = []
        for ev in self.dt.events:
            p = ev.get("params", {})
            if ev.get("method") == "Runtime.exceptionThrown":
                out.append(str(p.get("exceptionDetails", {}).get("exception", {}).get("description") or p))
            elif ev.get("method") == "Runtime.consoleAPICalled" and p.get("type") == "error":
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        return out

    def screenshot(self, png_path: Path) -> None:
        shot = self.dt.call("Page.captureScreenshot", {"format": "png"}, self.session)
        png_path.parent.mkdir(parents=True, exist_ok=True)
        png_path.write_bytes(base64.b64decode(shot["data"]))

    def mouse(self, kind: str, x: float, y: float, **extra) -> None:
        self.dt.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, **extra}, self.session)

    def click(self, x: float, y: float, modifiers: int = 0) -> None:
        self.mouse("mouseMoved", x, y)
        for kind in ("mousePressed", "mouseReleased"):
            self.mouse(kind, x, y, button="left", clickCount=1, modifiers=modifiers)


_WAIT = """new Promise(function (resolve, reject) {
  var t0 = Date.now();
  (function poll() {
    var ok = false;
    try { ok = !!(READY); } catch (e) { ok = false; }  // (the document may not be there yet)
    if (ok) { resolve(true); }
    else if (Date.now() - t0 > 20000) { reject(new Error("the page never got ready")); }
    else { setTimeout(poll, 50); }
  })();
})"""


@contextmanager
def open_page(
    html_path: Path, profile: Path, ready: str, width: int = 1280, height: int = 800, downloads: Path | None = None
):
    """Open ``html_path`` in headless Chromium at ``width``×``height`` and wait until the JavaScript
    expression ``ready`` is true; yields a :class:`Page`."""
    binary = chromium()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the browser test needs it")
    dt = DevTools(binary, profile)
    try:
        if downloads is not None:
            dt.call(
                "Browser.setDownloadBehavior",
                {"behavior": "allow", "downloadPath": str(downloads), "eventsEnabled": True},
            )
        target = dt.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = dt.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        dt.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        dt.call("Page.enable", session=session)
        dt.call("Runtime.enable", session=session)  # script errors arrive as events (Page.errors)
        dt.call("Page.navigate", {"url": html_path.resolve().as_uri()}, session)
        page = Page(dt, session)
        page.evaluate(_WAIT.replace("READY", ready), timeout=40)
        yield page
    finally:
        dt.close()
