"""Request parsing: proto messages become immutable option values, validated once, at the edge.

Steps never see protobuf objects or "0 means unset" integers. Every rule a request breaks is
collected into one ``InvalidRequest`` with a field violation per problem (AIP-193), so a caller
fixes a bad pipeline in one round trip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from imagesvc.encoding.spec import EncodingSpec, parse_encoding
from imagesvc.encoding.regions import RegionSpec, parse_regions
from imagesvc.errors import FieldViolation, InvalidRequest
from imagesvc.settings import Settings
from imagesvc.sources.objects import bucket_problem, key_problem, version_id_problem
from imagesvc.sources.url import UrlProblem, normalize_url
from imagesvc.v1 import image_service_pb2 as pb

if TYPE_CHECKING:
    from imagesvc.ops.registry import OpSpec

ALL_CLASSES = "all"

# Proto enum -> the format names used in settings, saving and metrics.
FORMAT_BY_ENUM = {
    pb.IMAGE_FORMAT_JPEG: "jpeg",
    pb.IMAGE_FORMAT_PNG: "png",
    pb.IMAGE_FORMAT_WEBP: "webp",
    pb.IMAGE_FORMAT_AVIF: "avif",
    pb.IMAGE_FORMAT_GIF: "gif",
    pb.IMAGE_FORMAT_TIFF: "tiff",
}
ENUM_BY_FORMAT = {name: value for value, name in FORMAT_BY_ENUM.items()}

COMPASS_BY_ENUM = {
    pb.COMPASS_UNSPECIFIED: "center",
    pb.COMPASS_CENTER: "center",
    pb.COMPASS_NORTH: "north",
    pb.COMPASS_SOUTH: "south",
    pb.COMPASS_EAST: "east",
    pb.COMPASS_WEST: "west",
    pb.COMPASS_NORTH_EAST: "north_east",
    pb.COMPASS_NORTH_WEST: "north_west",
    pb.COMPASS_SOUTH_EAST: "south_east",
    pb.COMPASS_SOUTH_WEST: "south_west",
}


class Violations:
    """Collects field violations while a request is parsed."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []
        # Fields already reported as not finite: the op parsers' range checks of the same
        # fields would only repeat it in other words.
        self._not_finite: set[str] = set()

    def add(self, path: str, description: str) -> None:
        if path not in self._not_finite:
            self.items.append(FieldViolation(path, description))

    def add_not_finite(self, path: str) -> None:
        self.add(path, "must be a finite number")
        self._not_finite.add(path)

    def raise_if_any(self) -> None:
        if self.items:
            summary = "; ".join(f"{v.field}: {v.description}" for v in self.items[:5])
            more = f" (+{len(self.items) - 5} more)" if len(self.items) > 5 else ""
            raise InvalidRequest(f"invalid request: {summary}{more}", violations=self.items)


@dataclass(frozen=True, slots=True)
class ParseContext:
    settings: Settings
    # Class names the configured detector can return; empty when none is configured.
    known_classes: frozenset[str]
    violations: Violations


# --- Gravity --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompassGravity:
    position: str = "center"
    x_offset: float = 0.0  # >= 1: pixels, < 1: fraction of the image side
    y_offset: float = 0.0


@dataclass(frozen=True, slots=True)
class FocusPointGravity:
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class SmartGravity:
    pass


@dataclass(frozen=True, slots=True)
class ProportionalPosition:
    """Objects' centre at the same relative position in the crop as in the image (op:prop)."""


ObjectsPosition = CompassGravity | FocusPointGravity | ProportionalPosition

OBJECT_GRAVITY_MODES = ("max_score_area", "one_best", "one_best_centermost")
_MODE_BY_ENUM = {
    pb.OBJECT_GRAVITY_MODE_MAX_SCORE_AREA: "max_score_area",
    pb.OBJECT_GRAVITY_MODE_ONE_BEST: "one_best",
    pb.OBJECT_GRAVITY_MODE_ONE_BEST_CENTERMOST: "one_best_centermost",
}


@dataclass(frozen=True, slots=True)
class ClassWeights:
    """Per-class weights of a request (objw). ``weight`` falls back to ``everything`` (the
    "all" key), then to the model's classes file (``defaults``), then to 1."""

    named: tuple[tuple[str, float], ...] = ()
    everything: float | None = None

    def weight(self, class_name: str, defaults: Mapping[str, float] | None = None) -> float:
        for name, value in self.named:
            if name == class_name:
                return value
        if self.everything is not None:
            return self.everything
        return (defaults or {}).get(class_name, 1.0)


@dataclass(frozen=True, slots=True)
class ObjectGravity:
    classes: frozenset[str] | None  # None: every class
    mode: str | None = None  # one of OBJECT_GRAVITY_MODES; None: the settings' mode
    weights: ClassWeights = ClassWeights()
    position: ObjectsPosition = CompassGravity()


