"""Command line client: ``python -m imagesvc.cli {process,describe,health}``.

The pipeline file is a ProcessImageRequest in proto-JSON, the same file grpcurl takes
(``grpcurl -plaintext -d @ 127.0.0.1:50051 imagesvc.v1.ImageService/ProcessImage < FILE``);
the CLI fills ``source`` from the input: a file's bytes, ``source.url`` for an http(s) URL
(or ``--url URL``), ``source.object`` for ``s3://BUCKET/KEY[?versionId=V]`` (or
``--object``). ``--preset NAME`` (repeatable) names presets, ``--if-none-match ETAG`` asks for
``not_modified`` when the result is the one held.

The connection options go before or after the command: ``--target`` and ``--timeout``;
``--token TOKEN`` / ``--token-file PATH`` (else the environment's ``IMAGESVC_TOKEN``), sent as
``authorization: Bearer TOKEN`` metadata on ImageService calls (health needs none); ``--tls``
for a TLS channel, with ``--tls-ca PATH`` (the CA to trust; default: the system's),
``--tls-cert PATH`` and ``--tls-key PATH`` (a client certificate, for mutual TLS) and
``--tls-server-name NAME`` (the name to verify in the server's certificate); any ``--tls-*``
option implies ``--tls``.

Every failure is one line on stderr (plus one line per field violation of a rejected request)
and a non-zero exit status:

- 1: the service answered with an error (its ErrorInfo reason is printed), could not be
  reached, or (``health``) is not SERVING;
- 2: the command line is wrong: a bad option, an input or pipeline file that cannot be read, a
  pipeline that is not a valid ProcessImageRequest, an output file that cannot be written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from imagesvc.options import ENUM_BY_FORMAT, FORMAT_BY_ENUM
from imagesvc.v1 import image_service_pb2 as pb
from imagesvc.v1 import image_service_pb2_grpc as pb_grpc

MAX_MESSAGE = 64 * 1024 * 1024
DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT_S = 30.0
EXIT_FAILED = 1  # the service said no, could not be reached, or is not SERVING
EXIT_USAGE = 2  # the command line or its files are wrong (argparse uses 2 too)
# Retries come from the gRPC service config, for UNAVAILABLE only (safe: RPCs are stateless).
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "imagesvc.v1.ImageService"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


TOKEN_ENV = "IMAGESVC_TOKEN"


def _channel(args: argparse.Namespace) -> grpc.Channel:
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.service_config", SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
    ]
    credentials = _channel_credentials(args)
    if credentials is None:
        return grpc.insecure_channel(args.target, options=options)
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return grpc.secure_channel(args.target, credentials, options=options)


def _uses_tls(args: argparse.Namespace) -> bool:
    return bool(args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name)


def _channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials from --tls*; None for a plaintext channel."""
    if not _uses_tls(args):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("a client certificate needs both --tls-cert and --tls-key")
    ca = _read(args.tls_ca, "--tls-ca file") if args.tls_ca else None
    cert = _read(args.tls_cert, "--tls-cert file") if args.tls_cert else None
    key = _read(args.tls_key, "--tls-key file") if args.tls_key else None
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def _call_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """``authorization: Bearer TOKEN`` from --token, --token-file or $IMAGESVC_TOKEN; none
    without a token."""
    if args.token and args.token_file:
        raise UsageError("give --token or --token-file, not both")
    if args.token:
        token = args.token
    elif args.token_file:
        token = _read(args.token_file, "token file", text=True).strip()
        if not token:
            raise UsageError(f"token file {args.token_file} is empty")
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    token = token.strip()
    if not token:
        return ()
    if any(c.isspace() for c in token):
        raise UsageError("a token cannot contain whitespace")
    return (("authorization", f"Bearer {token}"),)


class UsageError(Exception):
    """A problem with the command line or its files: one line, exit status 2."""


def _read(path: str, what: str, *, text: bool = False) -> bytes | str:
    try:
        return Path(path).read_text() if text else Path(path).read_bytes()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {what} {path}: {_reason(error)}") from None


def _source(input_: str) -> pb.ImageSource:
    """An http(s) URL becomes a url source, fetched by the service; ``s3://BUCKET/KEY`` an
    object source; anything else is a file."""
    if input_.startswith(("http://", "https://")):
        return pb.ImageSource(url=input_)
    if input_.startswith("s3://"):
        return pb.ImageSource(object=_object(input_))
    return pb.ImageSource(data=_read(input_, "input image"))


def _object(url: str) -> pb.ObjectLocation:
    """``s3://BUCKET/KEY[?versionId=V]`` (the key as it is, not percent-decoded)."""
    if not url.startswith("s3://"):
        raise UsageError(f"{url} is not an object URL s3://BUCKET/KEY[?versionId=V]")
    rest = url[len("s3://") :]
    version = ""
    if "?versionId=" in rest:
        rest, version = rest.rsplit("?versionId=", 1)
        if not version:
            raise UsageError(f"{url}: versionId is empty")
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise UsageError(f"{url} is not an object URL s3://BUCKET/KEY[?versionId=V]")
    return pb.ObjectLocation(bucket=bucket, key=key, version_id=version)


