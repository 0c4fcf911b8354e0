"""The datadog package (which brings requests and urllib3, ~5 MB of RSS) is imported only when
DogStatsD is enabled."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CODE = """
import sys
from prometheus_client import CollectorRegistry
from imagesvc.server import app
from imagesvc.settings import Settings

assert "datadog" not in sys.modules, "imported at start"
app.build_metrics(Settings(dogstatsd_enabled=False), CollectorRegistry())
assert "datadog" not in sys.modules, "imported with DogStatsD off"
metrics = app.build_metrics(Settings(dogstatsd_enabled=True), CollectorRegistry())
assert "datadog" in sys.modules
print(type(metrics).__name__)
"""


def test_datadog_is_imported_only_when_dogstatsd_is_enabled():
    # A fresh interpreter: this test process may have imported datadog already.
    done = subprocess.run(
        [sys.executable, "-c", CODE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "FanOutMetrics"
