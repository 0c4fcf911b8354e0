"""Corrupt files of every accepted format, built by seeded mutation (tests/fuzz/sources.py), sent
to a real server process over gRPC: every one gets a deliberate status with an ErrorInfo (never
INTERNAL or UNKNOWN, never a timeout), the process never dies, and both RPCs agree on whether
the source decodes.

Scale with IMAGESVC_FUZZ_SCALE (default 1: 16 seeds x 30 mutants x 3 RPCs, ~1,400 calls); the
seed of the mutations is fixed (IMAGESVC_FUZZ_SEED), so a failure names an input that can be
rebuilt exactly.
"""

from __future__ import annotations

import asyncio
import os
import time

import grpc
import pytest

from tests.fuzz.sources import mutants, seeds
from tests.rpc_helpers import rich_status
from imagesvc.v1 import image_service_pb2 as pb
from imagesvc.v1 import image_service_pb2_grpc as pb_grpc

SCALE = float(os.environ.get("IMAGESVC_FUZZ_SCALE", "1"))
SEED = int(os.environ.get("IMAGESVC_FUZZ_SEED", "20261201"))
MUTANTS_PER_SEED = max(1, round(30 * SCALE))

# What a broken source may get, by RPC: the README's error table.
SOURCE_REASONS = {
    "IMAGE_FORMAT_UNRECOGNIZED",
    "IMAGE_FORMAT_UNSUPPORTED",
    "IMAGE_TOO_LARGE",
    "IMAGE_DECODE_FAILED",
}
PROCESS_REASONS = SOURCE_REASONS | {"REQUEST_TOO_COSTLY", "RESULT_TOO_LARGE", "RESULT_UNENCODABLE"}

IDENTITY_TO_PNG = pb.ProcessImageRequest(output=pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG))
RESIZE_ROTATE = pb.ProcessImageRequest(
    pipelines=[
        pb.Pipeline(
            operations=[
                pb.Operation(resize=pb.Resize(width=40, height=40)),
                pb.Operation(rotate=pb.Rotate(angle=90)),
            ]
        )
    ],
    output=pb.OutputOptions(format=pb.IMAGE_FORMAT_JPEG),
)


async def outcome(call, deadline: float = 20.0) -> tuple[str, float]:
    """``"OK"`` or ``"CODE REASON"`` of one RPC, and its latency; a status without an ErrorInfo
    fails the test here."""
    started = time.monotonic()
    try:
        await call(deadline)
        result = "OK"
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            return "UNAVAILABLE", time.monotonic() - started  # the caller checks the server
        reason, _, _ = rich_status(error)  # asserts the google.rpc.Status is there
        result = f"{error.code().name} {reason}"
    return result, time.monotonic() - started


def with_source(template: pb.ProcessImageRequest, data: bytes) -> pb.ProcessImageRequest:
    request = pb.ProcessImageRequest()
    request.CopyFrom(template)
    request.source.data = data
    return request


async def test_mutated_sources_get_deliberate_statuses_and_never_kill_the_server(start_server):
    server, port = start_server(IMAGESVC_WORKERS="2")
    corpus = [
        item
        for name, data in seeds().items()
        for item in mutants(name, data, MUTANTS_PER_SEED, SEED)
    ]
    failures: list[str] = []
    latencies: list[float] = []
    disagreements: list[str] = []
    in_flight: set[str] = set()
    slots = asyncio.Semaphore(4)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ImageServiceStub(channel)

        def check_alive() -> None:
            if server.proc.poll() is not None:
                tail = "".join(server.lines[-20:])
                pytest.fail(
                    f"the server died (exit {server.proc.returncode}); in flight: "
                    f"{sorted(in_flight)}\n{tail}"
                )

        async def one(name: str, data: bytes) -> None:
            async with slots:
                check_alive()
                in_flight.add(name)
                process, t1 = await outcome(
                    lambda d: stub.ProcessImage(with_source(IDENTITY_TO_PNG, data), timeout=d)
                )
                chained, t2 = await outcome(
                    lambda d: stub.ProcessImage(with_source(RESIZE_ROTATE, data), timeout=d)
                )
                describe, t3 = await outcome(
                    lambda d: stub.DescribeImage(
                        pb.DescribeImageRequest(source=pb.ImageSource(data=data), detect=True),
                        timeout=d,
                    )
                )
                check_alive()
                in_flight.discard(name)
            latencies.extend((t1, t2, t3))
            for rpc, result, allowed in (
                ("process", process, PROCESS_REASONS),
                ("resize+rotate", chained, PROCESS_REASONS),
                ("describe", describe, SOURCE_REASONS),
            ):
                code, _, reason = result.partition(" ")
                if result != "OK" and not (code == "INVALID_ARGUMENT" and reason in allowed):
                    failures.append(f"{name} {rpc}: {result}")
            # A full decode (the identity pipeline) and DescribeImage's detector preview read
            # every pixel: when both get as far as decoding (the budget may refuse the first
            # from the header alone), they agree on whether the source decodes.
            decoded = {"OK", "INVALID_ARGUMENT IMAGE_DECODE_FAILED"}
            if process in decoded and describe in decoded and process != describe:
                disagreements.append(f"{name}: process {process}, describe {describe}")

        await asyncio.gather(*(one(name, data) for name, data in corpus))

    assert server.proc.poll() is None, "the server died"
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"corrupt sources: {len(corpus)} inputs, {len(latencies)} calls, "
        f"{len(failures)} undeliberate, p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )
    assert not failures, "\n".join(failures[:30])
    assert not disagreements, "\n".join(disagreements[:30])
