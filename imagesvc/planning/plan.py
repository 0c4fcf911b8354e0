"""Walk a request through its operations' estimates: shapes, work, memory, and where to copy the
image to memory; then hold the plan against the per-request budget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from imagesvc.encoding.plan import (
    BEST,
    DSSIM_BYTES_PER_PX,
    DSSIM_NS_PER_PX,
    REGION_BYTES_PER_PX,
    REGION_PREFILTER_NS_PER_PX,
    encode_costs,
    holds_copy,
)
from imagesvc.encoding.spec import BEST_CANDIDATE_FORMATS, EncodingSpec
from imagesvc.errors import RequestTooCostly, ResultTooLarge, ResultUnencodable
from imagesvc.planning import costs
from imagesvc.planning.shape import Shape

if TYPE_CHECKING:
    from imagesvc.options import PlannedOp
    from imagesvc.settings import Settings

# Largest width or height each encoder accepts (libjpeg, libwebp, libheif as built by
# pyvips-binary, cgif; libpng's default user limit).
ENCODER_MAX_SIDE = {
    "jpeg": 65500,
    "webp": 16383,
    "avif": 16384,
    "gif": 65535,
    "png": 1_000_000,
    "tiff": 2**31 - 1,
}

# An operation reading more rows of context than this is a window operation (a convolution).
# Two of them in one lazy chain make libvips recompute the first one's overlapping strips for
# every strip of the second: four chained sigma-100 blurs on 1920x1200 took 13 s of CPU lazily
# and 0.8 s with a copy to memory between them. The plan puts that copy in.
WINDOW_ROWS = 2


@dataclass(frozen=True, slots=True)
class DetectionInput:
    """How the engine makes the detector's input: the source decoded at ``shrink`` (a
    shrink-on-load decode, as DescribeImage makes it), downscaled to the detection side.
    ``shared``: the pipeline decodes the source at the same factor, so that decode is copied to
    memory once at load and serves both; else the input is decoded apart from the source, on
    another worker thread, while the pipeline runs."""

    shrink: int
    shared: bool
    decoded: Shape  # the decode at ``shrink``, as stored (not turned), normalised
    decoder_bytes: int  # what its decoder holds (costs.decoder_bytes)
    side: int | None = None  # its long side; None: IMAGESVC_DETECTION_MAX_SIDE


# The tiled pass (inference.face_refine): the input is cut into about this many tiles, each
# letterboxed into a 192x192x3 float32 tensor (numpy, ~25 ns per pixel of the tiled input,
# measured: 76 ms for 12 tiles of a 2048x1536 input on the 2-core VM).
TILED_PASS_TILES = 16
TILE_TENSOR_BYTES = 192 * 192 * 3 * 4
TILE_PREPARE_NS = 25.0


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What the header says about the source, as the steps will see it."""

    format: str
    shape: Shape  # upright (when the load turns it), full size, normalised bands and samples
    encoded_bytes: int
    decoded_pixels: int  # what the decoder produces (shrink-on-load makes it fewer)
    decoder_bytes: int  # what the decoder holds while it reads (costs.decoder_bytes)
    turned_at_load: bool  # the load applies an EXIF orientation (needs random access)
    orientation: int = 1  # EXIF orientation an auto_rotate op would still apply
    decode_shrink: int = 1  # shrink-on-load factor (engine.plan_shrink_on_load)
    progressive: bool = False  # an interlaced PNG or a progressive JPEG
    # None: the request needs no detections, or they are known already (the cache).
    detection_input: DetectionInput | None = None
    # The tiled pass's input (a second, larger detector input, decoded apart after the first
    # pass), when the pass may run for this request; None: it cannot.
    tiled_detection_input: DetectionInput | None = None


@dataclass(slots=True)
class PlanEnv:
    """What an estimate may need beyond the shape; estimates update it as the steps would."""

    settings: Settings
    orientation: int = 1
    # The decoder's shrink-on-load factor, until the first resize has used it.
    decode_shrink: int = 1


