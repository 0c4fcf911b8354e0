"""Bad input gets a deliberate status with an ErrorInfo reason, never INTERNAL."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from imagesvc.v1 import image_service_pb2 as pb
from tests.images import png_bomb
from tests.rpc_helpers import rich_status
from tests.server import scenes

pytestmark = [pytest.mark.triton]


def resize_request(data: bytes) -> pb.ProcessImageRequest:
    return pb.ProcessImageRequest(
        source=pb.ImageSource(data=data),
        pipelines=[pb.Pipeline(operations=[pb.Operation(resize=pb.Resize(width=100))])],
    )


async def expect_error(call, code: grpc.StatusCode, reason: str):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    got_reason, metadata, violations = rich_status(caught.value)
    assert got_reason == reason
    return metadata, violations


async def test_truncated_jpeg(stub):
    # Noise keeps the entropy-coded data long, so half the file cuts deep into the scan.
    noise = np.random.default_rng(7).integers(0, 255, (600, 800, 3), dtype=np.uint8)
    jpeg = scenes.pyvips.Image.new_from_array(noise).copy(interpretation="srgb").jpegsave_buffer()
    await expect_error(
        stub.ProcessImage(resize_request(jpeg[: len(jpeg) // 2]), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "IMAGE_DECODE_FAILED",
    )


async def test_random_bytes(stub):
    junk = np.random.default_rng(3).integers(0, 255, 4096, dtype=np.uint8).tobytes()
    await expect_error(
        stub.ProcessImage(resize_request(junk), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "IMAGE_FORMAT_UNRECOGNIZED",
    )


async def test_oversized_png_header_is_refused_before_decoding(stub):
    metadata, _ = await expect_error(
        stub.ProcessImage(resize_request(png_bomb(60000, 60000)), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "IMAGE_TOO_LARGE",
    )
    assert metadata["width"] == "60000" and metadata["limit_megapixels"] == "50"


async def test_svg_is_a_known_but_refused_format(stub):
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    await expect_error(
        stub.ProcessImage(resize_request(svg), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "IMAGE_FORMAT_UNSUPPORTED",
    )


async def test_every_violation_is_reported_at_once(stub):
    request = pb.ProcessImageRequest(
        pipelines=[
            pb.Pipeline(
                operations=[
                    pb.Operation(resize=pb.Resize(width=100, dpr=20)),
                    pb.Operation(),
                    pb.Operation(blur_detections=pb.BlurDetections(sigma=5, classes=["unicorn"])),
                ]
            )
        ],
        output=pb.OutputOptions(quality=101),
    )
    _, violations = await expect_error(
        stub.ProcessImage(request, timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"
    )
    fields = {field for field, _ in violations}
    assert fields == {
        "source.data",
        "pipelines[0].operations[0].resize.dpr",
        "pipelines[0].operations[1]",
        "pipelines[0].operations[2].blur_detections.classes[0]",
        "output.quality",
    }


async def test_expired_deadline_is_deadline_exceeded(stub):
    source = scenes.astronaut().jpegsave_buffer()
    request = pb.ProcessImageRequest(
        source=pb.ImageSource(data=source),
        pipelines=[
            pb.Pipeline(
                operations=[
                    # Seconds of work: 16 MP, blurred four times, encoded to PNG.
                    pb.Operation(
                        resize=pb.Resize(
                            type=pb.RESIZING_TYPE_FORCE, width=4000, height=4000, enlarge=True
                        )
                    ),
                    *[pb.Operation(blur=pb.Blur(sigma=30))] * 4,
                ]
            )
        ],
        output=pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ProcessImage(request, timeout=0.05)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("method", ["ProcessImage", "DescribeImage"])
async def test_undecodable_request_bytes_are_malformed_request(channel, method):
    # Bytes no protobuf encoder produces (a length running past the end), sent untyped.
    call = channel.unary_unary(f"/imagesvc.v1.ImageService/{method}")
    metadata, _ = await expect_error(
        call(b"\x0a\x05abc", timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"
    )
    assert metadata == {"message_type": f"imagesvc.v1.{method}Request"}


async def test_a_source_sent_in_two_pieces_is_merged_as_protobuf_merges_it(stub, channel):
    # A request whose source field occurs twice (legal protobuf: the later data wins) takes the
    # ordinary parse instead of the zero-copy path, and must give the same answer.
    good = scenes.astronaut().jpegsave_buffer()
    first = pb.ProcessImageRequest(source=pb.ImageSource(data=b"not an image"))
    second = resize_request(good)
    raw = first.SerializeToString() + second.SerializeToString()
    call = channel.unary_unary("/imagesvc.v1.ImageService/ProcessImage")
    reply = pb.ProcessImageResponse.FromString(await call(raw, timeout=30))
    direct = await stub.ProcessImage(second, timeout=30)
    assert (reply.width, reply.height) == (direct.width, direct.height) == (100, 100)


async def test_describe_without_source_bytes_names_the_field(stub):
    _, violations = await expect_error(
        stub.DescribeImage(pb.DescribeImageRequest(detect=True), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    assert [field for field, _ in violations] == ["source.data"]


async def test_hundreds_of_violations_still_reach_the_client_with_their_details(stub):
    # 10 pipelines x 32 invalid blurs (the most a request may hold): listing all 320 violations
    # would overflow gRPC's metadata limit and the client would get RESOURCE_EXHAUSTED instead.
    source = scenes.astronaut().jpegsave_buffer()
    blurs = [pb.Operation(blur=pb.Blur(sigma=0))] * 32
    request = pb.ProcessImageRequest(
        source=pb.ImageSource(data=source), pipelines=[pb.Pipeline(operations=blurs)] * 10
    )
    metadata, violations = await expect_error(
        stub.ProcessImage(request, timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"
    )
    assert violations[:2] == [
        ("pipelines[0].operations[0].blur.sigma", "must be within (0, 100]"),
        ("pipelines[0].operations[1].blur.sigma", "must be within (0, 100]"),
    ]
    assert 0 < len(violations) <= 20
    assert metadata["violations_total"] == "320"
    assert int(metadata["violations_omitted"]) == 320 - len(violations)


async def test_a_huge_echoed_class_name_is_truncated_not_overflowing(stub):
    name = "x" * 9000
    request = pb.ProcessImageRequest(
        source=pb.ImageSource(data=scenes.astronaut().jpegsave_buffer()),
        pipelines=[
            pb.Pipeline(
                operations=[
                    pb.Operation(blur_detections=pb.BlurDetections(sigma=5, classes=[name]))
                ]
            )
        ],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ProcessImage(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    reason, _, violations = rich_status(caught.value)
    assert reason == "INVALID_REQUEST"
    [(field, description)] = violations
    assert field == "pipelines[0].operations[0].blur_detections.classes[0]"
    assert description.startswith("unknown class 'xxxx") and description.endswith("…")
    assert len(description) < 1000 and len(caught.value.details()) < 1000


async def test_describe_with_an_unknown_class_names_the_field(stub):
    data = scenes.astronaut().jpegsave_buffer(Q=90)
    _, violations = await expect_error(
        stub.DescribeImage(
            pb.DescribeImageRequest(
                source=pb.ImageSource(data=data), detect=True, classes=["face", "unicorn"]
            ),
            timeout=30,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_REQUEST",
    )
    assert [field for field, _ in violations] == ["classes[1]"]
