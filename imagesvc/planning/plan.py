"""Walk a request through its operations' estimates: shapes, work, memory, and where to copy the
image to memory; then hold the plan against the per-request budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
) -> RequestPlan:
    """The plan of a request: every step's output shape and work, where the engine copies the
    image to memory, and the request's peak memory. Pure arithmetic, no pixels."""
    env = PlanEnv(settings, source.orientation, source.decode_shrink)
    shape = source.shape
    decode_ns = costs.DECODE_NS[source.format] * (2 if source.progressive else 1)
    work = source.decoded_pixels * decode_ns * costs.NS * costs.sample_factor(shape.sample_bytes)
    # The request's bytes and the decoder's buffers live as long as the request.
    base = source.encoded_bytes + source.decoder_bytes
    root = 0  # bytes of the image in memory the lazy chain reads from
    in_memory = False
    chain: list[OpEstimate] = []  # lazy steps since the last copy to memory
    peak = base
    largest, largest_at = Shape(0, 0, shape.bands, shape.sample_bytes), "source"

    def to_memory(current: Shape) -> None:
        nonlocal root, in_memory, chain, peak, work
        peak = max(peak, base + root + _stream_bytes(chain) + current.nbytes)
        work += current.pixels * current.bands * costs.COPY_NS * costs.NS
        root, in_memory, chain = current.nbytes, True, []

    if source.turned_at_load:
        to_memory(shape)
        work += shape.pixels * shape.bands * costs.COPY_NS * costs.NS
    detected = False
    steps = []
    for p_index, pipeline in enumerate(pipelines):
        for o_index, op in enumerate(pipeline):
            path = f"pipelines[{p_index}].operations[{o_index}].{op.name}"
            if not detected and op.spec.needs_detections(op.options):
                # The engine detects on a downscaled copy of the image as it is here.
                detected = True
                if not in_memory:
                    to_memory(shape)
                work += shape.pixels * costs.THUMBNAIL_NS * costs.NS
            estimate: OpEstimate = op.spec.estimate(shape, op.options, env)
            copy_before = estimate.window > WINDOW_ROWS and any(
                step.window > WINDOW_ROWS for step in chain
            )
            if copy_before or (estimate.random_access and not in_memory):
                to_memory(shape)
            chain.append(estimate)
            peak = max(peak, base + root + _stream_bytes(chain) + estimate.transient_bytes)
            shape = estimate.shape
            work += estimate.work_s
            if shape.pixels > largest.pixels:
                largest, largest_at = shape, path
            steps.append(
                PlannedStep(path, shape, estimate.work_s, copy_before, not estimate.shape_known)
            )

    if shape.pixels > largest.pixels:
        largest, largest_at = shape, "output"
    encode_ns = costs.ENCODE_NS[output_format][shape.has_alpha]
    work += shape.pixels * encode_ns * costs.NS * costs.sample_factor(shape.sample_bytes)
    encoder = shape.pixels * costs.ENCODE_BYTES_PER_PX[output_format][shape.has_alpha]
    encoded = _encoded_bytes(shape, output_format, settings)
    # During the encode: the chain, the encoder's own buffers, the encoded bytes (libvips'
    # buffer, then the copy pyvips hands back); after it, the response holds two more copies.
    peak = max(peak, base + root + _stream_bytes(chain) + int(encoder) + 2 * encoded)
    peak = max(peak, base + 3 * encoded)
    return RequestPlan(tuple(steps), shape, output_format, largest, largest_at, work, int(peak))


def check_budget(plan: RequestPlan, settings: Settings) -> None:
    """Refuse a plan over the budget, with the figures; the cheapest limits are checked first
    so the error names the most basic one that is broken."""
    output = plan.output
    side_limit = min(settings.max_result_dimension, ENCODER_MAX_SIDE[plan.output_format])
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