@dataclass(frozen=True, slots=True)
class OpEstimate:
    shape: Shape  # the output
    work_s: float  # CPU-seconds on the reference machine
    window: int = 0  # rows of input context each output row reads (a kernel's height)
    random_access: bool = False  # may copy its input to memory first (ctx.random_access)
    transient_bytes: int = 0  # memory it holds while it runs, beyond its input and output
    # Memory it holds while the chain streams through it; None: a strip of its output, plus
    # its window, in float (see _stream_bytes).
    stream_bytes: int | None = None
    # False: ``shape`` is only an upper bound, the step's data decides (crop_objects crops to
    # what detection finds). The engine then plans the remaining steps again from the image the
    # step produced, and holds them against the budget, before running them.
    shape_known: bool = True


@dataclass(frozen=True, slots=True)
class PlannedStep:
    path: str  # e.g. "pipelines[0].operations[2].blur"
    shape: Shape
    work_s: float
    copy_before: bool  # the engine copies the image to memory before this step
    replan_after: bool = False  # its shape is an upper bound: see OpEstimate.shape_known
    # The plan has the step's input in memory (copied before it, or read from a copy): the
    # engine makes that copy before a step that needs detections while it awaits them.
    input_in_memory: bool = False


@dataclass(frozen=True, slots=True)
class RequestPlan:
    steps: tuple[PlannedStep, ...]  # one per operation, pipelines flattened
    output: Shape
    output_format: str
    largest: Shape  # the largest image any step produces (the output included)
    largest_at: str
    work_s: float
    peak_bytes: int


def _stream_bytes(chain: Sequence[OpEstimate]) -> int:
    """Memory of a lazy chain: what each step holds while pixels stream through it."""
    return sum(
        step.stream_bytes
        if step.stream_bytes is not None
        else step.shape.width * (costs.STRIP_ROWS + step.window) * step.shape.bands * 4
        for step in chain
    )


def _encoded_bytes(shape: Shape, fmt: str, settings: Settings) -> int:
    per_sample = costs.ENCODED_BYTES_PER_SAMPLE.get(fmt, shape.sample_bytes)
    return min(int(shape.pixels * shape.bands * per_sample), settings.max_message_bytes)


