"""``python -m imagesvc.server`` as a subprocess on an ephemeral loopback port, for tests that
need the real process: its start and stop, signals, and crash isolation (a libvips crash kills
the process, not the test run). ``start_server`` (tests/conftest.py) starts them and kills them
after the test."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Server:
    """``python -m imagesvc.server`` with JSON logs; its log events, timestamped on arrival."""

    def __init__(self, **env: str) -> None:
        values = {
            "IMAGESVC_HOST": "127.0.0.1",
            "IMAGESVC_PORT": "0",
            "IMAGESVC_METRICS_PORT": "0",
            "IMAGESVC_TRITON_URL": f"127.0.0.1:{free_port()}",  # nothing listens there
            "IMAGESVC_LOG_FORMAT": "json",
            "IMAGESVC_WORKERS": "2",
            "IMAGESVC_MAX_QUEUE": "512",
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imagesvc.server"],
            cwd=REPO,
            env=dict(os.environ, **values),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.events: list[tuple[float, dict]] = []
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events.append((time.monotonic(), event))

    def event(self, name: str) -> tuple[float, dict] | None:
        return next(((t, e) for t, e in self.events if e.get("event") == name), None)

    def wait_event(self, name: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = self.event(name)
            if found:
                return found[1]
            time.sleep(0.05)
        found = self.event(name)
        assert found, f"no {name!r} log event; output:\n{''.join(self.lines)}"
        return found[1]

    def output(self) -> str:
        self._reader.join(timeout=5)
        return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
