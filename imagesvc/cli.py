"""Command line client: ``python -m imagesvc.cli {process,describe,health}``.

The pipeline file is a ProcessImageRequest in proto-JSON, the same file grpcurl takes
(``grpcurl -plaintext -d @ 127.0.0.1:50051 imagesvc.v1.ImageService/ProcessImage < FILE``);
the CLI fills ``source`` from the input file, or with the input as ``source.url`` when it is an
http(s) URL. ``--target`` and ``--timeout`` go before or after
the command.

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


def _channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.service_config", SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
        ],
    )


class UsageError(Exception):
    """A problem with the command line or its files: one line, exit status 2."""


def _read(path: str, what: str, *, text: bool = False) -> bytes | str:
    try:
        return Path(path).read_text() if text else Path(path).read_bytes()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {what} {path}: {_reason(error)}") from None


def _source(input_: str) -> pb.ImageSource:
    """An http(s) URL becomes a url source, fetched by the service; anything else is a file."""
    if input_.startswith(("http://", "https://")):
        return pb.ImageSource(url=input_)
    return pb.ImageSource(data=_read(input_, "input image"))


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


def cmd_process(args: argparse.Namespace) -> int:
    request = pb.ProcessImageRequest()
    if args.pipeline:
        _parse_pipeline(args.pipeline, request)
    request.source.CopyFrom(_source(args.input))
    if args.format:
        request.output.format = ENUM_BY_FORMAT[args.format]
    stub = pb_grpc.ImageServiceStub(_channel(args.target))
    try:
        response = stub.ProcessImage(request, timeout=args.timeout)
    except grpc.RpcError as error:
        return _report(error, args.target)
    stem = Path(args.input.split("?", 1)[0]).stem or "source"
    output = Path(args.output or f"{stem}.out.{_format_name(response.format)}")
    try:
        output.write_bytes(response.data)
    except OSError as error:
        raise UsageError(f"cannot write {output}: {_reason(error)}") from None
    print(
        f"wrote {output} ({_format_name(response.format)}, {response.width}x{response.height}, "
        f"{len(response.data)} bytes)"
    )
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
    request = pb.DescribeImageRequest(source=_source(args.input), detect=args.detect)
    stub = pb_grpc.ImageServiceStub(_channel(args.target))
    try:
        response = stub.DescribeImage(request, timeout=args.timeout)
    except grpc.RpcError as error:
        return _report(error, args.target)
    print(json_format.MessageToJson(response, indent=2))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    stub = health_pb2_grpc.HealthStub(_channel(args.target))
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


def _connection_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """--target and --timeout. The top-level parser holds the defaults; each command's parser
    repeats the options with SUPPRESS defaults, so they work after the command too and only
    override the top-level values when given there."""
    if defaults:
        target = {"default": DEFAULT_TARGET, "help": "service address HOST:PORT"}
        timeout = {"default": DEFAULT_TIMEOUT_S, "help": "RPC deadline in seconds"}
    else:
        target = {
            "default": argparse.SUPPRESS,
            "help": f"service address HOST:PORT (default: {DEFAULT_TARGET})",
        }
        timeout = {
            "default": argparse.SUPPRESS,
            "help": f"RPC deadline in seconds (default: {DEFAULT_TIMEOUT_S})",
        }
    parser.add_argument("--target", metavar="HOST:PORT", **target)
    parser.add_argument("--timeout", type=float, metavar="SECONDS", **timeout)


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
    process.add_argument("input", help="source image file, or an http(s) URL the service fetches")
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
    process.set_defaults(func=cmd_process)

    describe = command("describe", "describe an image")
    describe.add_argument("input", help="image file, or an http(s) URL the service fetches")
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