def plan_request(
    source: SourceInfo,
    pipelines: Sequence[Sequence[PlannedOp]],
    output_format: str,
    settings: Settings,
    *,
    known_shapes: Mapping[int, tuple[int, int]] | None = None,
    encoding: EncodingSpec | None = None,
    regions: bool = False,
) -> RequestPlan:
    """The plan of a request: every step's output shape and work, where the engine copies the
    image to memory, and the request's peak memory. Pure arithmetic, no pixels.

    ``known_shapes``: the width and height some steps (by index over the flattened
    pipelines) actually produced; the engine re-plans with them after a step whose shape
    only the data decides (``OpEstimate.shape_known``). ``encoding``: the request's encoding
    spec (None: the settings'), for the encodes autoquality, max_bytes and best format add;
    ``output_format`` may then be "best". ``regions``: the output asks for region-aware
    autoquality (OutputOptions.regions): the pre-filter, its copies and two DSSIM references."""
    env = PlanEnv(settings, source.orientation, source.decode_shrink)
    shape = source.shape
    decode_ns = costs.DECODE_NS[source.format] * (2 if source.progressive else 1)
    work = source.decoded_pixels * decode_ns * costs.NS * costs.sample_factor(shape.sample_bytes)
    # The request's bytes and the decoder's buffers live as long as the request.
    base = source.encoded_bytes + source.decoder_bytes
    root = 0  # bytes of the image in memory the lazy chain reads from
    in_memory = False
    chain: list[OpEstimate] = []  # lazy steps since the last copy to memory
    # Memory of the detector's input being decoded beside the pipeline, until the first step
    # that needs detections waits for them.
    beside = 0
    peak = base
    largest, largest_at = Shape(0, 0, shape.bands, shape.sample_bytes), "source"

    def to_memory(current: Shape) -> None:
        nonlocal root, in_memory, chain, peak, work
        peak = max(peak, base + beside + root + _stream_bytes(chain) + current.nbytes)
        work += current.pixels * current.bands * costs.COPY_NS * costs.NS
        root, in_memory, chain = current.nbytes, True, []

    detect = source.detection_input
    if detect is not None:
        # The detector's input: a shrink-on-load decode of the source, downscaled to the
        # detection side (not a copy of the image the pipeline has made by then).
        decoded = detect.decoded
        side = settings.detection_max_side
        preview = side * side * (decoded.bands * decoded.sample_bytes + 3) * 2
        work += decoded.pixels * costs.THUMBNAIL_NS * costs.NS
        # Its own tiles, letterboxed (the face hints, or the tiled pass itself on a source too
        # small for a larger copy: inference.face_refine.needs_input_tiles); plan_tiles makes
        # at most TILED_PASS_TILES.
        preview += TILED_PASS_TILES * TILE_TENSOR_BYTES
        work += side * side * TILE_PREPARE_NS * costs.NS
        if detect.shared:
            # The pipeline's own decode, copied to memory once at load for both.
            to_memory(decoded)
            peak = max(peak, base + root + preview)
        else:
            decode_ns = costs.DECODE_NS[source.format] * (2 if source.progressive else 1)
            factor = costs.sample_factor(decoded.sample_bytes)
            work += decoded.pixels * decode_ns * costs.NS * factor
            rows = min(decoded.height, costs.RESIZE_BUFFER_ROWS)
            beside = detect.decoder_bytes + decoded.width * rows * decoded.bands * 4 + preview
            peak = max(peak, base + beside)
    # The tiled pass, when it may run (the rule only decides after the first pass): a second
    # shrink-on-load decode of the source at its larger side, apart, its tiles' tensors, and
    # the first input still held. Counted as if it always ran, beside every step up to the
    # first one that needs detections (whose input is in memory while it waits for them).
    tiled_beside = 0
    tiled = source.tiled_detection_input
    if detect is not None and tiled is not None:
        decoded = tiled.decoded
        side = tiled.side or settings.detection_max_side
        first_side = settings.detection_max_side
        tiled_preview = side * side * (decoded.bands * decoded.sample_bytes + 3) * 2
        decode_ns = costs.DECODE_NS[source.format] * (2 if source.progressive else 1)
        factor = costs.sample_factor(decoded.sample_bytes)
        work += decoded.pixels * (decode_ns * factor + costs.THUMBNAIL_NS) * costs.NS
        work += side * side * TILE_PREPARE_NS * costs.NS
        rows = min(decoded.height, costs.RESIZE_BUFFER_ROWS)
        tiled_beside = (
            tiled.decoder_bytes
            + decoded.width * rows * decoded.bands * 4
            + tiled_preview
            + TILED_PASS_TILES * TILE_TENSOR_BYTES
            + first_side * first_side * 3
        )
        beside = max(beside, tiled_beside)
        peak = max(peak, base + root + beside)
    if source.turned_at_load:
        if not in_memory:
            to_memory(shape)
        work += shape.pixels * shape.bands * costs.COPY_NS * costs.NS
    detected = False
    steps = []
    index = 0
    for p_index, pipeline in enumerate(pipelines):
        for o_index, op in enumerate(pipeline):
            path = f"pipelines[{p_index}].operations[{o_index}].{op.name}"
            waits = not detected and op.spec.needs_detections(op.options)
            if waits:
                # The first detector input is done by now: the step waits for the detections,
                # the tiled pass's input possibly still being made beside it.
                detected, beside = True, tiled_beside
            estimate: OpEstimate = op.spec.estimate(shape, op.options, env)
            if known_shapes is not None and index in known_shapes:
                width, height = known_shapes[index]
                estimate = replace(
                    estimate,
                    shape=estimate.shape.sized(width, height),
                    shape_known=True,
                )
            index += 1
            copy_before = estimate.window > WINDOW_ROWS and any(
                step.window > WINDOW_ROWS for step in chain
            )
            if copy_before or (estimate.random_access and not in_memory):
                to_memory(shape)
            input_in_memory = in_memory
            if waits:
                beside = 0  # the step runs once every detection is known
            chain.append(estimate)
            peak = max(peak, base + beside + root + _stream_bytes(chain) + estimate.transient_bytes)
            shape = estimate.shape
            work += estimate.work_s
            if shape.pixels > largest.pixels:
                largest, largest_at = shape, path
            steps.append(
                PlannedStep(
                    path,
                    shape,
                    estimate.work_s,
                    copy_before,
                    not estimate.shape_known,
                    input_in_memory,
                )
            )

    if shape.pixels > largest.pixels:
        largest, largest_at = shape, "output"
    spec = encoding or EncodingSpec.from_settings(settings)
    factor = costs.NS * costs.sample_factor(shape.sample_bytes)
    encoder, encoded = 0.0, 0
    for cost in encode_costs(output_format, spec, shape.has_alpha, regions):
        work += cost.encodes * shape.pixels * costs.ENCODE_NS[cost.format][shape.has_alpha] * factor
        work += cost.measured * shape.pixels * DSSIM_NS_PER_PX * costs.NS
        encoder = max(
            encoder, shape.pixels * costs.ENCODE_BYTES_PER_PX[cost.format][shape.has_alpha]
        )
        encoded = max(encoded, _encoded_bytes(shape, cost.format, settings))
    held = 0
    if holds_copy(output_format, spec):
        # Several encodes read one copy of the result in memory; DSSIM's reference holds its
        # planes and window statistics (imagesvc.encoding.dssim: 60 bytes a pixel).
        to_memory(shape)
        dssim = spec.autoquality.method in ("dssim", "ml")
        held = shape.pixels * DSSIM_BYTES_PER_PX if dssim else 0
        if regions and dssim:
            held = shape.pixels * REGION_BYTES_PER_PX
    if regions:
        # The background pre-filter runs for every format, lossless ones included.
        work += shape.pixels * REGION_PREFILTER_NS_PER_PX * costs.NS
    # During the encode: the chain, the encoder's own buffers, the encoded bytes (libvips'
    # buffer, then the copy pyvips hands back; a search keeps its best trial too); after it,
    # the response holds two more copies.
    peak = max(peak, base + root + _stream_bytes(chain) + held + int(encoder) + 3 * encoded)
    peak = max(peak, base + 3 * encoded)
    return RequestPlan(tuple(steps), shape, output_format, largest, largest_at, work, int(peak))


