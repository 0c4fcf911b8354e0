"""The pipeline engine: admission, decode (with shrink-on-load), chained pipelines, detection on
demand, and encode.

Image work runs on a bounded thread pool (pyvips releases the GIL inside libvips), one hop per
stretch of steps, with the deadline checked between steps; detection is awaited on the event loop
between steps, so a slow Triton never holds a CPU worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import pyvips
import structlog

from imagesvc import planning, vips
from imagesvc.context import Degradation, DetectedObject, StepContext
from imagesvc.errors import ImageSvcError, ImageTooLarge, Overloaded, ResponseTooLarge
from imagesvc.geometry import Affine, Box
from imagesvc.ops import auto_rotate, resize
from imagesvc.ops.background import flatten
from imagesvc.options import OutputSpec, PlannedOp, ProcessRequest, SourceBytes
from imagesvc.settings import Settings
from imagesvc.telemetry.metrics import Metrics
from inference.detection import Detection
from inference.errors import InferenceError, InferenceUnavailable

T = TypeVar("T")
log = structlog.get_logger("imagesvc.engine")

WRITABLE_FORMATS = ("jpeg", "png", "webp", "avif", "gif", "tiff")
ALPHA_FORMATS = ("png", "webp", "avif", "gif", "tiff")
# Room left in a response message for everything but the image bytes.
RESPONSE_HEADROOM_BYTES = 64 * 1024
# Loaders that can decode at a reduced size, and the largest factor each offers.
SHRINK_ON_LOAD = {"jpeg": 8, "webp": 8}


class Detector(Protocol):
    @property
    def classes(self) -> frozenset[str]: ...

    async def detect(
        self, rgb: np.ndarray, *, timeout_s: float | None = None
    ) -> list[Detection]: ...


@dataclass(frozen=True, slots=True)
class ProcessResult:
    data: bytes
    format: str
    width: int
    height: int
    objects: tuple[DetectedObject, ...]
    degradations: tuple[Degradation, ...]


@dataclass(frozen=True, slots=True)
class DescribeResult:
    format: str
    width: int
    height: int
    orientation: int
    has_alpha: bool
    size_bytes: int
    pages: int
    objects: tuple[DetectedObject, ...]
    degradations: tuple[Degradation, ...]


@dataclass(frozen=True, slots=True)
class Header:
    image: pyvips.Image  # opened lazily, sequential access, nothing decoded yet
    format: str
    orientation: int
    # The request's bytes as a libvips source: loads read them in place, without the copy
    # Image.new_from_buffer makes, and a reopen at a reduced size reuses them.
    source: pyvips.Source
    load_options: dict[str, str]
    size: tuple[int, int]  # stored width, height (read once: each libvips property read costs)

    @property
    def oriented_size(self) -> tuple[int, int]:
        w, h = self.size
        return (h, w) if self.orientation >= 5 else (w, h)


def load_options(fmt: str, settings: Settings) -> dict[str, str]:
    """Sequential access, and what makes a decoder give up: errors and truncation always;
    warnings too for the formats in IMAGESVC_FAIL_ON_WARNING_FORMATS (a JPEG whose scan ends
    early only warns, then renders grey)."""
    fail_on = "warning" if fmt in settings.fail_on_warning_formats else "error"
    return {"access": "sequential", "fail_on": fail_on}


def open_header(data: SourceBytes, settings: Settings) -> Header:
    """Open the source without decoding pixels and enforce the pixel limit from its header."""
    fmt = vips.loader_for(data)  # the allowlist, and a clear error for non-images
    source = vips.memory_source(data)
    options = load_options(fmt, settings)
    try:
        image = vips.load(source, **options)
    except pyvips.Error as error:
        raise vips.classify(error, "load") from error
    width, height = image.width, image.height
    if width * height > settings.max_src_pixels:
        raise ImageTooLarge(
            f"source is {width}x{height} ({width * height / 1e6:.1f} MP), over the "
            f"{settings.max_src_resolution_mp:g} MP limit",
            metadata={
                "width": str(width),
                "height": str(height),
                "limit_megapixels": f"{settings.max_src_resolution_mp:g}",
            },
        )
    return Header(image, fmt, auto_rotate.orientation_of(image), source, options, (width, height))


def reopen_shrunk(header: Header, shrink: int) -> pyvips.Image:
    """The source opened again, decoding at 1/shrink of its size (see plan_shrink_on_load)."""
    factor = {"shrink": shrink} if header.format == "jpeg" else {"scale": 1 / shrink}
    try:
        return vips.load(header.source, **header.load_options, **factor)
    except pyvips.Error as error:
        raise vips.classify(error, "load") from error


def source_decodes(header: Header, ctx: StepContext) -> bool:
    """Whether the source decodes on its own, every pixel (killable like any step). Tells a
    corrupt source from a failure of ours when libvips' error text does not say which."""
    try:
        ctx.watch(vips.load(header.source, **header.load_options)).avg()
    except pyvips.Error:
        ctx.check_deadline()
        return False
    return True