Gravity = CompassGravity | FocusPointGravity | SmartGravity | ObjectGravity
CENTER = CompassGravity()


def parse_compass(msg: pb.CompassGravity, path: str, pctx: ParseContext) -> CompassGravity:
    for name in ("x_offset", "y_offset"):
        if getattr(msg, name) < 0:
            pctx.violations.add(f"{path}.{name}", "must be >= 0")
    return CompassGravity(COMPASS_BY_ENUM.get(msg.position, "center"), msg.x_offset, msg.y_offset)


def parse_gravity(msg: pb.Gravity, path: str, pctx: ParseContext) -> Gravity:
    kind = msg.WhichOneof("kind")
    if kind is None:
        return CENTER
    if kind == "compass":
        return parse_compass(msg.compass, f"{path}.compass", pctx)
    if kind == "focus_point":
        return parse_focus_point(msg.focus_point, f"{path}.focus_point", pctx)
    if kind == "smart":
        return SmartGravity()
    obj = msg.object
    return ObjectGravity(
        parse_classes(obj.classes, f"{path}.object.classes", pctx),
        parse_object_mode(obj.mode, f"{path}.object.mode", pctx),
        parse_weights(obj.weights, f"{path}.object.weights", pctx),
        parse_objects_position(obj.position, f"{path}.object.position", pctx),
    )


def parse_object_mode(value: int, path: str, pctx: ParseContext) -> str | None:
    if value == pb.OBJECT_GRAVITY_MODE_UNSPECIFIED:
        return None
    if value not in _MODE_BY_ENUM:
        pctx.violations.add(path, f"unknown object gravity mode {value}")
        return None
    return _MODE_BY_ENUM[value]


def parse_weights(weights: Mapping[str, float], path: str, pctx: ParseContext) -> ClassWeights:
    named, everything = [], None
    for raw_name, value in sorted(weights.items()):
        name = raw_name.strip().lower()
        if name != ALL_CLASSES and name not in pctx.known_classes:
            known = ", ".join(sorted(pctx.known_classes | {ALL_CLASSES}))
            pctx.violations.add(f"{path}[{raw_name}]", f"unknown class {name!r}; known: {known}")
        check_range(pctx, f"{path}[{raw_name}]", value, 0, 1000, low_open=True)
        if name == ALL_CLASSES:
            everything = value
        else:
            named.append((name, value))
    return ClassWeights(tuple(named), everything)


def parse_objects_position(msg: pb.ObjectsPosition, path: str, pctx: ParseContext):
    kind = msg.WhichOneof("kind")
    if kind == "compass":
        return parse_compass(msg.compass, f"{path}.compass", pctx)
    if kind == "focus_point":
        return parse_focus_point(msg.focus_point, f"{path}.focus_point", pctx)
    if kind == "proportional":
        return ProportionalPosition()
    return CENTER


def parse_focus_point(fp: pb.FocusPoint, path: str, pctx: ParseContext) -> FocusPointGravity:
    for name in ("x", "y"):
        if not 0.0 <= getattr(fp, name) <= 1.0:
            pctx.violations.add(f"{path}.{name}", "must be within 0..1")
    return FocusPointGravity(fp.x, fp.y)


def parse_classes(classes: Any, path: str, pctx: ParseContext) -> frozenset[str] | None:
    """Class filter of a detection op: None means every class ("all" or an empty list)."""
    names = [c.strip().lower() for c in classes]
    for index, name in enumerate(names):
        if name != ALL_CLASSES and name not in pctx.known_classes:
            known = ", ".join(sorted(pctx.known_classes | {ALL_CLASSES}))
            pctx.violations.add(f"{path}[{index}]", f"unknown class {name!r}; known: {known}")
    if not names or ALL_CLASSES in names:
        return None
    return frozenset(names)


_FLOAT_TYPES = (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT)


def non_finite_fields(msg: Message, path: str) -> list[str]:
    """Paths of every float or double field, at any depth, holding NaN or an infinity.

    Comparisons with NaN are all false, so a range check alone lets NaN through; one walk over
    the message covers every float field, present and future."""
    found = []
    for descriptor, value in msg.ListFields():
        name = f"{path}.{descriptor.name}" if path else descriptor.name
        repeated = descriptor.is_repeated
        if descriptor.cpp_type in _FLOAT_TYPES:
            items = enumerate(value) if repeated else ((None, value),)
            found += [
                name if i is None else f"{name}[{i}]" for i, v in items if not math.isfinite(v)
            ]
        elif descriptor.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            if descriptor.message_type.GetOptions().map_entry:
                mapped = descriptor.message_type.fields_by_name["value"]
                if mapped.cpp_type in _FLOAT_TYPES:  # e.g. weights: {"face": 2.0}
                    found += [f"{name}[{k}]" for k, v in value.items() if not math.isfinite(v)]
                elif mapped.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                    for k, item in value.items():
                        found += non_finite_fields(item, f"{name}[{k}]")
                continue
            items = enumerate(value) if repeated else ((None, value),)
            for i, item in items:
                found += non_finite_fields(item, name if i is None else f"{name}[{i}]")
    return found