def check_budget(plan: RequestPlan, settings: Settings) -> None:
    """Refuse a plan over the budget, with the figures; the cheapest limits are checked first
    so the error names the most basic one that is broken."""
    output = plan.output
    # "best" needs a size every candidate can hold (it may choose any of them).
    formats = BEST_CANDIDATE_FORMATS if plan.output_format == BEST else (plan.output_format,)
    side_limit = min(settings.max_result_dimension, *(ENCODER_MAX_SIDE[f] for f in formats))
    if max(output.width, output.height) > side_limit:
        figures = {
            "width": str(output.width),
            "height": str(output.height),
            "format": plan.output_format,
            "limit": str(side_limit),
        }
        if side_limit < settings.max_result_dimension:
            raise ResultUnencodable(
                f"{plan.output_format} cannot hold a {output.width}x{output.height} result "
                f"(at most {side_limit} px a side); choose another format or a smaller size",
                metadata=figures,
            )
        raise ResultTooLarge(
            f"the result would be {output.width}x{output.height}, over the {side_limit} px limit",
            metadata=figures,
        )
    figures = {
        "largest_megapixels": f"{plan.largest.megapixels:.1f}",
        "largest_at": plan.largest_at,
        "work_s": f"{plan.work_s:.2f}",
        "memory_mb": f"{plan.peak_bytes / 2**20:.0f}",
        "limit_megapixels": f"{settings.max_result_mp:g}",
        "limit_work_s": f"{settings.max_request_work_s:g}",
        "limit_memory_mb": str(settings.request_memory_mb),
    }
    if plan.largest.pixels > settings.max_result_mp * 1e6:
        broken = (
            f"{plan.largest_at} would produce {plan.largest.width}x{plan.largest.height} "
            f"({plan.largest.megapixels:.1f} MP), over the {settings.max_result_mp:g} MP limit"
        )
        limit = "max_result_mp"
    elif plan.work_s > settings.max_request_work_s:
        broken = (
            f"the request is estimated at {plan.work_s:.1f} CPU-seconds, over the "
            f"{settings.max_request_work_s:g} s budget"
        )
        limit = "max_request_work_s"
    elif plan.peak_bytes > settings.request_memory_mb * 2**20:
        broken = (
            f"the request is estimated to hold {plan.peak_bytes / 2**20:.0f} MB at once, over the "
            f"{settings.request_memory_mb} MB budget"
        )
        limit = "max_request_memory_mb"
    else:
        return
    raise RequestTooCostly(f"request too costly: {broken}", metadata={"limit": limit, **figures})