def plan_shrink_on_load(
    header: Header, pipelines: Sequence[Sequence[PlannedOp]], *, auto_rotate: bool = True
) -> int:
    """Decoder shrink factor for a request whose first pipeline starts with a resize.

    The factor keeps the decoded image at least as large as the resize's output, so the resize
    step then only finishes the job (as libvips' thumbnail does). ``auto_rotate`` says whether
    the load applies the EXIF orientation (IMAGESVC_AUTO_ROTATE); an auto_rotate op before the
    resize turns the image as well.
    """
    limit = SHRINK_ON_LOAD.get(header.format)
    if not limit or not pipelines or not pipelines[0]:
        return 1
    index, first = next(
        ((i, op) for i, op in enumerate(pipelines[0]) if op.name != "auto_rotate"), (0, None)
    )
    if first is None or first.name != "resize":
        return 1
    turned = auto_rotate or index > 0
    src_w, src_h = header.oriented_size if turned else (header.image.width, header.image.height)
    geometry = resize.plan(src_w, src_h, first.options)
    scale = max(geometry.resized[0] / src_w, geometry.resized[1] / src_h)
    shrink = 1
    while shrink * 2 <= limit and scale * shrink * 2 <= 1.0:
        shrink *= 2
    return shrink


def output_format(output: OutputSpec, source_format: str) -> str:
    """The requested format, else the source's when it can be written, else JPEG."""
    return output.format or (source_format if source_format in WRITABLE_FORMATS else "jpeg")