def check_range(
    pctx: ParseContext, path: str, value: float, low: float, high: float, *, low_open: bool = False
) -> None:
    if not math.isfinite(value):
        pctx.violations.add(path, "must be a finite number")
    elif (value <= low if low_open else value < low) or value > high:
        bracket = "(" if low_open else "["
        pctx.violations.add(path, f"must be within {bracket}{low:g}, {high:g}]")


# --- Request --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutputSpec:
    format: str | None  # None: the source's format when writable, else jpeg
    quality: int | None  # explicit quality; None: format_quality, then settings
    format_quality: dict[str, int] = field(default_factory=dict)
    strip_metadata: bool = True
    keep_icc: bool = False
    # Autoquality, max_bytes, per-format options, best-format candidates; None: the settings'.
    encoding: EncodingSpec | None = None
    # Region-aware autoquality (OutputOptions.regions), when enabled; None: off.
    regions: RegionSpec | None = None


@dataclass(frozen=True, slots=True)
class PlannedOp:
    name: str  # the proto oneof field name, e.g. "resize"
    spec: OpSpec
    options: Any  # the op module's frozen options value


# The source image bytes: bytes, or a zero-copy view into the received request
# (imagesvc.server.wire); libvips reads either through the buffer protocol.
SourceBytes = bytes | memoryview


@dataclass(frozen=True, slots=True)
class SourceUrl:
    """A url source, validated (imagesvc.sources.url.normalize_url); the edge fetches it and
    hands the engine its bytes."""

    url: str


@dataclass(frozen=True, slots=True)
class SourceObject:
    """An object source, validated (imagesvc.sources.objects: S3 naming rules); the edge reads
    it with imagesvc.sources.objects.ObjectFetcher and hands the engine its bytes."""

    bucket: str
    key: str
    version_id: str = ""  # empty: the current version


@dataclass(frozen=True, slots=True)
class ProcessRequest:
    # A SourceUrl or SourceObject only between parsing and the edge's fetch; the engine always
    # gets bytes.
    data: SourceBytes | SourceUrl | SourceObject
    pipelines: tuple[tuple[PlannedOp, ...], ...]
    output: OutputSpec
    # Source formats returned unprocessed (the request's list, else the setting's; imagesvc.skip).
    skip_processing: frozenset[str] = frozenset()
    # The request's fallback image (processed when the source fails); None: the setting's.
    fallback: SourceBytes | SourceUrl | SourceObject | None = None

    @property
    def needs_detections(self) -> bool:
        return any(op.spec.needs_detections(op.options) for p in self.pipelines for op in p)

    @property
    def needs_regions(self) -> bool:
        """Whether the request needs segmentation (imagesvc.regions): a step does, or the
        output asks for region-aware autoquality. Regions need the faces too (they seed the
        skin model)."""
        return self.output.regions is not None or any(
            op.spec.needs_regions(op.options) for p in self.pipelines for op in p
        )

    @property
    def detection_classes(self) -> frozenset[str] | None:
        """The classes the request's steps need detected; None: every class (or none needed:
        ask needs_detections). Regions add ``face`` (the skin model's seeds)."""
        wanted: set[str] = {"face"} if self.needs_regions else set()
        for pipeline in self.pipelines:
            for op in pipeline:
                if op.spec.needs_detections(op.options):
                    classes = op.spec.detection_classes(op.options)
                    if classes is None:
                        return None
                    wanted |= classes
        return frozenset(wanted) if wanted else None


def parse_source(
    msg: pb.ImageSource, path: str, pctx: ParseContext, lifted: SourceBytes | None = None
) -> SourceBytes | SourceUrl | SourceObject:
    """The source bytes: ``lifted`` when the edge took them out of the request without a copy
    (``msg`` is then unset), else the message's own field; or the validated url or object
    source."""
    if lifted is None and msg.WhichOneof("kind") == "object":
        return parse_object(msg.object, f"{path}.object", pctx)
    if lifted is None and msg.WhichOneof("kind") == "url":
        try:
            return SourceUrl(str(normalize_url(msg.url)))
        except UrlProblem as problem:
            pctx.violations.add(f"{path}.url", str(problem))
            return SourceUrl("")
    if lifted is not None:
        data = lifted
    else:
        # Read the field once: every access copies the (possibly large) bytes out of the message.
        data = msg.data if msg.WhichOneof("kind") == "data" else b""
    if not data:
        pctx.violations.add(f"{path}.data", "the source image bytes are required")
    return data


