"""Request validation: every violation of a request is reported at once, with field paths."""

from __future__ import annotations

import pytest

from imagesvc.errors import InvalidRequest
from imagesvc.ops.registry import OPS
from imagesvc.options import (
    CENTER,
    CompassGravity,
    ObjectGravity,
    SmartGravity,
    parse_process_request,
)
from imagesvc.settings import Settings
from imagesvc.v1 import image_service_pb2 as pb

FACES = frozenset({"face"})
DATA = b"not decoded here"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(max_pipelines=3, max_operations=4)


def op(**kwargs) -> pb.Operation:
    return pb.Operation(**kwargs)


def request(*pipelines, data=DATA, **output) -> pb.ProcessImageRequest:
    return pb.ProcessImageRequest(
        source=pb.ImageSource(data=data) if data is not None else None,
        pipelines=[pb.Pipeline(operations=ops) for ops in pipelines],
        output=pb.OutputOptions(**output),
    )


def violations(msg, settings, known=FACES) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as caught:
        parse_process_request(msg, settings, known)
    error = caught.value
    assert error.reason == "INVALID_REQUEST"
    fields = [v.field for v in error.violations]
    assert len(fields) == len(set(fields)), fields
    return {v.field: v.description for v in error.violations}


def test_a_valid_request_becomes_planned_ops(settings):
    msg = request(
        [
            op(resize=pb.Resize(width=100, gravity=pb.Gravity(smart=pb.SmartGravity()))),
            op(blur=pb.Blur(sigma=1)),
        ],
        [op(crop=pb.Crop(width=10, gravity=pb.Gravity(object=pb.ObjectGravity())))],
        format=pb.IMAGE_FORMAT_WEBP,
        quality=70,
        format_quality=[pb.FormatQuality(format=pb.IMAGE_FORMAT_AVIF, quality=50)],
    )
    parsed = parse_process_request(msg, settings, FACES)
    assert parsed.data == DATA
    assert [[p.name for p in pipeline] for pipeline in parsed.pipelines] == [
        ["resize", "blur"],
        ["crop"],
    ]
    first = parsed.pipelines[0][0]
    assert first.spec is OPS["resize"]
    assert first.options.width == 100 and first.options.gravity == SmartGravity()
    assert parsed.pipelines[1][0].options.gravity == ObjectGravity(None)
    assert parsed.needs_detections  # the crop's object gravity
    assert parsed.output.format == "webp" and parsed.output.quality == 70
    assert parsed.output.format_quality == {"avif": 50}
    assert parsed.output.strip_metadata is True


def test_no_detection_needed_without_detection_ops(settings):
    parsed = parse_process_request(request([op(resize=pb.Resize(width=10))]), settings, FACES)
    assert not parsed.needs_detections
    assert parsed.pipelines[0][0].options.gravity == CENTER


def test_output_defaults_and_explicit_values(settings):
    parsed = parse_process_request(request([]), settings, FACES)
    assert parsed.output.format is None and parsed.output.quality is None
    assert parsed.output.strip_metadata is True and parsed.output.keep_icc is False
    kept = parse_process_request(request([], strip_metadata=False, keep_icc=True), settings, FACES)
    assert kept.output.strip_metadata is False and kept.output.keep_icc is True


def test_every_violation_is_reported_at_once(settings):
    msg = pb.ProcessImageRequest(
        pipelines=[
            pb.Pipeline(
                operations=[
                    op(resize=pb.Resize(width=10, dpr=12)),
                    pb.Operation(),  # no field set
                    op(blur_detections=pb.BlurDetections(sigma=2, classes=["face", "cat"])),
                ]
            )
        ]
        + [pb.Pipeline(operations=[op(blur=pb.Blur(sigma=1))])] * 3,  # 4 > max_pipelines 3
        output=pb.OutputOptions(quality=101),
    )
    found = violations(msg, settings)
    assert set(found) == {
        "source.data",
        "pipelines",
        "pipelines[0].operations[0].resize.dpr",
        "pipelines[0].operations[1]",
        "pipelines[0].operations[2].blur_detections.classes[1]",
        "output.quality",
    }
    assert "cat" in found["pipelines[0].operations[2].blur_detections.classes[1]"]
    assert "face" in found["pipelines[0].operations[2].blur_detections.classes[1]"]


def test_the_message_summarises_and_counts_the_rest(settings):
    msg = request(
        [op(blur=pb.Blur(sigma=0)) for _ in range(4)] + [op(sharpen=pb.Sharpen(sigma=0))] * 3,
        data=None,
    )
    with pytest.raises(InvalidRequest) as caught:
        parse_process_request(msg, settings, FACES)
    error = caught.value
    # 7 bad ops + too many operations + missing source
    assert len(error.violations) == 9
    assert "(+4 more)" in error.message
    assert "source.data" in error.message


def test_too_many_operations(settings):
    found = violations(request([op(flip=pb.Flip(horizontal=True))] * 5), settings)
    assert set(found) == {"pipelines[0].operations"}


