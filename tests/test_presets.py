"""Presets: loading and checking the file, and merging presets under a request's own options."""

from __future__ import annotations

import json

import pytest

from imagesvc import presets
from imagesvc.errors import InvalidRequest
from imagesvc.settings import Settings
from imagesvc.v1 import image_service_pb2 as pb

RESIZING_TYPE_FILL = pb.RESIZING_TYPE_FILL

PRESETS_YAML = """
default:
  output: {format: IMAGE_FORMAT_WEBP, quality: 70}
thumbnail:
  pipelines:
    - operations: [{resize: {width: 320, height: 320, type: RESIZING_TYPE_FILL}}]
sharp:
  output: {quality: 90}
  skipProcessingFormats: [IMAGE_FORMAT_GIF]
blurred:
  pipelines:
    - operations: [{blur: {sigma: 3}}]
"""


def write(tmp_path, text: str, name: str = "presets.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def loaded(tmp_path, text: str = PRESETS_YAML, name: str = "presets.yaml", **settings):
    values = Settings(presets_path=write(tmp_path, text, name), **settings)
    return presets.load(values)


def resize_request(width: int) -> pb.ProcessImageRequest:
    return pb.ProcessImageRequest(
        pipelines=[pb.Pipeline(operations=[pb.Operation(resize=pb.Resize(width=width))])]
    )


def test_no_file_no_presets():
    assert presets.load(Settings()).by_name == {}


def test_default_applies_to_every_request(tmp_path):
    merged = loaded(tmp_path).apply(resize_request(100))
    assert merged.output.format == pb.IMAGE_FORMAT_WEBP
    assert merged.output.quality == 70
    assert merged.pipelines[0].operations[0].resize.width == 100


def test_named_presets_apply_in_order_and_the_request_wins(tmp_path):
    request = pb.ProcessImageRequest(presets=["thumbnail", "sharp"])
    merged = loaded(tmp_path).apply(request)
    resize = merged.pipelines[0].operations[0].resize
    assert (resize.width, resize.height, resize.type) == (320, 320, RESIZING_TYPE_FILL)
    assert merged.output.quality == 90  # sharp overrides default's 70
    assert merged.output.format == pb.IMAGE_FORMAT_WEBP  # default's, merged field by field
    assert list(merged.skip_processing_formats) == [pb.IMAGE_FORMAT_GIF]

    own = resize_request(50)
    own.presets.extend(["thumbnail", "sharp"])
    own.output.quality = 40
    merged = loaded(tmp_path).apply(own)
    # The request's pipelines replace the preset's, whole; its quality beats both presets'.
    assert len(merged.pipelines) == 1
    assert len(merged.pipelines[0].operations) == 1
    assert merged.pipelines[0].operations[0].resize.width == 50
    assert merged.output.quality == 40


def test_later_presets_replace_lists_whole(tmp_path):
    merged = loaded(tmp_path).apply(pb.ProcessImageRequest(presets=["thumbnail", "blurred"]))
    assert [op.WhichOneof("op") for op in merged.pipelines[0].operations] == ["blur"]


def test_the_source_and_caching_fields_are_untouched(tmp_path):
    request = pb.ProcessImageRequest(presets=["thumbnail"], if_none_match='"x"')
    request.source.data = b"abc"
    merged = loaded(tmp_path).apply(request)
    assert merged.source.data == b"abc" and merged.if_none_match == '"x"'


def test_unknown_presets_are_field_violations(tmp_path):
    with pytest.raises(InvalidRequest) as raised:
        loaded(tmp_path).apply(pb.ProcessImageRequest(presets=["thumbnail", "nope", "also"]))
    fields = [v.field for v in raised.value.violations]
    assert fields == ["presets[1]", "presets[2]"]
    assert '"nope"' in raised.value.violations[0].description


def test_too_many_presets(tmp_path):
    request = pb.ProcessImageRequest(presets=["sharp"] * (presets.MAX_PRESETS_PER_REQUEST + 1))
    with pytest.raises(InvalidRequest) as raised:
        loaded(tmp_path).apply(request)
    assert [v.field for v in raised.value.violations] == ["presets"]


def test_only_presets_refuses_a_requests_own_options(tmp_path):
    only = loaded(tmp_path, only_presets=True)
    merged = only.apply(pb.ProcessImageRequest(presets=["thumbnail"]))
    assert merged.pipelines[0].operations[0].resize.width == 320
    own = resize_request(10)
    own.output.quality = 5
    own.skip_processing_formats.append(pb.IMAGE_FORMAT_PNG)
    with pytest.raises(InvalidRequest) as raised:
        only.apply(own)
    assert sorted(v.field for v in raised.value.violations) == [
        "output",
        "pipelines",
        "skip_processing_formats",
    ]


def test_only_presets_needs_a_file():
    with pytest.raises(presets.PresetsError, match="IMAGESVC_PRESETS_PATH"):
        presets.load(Settings(only_presets=True))


def test_json_files_work_too(tmp_path):
    text = json.dumps({"small": {"pipelines": [{"operations": [{"resize": {"width": 8}}]}]}})
    merged = loaded(tmp_path, text, "presets.json").apply(pb.ProcessImageRequest(presets=["small"]))
    assert merged.pipelines[0].operations[0].resize.width == 8


def test_oneof_members_replace_each_other():
    base = pb.Operation(resize=pb.Resize(width=3))
    presets.overlay(base, pb.Operation(crop=pb.Crop()))
    assert base.WhichOneof("op") == "crop"


def test_maps_are_replaced_whole():
    base = pb.ObjectGravity(weights={"face": 2.0, "person": 1.0})
    presets.overlay(base, pb.ObjectGravity(weights={"face": 5.0}))
    assert dict(base.weights) == {"face": 5.0}


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2]", "must map preset names"),
        ("a: [", "is not valid"),
        ("thumb: {source: {url: 'http://x/'}}", "may set only pipelines"),
        ("thumb: {presets: [a]}", "may set only pipelines"),
        ("thumb: {pipelines: [{operations: [{nonsense: {}}]}]}", "preset 'thumb'"),
        ("thumb: {output: {quality: 'high'}}", "preset 'thumb'"),
        ("thumb: 3", "must be a mapping"),
        ("'bad name': {}", "may hold only"),
    ],
)
def test_malformed_files_fail_the_load(tmp_path, text, message):
    with pytest.raises(presets.PresetsError, match=message) as raised:
        loaded(tmp_path, text)
    assert "IMAGESVC_PRESETS_PATH" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_missing_file_fails_the_load(tmp_path):
    with pytest.raises(presets.PresetsError, match="cannot read IMAGESVC_PRESETS_PATH"):
        presets.load(Settings(presets_path=str(tmp_path / "absent.yaml")))


def test_invalid_options_fail_validation(tmp_path):
    bad = loaded(tmp_path, "thumb: {pipelines: [{operations: [{blur: {sigma: -3}}]}]}")
    with pytest.raises(presets.PresetsError, match=r"preset 'thumb' is invalid: pipelines\[0\]"):
        presets.validate(bad, Settings(), frozenset())
    unknown_class = loaded(
        tmp_path, "anon: {pipelines: [{operations: [{blurDetections: {classes: [cat]}}]}]}"
    )
    with pytest.raises(presets.PresetsError, match="preset 'anon' is invalid"):
        presets.validate(unknown_class, Settings(), frozenset({"face"}))


def test_valid_presets_pass_validation(tmp_path):
    presets.validate(loaded(tmp_path), Settings(), frozenset({"face"}))