def parse_object(msg: pb.ObjectLocation, path: str, pctx: ParseContext) -> SourceObject:
    for name, problem in (
        ("bucket", bucket_problem(msg.bucket)),
        ("key", key_problem(msg.key)),
        ("version_id", version_id_problem(msg.version_id)),
    ):
        if problem is not None:
            pctx.violations.add(f"{path}.{name}", problem)
    return SourceObject(msg.bucket, msg.key, msg.version_id)


def parse_output(msg: pb.OutputOptions, pctx: ParseContext) -> OutputSpec:
    fmt = None
    if msg.format == pb.IMAGE_FORMAT_BEST:
        fmt = "best"  # the encoder tries the candidates (imagesvc.encoding.best_format)
    elif msg.format != pb.IMAGE_FORMAT_UNSPECIFIED:
        fmt = FORMAT_BY_ENUM.get(msg.format)
        if fmt is None:
            pctx.violations.add("output.format", f"unknown format {msg.format}")
    if msg.quality:
        check_range(pctx, "output.quality", msg.quality, 1, 100)
    per_format: dict[str, int] = {}
    for index, fq in enumerate(msg.format_quality):
        name = FORMAT_BY_ENUM.get(fq.format)
        if name is None:
            pctx.violations.add(f"output.format_quality[{index}].format", "a format is required")
            continue
        check_range(pctx, f"output.format_quality[{index}].quality", fq.quality, 1, 100)
        per_format[name] = fq.quality
    strip = msg.strip_metadata if msg.HasField("strip_metadata") else True
    encoding = parse_encoding(msg, pctx.settings, pctx.violations)
    regions = parse_regions(msg.regions, encoding.autoquality.method, pctx.violations)
    return OutputSpec(fmt, msg.quality or None, per_format, strip, msg.keep_icc, encoding, regions)


def parse_process_request(
    msg: pb.ProcessImageRequest,
    settings: Settings,
    known_classes: frozenset[str],
    source_data: SourceBytes | None = None,
) -> ProcessRequest:
    """Validate a ProcessImageRequest; raises InvalidRequest listing every violation.

    ``source_data``: the source bytes when the edge lifted them out of ``msg`` (see
    imagesvc.server.wire.decode_request)."""
    from imagesvc.ops.registry import OPS  # the registry imports option types from here

    pctx = ParseContext(settings, known_classes, Violations())
    data = parse_source(msg.source, "source", pctx, source_data)
    if len(msg.pipelines) > settings.max_pipelines:
        pctx.violations.add("pipelines", f"at most {settings.max_pipelines} chained pipelines")
    pipelines = []
    for p_index, pipeline in enumerate(msg.pipelines):
        if len(pipeline.operations) > settings.max_operations:
            pctx.violations.add(
                f"pipelines[{p_index}].operations",
                f"at most {settings.max_operations} operations per pipeline",
            )
        planned = []
        for o_index, operation in enumerate(pipeline.operations):
            path = f"pipelines[{p_index}].operations[{o_index}]"
            name = operation.WhichOneof("op")
            if name is None:
                pctx.violations.add(path, "an operation must set one of its fields")
                continue
            for bad in non_finite_fields(getattr(operation, name), f"{path}.{name}"):
                pctx.violations.add_not_finite(bad)
            spec = OPS[name]
            options = spec.parse(getattr(operation, name), f"{path}.{name}", pctx)
            planned.append(PlannedOp(name, spec, options))
        pipelines.append(tuple(planned))
    output = parse_output(msg.output, pctx)
    skip = parse_skip_processing(msg.skip_processing_formats, pctx)
    fallback = None
    if msg.HasField("fallback_image"):
        fallback = parse_source(msg.fallback_image, "fallback_image", pctx)
    pctx.violations.raise_if_any()
    return ProcessRequest(data, tuple(pipelines), output, skip, fallback)


def parse_skip_processing(formats, pctx: ParseContext) -> frozenset[str]:
    """The request's skip_processing_formats; empty: IMAGESVC_SKIP_PROCESSING_FORMATS."""
    names = set()
    for index, value in enumerate(formats):
        name = FORMAT_BY_ENUM.get(value)
        if name is None:
            pctx.violations.add(
                f"skip_processing_formats[{index}]", "must be a source format (jpeg .. tiff)"
            )
        else:
            names.add(name)
    return frozenset(names) if formats else frozenset(pctx.settings.skip_processing_formats)
