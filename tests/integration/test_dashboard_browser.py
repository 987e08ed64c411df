"""
The dashboard in a real headless browser (Debian's ``chromium``): a real
scheduler with two workers, the page opened once, then driven and read over
the DevTools protocol (a minimal websocket client below, stdlib only), so
"updated without a reload" is checked for real: a marker set on the page
before a task is submitted is still there when the task shows up.
Screenshots of each page go to ``tmp_path / "screenshots"``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import HELLO, Mesh, free_port, wait_until

pytestmark = pytest.mark.integration


def chromium_binary() -> str | None:
    # The Debian wrapper does not exec (it cleans up after the browser): run
    # the browser itself, so the pid the test stops is the browser's.
    if os.access("/usr/lib/chromium/chromium", os.X_OK):
        return "/usr/lib/chromium/chromium"
    return shutil.which("chromium")


class DevTools:
    """One DevTools websocket connection: send a command, wait (bounded) for its answer."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        rest = url.removeprefix("ws://")
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the upgrade")
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.next_id = 0

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            data += chunk
        return data

    def _send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _receive(self) -> str:
        message = b""
        while True:
            first, second = self._exactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack(">H", self._exactly(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", self._exactly(8))
            payload = self._exactly(length)
            opcode = first & 0x0F
            if opcode in (0x1, 0x0):
                message += payload
                if first & 0x80:
                    return message.decode()
            elif opcode == 0x8:
                raise ConnectionError("DevTools closed the websocket")
            # ping/pong: ignored (Chromium does not ping its DevTools clients)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        wanted = self.next_id
        self._send(json.dumps({"id": wanted, "method": method, "params": params}))
        while True:  # events arrive in between: skip them
            answer = json.loads(self._receive())
            if answer.get("id") == wanted:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return dict(answer["result"])

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.sock.close()


def page_socket(debug_port: int) -> str:
    def listed() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json/list", timeout=5) as answer:
                pages = json.load(answer)
        except OSError:
            return None
        for page in pages:
            if page.get("type") == "page" and "webSocketDebuggerUrl" in page:
                return str(page["webSocketDebuggerUrl"])
        return None

    return wait_until(listed, 60, "chromium's DevTools to list the dashboard page")


@pytest.mark.skipif(chromium_binary() is None, reason="chromium is not installed (.ci/run installs it)")
def test_the_dashboard_lists_workers_and_shows_a_new_task_without_a_reload(
    mesh: Mesh, tmp_path: Path
) -> None:
    web_port = free_port()
    mesh.scheduler("scheduler", "--web", f"tcp:{web_port}:interface=127.0.0.1")
    mesh.scheduler_process.wait_for(rf"dashboard on http://127\.0\.0\.1:{web_port}/")
    mesh.workers("browser-w1", "browser-w2")
    debug_port = free_port()
    binary = chromium_binary()
    assert binary is not None
    mesh.start(
        "chromium",
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1280,900",
            f"--remote-debugging-port={debug_port}",
            "--remote-allow-origins=*",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"http://127.0.0.1:{web_port}/#workers",
        ],
    )
    screenshots = tmp_path / "screenshots"
    screenshots.mkdir()
    devtools = DevTools(page_socket(debug_port))
    try:

        def cell_texts() -> list[str]:
            return list(
                devtools.evaluate("[...document.querySelectorAll('#workers td')].map(c => c.textContent)")
            )

        wait_until(
            lambda: {"browser-w1@", "browser-w2@"} <= {text[: len("browser-wN@")] for text in cell_texts()},
            60,
            "the workers page to list both workers",
        )
        devtools.screenshot(screenshots / "workers.png")
        # The marker lives as long as this page: a reload would lose it.
        devtools.evaluate("window.taskmeshMarker = 'same page'; location.hash = '#overview'")
        succeeded_before = int(devtools.evaluate("document.getElementById('count-succeeded').textContent"))
        submitted = mesh.run_submit(HELLO)
        assert submitted.popen.returncode == 0, submitted.describe()
        wait_until(
            lambda: (
                int(devtools.evaluate("document.getElementById('count-succeeded').textContent") or 0)
                > succeeded_before
            ),
            60,
            "the overview to count the task submitted during the test",
        )
        assert devtools.evaluate("window.taskmeshMarker") == "same page"
        devtools.screenshot(screenshots / "overview.png")
        for page in ("tasks", "maps"):
            devtools.evaluate(f"location.hash = '#{page}'")
            wait_until(
                lambda page=page: devtools.evaluate(
                    f"document.getElementById('page-{page}').classList.contains('shown')"
                ),
                30,
                f"the {page} page to show",
            )
            if page == "tasks":  # the list read from the store has the task submitted above
                wait_until(
                    lambda: (
                        "succeeded"
                        in devtools.evaluate(
                            "[...document.querySelectorAll('#task-list td')].map(c => c.textContent)"
                        )
                    ),
                    30,
                    "the task list to show the finished task",
                )
            devtools.screenshot(screenshots / f"{page}.png")
        assert devtools.evaluate("window.taskmeshMarker") == "same page"
    finally:
        devtools.close()
    assert sorted(p.name for p in screenshots.iterdir()) == [
        "maps.png",
        "overview.png",
        "tasks.png",
        "workers.png",
    ]
    print(f"screenshots in {screenshots}")
