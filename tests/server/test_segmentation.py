"""Segmentation over real gRPC (issue 11): DescribeImage's segment and segmentation_mask,
ProcessImage's blur_background and draw_segmentation, field violations, and segmentation
switched off (IMAGESVC_SEGMENTATION_MODEL empty)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import pyvips
from prometheus_client import CollectorRegistry

from imagesvc.server import app
from imagesvc.v1 import image_service_pb2 as pb
from imagesvc.v1 import image_service_pb2_grpc as pb_grpc
from tests.images import decode, to_array
from tests.rpc_helpers import rich_status
from tests.server import scenes
from tests.server.conftest import server_settings, wait_serving


def astronaut_png() -> bytes:
    return scenes.astronaut().pngsave_buffer()


def describe(data: bytes, **fields) -> pb.DescribeImageRequest:
    return pb.DescribeImageRequest(source=pb.ImageSource(data=data), **fields)


def process(data: bytes, *ops: pb.Operation) -> pb.ProcessImageRequest:
    return pb.ProcessImageRequest(
        source=pb.ImageSource(data=data),
        pipelines=[pb.Pipeline(operations=list(ops))],
        output=pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG),
    )


def blur_background(**fields) -> pb.Operation:
    return pb.Operation(blur_background=pb.BlurBackground(**fields))


async def test_describe_segments_the_astronaut(stub):
    response = await stub.DescribeImage(describe(astronaut_png(), segment=True), timeout=60)
    assert not response.degradations
    assert response.HasField("segmentation")
    seg = response.segmentation
    assert 0.3 < seg.skin + seg.clothes < 0.8
    assert seg.skin > 0.01 and seg.clothes > seg.skin
    assert abs(seg.background + seg.skin + seg.clothes - 1.0) < 1e-6
    assert seg.model == "selfie_segmentation"
    assert seg.skin_model == "faces"  # BlazeFace finds her face
    assert seg.mask_png == b""  # only with segmentation_mask
    assert not response.detections  # detect was not asked for


async def test_the_mask_png_is_the_class_map_at_the_analysis_size(stub):
    response = await stub.DescribeImage(
        describe(astronaut_png(), segment=True, segmentation_mask=True, detect=True), timeout=60
    )
    seg = response.segmentation
    mask = pyvips.Image.new_from_buffer(seg.mask_png, "")
    # The astronaut is 512 x 512: the analysis size is the detector's input, long side 512.
    assert (mask.width, mask.height, mask.bands, mask.format) == (512, 512, 1, "uchar")
    classes = np.asarray(mask.numpy()).reshape(512, 512)
    assert set(np.unique(classes)) <= {0, 1, 2}
    assert abs((classes == 1).mean() - seg.skin) < 1e-6
    assert abs((classes == 0).mean() - seg.background) < 1e-6
    # Her face (skin) is inside the face box BlazeFace reports.
    assert any(d.class_name == "face" for d in response.detections)
    left, top, width, height = scenes.FACE_BOX
    assert (classes[top : top + height, left : left + width] == 1).mean() > 0.3


async def test_a_flat_image_is_background(stub):
    flat = pyvips.Image.black(320, 240, bands=3).new_from_image([90, 140, 200]).cast("uchar")
    response = await stub.DescribeImage(describe(flat.pngsave_buffer(), segment=True), timeout=60)
    assert response.segmentation.background > 0.9
    assert response.segmentation.skin_model == "prior"  # no face to seed it


async def test_process_blur_background(stub):
    data = astronaut_png()
    response = await stub.ProcessImage(process(data, blur_background(sigma=6)), timeout=60)
    assert not response.degradations
    out = to_array(decode(response.data))[..., :3]
    source = to_array(decode(data))[..., :3]
    assert out.shape == source.shape
    changed = np.any(out != source, axis=2)
    # The person (her suit, centre bottom) is kept; the background (top left) is blurred.
    assert not changed[420:500, 200:300].any()
    assert changed[0:80, 0:80].mean() > 0.5


async def test_process_draw_segmentation(stub):
    op = pb.Operation(draw_segmentation=pb.DrawSegmentation(opacity=1.0))
    response = await stub.ProcessImage(process(astronaut_png(), op), timeout=60)
    out = to_array(decode(response.data))[..., :3].astype(int)
    assert (np.all(out == (0, 90, 255), axis=2)).mean() > 0.1  # clothes
    assert (np.all(out == (255, 140, 0), axis=2)).sum() > 1000  # skin


@pytest.mark.parametrize(
    "op, field",
    [
        (blur_background(sigma=-1), "sigma"),
        (blur_background(sigma=float("nan")), "sigma"),
        (blur_background(filter=99), "filter"),
        (blur_background(on_segmentation_unavailable=7), "on_segmentation_unavailable"),
        (pb.Operation(draw_segmentation=pb.DrawSegmentation(opacity=2)), "opacity"),
    ],
)
async def test_bad_fields_are_invalid_argument(stub, op, field):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ProcessImage(process(astronaut_png(), op), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, _, violations = rich_status(caught.value)
    name = op.WhichOneof("op")
    assert [path for path, _ in violations] == [f"pipelines[0].operations[0].{name}.{field}"]


@pytest.fixture(scope="module")
async def unsegmented_stub(triton_sidecar):
    running = await app.start(
        server_settings(triton_sidecar.grpc_url, segmentation_model=""), CollectorRegistry()
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            await wait_serving(channel)
            yield pb_grpc.ImageServiceStub(channel)
    finally:
        await running.stop(1.0)


async def test_segmentation_switched_off(unsegmented_stub):
    data = astronaut_png()
    response = await unsegmented_stub.DescribeImage(describe(data, segment=True), timeout=60)
    assert not response.HasField("segmentation")
    [item] = response.degradations
    assert item.reason == "SEGMENTATION_UNAVAILABLE" and "not configured" in item.message

    skipped = await unsegmented_stub.ProcessImage(process(data, blur_background()), timeout=60)
    assert [(d.reason, d.operation) for d in skipped.degradations] == [
        ("SEGMENTATION_UNAVAILABLE", "blur_background")
    ]
    assert np.array_equal(to_array(decode(skipped.data)), to_array(decode(data)))

    fail = pb.SEGMENTATION_UNAVAILABLE_POLICY_FAIL
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unsegmented_stub.ProcessImage(
            process(data, blur_background(on_segmentation_unavailable=fail)), timeout=60
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    reason, metadata, _ = rich_status(caught.value)
    assert reason == "SEGMENTATION_UNAVAILABLE"
    assert metadata["segmentation_failure"] == "SEGMENTATION_NOT_CONFIGURED"


def astronaut_on_gravel() -> tuple[bytes, np.ndarray]:
    """The astronaut (scaled to 256 px) in the middle of a 640 x 384 field of fine random
    texture: a person on a busy photographic-like background. Returns the PNG and the RGB."""
    rng = np.random.default_rng(7)
    field = rng.integers(60, 200, (384, 640, 1), dtype=np.uint8).repeat(3, axis=2)
    field = (field.astype(np.int16) + rng.integers(-25, 25, (384, 640, 3))).clip(0, 255)
    person = to_array(scenes.astronaut().resize(256 / 512))
    field[64:320, 192:448] = person[:256, :256]
    rgb = field.astype(np.uint8)
    return pyvips.Image.new_from_array(rgb).copy(interpretation="srgb").pngsave_buffer(), rgb


async def test_region_aware_is_smaller_and_keeps_the_person_within_target(stub):
    """Through the real Triton: region-aware JPEG autoquality against plain, same target, wide
    quality range. Smaller, and the person's DSSIM (recomputed here on the mask the service
    returns) within target + allowed error."""
    data, rgb = astronaut_on_gravel()
    autoquality = pb.Autoquality(
        method=pb.AUTOQUALITY_METHOD_DSSIM,
        target=0.02,
        allowed_error=0.002,
        min_quality=10,
        max_quality=95,
    )

    def encode(regions: bool) -> pb.ProcessImageRequest:
        output = pb.OutputOptions(format=pb.IMAGE_FORMAT_JPEG, autoquality=autoquality)
        if regions:
            output.regions.enabled = True
        return pb.ProcessImageRequest(source=pb.ImageSource(data=data), output=output)

    plain = await stub.ProcessImage(encode(False), timeout=60)
    aware = await stub.ProcessImage(encode(True), timeout=60)
    assert not aware.degradations
    reported = {r.region: r.dssim for r in aware.encoding.region_dssim}
    assert set(reported) >= {"person", "background"}
    assert reported["person"] <= 0.022 and aware.encoding.target_met
    assert len(aware.data) < 0.8 * len(plain.data)

    # The person region, as the service sees it, at the image's size.
    described = await stub.DescribeImage(
        describe(data, segment=True, segmentation_mask=True), timeout=60
    )
    mask = decode(described.segmentation.mask_png)
    classes = to_array(mask.resize(rgb.shape[1] / mask.width, kernel="nearest"))[..., 0]
    person = classes > 0
    assert 0.1 < person.mean() < 0.5
    decoded = to_array(decode(aware.data))
    ssim_map = _ssim_map(rgb, decoded)
    person_dssim = (1 - ssim_map[person[3:-3, 3:-3]].mean()) / 2
    assert person_dssim <= 0.022 + 0.003  # skimage's window differs slightly from ours


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """scikit-image's SSIM map of the luma (7x7 uniform window), cropped to valid windows."""
    from skimage.metrics import structural_similarity

    weights = np.array([0.299, 0.587, 0.114])
    _, full = structural_similarity(a @ weights, b @ weights, data_range=255, win_size=7, full=True)
    return full[3:-3, 3:-3]
