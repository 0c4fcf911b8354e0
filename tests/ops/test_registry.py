"""The registry has exactly one entry per Operation oneof field, and each entry is usable."""

from __future__ import annotations

import inspect

from imagesvc.ops.registry import OPS
from imagesvc.options import ParseContext, Violations
from imagesvc.v1 import image_service_pb2 as pb

ONEOF_FIELDS = pb.Operation.DESCRIPTOR.oneofs_by_name["op"].fields


def test_keys_are_the_operation_oneof_fields():
    assert set(OPS) == {field.name for field in ONEOF_FIELDS}
    assert len(OPS) == len(ONEOF_FIELDS)


def test_every_entry_is_callable():
    for name, spec in OPS.items():
        assert callable(spec.parse), name
        assert callable(spec.run), name
        assert callable(spec.needs_detections), name
        # run(image, options, ctx); parse(message, path, pctx)
        assert len(inspect.signature(spec.run).parameters) == 3, name
        assert len(inspect.signature(spec.parse).parameters) == 3, name


def test_each_parse_accepts_its_own_message(settings):
    # parse must take the oneof field's message type: give it a default one and a valid path.
    for field in ONEOF_FIELDS:
        pctx = ParseContext(settings, frozenset({"face"}), Violations())
        message = getattr(pb, field.message_type.name)()
        options = OPS[field.name].parse(message, f"op.{field.name}", pctx)
        # Options are frozen values, never protobuf messages.
        assert not hasattr(options, "DESCRIPTOR"), field.name
        OPS[field.name].needs_detections(options)


def test_detection_ops_need_detections(settings):
    pctx = ParseContext(settings, frozenset({"face"}), Violations())
    for name in ("draw_detections", "blur_detections", "pixelate_detections"):
        field = pb.Operation.DESCRIPTOR.fields_by_name[name]
        message = getattr(pb, field.message_type.name)()
        assert OPS[name].needs_detections(OPS[name].parse(message, name, pctx)) is True
    for name in ("auto_rotate", "rotate", "flip", "background", "blur", "sharpen", "pixelate"):
        assert OPS[name].needs_detections(None) is False


def test_segmentation_ops_need_regions_and_faces(settings):
    from imagesvc.options import OutputSpec, PlannedOp, ProcessRequest

    pctx = ParseContext(settings, frozenset({"face", "person"}), Violations())
    for name in ("blur_background", "draw_segmentation"):
        field = pb.Operation.DESCRIPTOR.fields_by_name[name]
        options = OPS[name].parse(getattr(pb, field.message_type.name)(), name, pctx)
        assert OPS[name].needs_regions(options) is True
        assert OPS[name].needs_detections(options) is True
        assert OPS[name].detection_classes(options) == frozenset({"face"})
        # Beside a step that wants persons, the request asks for both.
        draw = OPS["draw_detections"]
        persons = draw.parse(pb.DrawDetections(classes=["person"]), "d", pctx)
        request = ProcessRequest(
            b"",
            ((PlannedOp(name, OPS[name], options), PlannedOp("draw_detections", draw, persons)),),
            OutputSpec(None, None),
        )
        assert request.needs_regions and request.needs_detections
        assert request.detection_classes == frozenset({"face", "person"})
    for name in set(OPS) - {"blur_background", "draw_segmentation"}:
        assert OPS[name].needs_regions(None) is False, name
    plain = ProcessRequest(b"", (), OutputSpec(None, None))
    assert not plain.needs_regions and plain.detection_classes is None
