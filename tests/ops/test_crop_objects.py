"""crop_objects: crop to the detected objects, padded; no objects, no crop."""

from __future__ import annotations

import numpy as np
import pytest

from tests.images import from_array
from imagesvc.context import DetectedObject
from imagesvc.geometry import Affine, Box
from imagesvc.ops import crop_objects
from imagesvc.ops.crop_objects import CropObjectsOptions
from imagesvc.options import ClassWeights
from imagesvc.planning import PlanEnv, Shape

FACES = [
    DetectedObject("face", 0.9, Box(100, 50, 40, 40)),
    DetectedObject("face", 0.8, Box(300, 80, 20, 20)),
    DetectedObject("hand", 0.9, Box(500, 300, 30, 30)),
]


def image(width=600, height=400):
    array = np.zeros((height, width, 3), np.uint8)
    array[:, :, 0] = np.arange(width) % 256  # the column, to check where the crop came from
    array[:, :, 1] = (np.arange(height) % 256)[:, None]
    return from_array(array)


def test_crops_to_all_the_matching_objects(make_ctx):
    ctx = make_ctx(600, 400, objects=FACES)
    out = crop_objects.run(image(), CropObjectsOptions(classes=frozenset({"face"})), ctx)
    assert (out.width, out.height) == (220, 50)  # 100..320 x 50..100
    assert out(0, 0)[:2] == [100, 50]
    assert ctx.transform.point(100, 50) == (0, 0)


def test_padding_scales_the_box_around_its_centre(make_ctx):
    ctx = make_ctx(600, 400, objects=FACES)
    options = CropObjectsOptions(padding=2.0, classes=frozenset({"face"}))
    out = crop_objects.run(image(), options, ctx)
    assert (out.width, out.height) == (430, 100)  # centre (210, 75): -10..430 x 25..125
    assert out(0, 0)[:2] == [0, 25]  # clipped at the left edge: 430 wide


@pytest.mark.parametrize("mode", ["one_best", "one_best_centermost"])
def test_one_best_modes_crop_to_one_object(make_ctx, mode):
    ctx = make_ctx(600, 400, objects=FACES)
    out = crop_objects.run(image(), CropObjectsOptions(classes=frozenset({"face"}), mode=mode), ctx)
    assert (out.width, out.height) == (40, 40)


def test_weights_choose_the_best_object(make_ctx):
    ctx = make_ctx(600, 400, objects=FACES)
    options = CropObjectsOptions(mode="one_best", weights=ClassWeights((("hand", 5.0),)))
    out = crop_objects.run(image(), options, ctx)
    assert (out.width, out.height) == (30, 30)
    assert out(0, 0)[:2] == [500 % 256, 300 % 256]


def test_no_objects_no_crop(make_ctx):
    ctx = make_ctx(600, 400, objects=[])
    source = image()
    assert crop_objects.run(source, CropObjectsOptions(), ctx) is source
    assert ctx.degradations == [] and ctx.transform == Affine()


def test_unavailable_detection_is_reported_and_nothing_is_cropped(make_ctx):
    ctx = make_ctx(600, 400, objects=[], detection_failure="TRITON_UNAVAILABLE")
    source = image()
    assert crop_objects.run(source, CropObjectsOptions(), ctx) is source
    assert [(d.reason, d.operation) for d in ctx.degradations] == [
        ("DETECTION_UNAVAILABLE", "crop_objects")
    ]


def test_the_plan_is_an_upper_bound_to_be_replanned(settings):
    shape = Shape(600, 400, 3, 1)
    estimate = crop_objects.estimate(shape, CropObjectsOptions(), PlanEnv(settings))
    assert estimate.shape == shape and not estimate.shape_known
