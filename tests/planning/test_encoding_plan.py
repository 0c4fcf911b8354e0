"""The plan counts what encoding adds: autoquality's and max_bytes' trial encodes, DSSIM,
best format's candidates, and the sizes every best-format candidate must be able to hold."""

from __future__ import annotations

import numpy as np
import pytest

from imagesvc import planning, vips
from imagesvc.engine import open_header, output_format, plan_shrink_on_load, source_info
from imagesvc.errors import RequestTooCostly, ResultUnencodable
from imagesvc.encoding.plan import REGION_PREFILTER_NS_PER_PX
from imagesvc.options import parse_process_request
from imagesvc.settings import Settings
from imagesvc.v1 import image_service_pb2 as pb
from tests.images import jpeg

SOURCE = jpeg(np.full((300, 400, 3), 90, np.uint8))


@pytest.fixture(scope="module")
def settings() -> Settings:
    settings = Settings(workers=1)
    vips.configure(settings)
    return settings


def plan(settings: Settings, output: pb.OutputOptions, *ops: pb.Operation):
    msg = pb.ProcessImageRequest(
        source=pb.ImageSource(data=SOURCE), pipelines=[pb.Pipeline(operations=ops)], output=output
    )
    request = parse_process_request(msg, settings, frozenset())
    header = open_header(request.data, settings)
    shrink = plan_shrink_on_load(header, request.pipelines)
    return planning.plan_request(
        source_info(header, shrink, len(SOURCE), settings),
        request.pipelines,
        output_format(request.output, header.format),
        settings,
        encoding=request.output.encoding,
        regions=request.output.regions is not None,
    )


def enlarge(width: int, height: int) -> pb.Operation:
    return pb.Operation(
        resize=pb.Resize(type=pb.RESIZING_TYPE_FORCE, width=width, height=height, enlarge=True)
    )


DSSIM = pb.Autoquality(method=pb.AUTOQUALITY_METHOD_DSSIM)


@pytest.mark.parametrize("fmt", [pb.IMAGE_FORMAT_JPEG, pb.IMAGE_FORMAT_WEBP, pb.IMAGE_FORMAT_AVIF])
def test_a_search_costs_several_encodes_and_holds_a_copy(settings, fmt):
    op = enlarge(2000, 1500)
    fixed = plan(settings, pb.OutputOptions(format=fmt), op)
    searched = plan(settings, pb.OutputOptions(format=fmt, autoquality=DSSIM), op)
    assert searched.work_s > 2 * fixed.work_s
    # The copy the trials read and DSSIM's 60 bytes a pixel: over 3 MP x 60 B more.
    assert searched.peak_bytes - fixed.peak_bytes > 3_000_000 * 60


def test_max_bytes_searches_too_but_png_does_not(settings):
    op = enlarge(2000, 1500)
    fixed = plan(settings, pb.OutputOptions(format=pb.IMAGE_FORMAT_JPEG), op)
    limited = plan(settings, pb.OutputOptions(format=pb.IMAGE_FORMAT_JPEG, max_bytes=10_000), op)
    assert limited.work_s > 2 * fixed.work_s
    png = plan(settings, pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG), op)
    png_limited = plan(settings, pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG, max_bytes=1), op)
    assert png_limited.work_s == pytest.approx(png.work_s)


def test_best_format_costs_its_candidates(settings):
    op = enlarge(2000, 1500)
    best = plan(settings, pb.OutputOptions(format=pb.IMAGE_FORMAT_BEST), op)
    avif = plan(settings, pb.OutputOptions(format=pb.IMAGE_FORMAT_AVIF), op)
    assert best.output_format == "best"
    assert best.work_s > avif.work_s


def test_best_format_needs_a_size_every_candidate_holds(settings):
    wide = enlarge(16384, 10)  # WebP holds at most 16383 a side
    with pytest.raises(ResultUnencodable):
        planning.check_budget(
            plan(settings, pb.OutputOptions(format=pb.IMAGE_FORMAT_BEST), wide), settings
        )
    planning.check_budget(
        plan(settings, pb.OutputOptions(format=pb.IMAGE_FORMAT_JPEG), wide), settings
    )


def test_a_slow_avif_search_is_refused_before_any_work(settings):
    output = pb.OutputOptions(
        format=pb.IMAGE_FORMAT_AVIF, autoquality=DSSIM, avif=pb.AvifOptions(effort=9)
    )
    costly = plan(settings, output, enlarge(4000, 3000))
    with pytest.raises(RequestTooCostly) as caught:
        planning.check_budget(costly, settings)
    assert caught.value.metadata["limit"] == "max_request_work_s"


@pytest.mark.parametrize("fmt", [pb.IMAGE_FORMAT_JPEG, pb.IMAGE_FORMAT_WEBP])
def test_region_aware_autoquality_costs_its_prefilter_and_second_reference(settings, fmt):
    op = enlarge(2000, 1500)
    plain = plan(settings, pb.OutputOptions(format=fmt, autoquality=DSSIM), op)
    regions = plan(
        settings,
        pb.OutputOptions(format=fmt, autoquality=DSSIM, regions=pb.RegionQuality(enabled=True)),
        op,
    )
    # Two references, masks and weights: over 3 MP x (2 x 60 + 28) B held, against 3 MP x 60.
    assert regions.peak_bytes - plain.peak_bytes > 3_000_000 * 80
    # The pre-filter and two measures a trial (no sample estimate): more work.
    assert regions.work_s > plain.work_s


def test_region_aware_lossless_pays_only_the_prefilter(settings):
    op = enlarge(2000, 1500)
    png = plan(settings, pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG, autoquality=DSSIM), op)
    png_regions = plan(
        settings,
        pb.OutputOptions(
            format=pb.IMAGE_FORMAT_PNG, autoquality=DSSIM, regions=pb.RegionQuality(enabled=True)
        ),
        op,
    )
    assert png_regions.work_s == pytest.approx(
        png.work_s + 3_000_000 * REGION_PREFILTER_NS_PER_PX * 1e-9, rel=0.05
    )
