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

from imagesvc import vips
from imagesvc.context import Degradation, DetectedObject, StepContext
from imagesvc.errors import ImageSvcError, ImageTooLarge, Overloaded
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

    @property
    def oriented_size(self) -> tuple[int, int]:
        w, h = self.image.width, self.image.height
        return (h, w) if self.orientation >= 5 else (w, h)


_LOAD_OPTIONS = {"access": "sequential", "fail_on": "error"}


def open_header(data: SourceBytes, settings: Settings) -> Header:
    """Open the source without decoding pixels and enforce the pixel limit from its header."""
    fmt = vips.loader_for(data)  # the allowlist, and a clear error for non-images
    source = vips.memory_source(data)
    try:
        image = vips.load(source, **_LOAD_OPTIONS)
    except pyvips.Error as error:
        raise vips.classify(error) from error
    pixels = image.width * image.height
    if pixels > settings.max_src_pixels:
        raise ImageTooLarge(
            f"source is {image.width}x{image.height} ({pixels / 1e6:.1f} MP), over the "
            f"{settings.max_src_resolution_mp:g} MP limit",
            metadata={
                "width": str(image.width),
                "height": str(image.height),
                "limit_megapixels": f"{settings.max_src_resolution_mp:g}",
            },
        )
    return Header(image, fmt, auto_rotate.orientation_of(image), source)


def reopen_shrunk(header: Header, shrink: int) -> pyvips.Image:
    """The source opened again, decoding at 1/shrink of its size (see plan_shrink_on_load)."""
    factor = {"shrink": shrink} if header.format == "jpeg" else {"scale": 1 / shrink}
    try:
        return vips.load(header.source, **_LOAD_OPTIONS, **factor)
    except pyvips.Error as error:
        raise vips.classify(error) from error


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


def encode(image: pyvips.Image, output: OutputSpec, source_format: str, settings: Settings):
    """Encode with the requested (or the source's) format and quality; returns bytes, format."""
    fmt = output.format or (source_format if source_format in WRITABLE_FORMATS else "jpeg")
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

    async def _timed_step(self, name: str, func: Callable[..., T], *args) -> T:
        started = time.perf_counter()
        try:
            return await self._work(func, *args)
        finally:
            self.metrics.step(name, time.perf_counter() - started)

    # --- ProcessImage ----------------------------------------------------------------------

    async def process(self, request: ProcessRequest, ctx_deadline: float) -> ProcessResult:
        async with self.admitted():
            return await self._process(request, ctx_deadline)

    def _load(self, request: ProcessRequest, ctx: StepContext) -> _Run:
        header = open_header(request.data, self.settings)
        shrink = plan_shrink_on_load(
            header, request.pipelines, auto_rotate=self.settings.auto_rotate
        )
        image = header.image
        if shrink > 1:
            image = reopen_shrunk(header, shrink)
        stored = (header.image.width, header.image.height)
        src_w, src_h = header.oriented_size if self.settings.auto_rotate else stored
        ctx.source_size = (src_w, src_h)
        if self.settings.auto_rotate and header.orientation != 1:
            image = ctx.random_access(image).autorot()
        if (image.width, image.height) != (src_w, src_h):
            ctx.logical_size = (src_w, src_h)
            ctx.transform = Affine.scale(image.width / src_w, image.height / src_h)
        ops = tuple(op for pipeline in request.pipelines for op in pipeline)
        return _Run(request, header, ctx, image, ops)

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
        small; the deadline (and cancellation) is still checked between every two steps.
        """
        if run is None:
            run = self._timed("load", self._load, request, ctx)
        while run.next_op < len(run.ops):
            op = run.ops[run.next_op]
            ctx.check_deadline()
            if ctx.objects is None and op.spec.needs_detections(op.options):
                return run
            run.image = self._timed(op.name, op.spec.run, run.image, op.options, ctx)
            run.next_op += 1
        ctx.check_deadline()
        run.encoded = self._timed("encode", self._encode, run)
        run.size = (run.image.width, run.image.height)
        return run

    def _encode(self, run: _Run) -> tuple[bytes, str]:
        """Encode, where libvips computes every pending step's pixels. The event loop kills the
        computation when the deadline passes or the caller cancels (``StepContext.kill``), so
        one slow request does not hold a worker long past its deadline."""
        ctx = run.ctx
        ctx.killable = run.image
        try:
            ctx.check_deadline()  # the kill may have fired just before the image was set
            return encode(run.image, run.request.output, run.header.format, self.settings)
        except pyvips.Error:
            ctx.check_deadline()  # raises DeadlineExceeded / Cancelled when that was the cause
            raise
        finally:
            ctx.killable = None

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
        run.image = run.ctx.random_access(run.image)
        return detector_input(run.image, self._max_side())

    async def _detect(self, run: _Run) -> None:
        """Run detection on the current image; store results in source coordinates."""
        ctx = run.ctx
        rgb = await self._timed_step("detect_prepare", self._detector_input, run)
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
                rgb = await self._timed_step(
                    "detect_prepare", self._describe_preview, header.source
                )
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

    def _describe_preview(self, source: pyvips.Source) -> np.ndarray:
        # thumbnail_source shrinks on load and applies the EXIF orientation.
        side = self._max_side()
        image = pyvips.Image.thumbnail_source(
            source, side, height=side, size="down", option_string="fail_on=error"
        )
        return detector_input(image, side)


def _box(detection: Detection) -> Box:
    return Box(detection.left, detection.top, detection.width, detection.height)


__all__ = ["Engine", "ProcessResult", "DescribeResult", "ImageSvcError"]