def _input(args: argparse.Namespace) -> str:
    """The one source of process/describe: the positional input, --url or --object."""
    given = [value for value in (args.input, args.url, args.object) if value]
    if len(given) != 1:
        raise UsageError("give exactly one source: INPUT, --url URL or --object s3://BUCKET/KEY")
    if args.url and not args.url.startswith(("http://", "https://")):
        raise UsageError(f"--url {args.url} is not an http(s) URL")
    if args.object:
        _object(args.object)  # the error names --object's value
    return given[0]


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)


def _parse_pipeline(path: str, request: pb.ProcessImageRequest) -> None:
    try:
        json_format.Parse(_read(path, "pipeline file", text=True), request)
    except json_format.ParseError as error:
        # protobuf nests "Failed to parse X field: " per level and may wrap lines.
        message = " ".join(line.strip() for line in str(error).splitlines())
        message = re.sub(r"^(Failed to parse \w+ field: )+", "", message).rstrip(".")
        raise UsageError(
            f"{path} is not a valid ProcessImageRequest (proto-JSON): {message}"
        ) from None


def _report(error: grpc.RpcError, target: str) -> int:
    if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        if not _has_status_details(error):  # gRPC's own: nothing answered in time
            what = (
                "cannot reach" if error.code() == grpc.StatusCode.UNAVAILABLE else "no reply from"
            )
            print(
                f"error: {what} imagesvc at {target} ({error.code().name}: {error.details()})",
                file=sys.stderr,
            )
            return EXIT_FAILED
    status = rpc_status.from_call(error)
    reason = ""
    lines = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            lines += [f"  {v.field}: {v.description}" for v in bad.field_violations]
    label = f"{error.code().name} {reason}" if reason else error.code().name
    print(f"error: {label}: {error.details()}", file=sys.stderr)
    for line in lines:
        print(line, file=sys.stderr)
    return EXIT_FAILED


def _has_status_details(error: grpc.RpcError) -> bool:
    metadata = error.trailing_metadata() or ()
    return any(key == "grpc-status-details-bin" for key, _ in metadata)


def _format_name(value: int) -> str:
    return FORMAT_BY_ENUM.get(value, "unspecified")


def process_request(args: argparse.Namespace) -> pb.ProcessImageRequest:
    """The ProcessImageRequest of a ``process`` command line."""
    request = pb.ProcessImageRequest()
    if args.pipeline:
        _parse_pipeline(args.pipeline, request)
    request.source.CopyFrom(_source(_input(args)))
    if args.format:
        request.output.format = ENUM_BY_FORMAT[args.format]
    if args.if_none_match:
        request.if_none_match = args.if_none_match
    request.presets.extend(args.preset or ())
    return request


def cmd_process(args: argparse.Namespace) -> int:
    # The connection options first: their mistakes are cheaper to find than the input's.
    metadata = _call_metadata(args)
    stub = pb_grpc.ImageServiceStub(_channel(args))
    input_ = _input(args)
    request = process_request(args)
    try:
        response = stub.ProcessImage(request, timeout=args.timeout, metadata=metadata)
    except grpc.RpcError as error:
        return _report(error, args.target)
    if response.not_modified:
        print(f"not modified: etag {response.etag} (nothing written)")
        return 0
    stem = Path(input_.split("?", 1)[0]).stem or "source"
    output = Path(args.output or f"{stem}.out.{_format_name(response.format)}")
    try:
        output.write_bytes(response.data)
    except OSError as error:
        raise UsageError(f"cannot write {output}: {_reason(error)}") from None
    print(
        f"wrote {output} ({_format_name(response.format)}, {response.width}x{response.height}, "
        f"{len(response.data)} bytes)"
    )
    if response.fallback_used:
        print(
            f"  fallback image used: the source failed with {response.fallback_reason} "
            f"(fallback_status {response.fallback_status})"
        )
    if response.processing_skipped:
        print("  processing skipped: the source is returned as it is")
    if response.etag:
        print(f"  etag {response.etag}")
    if response.cache_control:
        print(f"  cache-control {response.cache_control}")
    for det in response.detections:
        b = det.box
        print(
            f"  detection {det.class_name} {det.confidence:.2f} "
            f"box=({b.left},{b.top},{b.width}x{b.height})"
        )
    for item in response.degradations:
        print(f"  degraded {item.reason} [{item.operation}]: {item.message}")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    metadata = _call_metadata(args)
    stub = pb_grpc.ImageServiceStub(_channel(args))
    request = pb.DescribeImageRequest(source=_source(_input(args)), detect=args.detect)
    try:
        response = stub.DescribeImage(request, timeout=args.timeout, metadata=metadata)
    except grpc.RpcError as error:
        return _report(error, args.target)
    print(json_format.MessageToJson(response, indent=2))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    stub = health_pb2_grpc.HealthStub(_channel(args))
    try:
        response = stub.Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
        )
    except grpc.RpcError as error:
        print(
            f"{args.service or '(server)'}: {error.code().name} ({args.target}: {error.details()})",
            file=sys.stderr,
        )
        return EXIT_FAILED
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{args.service or '(server)'}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else EXIT_FAILED


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


