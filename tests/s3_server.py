"""A real local S3-compatible server for object-source tests: moto's ThreadedMotoServer on an
ephemeral loopback port, with every request it serves recorded (so a test can prove that a
conditional request was answered 304 without a body, or that nothing was fetched at all).

The client side gets fake credentials through the standard AWS environment variables
(``s3_env``), exactly as a deployment's would come from its environment: imagesvc itself never
passes keys.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

ACCESS_KEY = "AKIAIMAGESVCTESTKEY0"
SECRET_KEY = "imagesvc-test-secret-key-not-a-real-one"
REGION = "us-east-1"


@dataclass
class Served:
    method: str
    path: str
    query: str
    if_none_match: str | None
    if_modified_since: str | None
    status: int = 0


@dataclass
class _Log:
    lock: threading.Lock = field(default_factory=threading.Lock)
    served: list[Served] = field(default_factory=list)


class _QuietHandler(MotoRequestHandler):
    def log_request(self, code="-", size="-") -> None:
        pass


class RecordingMotoServer(ThreadedMotoServer):
    """ThreadedMotoServer whose WSGI app records each request and the status it answered."""

    def __init__(self) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.log = _Log()

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        log = self.log

        def recording(environ, start_response):
            entry = Served(
                environ.get("REQUEST_METHOD", ""),
                environ.get("PATH_INFO", ""),
                environ.get("QUERY_STRING", ""),
                environ.get("HTTP_IF_NONE_MATCH"),
                environ.get("HTTP_IF_MODIFIED_SINCE"),
            )

            def start(status, headers, exc_info=None):
                entry.status = int(status.split()[0])
                return start_response(status, headers, exc_info)

            with log.lock:
                log.served.append(entry)
            return app(environ, start)

        self._server = make_server(
            self._ip_address, self._port, recording, True, request_handler=_QuietHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def endpoint_url(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def served(self) -> list[Served]:
        with self.log.lock:
            return list(self.log.served)

    def gets(self, bucket: str, key: str) -> list[Served]:
        """The GETs of s3://bucket/key served so far (path-style addressing)."""
        return [s for s in self.served() if s.method == "GET" and s.path == f"/{bucket}/{key}"]


S3_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": REGION,
    # Never look further along the chain than the environment: no files, no metadata service.
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/imagesvc-test-credentials",
    "AWS_CONFIG_FILE": "/nonexistent/imagesvc-test-config",
    "AWS_EC2_METADATA_DISABLED": "true",
}
CLEARED = (
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


# Fixtures: import them into a test module by these names (pytest registers them as s3_server
# and s3_env), e.g. ``from tests.s3_server import s3_env_fixture, s3_server_fixture``.
@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture():
    server = RecordingMotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", name="s3_env")
def s3_env_fixture():
    """The fake credentials in the environment for the whole session (the servers that the
    session fixtures start create their clients lazily, on a later fetch)."""
    mp = pytest.MonkeyPatch()
    for name, value in S3_ENV.items():
        mp.setenv(name, value)
    for name in CLEARED:
        mp.delenv(name, raising=False)
    yield S3_ENV
    mp.undo()


def admin_client(server: RecordingMotoServer):
    """A plain boto3 client for setting up buckets and objects on the test server."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
