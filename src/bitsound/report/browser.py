"""Open a report in headless Chromium as a person would: load it, look at it, screenshot it.

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``:
commands on the child's fd 3, replies on its fd 4, messages separated by NUL bytes), so no
port, no websocket library and no network is involved. :func:`inspect_page` returns what the
page did: console errors and uncaught exceptions, each image's rendered and natural size, and
a PNG screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bitsound.errors import ConfigError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable on PATH (``$BITSOUND_CHROMIUM`` first), or None."""
    explicit = os.environ.get("BITSOUND_CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    """What a page did when loaded: ``errors`` (console errors, exceptions, failed loads),
    ``images`` (one dict per ``<img>``: complete, natural and rendered width/height),
    ``title``, ``screenshot`` (PNG bytes) and ``evaluated`` (results of the extra scripts)."""

    title: str
    errors: list[str]
    images: list[dict]
    screenshot: bytes
    evaluated: list = field(default_factory=list)


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int, *, timeout: float):
        self.write_fd, self.read_fd, self.timeout = write_fd, read_fd, timeout
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                chunk = os.read(self.read_fd, 1 << 16)
                if not chunk:
                    raise ConnectionError("Chromium closed the DevTools pipe")
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, *, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event


_IMAGES_JS = """JSON.stringify(Array.from(document.images).map(function (i) {
  var r = i.getBoundingClientRect();
  return {alt: i.alt, complete: i.complete, natural_width: i.naturalWidth,
          natural_height: i.naturalHeight, width: r.width, height: r.height};
}))"""


def inspect_page(path: Path, *, width: int = 1280, height: int = 900, full_page: bool = False,
                 scripts: tuple[str, ...] = (), timeout: float = 60.0, chromium: str | None = None
                 ) -> PageCheck:
    """Load ``path`` (an HTML file) in headless Chromium and report what happened.

    Parameters
    ----------
    path : Path
    width, height : int
        Viewport in CSS pixels; the screenshot is of the viewport unless ``full_page``.
    scripts : tuple of str
        JavaScript expressions evaluated after the load, in order (results in ``evaluated``;
        an expression may return a JSON string).
    timeout : float
        Seconds to wait for any one answer of the browser.
    chromium : str, optional
        Executable; default :func:`find_chromium`.

    Raises
    ------
    ConfigError
        No Chromium is installed.
    """
    exe = chromium or find_chromium()
    if exe is None:
        raise ConfigError("no Chromium found (install the Debian package 'chromium' or set "
                          "$BITSOUND_CHROMIUM to a Chrome/Chromium executable)")
    url = Path(path).resolve().as_uri()
    cmd_read, cmd_write = os.pipe()
    resp_read, resp_write = os.pipe()

    def child_fds() -> None:  # the protocol's fixed descriptors: commands on 3, replies on 4
        # via fresh copies: a pipe end may itself be fd 3 or 4, and dup2 onto the same fd would
        # keep its close-on-exec flag
        commands, replies = os.dup(cmd_read), os.dup(resp_write)
        os.dup2(commands, 3)
        os.dup2(replies, 4)

    with tempfile.TemporaryDirectory(prefix="bitsound-chromium-") as profile:
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--mute-audio",
                f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, close_fds=False, preexec_fn=child_fds)
        os.close(cmd_read)
        os.close(resp_write)
        pipe = _Pipe(cmd_write, resp_read, timeout=timeout)
        try:
            targets = pipe.send("Target.getTargets")["targetInfos"]
            page = next((t for t in targets if t["type"] == "page"), None)
            target = page["targetId"] if page else pipe.send("Target.createTarget", {"url": "about:blank"})[
                "targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                             "deviceScaleFactor": 1, "mobile": False},
                      session=session)
            pipe.events.clear()
            pipe.send("Page.navigate", {"url": url}, session=session)
            pipe.wait_for("Page.loadEventFired")
            title = pipe.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                              session=session)["result"].get("value", "")
            images = json.loads(pipe.send("Runtime.evaluate", {"expression": _IMAGES_JS,
                                                               "returnByValue": True},
                                          session=session)["result"]["value"])
            evaluated = []
            for script in scripts:
                reply = pipe.send("Runtime.evaluate", {"expression": script, "returnByValue": True},
                                  session=session)
                if "exceptionDetails" in reply:
                    evaluated.append({"exception": reply["exceptionDetails"].get("text", "")})
                else:
                    evaluated.append(reply["result"].get("value"))
            shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": full_page},
                             session=session)
            errors = _errors(pipe.events)
            with contextlib.suppress(ConnectionError, TimeoutError):
                pipe.send("Browser.close")
        finally:
            os.close(cmd_write)
            os.close(resp_read)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return PageCheck(title=title, errors=errors, images=images, screenshot=base64.b64decode(shot["data"]),
                     evaluated=evaluated)


def _errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and error log entries among DevTools events."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description") or details.get("text", "")
            found.append(f"uncaught exception: {description}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            found.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
    return found


__all__ = ["PageCheck", "find_chromium", "inspect_page"]
