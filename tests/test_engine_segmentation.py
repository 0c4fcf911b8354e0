"""Segmentation in the engine (issue 11): regions computed beside detection on the detector's
input, followed through the pipeline's geometry, used by blur_background and
draw_segmentation and handed to the encoder for region-aware autoquality; Triton down or
segmentation not configured degrades (or fails, by policy). Real Triton, real models."""

from __future__ import annotations

import time

import numpy as np
import pytest
import pyvips
import skimage.data

from imagesvc import engine as engine_module
from imagesvc import vips
from imagesvc.engine import Engine
from imagesvc.errors import SegmentationUnavailable
from imagesvc.options import parse_process_request
from imagesvc.settings import Settings
from imagesvc.telemetry.metrics import NullMetrics
from imagesvc.v1 import image_service_pb2 as pb
from inference.client import FaceDetector
from inference.segmentation_client import PersonSegmenter
from tests.images import decode, from_array, png, request, to_array, with_orientation

DOWN = "127.0.0.1:1"
SKIN_TINT = (255, 140, 0)
CLOTHES_TINT = (0, 90, 255)


@pytest.fixture(scope="module", autouse=True)
def configured():
    vips.configure(Settings())


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.astronaut())


@pytest.fixture
async def make_engine(triton_sidecar):
    """``make(url=<the sidecar>, segmentation=True, **settings)``: an engine with the real
    face detector and segmenter on ``url`` (None segmentation: not configured)."""
    made: list[tuple[Engine, list]] = []

    def make(url: str | None = None, segmentation: bool = True, **overrides) -> Engine:
        url = url or triton_sidecar.grpc_url
        timeout = 0.5 if url == DOWN else 10.0
        detector = FaceDetector(url, timeout_s=timeout, retry_after_s=0)
        segmenter = PersonSegmenter(url, timeout_s=timeout) if segmentation else None
        settings = Settings(**{"workers": 2, **overrides})
        engine = Engine(settings, detector, NullMetrics(), segmenter=segmenter)
        made.append((engine, [detector, segmenter]))
        return engine

    yield make
    for engine, clients in made:
        engine.close()
        for client in clients:
            if client is not None:
                await client.close()


async def process(engine: Engine, msg: pb.ProcessImageRequest, timeout: float = 60.0):
    parsed = parse_process_request(msg, engine.settings, engine.known_classes)
    return await engine.process(parsed, time.monotonic() + timeout)


async def direct_mask(triton_url: str, rgb: np.ndarray) -> np.ndarray:
    """The model's person probability of ``rgb``, asked directly."""
    segmenter = PersonSegmenter(triton_url, timeout_s=10.0)
    try:
        return await segmenter.segment(np.ascontiguousarray(rgb))
    finally:
        await segmenter.close()


def blur_background(sigma=0.0, policy=0, filter=0) -> pb.Operation:
    return pb.Operation(
        blur_background=pb.BlurBackground(
            sigma=sigma, filter=filter, on_segmentation_unavailable=policy
        )
    )


def draw(opacity=1.0) -> pb.Operation:
    return pb.Operation(draw_segmentation=pb.DrawSegmentation(opacity=opacity))


