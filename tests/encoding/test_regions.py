"""Region-aware autoquality (issue 11): the person's DSSIM meets the target, the background its
own, the background is pre-filtered, the report gives each region's DSSIM; OutputOptions.regions
parsing. Synthetic pictures: a smoothly textured "person" rectangle on a noisy background."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from imagesvc.encoding import regions as region_aware
from imagesvc.encoding.dssim import YCBCR, DssimReference
from imagesvc.encoding.encoder import encode_output
from imagesvc.encoding.regions import RegionSpec, RegionWeights
from imagesvc.encoding.spec import EncodingSpec, WebpSpec
from imagesvc.errors import InvalidRequest
from imagesvc.options import OutputSpec, parse_process_request
from imagesvc.settings import Settings
from imagesvc.v1 import image_service_pb2 as pb
from tests.images import decode, from_array, to_array

TARGET = 0.02
WIDTH, HEIGHT = 240, 180
PERSON = (slice(30, 165), slice(75, 165))  # rows, columns
SKIN = (slice(30, 70), slice(95, 145))


def picture(seed: int = 0) -> np.ndarray:
    """A noisy, textured background (expensive for any encoder) around a smoothly shaded
    and textured rectangle: the person."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    background = 128 + 50 * np.sin(xx / 2.5) * np.cos(yy / 3.5)
    array = background[..., None] + rng.normal(0, 30, (HEIGHT, WIDTH, 3))
    person = np.stack(
        [
            120 + 40 * np.sin(xx / 9.0) + 0.3 * yy,
            90 + 30 * np.cos(yy / 11.0),
            70 + 20 * np.sin((xx + yy) / 13.0),
        ],
        axis=-1,
    )
    person += rng.normal(0, 2, person.shape)
    array[PERSON] = person[PERSON]
    return np.clip(array, 0, 255).astype(np.uint8)


def weights() -> RegionWeights:
    person = np.zeros((HEIGHT, WIDTH), np.float32)
    person[PERSON] = 1.0
    skin = np.zeros((HEIGHT, WIDTH), np.float32)
    skin[SKIN] = 1.0
    return RegionWeights(person, skin)


def encoding(method: str = "dssim", **changes) -> EncodingSpec:
    base = EncodingSpec.from_settings(Settings())
    ranges = tuple((f, 10, 95) for f in ("jpeg", "webp", "avif"))
    aq = replace(base.autoquality, method=method, target=TARGET, ranges=ranges)
    return replace(base, autoquality=aq, **changes)


DEFAULTS = RegionSpec()


def encode(fmt, regions=None, spec=None, region_spec=DEFAULTS, **kw):
    output = OutputSpec(
        fmt, None, encoding=spec or encoding(), regions=region_spec if regions else None
    )
    return encode_output(
        from_array(picture()), output, "png", None, Settings(), regions=regions, **kw
    )


def skimage_person_dssim(original: np.ndarray, data: bytes, person: np.ndarray) -> float:
    """The person's DSSIM recomputed with scikit-image: per-channel SSIM maps of Y'CbCr
    (the README's formula), each window weighted by the mask at its centre."""
    decoded = to_array(decode(data)).astype(np.float64)
    pad = 3
    mask = person[pad:-pad, pad:-pad]
    total = 0.0
    for channel, weight in enumerate((0.75, 0.125, 0.125)):
        x = original.astype(np.float64) @ YCBCR[channel]
        y = decoded @ YCBCR[channel]
        _, ssim_map = structural_similarity(
            x,
            y,
            data_range=255,
            win_size=7,
            gaussian_weights=False,
            use_sample_covariance=True,
            full=True,
        )
        total += weight * float((ssim_map[pad:-pad, pad:-pad] * mask).sum() / mask.sum())
    return (1.0 - total) / 2.0


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "avif"])
def test_region_aware_is_smaller_with_the_person_at_the_target(fmt):
    regions = weights()
    plain = encode(fmt)
    aware = encode(fmt, regions)
    assert len(aware.data) < 0.75 * len(plain.data)
    person = skimage_person_dssim(picture(), aware.data, regions.person)
    assert person <= TARGET + 0.001 + 1e-4
    report = aware.report
    dssims = dict(report.region_dssim)
    assert set(dssims) == {"person", "skin", "clothes", "background"}
    assert report.achieved_dssim == dssims["person"]
    assert abs(dssims["person"] - person) < 2e-3  # the encoder's own measure agrees
    assert dssims["background"] <= region_aware.BACKGROUND_TARGET_FACTOR * TARGET
    assert report.target_met
    assert report.method == "dssim"
    proto = report.to_proto()
    assert {r.region: r.dssim for r in proto.region_dssim} == pytest.approx(dssims)


