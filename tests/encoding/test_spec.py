"""The encoding spec: request fields over settings, bounds per format, violations named."""

from __future__ import annotations

import pytest

from imagesvc.encoding.spec import EncodingSpec, parse_encoding
from imagesvc.settings import Settings
from imagesvc.v1 import image_service_pb2 as pb


class Collect:
    def __init__(self) -> None:
        self.found: dict[str, str] = {}

    def add(self, path: str, message: str) -> None:
        self.found[path] = message


def parse(msg: pb.OutputOptions, settings: Settings | None = None):
    violations = Collect()
    spec = parse_encoding(msg, settings or Settings(), violations)
    return spec, violations.found


def test_defaults_come_from_the_settings():
    settings = Settings(
        autoquality_method="dssim",
        autoquality_target=0.015,
        autoquality_min=60,
        autoquality_format_max={"avif": 55},
        jpeg_progressive=True,
        png_quantize="never",
        webp_compression="near_lossless",
        avif_subsample="off",
        avif_effort=5,
        best_format_candidates=("webp", "avif"),
    )
    spec = EncodingSpec.from_settings(settings)
    aq = spec.autoquality
    assert (aq.method, aq.target, aq.allowed_error) == ("dssim", 0.015, 0.001)
    assert aq.bounds("jpeg") == (60, 80)
    assert aq.bounds("avif") == (55, 55)  # avif's min setting (60) over its max: clamped
    assert spec.jpeg.progressive and spec.png.quantize == "never"
    assert spec.webp.compression == "near_lossless"
    assert (spec.avif.subsample, spec.avif.effort) == ("off", 5)
    assert spec.best_candidates == ("webp", "avif")


def test_request_bounds_win_over_the_settings_and_per_format_over_both():
    msg = pb.OutputOptions(
        autoquality=pb.Autoquality(
            method=pb.AUTOQUALITY_METHOD_DSSIM,
            min_quality=50,
            max_quality=90,
            format_ranges=[pb.FormatQualityRange(format=pb.IMAGE_FORMAT_WEBP, max_quality=70)],
        )
    )
    spec, found = parse(msg)
    assert found == {}
    assert spec.autoquality.bounds("jpeg") == (50, 90)
    assert spec.autoquality.bounds("avif") == (50, 90)  # the request's, not avif's setting
    assert spec.autoquality.bounds("webp") == (50, 70)


def test_default_avif_range_is_imgproxys():
    spec = EncodingSpec.from_settings(Settings())
    assert spec.autoquality.bounds("avif") == (60, 65)
    assert spec.autoquality.bounds("jpeg") == (70, 80)


@pytest.mark.parametrize(
    ("msg", "path"),
    [
        (pb.OutputOptions(autoquality=pb.Autoquality(method=9)), "output.autoquality.method"),
        (
            pb.OutputOptions(
                autoquality=pb.Autoquality(method=pb.AUTOQUALITY_METHOD_DSSIM, target=2)
            ),
            "output.autoquality.target",
        ),
        (
            pb.OutputOptions(autoquality=pb.Autoquality(method=pb.AUTOQUALITY_METHOD_SIZE)),
            "output.autoquality.target",
        ),
        (
            pb.OutputOptions(autoquality=pb.Autoquality(min_quality=90, max_quality=50)),
            "output.autoquality",
        ),
        (
            pb.OutputOptions(autoquality=pb.Autoquality(max_quality=101)),
            "output.autoquality.max_quality",
        ),
        (
            pb.OutputOptions(autoquality=pb.Autoquality(allowed_error=0)),
            "output.autoquality.allowed_error",
        ),
        (
            pb.OutputOptions(
                autoquality=pb.Autoquality(
                    format_ranges=[pb.FormatQualityRange(format=pb.IMAGE_FORMAT_PNG, min_quality=5)]
                )
            ),
            "output.autoquality.format_ranges[0].format",
        ),
        (pb.OutputOptions(jpeg=pb.JpegOptions(quant_table=9)), "output.jpeg.quant_table"),
        (pb.OutputOptions(png=pb.PngOptions(colors=1)), "output.png.colors"),
        (pb.OutputOptions(png=pb.PngOptions(quantize=7)), "output.png.quantize"),
        (pb.OutputOptions(webp=pb.WebpOptions(compression=7)), "output.webp.compression"),
        (pb.OutputOptions(avif=pb.AvifOptions(effort=10)), "output.avif.effort"),
        (pb.OutputOptions(avif=pb.AvifOptions(subsample=7)), "output.avif.subsample"),
        (
            pb.OutputOptions(best_format_candidates=[pb.IMAGE_FORMAT_GIF]),
            "output.best_format_candidates[0]",
        ),
    ],
)
def test_bad_values_are_violations_on_their_field(msg, path):
    _, found = parse(msg)
    assert path in found, found


def test_size_with_a_byte_target_is_valid():
    msg = pb.OutputOptions(
        autoquality=pb.Autoquality(method=pb.AUTOQUALITY_METHOD_SIZE, target=20000)
    )
    spec, found = parse(msg)
    assert found == {} and (spec.autoquality.method, spec.autoquality.target) == ("size", 20000)


def test_explicit_false_overrides_a_true_setting():
    settings = Settings(jpeg_progressive=True, png_interlaced=True)
    spec, _ = parse(
        pb.OutputOptions(
            jpeg=pb.JpegOptions(progressive=False), png=pb.PngOptions(interlaced=False)
        ),
        settings,
    )
    assert not spec.jpeg.progressive and not spec.png.interlaced