def tinted(out: np.ndarray) -> np.ndarray:
    """Pixels painted by draw_segmentation at opacity 1 (either tint, exactly)."""
    rgb = out[..., :3].astype(int)
    return np.all(rgb == SKIN_TINT, axis=2) | np.all(rgb == CLOTHES_TINT, axis=2)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks."""
    return float((a & b).sum() / max(1, (a | b).sum()))


async def test_blur_background_keeps_the_person_and_blurs_the_rest(
    make_engine, triton_sidecar, astronaut
):
    engine = make_engine()
    result = await process(
        engine, request(png(astronaut), [blur_background(sigma=6)], format=pb.IMAGE_FORMAT_PNG)
    )
    assert result.degradations == ()
    out = to_array(decode(result.data))[..., :3]
    assert out.shape == astronaut.shape
    person = await direct_mask(triton_sidecar.grpc_url, astronaut) > 0.5
    # No pixel of the person changes (the engine's mask is the same model's on the same input).
    diff = np.abs(out.astype(int) - astronaut.astype(int)).max(axis=2)
    assert diff[person].mean() < 0.5
    # The background, well away from the person's feathered edge, is blurred.
    far = ~_dilate(person, 24)
    assert far.mean() > 0.2
    assert _local_variance(out, far) < 0.5 * _local_variance(astronaut, far)
    # The faces seeding the skin model are reported as detections.
    assert any(o.class_name == "face" for o in result.objects)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    image = pyvips.Image.new_from_array((mask * 255).astype(np.uint8)).cast("uchar")
    size = 2 * radius + 1
    grown = image.morph(pyvips.Image.new_from_array([[255] * size] * size), "dilate")
    return grown.numpy().reshape(mask.shape) > 0


def _local_variance(rgb: np.ndarray, where: np.ndarray) -> float:
    """Variance of each pixel around its 5x5 mean, averaged over ``where``."""
    grey = rgb[..., :3].astype(np.float64).mean(axis=2)
    image = pyvips.Image.new_from_array(grey)
    mean = np.asarray(image.gaussblur(1.5).numpy(), dtype=np.float64).reshape(grey.shape)
    return float(((grey - mean) ** 2)[where].mean())


async def test_the_median_and_chroma_filters_change_only_the_background(
    make_engine, triton_sidecar, astronaut
):
    engine = make_engine()
    person = await direct_mask(triton_sidecar.grpc_url, astronaut) > 0.5
    for method in (pb.BACKGROUND_FILTER_MEDIAN, pb.BACKGROUND_FILTER_CHROMA):
        msg = request(
            png(astronaut), [blur_background(sigma=4, filter=method)], format=pb.IMAGE_FORMAT_PNG
        )
        out = to_array(decode((await process(engine, msg)).data))[..., :3]
        diff = np.abs(out.astype(int) - astronaut.astype(int)).max(axis=2)
        assert diff[person].mean() < 0.5, method
        assert diff[~_dilate(person, 20)].mean() > 1.0, method


async def test_draw_segmentation_tints_the_person(make_engine, triton_sidecar, astronaut):
    engine = make_engine()
    result = await process(engine, request(png(astronaut), [draw()], format=pb.IMAGE_FORMAT_PNG))
    assert result.degradations == ()
    out = to_array(decode(result.data))[..., :3]
    person = await direct_mask(triton_sidecar.grpc_url, astronaut) > 0.5
    painted = tinted(out)
    assert agreement(painted, person) > 0.97
    # Skin (her face) and clothes (her suit) are both there; the background is untouched.
    rgb = out.astype(int)
    assert np.all(rgb == SKIN_TINT, axis=2).sum() > 1000
    assert np.all(rgb == CLOTHES_TINT, axis=2).sum() > 10000
    assert np.array_equal(out[~person & ~painted], astronaut[~person & ~painted])


async def test_half_opacity_blends(make_engine, astronaut):
    engine = make_engine()
    out = to_array(
        decode(
            (
                await process(
                    engine, request(png(astronaut), [draw(0.0)], format=pb.IMAGE_FORMAT_PNG)
                )
            ).data
        )
    )[..., :3]
    changed = np.any(out != astronaut, axis=2)
    assert changed.mean() > 0.2
    # Opacity 0 means 0.5: no pixel is the tint itself.
    assert not tinted(out).any()


async def test_regions_follow_a_crop_a_resize_and_a_flip(make_engine, triton_sidecar, astronaut):
    engine = make_engine()
    crop = pb.Operation(
        crop=pb.Crop(
            width=300,
            height=400,
            gravity=pb.Gravity(
                compass=pb.CompassGravity(position=pb.COMPASS_NORTH_WEST, x_offset=100, y_offset=60)
            ),
        )
    )
    resize = pb.Operation(resize=pb.Resize(type=pb.RESIZING_TYPE_FORCE, width=150, height=200))
    flip = pb.Operation(flip=pb.Flip(horizontal=True))
    msg = request(png(astronaut), [crop, resize, flip, draw()], format=pb.IMAGE_FORMAT_PNG)
    result = await process(engine, msg)
    out = to_array(decode(result.data))
    assert out.shape[:2] == (200, 150)
    # The same geometry applied to the source's own mask.
    full = await direct_mask(triton_sidecar.grpc_url, astronaut)
    window = np.ascontiguousarray(full[60:460, 100:400])
    small = pyvips.Image.new_from_array(window).resize(0.5, kernel="linear")
    expected = np.asarray(small.numpy()).reshape(200, 150)[:, ::-1] > 0.5
    assert agreement(tinted(out), expected) > 0.9


@pytest.mark.parametrize("auto_rotate", [True, False])
async def test_regions_follow_the_exif_orientation(
    make_engine, triton_sidecar, astronaut, auto_rotate
):
    engine = make_engine(auto_rotate=auto_rotate)
    # Stored turned a quarter to the left; orientation 6 turns it upright (90 clockwise).
    stored = from_array(astronaut).rot270()
    assert np.array_equal(to_array(with_orientation(stored, 6).autorot())[..., :3], astronaut)
    data = with_orientation(stored, 6).pngsave_buffer()
    result = await process(engine, request(data, [draw()], format=pb.IMAGE_FORMAT_PNG))
    out = to_array(decode(result.data))
    upright_mask = await direct_mask(triton_sidecar.grpc_url, astronaut) > 0.5
    expected = upright_mask if auto_rotate else np.rot90(upright_mask, 1)
    assert out.shape[:2] == expected.shape
    assert agreement(tinted(out), expected) > 0.95


async def test_a_cached_detection_still_gets_regions(make_engine, astronaut):
    engine = make_engine()
    msg = request(png(astronaut), [draw()], format=pb.IMAGE_FORMAT_PNG)
    first = await process(engine, msg)
    assert len(engine.cache) == 1  # the second request's detections come from the cache
    second = await process(engine, msg)
    assert second.degradations == ()
    assert np.array_equal(to_array(decode(first.data)), to_array(decode(second.data)))
    assert tinted(to_array(decode(second.data))).mean() > 0.2


async def test_triton_down_skips_with_a_degradation(make_engine, astronaut):
    engine = make_engine(url=DOWN)
    for op, name in ((blur_background(), "blur_background"), (draw(), "draw_segmentation")):
        result = await process(engine, request(png(astronaut), [op], format=pb.IMAGE_FORMAT_PNG))
        assert np.array_equal(to_array(decode(result.data))[..., :3], astronaut)
        reasons = {(d.reason, d.operation) for d in result.degradations}
        assert ("SEGMENTATION_UNAVAILABLE", name) in reasons
        message = next(d.message for d in result.degradations if d.operation == name)
        assert "TRITON_" in message


async def test_triton_down_with_the_fail_policy_fails(make_engine, astronaut):
    engine = make_engine(url=DOWN)
    policy = pb.SEGMENTATION_UNAVAILABLE_POLICY_FAIL
    with pytest.raises(SegmentationUnavailable) as failed:
        await process(engine, request(png(astronaut), [blur_background(policy=policy)]))
    error = failed.value
    assert error.reason == "SEGMENTATION_UNAVAILABLE"
    assert error.code.name == "UNAVAILABLE"
    assert error.retry_after_s == engine.settings.triton_retry_after_s
    assert error.metadata["operation"] == "blur_background"


async def test_segmentation_not_configured_degrades(make_engine, astronaut):
    engine = make_engine(segmentation=False)
    result = await process(
        engine, request(png(astronaut), [blur_background()], format=pb.IMAGE_FORMAT_PNG)
    )
    assert np.array_equal(to_array(decode(result.data))[..., :3], astronaut)
    (item,) = [d for d in result.degradations if d.reason == "SEGMENTATION_UNAVAILABLE"]
    assert item.operation == "blur_background"
    assert "not configured" in item.message


async def test_region_aware_output_gets_the_regions_at_the_encoded_size(
    make_engine, monkeypatch, astronaut
):
    seen = []
    real = engine_module.encode_output

    def spy(image, *args, regions=None, **kwargs):
        seen.append((image.width, image.height, regions))
        return real(image, *args, regions=regions, **kwargs)

    monkeypatch.setattr(engine_module, "encode_output", spy)
    resize = pb.Operation(resize=pb.Resize(type=pb.RESIZING_TYPE_FIT, width=256, height=256))
    output = dict(
        format=pb.IMAGE_FORMAT_JPEG,
        autoquality=pb.Autoquality(method=pb.AUTOQUALITY_METHOD_DSSIM),
        regions=pb.RegionQuality(enabled=True),
    )
    await process(make_engine(), request(png(astronaut), [resize], **output))
    width, height, regions = seen[-1]
    assert (width, height) == (256, 256)
    assert regions is not None
    assert regions.person.shape == (256, 256) and regions.skin.shape == (256, 256)
    assert 0.2 < (regions.person > 0.5).mean() < 0.9

    seen.clear()
    result = await process(
        make_engine(segmentation=False), request(png(astronaut), [resize], **output)
    )
    assert seen[-1][2] is None
    (item,) = [d for d in result.degradations if d.reason == "SEGMENTATION_UNAVAILABLE"]
    assert item.operation == "" and "not configured" in item.message


async def test_describe_segments_on_a_cache_hit_too(make_engine, astronaut):
    engine = make_engine()
    data = png(astronaut)
    results = [
        await engine.describe(data, False, time.monotonic() + 60, segment=True) for _ in range(2)
    ]
    assert len(engine.cache) == 1  # faces were asked for once, then came from the cache
    first, second = (r.segmentation for r in results)
    assert first is not None and second is not None
    assert first.shares == second.shares and first.skin_model == second.skin_model == "faces"
    assert results[0].objects == ()  # detect was not asked for
    assert first.mask_png == b""
