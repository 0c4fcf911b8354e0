"""Presets (imgproxy's IMGPROXY_PRESETS_PATH / preset / IMGPROXY_ONLY_PRESETS): named partial
ProcessImageRequests, read from IMAGESVC_PRESETS_PATH and validated once at start.

The file, YAML or JSON, maps each name to the options part of a ProcessImageRequest in
proto-JSON: ``pipelines``, ``output`` and ``skipProcessingFormats`` (nothing else: a preset
never names a source, a fallback, caching fields or other presets)::

    default:            # applied to every request, first
      output: {format: IMAGE_FORMAT_WEBP, quality: 78}
    thumbnail:
      pipelines:
        - operations: [{resize: {width: 320, height: 320, type: RESIZING_TYPE_FILL}}]

A request's effective options are the ``default`` preset, then each preset it names in order,
then its own options, each layer overriding the ones before it (``overlay``): a set scalar or
message field replaces the one below it (messages merge field by field), a non-empty list
replaces the list below it whole, so a request's pipelines replace a preset's pipelines rather
than chaining after them. Scalars at their proto3 default (0, false, "") count as unset and
cannot override a preset's value.

Everything downstream (validation, the ETag, processing) sees only the merged request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from google.protobuf import descriptor, json_format
from google.protobuf.message import Message

from imagesvc.errors import InvalidRequest
from imagesvc.options import Violations, parse_process_request
from imagesvc.settings import Settings
from imagesvc.v1 import image_service_pb2 as pb

DEFAULT_PRESET = "default"
# The ProcessImageRequest fields a preset may set, and the ones the only-presets mode forbids
# a request to set itself.
OPTION_FIELDS = ("pipelines", "output", "skip_processing_formats")
MAX_PRESETS_PER_REQUEST = 16
MAX_NAME_LENGTH = 128
# A 1x1 PNG: presets are validated as whole requests, which need a source.
_VALIDATION_SOURCE = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


class PresetsError(Exception):
    """IMAGESVC_PRESETS_PATH is unusable; the message is one line."""


@dataclass(frozen=True)
class Presets:
    """The presets by name (``default`` among them when the file defines it)."""

    by_name: Mapping[str, pb.ProcessImageRequest]
    only_presets: bool = False

    @property
    def default(self) -> pb.ProcessImageRequest | None:
        return self.by_name.get(DEFAULT_PRESET)

    def apply(self, request: pb.ProcessImageRequest) -> pb.ProcessImageRequest:
        """``request`` with its options merged over its presets' (in place; returned).

        Raises InvalidRequest (field violations on ``presets[i]``, or on the request's own
        option fields in only-presets mode)."""
        violations = Violations()
        if len(request.presets) > MAX_PRESETS_PER_REQUEST:
            violations.add("presets", f"at most {MAX_PRESETS_PER_REQUEST} presets per request")
        layers = []
        if self.default is not None:
            layers.append(self.default)
        for index, name in enumerate(request.presets[:MAX_PRESETS_PER_REQUEST]):
            preset = self.by_name.get(name)
            if preset is None:
                violations.add(f"presets[{index}]", f"no preset named {_quoted(name)}")
            else:
                layers.append(preset)
        if self.only_presets:
            for field in OPTION_FIELDS:
                if _is_set(request, field):
                    violations.add(field, "only presets are allowed (IMAGESVC_ONLY_PRESETS)")
        violations.raise_if_any()
        if not layers:
            return request
        merged = pb.ProcessImageRequest()
        for layer in layers:
            overlay(merged, layer)
        own = pb.ProcessImageRequest()
        for field in OPTION_FIELDS:
            if _is_set(request, field):
                _copy_field(own, request, field)
        overlay(merged, own)
        for field in OPTION_FIELDS:
            request.ClearField(field)
            if _is_set(merged, field):
                _copy_field(request, merged, field)
        return request


def _quoted(name: str) -> str:
    return json.dumps(name[:MAX_NAME_LENGTH])


def _is_set(message: Message, field: str) -> bool:
    value = getattr(message, field)
    fd = message.DESCRIPTOR.fields_by_name[field]
    if _is_repeated(fd):
        return len(value) > 0
    return message.HasField(field)


def _is_repeated(fd: descriptor.FieldDescriptor) -> bool:
    # FieldDescriptor.label is deprecated in newer protobuf releases; is_repeated replaces it.
    repeated = getattr(fd, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return fd.label == descriptor.FieldDescriptor.LABEL_REPEATED


def _copy_field(target: Message, source: Message, field: str) -> None:
    fd = source.DESCRIPTOR.fields_by_name[field]
    if _is_repeated(fd):
        getattr(target, field).extend(getattr(source, field))
    else:
        getattr(target, field).CopyFrom(getattr(source, field))


def overlay(base: Message, top: Message) -> None:
    """Merge ``top`` into ``base``: every field ``top`` sets replaces ``base``'s, except that
    singular messages merge recursively; lists and maps are replaced whole (a oneof member
    replaces whichever member ``base`` had: protobuf clears the others)."""
    for fd, value in top.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            getattr(base, fd.name).clear()
            getattr(base, fd.name).update(value)
        elif _is_repeated(fd):
            base.ClearField(fd.name)
            getattr(base, fd.name).extend(value)
        elif fd.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
            child = getattr(base, fd.name)
            child.SetInParent()  # an empty message in top is still "set" (a oneof choice)
            overlay(child, value)
        else:
            setattr(base, fd.name, value)


def load(settings: Settings) -> Presets:
    """The presets of IMAGESVC_PRESETS_PATH (none when unset), parsed and checked for shape.
    Raises PresetsError. Validate their options with ``validate`` once the detector's classes
    are known."""
    path = settings.presets_path
    if not path:
        if settings.only_presets:
            raise PresetsError("IMAGESVC_ONLY_PRESETS needs IMAGESVC_PRESETS_PATH")
        return Presets({}, settings.only_presets)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise PresetsError(f"cannot read IMAGESVC_PRESETS_PATH {path}: {reason}") from None
    try:
        document = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PresetsError(f"IMAGESVC_PRESETS_PATH {path} is not valid: {first_line}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise PresetsError(f"IMAGESVC_PRESETS_PATH {path} must map preset names to options")
    by_name = {}
    for name, options in document.items():
        by_name[_check_name(name, path)] = _parse_preset(name, options, path)
    return Presets(by_name, settings.only_presets)


def _check_name(name: object, path: str) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        raise PresetsError(
            f"IMAGESVC_PRESETS_PATH {path}: preset names must be strings of 1..{MAX_NAME_LENGTH} "
            f"characters, not {name!r}"
        )
    if not all(ch.isalnum() or ch in "-_." for ch in name):
        raise PresetsError(
            f"IMAGESVC_PRESETS_PATH {path}: preset name {name!r} may hold only letters, "
            "digits, '-', '_' and '.'"
        )
    return name


def _parse_preset(name: str, options: object, path: str) -> pb.ProcessImageRequest:
    where = f"IMAGESVC_PRESETS_PATH {path}: preset {name!r}"
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise PresetsError(f"{where} must be a mapping of request options")
    allowed = {_json_name(field) for field in OPTION_FIELDS} | set(OPTION_FIELDS)
    unexpected = sorted(str(key) for key in options if key not in allowed)
    if unexpected:
        raise PresetsError(
            f"{where} sets {', '.join(unexpected)}; a preset may set only pipelines, output "
            "and skipProcessingFormats"
        )
    preset = pb.ProcessImageRequest()
    try:
        json_format.ParseDict(options, preset)
    except json_format.ParseError as error:
        raise PresetsError(f"{where}: {' '.join(str(error).split())}") from None
    return preset


def _json_name(field: str) -> str:
    return pb.ProcessImageRequest.DESCRIPTOR.fields_by_name[field].json_name


def validate(presets: Presets, settings: Settings, known_classes: frozenset[str]) -> None:
    """Check every preset's options as a request would be checked (operation arguments, output
    options, classes the detector knows). Raises PresetsError naming the preset and fields."""
    for name, preset in presets.by_name.items():
        request = pb.ProcessImageRequest()
        request.CopyFrom(preset)
        request.source.data = _VALIDATION_SOURCE
        try:
            parse_process_request(request, settings, known_classes)
        except InvalidRequest as error:
            fields = "; ".join(f"{v.field}: {v.description}" for v in error.violations[:5])
            raise PresetsError(
                f"IMAGESVC_PRESETS_PATH {settings.presets_path}: preset {name!r} is invalid: "
                f"{fields}"
            ) from None