def source_info(
    header: Header, shrink: int, encoded_bytes: int, settings: Settings
) -> planning.SourceInfo:
    """What planning needs to know of the source, from its header alone."""
    image = vips.normalise(header.image)  # lazy: only its bands and sample format are read
    stored = planning.Shape(*header.size, image.bands, 2 if image.format == "ushort" else 1)
    turned = settings.auto_rotate and header.orientation != 1
    upright = stored.turned() if turned and header.orientation >= 5 else stored
    decoded = -(-stored.width // shrink) * -(-stored.height // shrink)
    interlaced = bool(image.get("interlaced")) if image.get_typeof("interlaced") else False
    return planning.SourceInfo(
        format=header.format,
        shape=upright,
        encoded_bytes=encoded_bytes,
        decoded_pixels=decoded,
        decoder_bytes=planning.costs.decoder_bytes(header.format, stored, decoded, interlaced),
        turned_at_load=turned,
        orientation=1 if settings.auto_rotate else header.orientation,
        decode_shrink=shrink,
        progressive=interlaced,
    )


def encode(image: pyvips.Image, output: OutputSpec, source_format: str, settings: Settings):
    """Encode with the requested (or the source's) format and quality; returns bytes, format."""
    fmt = output_format(output, source_format)
    quality = (
        output.quality
        or output.format_quality.get(fmt)
        or settings.format_quality.get(fmt)
        or settings.quality
    )
    if image.get_typeof("icc-profile-data") and not output.keep_icc:
        # Convert to sRGB through the embedded profile, then drop it: browsers assume sRGB.
        image = image.icc_transform("srgb", embedded=True, intent="perceptual")
        image = image.copy()
        image.remove("icc-profile-data")
    if image.interpretation not in ("srgb", "b-w") or image.format != "uchar":
        image = image.colourspace("b-w" if image.bands <= 2 else "srgb").cast("uchar")
    if image.hasalpha() and fmt not in ALPHA_FORMATS:
        image = flatten(image, (255, 255, 255))
    if output.strip_metadata:
        keep = "icc" if output.keep_icc else "none"
    else:
        keep = "all"
    if fmt == "jpeg":
        data = image.jpegsave_buffer(Q=quality, keep=keep, optimize_coding=True)
    elif fmt == "png":
        data = image.pngsave_buffer(compression=6, keep=keep)
    elif fmt == "webp":
        data = image.webpsave_buffer(Q=quality, effort=settings.webp_effort, keep=keep)
    elif fmt == "avif":
        data = image.heifsave_buffer(
            Q=quality, compression="av1", effort=settings.avif_effort, keep=keep
        )
    elif fmt == "gif":
        data = image.gifsave_buffer(keep=keep)
    else:
        data = image.tiffsave_buffer(compression="deflate", keep=keep)
    return data, fmt


def detector_input(image: pyvips.Image, max_side: int) -> np.ndarray:
    """A downscaled sRGB uint8 HxWx3 copy for the detector."""
    preview = image.thumbnail_image(max_side, height=max_side, size="down")
    if preview.hasalpha():
        preview = flatten(preview, (255, 255, 255))
    if preview.interpretation != "srgb" or preview.format != "uchar":
        preview = preview.colourspace("srgb").cast("uchar")
    preview = preview.extract_band(0, n=3) if preview.bands > 3 else preview
    if preview.bands == 1:
        preview = preview.bandjoin([preview, preview])
    return preview.numpy()


@dataclass(slots=True)
class _Run:
    """One ProcessImage request in flight: where it is in its operations, and its image."""

    request: ProcessRequest
    header: Header
    ctx: StepContext
    image: pyvips.Image
    ops: tuple[PlannedOp, ...]
    plan: planning.RequestPlan
    next_op: int = 0
    encoded: tuple[bytes, str] | None = None
    size: tuple[int, int] = (0, 0)


class Engine:
    """Runs requests; owns the worker pool and the admission limits."""

    def __init__(self, settings: Settings, detector: Detector | None, metrics: Metrics) -> None:
        self.settings = settings
        self.detector = detector
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="vips")
        self._slots = asyncio.Semaphore(settings.workers)
        self._waiting = 0

    @property
    def known_classes(self) -> frozenset[str]:
        return self.detector.classes if self.detector is not None else frozenset()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    @asynccontextmanager
    async def admitted(self):
        """Hold a worker slot for the whole request; refuse at once when the queue is full."""
        if self._slots.locked() and self._waiting >= self.settings.max_queue:
            raise Overloaded(
                "all image workers are busy and the wait queue is full",
                metadata={"workers": str(self.settings.workers)},
            )
        self._waiting += 1
        self.metrics.queue_depth(1)
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
            self.metrics.queue_depth(-1)
        self.metrics.images_in_progress(1)
        try:
            yield
        finally:
            self.metrics.images_in_progress(-1)
            self._slots.release()

    async def _work(self, func: Callable[..., T], *args, ctx: StepContext | None = None) -> T:
        """Run ``func`` on the worker pool.

        When the RPC is cancelled (or its deadline passes) meanwhile, the worker slot stays held
        until the thread has stopped: ``ctx.cancelled`` stops it at the next step boundary, and
        libvips is killed mid-encode. Releasing the slot earlier would let admission start new
        work while the old still burns the CPU.
        """
        future = asyncio.get_running_loop().run_in_executor(self._executor, func, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if ctx is not None:
                ctx.cancelled = True
                ctx.kill()
            await asyncio.wait([future])
            raise
        except pyvips.Error as error:
            raise vips.classify(error) from error

    async def _timed_step(self, name: str, ctx: StepContext, func: Callable[..., T], *args) -> T:
        started = time.perf_counter()
        try:
            return await self._work(func, *args, ctx=ctx)
        finally:
            self.metrics.step(name, time.perf_counter() - started)

    # --- ProcessImage ----------------------------------------------------------------------

    async def process(self, request: ProcessRequest, ctx_deadline: float) -> ProcessResult:
        async with self.admitted():
            return await self._process(request, ctx_deadline)

    def _load(self, request: ProcessRequest, ctx: StepContext) -> _Run:
        """Read the header, plan the request and hold it to the budget, then open the source
        for decoding (nothing is decoded yet)."""
        settings = self.settings
        header = open_header(request.data, settings)
        shrink = plan_shrink_on_load(header, request.pipelines, auto_rotate=settings.auto_rotate)
        plan = planning.plan_request(
            source_info(header, shrink, len(request.data), settings),
            request.pipelines,
            output_format(request.output, header.format),
            settings,
        )
        planning.check_budget(plan, settings)
        image = header.image
        if shrink > 1:
            image = reopen_shrunk(header, shrink)
        image = vips.normalise(image)
        src_w, src_h = header.oriented_size if self.settings.auto_rotate else header.size
        ctx.source_size = (src_w, src_h)
        if self.settings.auto_rotate and header.orientation != 1:
            image = ctx.random_access(image).autorot()
        if (image.width, image.height) != (src_w, src_h):
            ctx.logical_size = (src_w, src_h)
            ctx.transform = Affine.scale(image.width / src_w, image.height / src_h)
        ops = tuple(op for pipeline in request.pipelines for op in pipeline)
        return _Run(request, header, ctx, image, ops, plan)

    def _timed(self, name: str, func: Callable[..., T], *args) -> T:
        started = time.perf_counter()
        try:
            return func(*args)
        finally:
            self.metrics.step(name, time.perf_counter() - started)

    def _advance(self, run: _Run | None, request: ProcessRequest, ctx: StepContext) -> _Run:
        """Worker-thread side: load if needed, then run steps until one needs detections that
        have not been computed (the event loop fetches them) or, at the end, encode.

        One hop to the pool per stretch of steps keeps the event loop's share of each request
        small; the deadline (and cancellation) is still checked between every two steps, and
        inside them every libvips computation reads through the image ``ctx.watch`` names, so
        the deadline timer can kill it mid-way.
        """
        if run is None:
            run = self._timed("load", self._load, request, ctx)
        try:
            while run.next_op < len(run.ops):
                op = run.ops[run.next_op]
                ctx.check_deadline()
                if ctx.objects is None and op.spec.needs_detections(op.options):
                    return run
                if run.plan.steps[run.next_op].copy_before:
                    # A second window operation in one lazy chain: see planning.WINDOW_ROWS.
                    run.image = ctx.materialise(run.image)
                image = ctx.watch(run.image)
                run.image = self._timed(op.name, op.spec.run, image, op.options, ctx)
                run.next_op += 1
            ctx.check_deadline()
            run.encoded = self._timed("encode", self._encode, run)
        except pyvips.Error as error:
            raise self._classify(error, run) from error
        run.size = (run.image.width, run.image.height)
        return run

    def _encode(self, run: _Run) -> tuple[bytes, str]:
        """Encode, where libvips computes every pending step's pixels."""
        data, fmt = encode(
            run.ctx.watch(run.image), run.request.output, run.header.format, self.settings
        )
        limit = self.settings.max_message_bytes - RESPONSE_HEADROOM_BYTES
        if len(data) > limit:
            raise ResponseTooLarge(
                f"the encoded result is {len(data)} bytes, over the {limit} bytes one response "
                "can carry; ask for a smaller size, a lower quality or another format",
                metadata={"bytes": str(len(data)), "limit_bytes": str(limit), "format": fmt},
            )
        return data, fmt

    def _classify(self, error: pyvips.Error, run: _Run) -> ImageSvcError:
        """The caller-facing error for a libvips failure inside a step or the encode.

        A kill is the deadline or a cancel. A decoder's own message names the source. Any
        other failure may still come from the source, since some decoders fail without a word
        (a PNG with a bad CRC) and the encoder then reports that it could not write: the source
        is decoded on its own, and if that fails too it is at fault; else the error's site
        decides (an encoder's limit, or ours). Only failing requests pay for that decode, and
        it is killable like any step.
        """
        ctx = run.ctx
        ctx.check_deadline()
        site = vips.failure_site(error)
        if site != "load" and not source_decodes(run.header, ctx):
            site = "load"
        return vips.classify(error, site or "process")

    async def _process(self, request: ProcessRequest, deadline: float) -> ProcessResult:
        # Filled in by the load; exists first so a cancellation can reach the worker thread.
        ctx = StepContext(self.settings, deadline, (0, 0))
        loop = asyncio.get_running_loop()
        # A timer on the loop, not a per-tile progress callback: that one cost ~1.3 ms per image.
        deadline_timer = loop.call_later(max(0.0, deadline - time.monotonic()), ctx.kill)
        try:
            run = await self._work(self._advance, None, request, ctx, ctx=ctx)
            while run.encoded is None:
                await self._detect(run)
                run = await self._work(self._advance, run, request, ctx, ctx=ctx)
        finally:
            deadline_timer.cancel()
        data, fmt = run.encoded
        self.metrics.image_bytes("input", run.header.format, len(request.data))
        self.metrics.image_bytes("output", fmt, len(data))
        for item in ctx.degradations:
            self.metrics.degradation(item.reason, item.operation)
        return ProcessResult(
            data, fmt, *run.size, tuple(ctx.objects or ()), tuple(ctx.degradations)
        )

    def _detector_input(self, run: _Run) -> np.ndarray:
        try:
            run.image = run.ctx.random_access(run.image)
            return detector_input(run.image, self._max_side())
        except pyvips.Error as error:
            raise self._classify(error, run) from error

    async def _detect(self, run: _Run) -> None:
        """Run detection on the current image; store results in source coordinates."""
        ctx = run.ctx
        rgb = await self._timed_step("detect_prepare", ctx, self._detector_input, run)
        detections = await self._call_detector(rgb, ctx)
        if detections is not None:
            image = run.image
            to_current = Affine.scale(image.width / rgb.shape[1], image.height / rgb.shape[0])
            to_source = to_current.then(ctx.transform.inverse())
            ctx.objects = [
                DetectedObject(d.class_name, d.confidence, to_source.box(_box(d)))
                for d in detections
            ]

    def _max_side(self) -> int:
        return self.settings.detection_max_side

    async def _call_detector(self, rgb: np.ndarray, ctx: StepContext) -> list[Detection] | None:
        if self.detector is None:
            ctx.detection_failure = "DETECTOR_NOT_CONFIGURED"
            ctx.objects = []
            return None
        try:
            # Never wait on Triton past the RPC's own deadline.
            return await self.detector.detect(rgb, timeout_s=max(ctx.remaining(), 0.0))
        except InferenceError as error:
            # Down, slow, or answering nonsense: the request still succeeds, degraded.
            if not isinstance(error, InferenceUnavailable):
                log.warning("detection_failed", reason=error.reason, error=str(error))
            ctx.detection_failure = error.reason
            ctx.objects = []
            return None

    # --- DescribeImage ---------------------------------------------------------------------

    async def describe(self, data: SourceBytes, detect: bool, deadline: float) -> DescribeResult:
        async with self.admitted():
            header = await self._work(open_header, data, self.settings)
            image = header.image
            pages = image.get("n-pages") if image.get_typeof("n-pages") else 1
            objects: tuple[DetectedObject, ...] = ()
            degradations: tuple[Degradation, ...] = ()
            if detect:
                src_w, src_h = header.oriented_size
                ctx = StepContext(self.settings, deadline, (src_w, src_h))
                loop = asyncio.get_running_loop()
                deadline_timer = loop.call_later(max(0.0, ctx.remaining()), ctx.kill)
                try:
                    rgb = await self._timed_step(
                        "detect_prepare", ctx, self._describe_preview, header, ctx
                    )
                finally:
                    deadline_timer.cancel()
                detections = await self._call_detector(rgb, ctx)
                if detections is not None:
                    to_source = Affine.scale(src_w / rgb.shape[1], src_h / rgb.shape[0])
                    objects = tuple(
                        DetectedObject(d.class_name, d.confidence, to_source.box(_box(d)))
                        for d in detections
                    )
                if ctx.detection_failure is not None:
                    ctx.degrade(
                        "DETECTION_UNAVAILABLE",
                        "",
                        f"detection unavailable ({ctx.detection_failure}), no detections",
                    )
                degradations = tuple(ctx.degradations)
                for item in degradations:
                    self.metrics.degradation(item.reason, "describe")
            return DescribeResult(
                format=header.format,
                width=image.width,
                height=image.height,
                orientation=header.orientation,
                has_alpha=bool(image.hasalpha()),
                size_bytes=len(data),
                pages=pages,
                objects=objects,
                degradations=degradations,
            )

    def _describe_preview(self, header: Header, ctx: StepContext) -> np.ndarray:
        # thumbnail_source shrinks on load and applies the EXIF orientation.
        side = self._max_side()
        fail_on = header.load_options["fail_on"]
        try:
            image = pyvips.Image.thumbnail_source(
                header.source, side, height=side, size="down", option_string=f"fail_on={fail_on}"
            )
            return detector_input(ctx.watch(vips.normalise(image)), side)
        except pyvips.Error as error:
            ctx.check_deadline()
            site = vips.failure_site(error)
            if site != "load" and not source_decodes(header, ctx):
                site = "load"
            raise vips.classify(error, site or "process") from error


def _box(detection: Detection) -> Box:
    return Box(detection.left, detection.top, detection.width, detection.height)


__all__ = ["Engine", "ProcessResult", "DescribeResult", "ImageSvcError"]