def test_format_quality_entries(settings):
    found = violations(
        request(
            [],
            format_quality=[
                pb.FormatQuality(quality=50),  # no format
                pb.FormatQuality(format=pb.IMAGE_FORMAT_JPEG, quality=0),
                pb.FormatQuality(format=pb.IMAGE_FORMAT_PNG, quality=80),
            ],
        ),
        settings,
    )
    assert set(found) == {"output.format_quality[0].format", "output.format_quality[1].quality"}


def test_empty_source_bytes_are_missing(settings):
    assert set(violations(request([], data=b""), settings)) == {"source.data"}


@pytest.mark.parametrize("classes", [[], ["all"], ["ALL"], [" all "], ["face", "all"]])
def test_all_and_empty_mean_every_class(settings, classes):
    msg = request([op(draw_detections=pb.DrawDetections(classes=classes))])
    parsed = parse_process_request(msg, settings, FACES)
    assert parsed.pipelines[0][0].options.classes is None


def test_known_classes_are_normalised(settings):
    msg = request([op(draw_detections=pb.DrawDetections(classes=[" Face"]))])
    parsed = parse_process_request(msg, settings, FACES)
    assert parsed.pipelines[0][0].options.classes == frozenset({"face"})


def test_without_a_detector_every_named_class_is_unknown(settings):
    gravity = pb.Gravity(object=pb.ObjectGravity(classes=["face"]))
    msg = request(
        [op(crop=pb.Crop(width=5, gravity=gravity)), op(draw_detections=pb.DrawDetections())]
    )
    found = violations(msg, settings, known=frozenset())
    assert set(found) == {"pipelines[0].operations[0].crop.gravity.object.classes[0]"}
    assert "all" in found["pipelines[0].operations[0].crop.gravity.object.classes[0]"]


def test_gravity_violations_have_full_paths(settings):
    msg = request(
        [
            op(
                resize=pb.Resize(
                    width=5,
                    gravity=pb.Gravity(focus_point=pb.FocusPoint(x=2, y=0.5)),
                    extend=pb.Extend(enabled=True, gravity=pb.CompassGravity(y_offset=-1)),
                )
            )
        ]
    )
    found = violations(msg, settings)
    assert set(found) == {
        "pipelines[0].operations[0].resize.gravity.focus_point.x",
        "pipelines[0].operations[0].resize.extend.gravity.y_offset",
    }


def test_compass_defaults_to_centre(settings):
    msg = request([op(crop=pb.Crop(width=5, gravity=pb.Gravity(compass=pb.CompassGravity())))])
    parsed = parse_process_request(msg, settings, FACES)
    assert parsed.pipelines[0][0].options.gravity == CompassGravity("center", 0, 0)


def test_all_does_not_hide_an_unknown_class(settings):
    msg = request([op(blur_detections=pb.BlurDetections(sigma=3, classes=["all", "cat"]))])
    found = violations(msg, settings)
    assert set(found) == {"pipelines[0].operations[0].blur_detections.classes[1]"}


def _float_field_paths(descriptor, prefix=()):
    """Every float/double field reachable from a message type, as a tuple of field names."""
    from google.protobuf.descriptor import FieldDescriptor

    floats = (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT)
    for field in descriptor.fields:
        if field.cpp_type in floats:
            yield (*prefix, field.name)
        elif (
            field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE
            and field.message_type.GetOptions().map_entry
        ):
            if field.message_type.fields_by_name["value"].cpp_type in floats:
                yield (*prefix, f"{field.name}[face]")  # a map: one entry, keyed by a known class
        elif field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE and len(prefix) < 6:
            yield from _float_field_paths(field.message_type, (*prefix, field.name))


FLOAT_FIELDS = sorted(set(_float_field_paths(pb.Operation.DESCRIPTOR)))


def test_the_walk_finds_the_float_fields_the_api_has():
    # A sample of the float fields the issue named: the walk must reach each of them.
    names = {".".join(path) for path in FLOAT_FIELDS}
    assert {
        "resize.dpr",
        "crop.width",
        "crop.gravity.compass.x_offset",
        "blur.sigma",
        "blur_detections.sigma",
        "sharpen.sigma",
        "resize.gravity.focus_point.y",
        "resize.gravity.object.weights[face]",
        "resize.gravity.object.position.compass.x_offset",
        "crop_objects.padding",
        "crop_objects.weights[face]",
    } <= names


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("path", FLOAT_FIELDS, ids=".".join)
def test_every_float_field_rejects_non_finite_values(settings, path, value):
    operation = pb.Operation()
    message = operation
    for name in path[:-1]:
        message = getattr(message, name)
    if path[-1].endswith("[face]"):
        getattr(message, path[-1].removesuffix("[face]"))["face"] = value
    else:
        setattr(message, path[-1], value)
    found = violations(request([operation]), settings)
    field = "pipelines[0].operations[0]." + ".".join(path)
    assert found.get(field) == "must be a finite number", found


def test_a_non_finite_value_is_reported_with_the_other_violations(settings):
    found = violations(
        request([op(blur=pb.Blur(sigma=float("nan"))), op(pixelate=pb.Pixelate(size=1))]),
        settings,
    )
    assert found["pipelines[0].operations[0].blur.sigma"] == "must be a finite number"
    assert "pipelines[0].operations[1].pixelate.size" in found