def test_the_background_target_binds():
    regions = weights()
    # The Gaussian leaves the background texture enough to bind (a defocus leaves it flat).
    gaussian = RegionSpec(background_target=0.012, prefilter="gaussian")
    strict = encode("webp", regions, region_spec=gaussian)
    dssims = dict(strict.report.region_dssim)
    assert dssims["background"] <= 0.012
    assert strict.report.target_met
    # The background, not the person, set the quality: the person is well under its target.
    assert dssims["person"] < TARGET - 0.002
    # Out of reach within the quality range: the closest, not met.
    unreachable = encode(
        "webp", regions, region_spec=RegionSpec(background_target=0.002, prefilter="gaussian")
    )
    assert not unreachable.report.target_met


def test_a_heavy_weight_holds_that_region_to_the_target():
    regions = weights()
    for heavy in ("skin", "clothes"):
        spec = RegionSpec(**{f"{heavy}_weight": 50.0})
        dssims = dict(encode("webp", regions, region_spec=spec).report.region_dssim)
        # The person's DSSIM is the weighted one: nearly all the heavy region's.
        assert dssims[heavy] <= TARGET + 0.001 + 2e-4
        assert abs(dssims["person"] - dssims[heavy]) < 1e-3


def test_without_regions_nothing_changes():
    plain = encode("webp")
    # The request asked for regions but the engine has none (no segmentation): plain.
    output = OutputSpec("webp", None, encoding=encoding(), regions=RegionSpec())
    asked = encode_output(from_array(picture()), output, "png", None, Settings())
    assert asked.data == plain.data
    assert asked.report == plain.report
    assert plain.report.region_dssim == ()
    # Masks without the request's option: ignored.
    unasked = encode_output(
        from_array(picture()),
        OutputSpec("webp", None, encoding=encoding()),
        "png",
        None,
        Settings(),
        regions=weights(),
    )
    assert unasked.data == plain.data


def test_no_person_in_the_masks_is_plain_autoquality():
    empty = RegionWeights(np.zeros((HEIGHT, WIDTH), np.float32), np.zeros((HEIGHT, WIDTH)))
    assert encode("jpeg", empty).data == encode("jpeg").data


def test_masks_of_another_size_are_an_error():
    wrong = RegionWeights(np.ones((10, 10), np.float32), np.zeros((10, 10), np.float32))
    with pytest.raises(ValueError, match="region masks"):
        encode("jpeg", wrong)


@pytest.mark.parametrize("fmt, compression", [("png", "lossy"), ("webp", "lossless")])
def test_lossless_formats_get_the_prefilter_only(fmt, compression):
    spec = encoding(webp=WebpSpec(compression=compression))
    plain = encode(fmt, spec=spec)
    # A small picture: the automatic sigma is 1 px; noise needs more.
    aware = encode(fmt, weights(), spec=spec, region_spec=RegionSpec(prefilter_sigma=4.0))
    assert len(aware.data) < 0.9 * len(plain.data)
    assert aware.report.lossless and aware.report.region_dssim == ()
    # The person's pixels are exactly the source's; the background changed.
    original, decoded = picture(), to_array(decode(aware.data))
    assert np.array_equal(decoded[PERSON], original[PERSON])
    assert not np.array_equal(decoded[:20], original[:20])


def test_the_prefilter_leaves_the_person_alone():
    image = from_array(picture())
    plan = region_aware.plan(RegionSpec(), TARGET, 0.001, WIDTH, HEIGHT)
    assert plan.prefilter == region_aware.DEFAULT_PREFILTER == "defocus"
    assert plan.sigma == region_aware.auto_sigma(WIDTH, HEIGHT) == 0.04 * WIDTH
    # No halo to hide: the feather is the default-strength Gaussian's reach, not the defocus'.
    assert plan.margin == region_aware.feather_margin("gaussian", 0.008 * WIDTH, WIDTH, HEIGHT)
    assert plan.margin < 2 * plan.sigma
    filtered = to_array(region_aware.prefiltered(image, weights(), plan))
    assert np.array_equal(filtered[PERSON], picture()[PERSON])
    grey = image.colourspace("b-w")
    chroma = replace(plan, prefilter="chroma")
    assert region_aware.prefiltered(grey, weights(), chroma) is grey


