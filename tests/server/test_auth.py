"""Bearer tokens, TLS and mutual TLS, over real gRPC on ephemeral loopback ports.

The servers run without Triton (its address is a closed port): nothing here detects, and the
health / reflection checks use the process-wide ``""`` service. A throwaway CA, a server
certificate (SAN 127.0.0.1 and localhost) and client certificates are made per module with
``cryptography``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from imagesvc.server import app, auth
from imagesvc.telemetry import names
from imagesvc.v1 import image_service_pb2 as pb
from imagesvc.v1 import image_service_pb2_grpc as pb_grpc
from tests import images
from tests.rpc_helpers import rich_status
from tests.server.conftest import server_settings
from tests.test_cli import run_cli
from tests.tls_certs import CertificateAuthority

SERVICE = "imagesvc.v1.ImageService"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings(**overrides):
    return server_settings(f"127.0.0.1:{closed_port()}", workers=1, **overrides)


def resize_request() -> pb.ProcessImageRequest:
    return pb.ProcessImageRequest(
        source=pb.ImageSource(data=images.jpeg(images.coords(64, 48))),
        pipelines=[pb.Pipeline(operations=[pb.Operation(resize=pb.Resize(width=32))])],
        output=pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG),
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def refused(call, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    assert rich_status(caught.value)[0] == reason
    return caught.value


# --- certificates -----------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]]  # name -> (cert, key)
    other_ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    authority = CertificateAuthority(directory, "imagesvc test CA")
    server = authority.issue("imagesvc", names=("localhost", "127.0.0.1"))
    clients = {}
    # "gateway": allowed by its DNS SAN (its CN is another name); "intruder": not allowed.
    for name, cn in (("gateway", "gateway-cn"), ("intruder", "intruder")):
        issued = authority.issue(cn, server=False, names=(f"{name}.example",))
        clients[name] = (issued.cert_path, issued.key_path)
    other = CertificateAuthority(directory, "another CA")
    return Pki(authority.cert_path, server.cert_path, server.key_path, clients, other.cert_path)


def tls_channel(port: int, pki: Pki, client: str | None = None, ca: Path | None = None):
    cert = key = None
    if client is not None:
        cert_path, key_path = pki.clients[client]
        cert, key = cert_path.read_bytes(), key_path.read_bytes()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(ca or pki.ca).read_bytes(), private_key=key, certificate_chain=cert
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


# --- servers ----------------------------------------------------------------------------------


@dataclass
class Served:
    running: app.RunningServer
    registry: CollectorRegistry
    tokens: Path | None = None

    @property
    def port(self) -> int:
        return self.running.port

    def sample(self, name: str, labels: dict[str, str]) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


async def _start(**overrides) -> Served:
    registry = CollectorRegistry()
    running = await app.start(settings(**overrides), registry)
    return Served(running, registry)


@pytest.fixture(scope="module")
async def token_server(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text("# rotated weekly\n\n  first-token  \nsecond-token\n")
    served = await _start(auth_tokens_path=str(path))
    served.tokens = path
    yield served
    await served.running.stop(1.0)


@pytest.fixture(scope="module")
async def token_channel(token_server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        yield channel


# --- tokens -----------------------------------------------------------------------------------


async def test_no_token_is_unauthenticated_missing(token_server, token_channel):
    stub = pb_grpc.ImageServiceStub(token_channel)
    before = token_server.sample(
        names.GRPC_SERVER_HANDLED,
        {
            "grpc_type": "unary",
            "grpc_service": SERVICE,
            "grpc_method": "ProcessImage",
            "grpc_code": "UNAUTHENTICATED",
        },
    )
    refusals = token_server.sample(names.AUTH_REFUSALS, {"reason": "AUTH_TOKEN_MISSING"})
    await refused(
        stub.ProcessImage(resize_request(), timeout=10),
        grpc.StatusCode.UNAUTHENTICATED,
        "AUTH_TOKEN_MISSING",
    )
    await refused(
        stub.DescribeImage(pb.DescribeImageRequest(source=resize_request().source), timeout=10),
        grpc.StatusCode.UNAUTHENTICATED,
        "AUTH_TOKEN_MISSING",
    )
    # Counted, and in the standard RPC metrics with their code.
    assert token_server.sample(names.AUTH_REFUSALS, {"reason": "AUTH_TOKEN_MISSING"}) == (
        refusals + 2
    )
    handled = token_server.sample(
        names.GRPC_SERVER_HANDLED,
        {
            "grpc_type": "unary",
            "grpc_service": SERVICE,
            "grpc_method": "ProcessImage",
            "grpc_code": "UNAUTHENTICATED",
        },
    )
    assert handled == before + 1


@pytest.mark.parametrize(
    "value", ["Bearer wrong-token", "Bearer first-token-", "Basic Zmlyc3QtdG9rZW4=", "Bearer"]
)
async def test_a_wrong_token_is_unauthenticated_invalid(token_server, token_channel, value):
    stub = pb_grpc.ImageServiceStub(token_channel)
    refusals = token_server.sample(names.AUTH_REFUSALS, {"reason": "AUTH_TOKEN_INVALID"})
    error = await refused(
        stub.ProcessImage(resize_request(), timeout=10, metadata=(("authorization", value),)),
        grpc.StatusCode.UNAUTHENTICATED,
        "AUTH_TOKEN_INVALID",
    )
    assert "wrong-token" not in error.details()
    assert token_server.sample(names.AUTH_REFUSALS, {"reason": "AUTH_TOKEN_INVALID"}) == (
        refusals + 1
    )


@pytest.mark.parametrize(
    "value", ["Bearer first-token", "bearer second-token", "BEARER  first-token"]
)
async def test_an_accepted_token_is_served(token_channel, value):
    stub = pb_grpc.ImageServiceStub(token_channel)
    response = await stub.ProcessImage(
        resize_request(), timeout=30, metadata=(("authorization", value),)
    )
    assert (response.width, response.height, response.format) == (32, 24, pb.IMAGE_FORMAT_PNG)


async def test_a_refusal_never_reaches_the_servicer(token_server, token_channel):
    stub = pb_grpc.ImageServiceStub(token_channel)
    decoded = {"reason": "IMAGE_FORMAT_UNRECOGNIZED"}
    before = token_server.sample(names.ERRORS, decoded)
    junk = pb.ProcessImageRequest(source=pb.ImageSource(data=b"no image"))
    await refused(
        stub.ProcessImage(junk, timeout=10), grpc.StatusCode.UNAUTHENTICATED, "AUTH_TOKEN_MISSING"
    )
    assert token_server.sample(names.ERRORS, decoded) == before
    await refused(
        stub.ProcessImage(junk, timeout=10, metadata=bearer("first-token")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "IMAGE_FORMAT_UNRECOGNIZED",
    )


async def test_health_and_reflection_need_no_token(token_channel):
    health = health_pb2_grpc.HealthStub(token_channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    # Guarded service's health is still answered (NOT_SERVING here: no Triton).
    await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
    reflection = reflection_pb2_grpc.ServerReflectionStub(token_channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    services = set()
    async for answer in reflection.ServerReflectionInfo(iter([request]), timeout=10):
        services |= {s.name for s in answer.list_services_response.service}
    assert SERVICE in services


async def test_tokens_rotate_without_a_restart(token_server, token_channel):
    stub = pb_grpc.ImageServiceStub(token_channel)
    await stub.ProcessImage(resize_request(), timeout=30, metadata=bearer("first-token"))
    path = token_server.tokens
    original = path.read_text()
    try:
        rotated = path.with_name("tokens.new")
        rotated.write_text("rotated-token\n")
        os.replace(rotated, path)  # as a Kubernetes secret update does: a new inode
        await _eventually_refused(stub, "first-token")
        await stub.ProcessImage(resize_request(), timeout=30, metadata=bearer("rotated-token"))
        # An unreadable file keeps the last good list.
        path.unlink()
        await asyncio.sleep(auth.RELOAD_INTERVAL_S + 0.2)
        await stub.ProcessImage(resize_request(), timeout=30, metadata=bearer("rotated-token"))
        # Rewritten in place (same inode, other size).
        path.write_text("in-place-token-1\n")
        await _eventually_refused(stub, "rotated-token")
        await stub.ProcessImage(resize_request(), timeout=30, metadata=bearer("in-place-token-1"))
    finally:
        path.write_text(original)
        await _eventually_refused(stub, "in-place-token-1")


async def _eventually_refused(stub, token: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5 * auth.RELOAD_INTERVAL_S
    while True:
        try:
            await stub.ProcessImage(resize_request(), timeout=30, metadata=bearer(token))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert rich_status(error)[0] == "AUTH_TOKEN_INVALID"
            return
        assert loop.time() < deadline, f"{token} still accepted"
        await asyncio.sleep(0.2)


def test_the_token_file_logic(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# comment\nalpha\n  beta \n\n")
    tokens = auth.TokenFile(str(path), reload_interval_s=0)
    assert tokens.accepts("alpha") and tokens.accepts("beta")
    assert (
        not tokens.accepts("# comment") and not tokens.accepts("") and not tokens.accepts("gamma")
    )
    path.write_text("")  # emptied: keeps the last good list
    assert tokens.accepts("alpha")
    path.write_text("gamma\n")
    assert tokens.accepts("gamma") and not tokens.accepts("alpha")


@pytest.mark.parametrize("content", [None, "", "# only a comment\n\n"])
async def test_a_bad_token_file_fails_the_start(tmp_path, content):
    path = tmp_path / "tokens"
    if content is not None:
        path.write_text(content)
    with pytest.raises(app.StartError) as caught:
        await app.start(settings(auth_tokens_path=str(path)), CollectorRegistry())
    message = str(caught.value)
    assert "IMAGESVC_AUTH_TOKENS_PATH" in message and "\n" not in message


def test_the_token_is_never_logged(tmp_path, capsys):
    # The refusal message of the interceptor is what the rpc_rejected log line carries.
    for value in ("Bearer sekrit-value", "Token sekrit-value"):
        with pytest.raises(auth.Unauthenticated) as caught:
            auth_check(tmp_path, value)
        assert "sekrit" not in caught.value.message


def auth_check(tmp_path, value: str) -> None:
    from imagesvc.telemetry.metrics import NullMetrics

    path = tmp_path / "tokens"
    path.write_text("right\n")
    interceptor = auth.AuthInterceptor(NullMetrics(), tokens=auth.TokenFile(str(path)))

    class Context:
        def invocation_metadata(self):
            return (("authorization", value),)

    interceptor.check(Context())


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def tls_server(pki):
    served = await _start(tls_cert_path=str(pki.server_cert), tls_key_path=str(pki.server_key))
    yield served
    await served.running.stop(1.0)


async def test_tls_serves_a_client_that_trusts_the_ca(tls_server, pki):
    async with tls_channel(tls_server.port, pki) as channel:
        stub = pb_grpc.ImageServiceStub(channel)
        response = await stub.ProcessImage(resize_request(), timeout=30)
        assert response.width == 32
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_tls_refuses_plaintext_and_untrusted_clients(tls_server, pki):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.ImageServiceStub(channel).ProcessImage(resize_request(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    async with tls_channel(tls_server.port, pki, ca=pki.other_ca) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.ImageServiceStub(channel).ProcessImage(resize_request(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# --- mutual TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def mtls_server(pki):
    served = await _start(
        tls_cert_path=str(pki.server_cert),
        tls_key_path=str(pki.server_key),
        tls_client_ca_path=str(pki.ca),
        tls_allowed_client_names=("gateway.example", "other-gateway"),
    )
    yield served
    await served.running.stop(1.0)


async def test_mtls_needs_a_client_certificate(mtls_server, pki):
    async with tls_channel(mtls_server.port, pki) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.ImageServiceStub(channel).ProcessImage(resize_request(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake failed
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_serves_an_allowed_client(mtls_server, pki):
    async with tls_channel(mtls_server.port, pki, client="gateway") as channel:
        response = await pb_grpc.ImageServiceStub(channel).ProcessImage(
            resize_request(), timeout=30
        )
        assert response.width == 32


async def test_mtls_denies_a_client_of_another_name(mtls_server, pki):
    before = mtls_server.sample(names.AUTH_REFUSALS, {"reason": "CLIENT_NOT_ALLOWED"})
    async with tls_channel(mtls_server.port, pki, client="intruder") as channel:
        error = await refused(
            pb_grpc.ImageServiceStub(channel).ProcessImage(resize_request(), timeout=10),
            grpc.StatusCode.PERMISSION_DENIED,
            "CLIENT_NOT_ALLOWED",
        )
        assert rich_status(error)[1]["client_names"] == "intruder,intruder.example"
        # Health stays open to any client the CA signed.
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert mtls_server.sample(names.AUTH_REFUSALS, {"reason": "CLIENT_NOT_ALLOWED"}) == before + 1
    assert (
        mtls_server.sample(
            names.GRPC_SERVER_HANDLED,
            {
                "grpc_type": "unary",
                "grpc_service": SERVICE,
                "grpc_method": "ProcessImage",
                "grpc_code": "PERMISSION_DENIED",
            },
        )
        == 1
    )


# --- bad TLS settings fail the start ------------------------------------------------------------


def _bad_tls_settings(pki: Pki, tmp_path: Path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    # A key that is not the server certificate's.
    other_key = CertificateAuthority(tmp_path, "unrelated").issue("unrelated").key_path
    missing = str(tmp_path / "missing.pem")
    cert, key, ca = str(pki.server_cert), str(pki.server_key), str(pki.ca)
    return [
        ({"tls_cert_path": cert}, "IMAGESVC_TLS_KEY_PATH"),
        ({"tls_key_path": key}, "IMAGESVC_TLS_CERT_PATH"),
        ({"tls_cert_path": missing, "tls_key_path": key}, "IMAGESVC_TLS_CERT_PATH"),
        ({"tls_cert_path": cert, "tls_key_path": missing}, "IMAGESVC_TLS_KEY_PATH"),
        ({"tls_cert_path": str(garbage), "tls_key_path": key}, "IMAGESVC_TLS_CERT_PATH"),
        ({"tls_cert_path": cert, "tls_key_path": str(other_key)}, "IMAGESVC_TLS_KEY_PATH"),
        (
            {"tls_cert_path": cert, "tls_key_path": key, "tls_client_ca_path": missing},
            "IMAGESVC_TLS_CLIENT_CA_PATH",
        ),
        (
            {"tls_cert_path": cert, "tls_key_path": key, "tls_client_ca_path": str(garbage)},
            "IMAGESVC_TLS_CLIENT_CA_PATH",
        ),
        ({"tls_client_ca_path": ca}, "IMAGESVC_TLS_CLIENT_CA_PATH"),
        (
            {"tls_cert_path": cert, "tls_key_path": key, "tls_allowed_client_names": ("a",)},
            "IMAGESVC_TLS_ALLOWED_CLIENT_NAMES",
        ),
    ]


async def test_bad_tls_settings_fail_the_start(pki, tmp_path):
    for overrides, setting in _bad_tls_settings(pki, tmp_path):
        with pytest.raises(app.StartError) as caught:
            running = await app.start(settings(**overrides), CollectorRegistry())
            await running.stop(None)
        message = str(caught.value)
        assert setting in message and "\n" not in message, (overrides, message)


# --- the CLI against a token + mutual TLS server -------------------------------------------------


@pytest.fixture(scope="module")
async def locked_server(pki, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-tokens") / "tokens"
    path.write_text("cli-token\n")
    served = await _start(
        auth_tokens_path=str(path),
        tls_cert_path=str(pki.server_cert),
        tls_key_path=str(pki.server_key),
        tls_client_ca_path=str(pki.ca),
        tls_allowed_client_names=("gateway.example",),
    )
    yield served
    await served.running.stop(1.0)


async def test_the_cli_with_a_token_and_mutual_tls(locked_server, pki, tmp_path):
    source = tmp_path / "in.jpg"
    source.write_bytes(images.jpeg(images.coords(64, 48)))
    out = tmp_path / "out.png"
    token_file = tmp_path / "token"
    token_file.write_text("cli-token\n")
    cert, key = pki.clients["gateway"]
    target = f"localhost:{locked_server.port}"
    tls = ["--target", target, "--tls-ca", str(pki.ca), "--tls-cert", str(cert)]
    tls += ["--tls-key", str(key)]
    command = ["process", str(source), "-o", str(out), "--format", "png"]
    code, stdout, stderr = await run_cli(*command, *tls, "--token-file", str(token_file))
    assert code == 0, stderr
    assert "wrote" in stdout and "64x48" in stdout and "etag" in stdout
    assert images.decode(out.read_bytes()).width == 64
    # The same with the token after the command, and then none: UNAUTHENTICATED.
    code, _, stderr = await run_cli(*tls, *command, "--token", "cli-token")
    assert code == 0, stderr
    code, _, stderr = await run_cli(*command, *tls)
    assert code == 1
    assert stderr.startswith("error: UNAUTHENTICATED AUTH_TOKEN_MISSING: ")
    # The health command over the same channel, without a token.
    code, stdout, stderr = await run_cli("health", "--service", "", *tls)
    assert (code, stdout.strip()) == (0, "(server): SERVING"), stderr
    # Without --tls the handshake fails: one line, exit 1.
    code, _, stderr = await run_cli("health", "--service", "", "--target", target)
    assert code == 1 and len(stderr.strip().splitlines()) == 1


async def test_the_cli_takes_the_token_from_the_environment(
    locked_server, pki, tmp_path, monkeypatch
):
    source = tmp_path / "in.jpg"
    source.write_bytes(images.jpeg(images.coords(64, 48)))
    cert, key = pki.clients["gateway"]
    args = ["describe", str(source), "--target", f"127.0.0.1:{locked_server.port}", "--tls"]
    args += ["--tls-ca", str(pki.ca), "--tls-cert", str(cert), "--tls-key", str(key)]
    monkeypatch.setenv("IMAGESVC_TOKEN", "cli-token")
    code, stdout, stderr = await run_cli(*args)
    assert code == 0, stderr
    assert '"width": 64' in stdout


def test_refusals_are_counted_in_both_backends():
    from imagesvc.telemetry.dogstatsd import DogStatsdMetrics
    from imagesvc.telemetry.metrics import FanOutMetrics, PrometheusMetrics
    from tests.telemetry.test_detection_cache_metrics import RecordingStatsd

    statsd = RecordingStatsd()
    registry = CollectorRegistry()
    metrics = FanOutMetrics(PrometheusMetrics(registry), DogStatsdMetrics("imagesvc", statsd))
    for reason in ("AUTH_TOKEN_MISSING", "CLIENT_NOT_ALLOWED", "AUTH_TOKEN_MISSING"):
        metrics.auth_refused(reason)
    assert names.AUTH_REFUSALS == "imagesvc_auth_refusals_total"
    assert registry.get_sample_value(names.AUTH_REFUSALS, {"reason": "AUTH_TOKEN_MISSING"}) == 2
    assert registry.get_sample_value(names.AUTH_REFUSALS, {"reason": "CLIENT_NOT_ALLOWED"}) == 1
    assert statsd.increments == [
        ("auth.refusals", ["reason:AUTH_TOKEN_MISSING"]),
        ("auth.refusals", ["reason:CLIENT_NOT_ALLOWED"]),
        ("auth.refusals", ["reason:AUTH_TOKEN_MISSING"]),
    ]
