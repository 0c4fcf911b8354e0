"""Fixtures shared by the whole test suite.

``triton_sidecar`` is the real Triton Inference Server (tritonserver 2.51 from
nvidia-pytriton, CPU only) serving ``model_repository/`` through `inference.sidecar`,
started once per session on ephemeral loopback ports. Tests that use it need
``make install`` to have set up ``.venv/opt/pytriton`` and ``.venv/opt/triton-python``;
they are marked ``triton`` (``make test-fast`` deselects them), and the mark is added
automatically to any test that requests the fixture.
"""

from __future__ import annotations

import pytest

from tests.server_process import Server

TRITON_FIXTURE = "triton_sidecar"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRITON_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.triton)


@pytest.fixture(scope="session")
def triton_sidecar():
    """A started, ready `inference.sidecar.TritonSidecar`.

    Use ``triton_sidecar.grpc_url`` / ``http_url`` (``"127.0.0.1:PORT"``) and
    ``model_names``. Shared by the session: don't stop it or change its models.
    """
    from inference.sidecar import TritonSidecar

    with TritonSidecar() as sidecar:
        yield sidecar


@pytest.fixture(autouse=True)
def _triton_sidecar_survives(request):
    """Fails the first test after which the session's tritonserver is no longer running,
    with its exit status and the end of its log: every later Triton test would fail with
    "connection refused" and no clue."""
    if TRITON_FIXTURE not in request.fixturenames:
        yield
        return
    sidecar = request.getfixturevalue(TRITON_FIXTURE)
    was_running = sidecar.running
    yield
    if was_running and not sidecar.running:
        pytest.fail(
            f"the session's tritonserver died during this test "
            f"(exit status {sidecar.exit_status})"
            f"{sidecar.log_tail()}",
            pytrace=False,
        )


@pytest.fixture
def start_server():
    """Start ``python -m imagesvc.server`` subprocesses (``start(**env) -> (server, port)``);
    each is killed after the test."""
    started: list[Server] = []

    def start(**env: str) -> tuple[Server, int]:
        server = Server(**env)
        started.append(server)
        port = int(server.wait_event("started")["grpc"].rsplit(":", 1)[1])
        return server, port

    yield start
    for server in started:
        server.kill()