def test_best_format_applies_regions_to_every_candidate():
    result = encode("best", weights())
    assert result.report.candidates
    dssims = dict(result.report.region_dssim)
    assert dssims["person"] <= TARGET + 0.001
    assert result.report.achieved_dssim == dssims["person"]


def test_ml_without_a_predictor_searches_the_regions_by_dssim():
    result = encode("webp", weights(), spec=encoding("ml"))
    assert result.report.method == "dssim"
    assert dict(result.report.region_dssim)["person"] <= TARGET + 0.001
    assert [reason for reason, _ in result.degradations] == ["AUTOQUALITY_ML_UNAVAILABLE"]


def test_the_deadline_check_runs_between_trial_encodes():
    calls = []

    def check():
        calls.append(1)
        if len(calls) > 8:
            raise TimeoutError("deadline")

    with pytest.raises(TimeoutError):
        encode("webp", weights(), kill_check=check)


def test_weighted_ssims_match_one_at_a_time():
    image = from_array(picture())
    data = image.jpegsave_buffer(Q=40)
    reference = DssimReference(image)
    regions = weights()
    maps = [regions.person, regions.skin, 1 - regions.person, np.zeros_like(regions.person)]
    many = reference.weighted_ssims(decode(data), maps)
    for one, weight in zip(many[:3], maps[:3], strict=True):
        assert one == pytest.approx(reference.ssim(decode(data), weight), abs=1e-6)
    assert np.isnan(many[3])


# --- OutputOptions.regions ------------------------------------------------------------------


def parse(settings=None, method=pb.AUTOQUALITY_METHOD_DSSIM, **regions):
    msg = pb.ProcessImageRequest(
        source=pb.ImageSource(data=b"bytes"),
        output=pb.OutputOptions(
            format=pb.IMAGE_FORMAT_WEBP,
            autoquality=pb.Autoquality(method=method),
            regions=pb.RegionQuality(**regions),
        ),
    )
    return parse_process_request(msg, settings or Settings(), frozenset())


def violations(**kwargs) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as caught:
        parse(**kwargs)
    return {v.field: v.description for v in caught.value.violations}


def test_regions_parse_with_their_defaults():
    assert parse().output.regions is None  # not enabled
    assert parse(enabled=True).output.regions == RegionSpec()
    spec = parse(
        enabled=True,
        background_target=0.05,
        skin_weight=2.0,
        prefilter=pb.BACKGROUND_FILTER_MEDIAN,
        prefilter_sigma=3.0,
    ).output.regions
    assert spec == RegionSpec(0.05, 2.0, 1.0, "median", 3.0)
    assert parse(method=pb.AUTOQUALITY_METHOD_ML, enabled=True).output.regions == RegionSpec()
    dssim_default = Settings(autoquality_method="dssim")
    unset = pb.AUTOQUALITY_METHOD_UNSPECIFIED
    assert parse(dssim_default, unset, enabled=True).output.regions == RegionSpec()


@pytest.mark.parametrize(
    "fields, path, message",
    [
        ({"background_target": 1.5}, "output.regions.background_target", "within (0, 1)"),
        ({"background_target": -0.1}, "output.regions.background_target", "within (0, 1)"),
        ({"background_target": float("nan")}, "output.regions.background_target", "finite"),
        ({"skin_weight": -1.0}, "output.regions.skin_weight", ">= 0"),
        ({"clothes_weight": float("inf")}, "output.regions.clothes_weight", "finite"),
        ({"skin_weight": 1e-9, "clothes_weight": 1e-9}, "output.regions", "both"),
        ({"prefilter": 9}, "output.regions.prefilter", "unknown background filter"),
        ({"prefilter_sigma": -2.0}, "output.regions.prefilter_sigma", ">= 0"),
        ({"prefilter_sigma": float("inf")}, "output.regions.prefilter_sigma", "finite"),
    ],
)
def test_regions_violations(fields, path, message):
    found = violations(enabled=True, **fields)
    assert message in found[path], found


@pytest.mark.parametrize(
    "method", [pb.AUTOQUALITY_METHOD_NONE, pb.AUTOQUALITY_METHOD_SIZE, None], ids=str
)
def test_regions_need_the_dssim_or_ml_method(method):
    if method is None:  # unset: the settings' method, "none" by default
        found = violations(method=pb.AUTOQUALITY_METHOD_UNSPECIFIED, enabled=True)
    else:
        found = violations(method=method, enabled=True)
    assert found["output.regions"] == "needs the dssim or ml autoquality method"


def test_disabled_regions_are_not_validated():
    assert parse(method=pb.AUTOQUALITY_METHOD_NONE, skin_weight=-1.0).output.regions is None
