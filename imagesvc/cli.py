"""Command line client: ``python -m imagesvc.cli {process,describe,health}``.

The pipeline file is a ProcessImageRequest in proto-JSON, the same file grpcurl takes
(``grpcurl -plaintext -d @ 127.0.0.1:50051 imagesvc.v1.ImageService/ProcessImage < FILE``);
the CLI fills ``source`` from the input file. Failures print the ErrorInfo reason and exit 1.
"""

from __future__ import annotations

import argparse
import json
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


def _report(error: grpc.RpcError) -> int:
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
    print(f"error: {error.code().name} {reason}: {error.details()}", file=sys.stderr)
    for line in lines:
        print(line, file=sys.stderr)
    return 1


def _format_name(value: int) -> str:
    return FORMAT_BY_ENUM.get(value, "unspecified")


def cmd_process(args: argparse.Namespace) -> int:
    request = pb.ProcessImageRequest()
    if args.pipeline:
        json_format.Parse(Path(args.pipeline).read_text(), request)
    request.source.data = Path(args.input).read_bytes()
    if args.format:
        request.output.format = ENUM_BY_FORMAT[args.format]
    stub = pb_grpc.ImageServiceStub(_channel(args.target))
    try:
        response = stub.ProcessImage(request, timeout=args.timeout)
    except grpc.RpcError as error:
        return _report(error)
    output = Path(args.output or f"{Path(args.input).stem}.out.{_format_name(response.format)}")
    output.write_bytes(response.data)
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
    request = pb.DescribeImageRequest(
        source=pb.ImageSource(data=Path(args.input).read_bytes()), detect=args.detect
    )
    stub = pb_grpc.ImageServiceStub(_channel(args.target))
    try:
        response = stub.DescribeImage(request, timeout=args.timeout)
    except grpc.RpcError as error:
        return _report(error)
    print(json_format.MessageToJson(response, indent=2))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    stub = health_pb2_grpc.HealthStub(_channel(args.target))
    try:
        response = stub.Check(
            health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
        )
    except grpc.RpcError as error:
        print(f"{args.service or '(server)'}: {error.code().name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{args.service or '(server)'}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m imagesvc.cli", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--target", default="127.0.0.1:50051", help="service address")
    parser.add_argument("--timeout", type=float, default=30.0, help="RPC deadline in seconds")
    commands = parser.add_subparsers(dest="command", required=True)

    process = commands.add_parser("process", help="run pipelines on an image")
    process.add_argument("input", help="source image file")
    process.add_argument("-o", "--output", help="result file (default: INPUT.out.FORMAT)")
    process.add_argument("--pipeline", help="ProcessImageRequest in proto-JSON")
    process.add_argument("--format", choices=sorted(ENUM_BY_FORMAT), help="output format")
    process.set_defaults(func=cmd_process)

    describe = commands.add_parser("describe", help="describe an image")
    describe.add_argument("input")
    describe.add_argument("--detect", action="store_true", help="also run object detection")
    describe.set_defaults(func=cmd_describe)

    health = commands.add_parser("health", help="check health; exit 0 when SERVING")
    health.add_argument("--service", default="imagesvc.v1.ImageService", help='"" for liveness')
    health.set_defaults(func=cmd_health)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