# The connection options: (flags, add_argument keywords without default and help, default, help).
CONNECTION_OPTIONS = (
    (("--target",), {"metavar": "HOST:PORT"}, DEFAULT_TARGET, "service address HOST:PORT"),
    (
        ("--timeout",),
        {"type": float, "metavar": "SECONDS"},
        DEFAULT_TIMEOUT_S,
        "RPC deadline in seconds",
    ),
    (
        ("--token",),
        {"metavar": "TOKEN"},
        None,
        f"bearer token for ImageService calls (default: ${TOKEN_ENV})",
    ),
    (("--token-file",), {"metavar": "PATH"}, None, "file holding the bearer token"),
    (("--tls",), {"action": "store_true"}, False, "connect with TLS (implied by --tls-*)"),
    (
        ("--tls-ca",),
        {"metavar": "PATH"},
        None,
        "PEM CA certificates to trust (default: the system's)",
    ),
    (("--tls-cert",), {"metavar": "PATH"}, None, "PEM client certificate chain (mutual TLS)"),
    (("--tls-key",), {"metavar": "PATH"}, None, "PEM private key of --tls-cert"),
    (
        ("--tls-server-name",),
        {"metavar": "NAME"},
        None,
        "name to verify in the server certificate (default: the target's host)",
    ),
)


def _connection_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """--target, --timeout, the token and TLS options. The top-level parser holds the defaults;
    each command's parser repeats the options with SUPPRESS defaults, so they work after the
    command too and only override the top-level values when given there."""
    for flags, keywords, default, help in CONNECTION_OPTIONS:
        if defaults:
            parser.add_argument(*flags, default=default, help=help, **keywords)
        else:
            shown = f" (default: {default})" if default not in (None, False) else ""
            parser.add_argument(
                *flags, default=argparse.SUPPRESS, help=f"{help}{shown}", **keywords
            )


def _source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", metavar="URL", help="an http(s) URL the service fetches")
    parser.add_argument(
        "--object",
        metavar="S3URL",
        help="an object source s3://BUCKET/KEY[?versionId=V], read by the service",
    )


def build_parser() -> argparse.ArgumentParser:
    formatter = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m imagesvc.cli",
        description="imagesvc command line client: process, describe, health.",
        epilog="Exit status: 0 success; 1 the service failed the request, could not be reached "
        "or is not SERVING; 2 bad arguments or unreadable/invalid files.",
        formatter_class=formatter,
    )
    _connection_options(parser, defaults=True)
    connection = argparse.ArgumentParser(add_help=False)
    _connection_options(connection, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help, description=help, parents=[connection], formatter_class=formatter
        )

    process = command("process", "run pipelines on an image")
    process.add_argument(
        "input",
        nargs="?",
        help="source image file, an http(s) URL the service fetches, or s3://BUCKET/KEY",
    )
    _source_options(process)
    process.add_argument(
        "-o",
        "--output",
        help="result file (default: INPUT's stem + .out.FORMAT, in the current directory)",
    )
    process.add_argument(
        "--pipeline", metavar="FILE", help="ProcessImageRequest in proto-JSON (no source)"
    )
    process.add_argument(
        "--format",
        choices=sorted(ENUM_BY_FORMAT),
        help="output format (default: the pipeline's, else the source's)",
    )
    process.add_argument(
        "--preset",
        action="append",
        metavar="NAME",
        help="a preset of the service's IMAGESVC_PRESETS_PATH; repeatable, applied in order",
    )
    process.add_argument(
        "--if-none-match",
        metavar="ETAG",
        help="the etag of a result held: the answer is not_modified, without an image, when "
        "it is still current",
    )
    process.set_defaults(func=cmd_process)

    describe = command("describe", "describe an image")
    describe.add_argument(
        "input",
        nargs="?",
        help="image file, an http(s) URL the service fetches, or s3://BUCKET/KEY",
    )
    _source_options(describe)
    describe.add_argument("--detect", action="store_true", help="also run object detection")
    describe.set_defaults(func=cmd_describe)

    health = command("health", "check health; exit 0 only when SERVING")
    health.add_argument(
        "--service", default="imagesvc.v1.ImageService", help='service name; "" for liveness'
    )
    health.set_defaults(func=cmd_health)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
