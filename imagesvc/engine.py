"""The pipeline engine: admission, decode (with shrink-on-load), chained pipelines, detection,
and encode.

Image work runs on a bounded thread pool (pyvips releases the GIL inside libvips), one hop per
stretch of steps, with the deadline checked between steps. A request that needs detections
starts them as soon as its header is checked: the detector's input is a shrink-on-load decode
of the source (the one DescribeImage makes), and Triton is awaited on the event loop while the
steps that do not need detections run, so a slow Triton never holds a CPU worker. Detections are
cached by the source bytes (``imagesvc.detection_cache``). A request that needs regions
(segmentation: ``ProcessRequest.needs_regions``) has the same input segmented beside detection,
and its region map (``StepContext.regions``) is set before its detections.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Coroutine, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import pyvips
import structlog

from imagesvc import planning, skip, vips
from imagesvc.context import Degradation, DetectedObject, StepContext
from imagesvc.detection_cache import CacheKey, DetectionCache
from imagesvc.encoding.encoder import EncodeResult, EncodingReportValues, encode_output
from imagesvc.encoding.ml import TritonQualityPredictor
from imagesvc.encoding.regions import RegionWeights
from imagesvc.encoding.savers import source_palette
from imagesvc.encoding.search import GuessHistory
from imagesvc.errors import ImageSvcError, ImageTooLarge, Overloaded, ResponseTooLarge
from imagesvc.geometry import Affine, Box
from imagesvc.ops import auto_rotate, resize
from imagesvc.ops.auto_rotate import orientation_transform
from imagesvc.ops.background import flatten
from imagesvc.ops.segmentation_regions import NOT_CONFIGURED, SEGMENTATION_UNAVAILABLE, failure_text
from imagesvc.options import OutputSpec, PlannedOp, ProcessRequest, SourceBytes, SourceUrl
from imagesvc.regions import masks
from imagesvc.regions.masks import RegionMap
from imagesvc.regions.skin import skin_probability
from imagesvc.settings import Settings
from imagesvc.telemetry.metrics import Metrics
from inference import face_refine
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
# The pipeline shares its decode with the detector's input (one decode, copied to memory at
# load) when that decode is at most this many detection sides squared: up to ~1 MP at 512.
SHARED_DECODE_SIDES = 4
# Sources at least this long may give a thumbnail's detector a shorter first input
# (IMAGESVC_DETECTION_MIN_SIDE, `preview_shrink`): camera-size photos.
COARSE_INPUT_MIN_SOURCE = face_refine.TILED_INPUT_SIDE


class Detector(Protocol):
    @property
    def classes(self) -> frozenset[str]: ...

    async def detect(
        self,
        rgb: np.ndarray,
        *,
        classes: frozenset[str] | None = None,
        timeout_s: float | None = None,
    ) -> list[Detection]:
        """Detections in ``rgb``'s pixels, of ``classes`` only (None: every class)."""
        ...

    # Optional keyword of ``detect``: ``thumbnail`` (inference.client.Detector), true for a
    # thumbnail of a camera-size source placed by its detections, which may leave out models
    # such a thumbnail does not need (_Run.thumbnail); detectors without it run every model.
    # Optional beside it, ``input_side(classes, *, thumbnail) -> int | None``
    # (inference.client.Detector.input_side): the long side of the largest image the models
    # called look at; such a thumbnail's first input is made no longer (Engine._first_input_side).
    # Optional, the tiled pass for small faces (inference.client.Detector.detect_tiles): a
    # detector with ``can_tile`` true and
    #   async def detect_tiles(rgb_large, *, first, first_size, timeout_s, grid=...)
    #       -> list[Detection]
    # returning ``first`` (in ``first_size`` pixels) with the faces found on tiles of
    # ``rgb_large`` merged in; on a source too small for a larger copy, ``rgb_large`` is the
    # first input itself, cut on ``grid`` (face_refine.needs_input_tiles). Detectors without
    # it get one pass. Optional beside it,
    #   async def face_hints(rgb, *, timeout_s) -> list[Detection]
    # (inference.client.Detector.face_hints): face-like boxes a cheap probe of the first
    # input finds, only counted, that decide the pass when the first found no face; without
    # it the pass runs on the size rule alone (face_refine.needs_tiled_pass).


class Segmenter(Protocol):
    """The person segmentation model (`inference.segmentation_client.PersonSegmenter`)."""

    @property
    def model_name(self) -> str: ...

    async def segment(self, rgb: np.ndarray, *, timeout_s: float | None = None) -> np.ndarray:
        """The person probability of every pixel of ``rgb``: float32 H x W in [0, 1]; raises
        InferenceError (InferenceUnavailable) when Triton fails."""
        ...


def can_tile(detector: Detector | None) -> bool:
    """Whether ``detector`` runs the tiled pass (``detect_tiles``, and ``can_tile`` not false)."""
    return (
        detector is not None
        and callable(getattr(detector, "detect_tiles", None))
        and bool(getattr(detector, "can_tile", True))
    )


def _takes_thumbnail(detector: Detector) -> bool:
    """Whether ``detector.detect`` takes ``thumbnail`` (inference.client.Detector does)."""
    try:
        return "thumbnail" in inspect.signature(detector.detect).parameters
    except (TypeError, ValueError):
        return False


def _takes_classes(detector: Detector) -> bool:
    """Whether ``detector.detect`` takes ``classes``. Detectors written before the keyword
    (inference.client.FaceDetector until it lands there) are asked for every class, and the
    engine keeps the classes asked for; remove this once every detector takes it."""
    try:
        parameters = inspect.signature(detector.detect).parameters
    except (TypeError, ValueError):
        return True
    return "classes" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def detector_identity(detector: Detector) -> Hashable:
    """What a detector's answers depend on besides the image: its models and thresholds (a
    ``cache_identity`` attribute wins when the detector has one)."""
    identity = getattr(detector, "cache_identity", None)
    if identity is not None:
        return identity
    kind = type(detector)
    return (
        f"{kind.__module__}.{kind.__qualname__}",
        tuple(getattr(detector, "model_names", ())),
        getattr(detector, "score_threshold", None),
        getattr(detector, "nms_threshold", None),
    )


@dataclass(frozen=True, slots=True)
class ProcessResult:
    data: bytes
    format: str
    width: int
    height: int
    objects: tuple[DetectedObject, ...]
    degradations: tuple[Degradation, ...]
    encoding: EncodingReportValues | None = None  # what the encoder chose


@dataclass(frozen=True, slots=True)
class SegmentationSummary:
    """DescribeImage's segmentation: class shares at the analysis size, the class map as a
    PNG (when asked for; else empty), the model and how skin was told."""

    shares: dict[str, float]
    mask_png: bytes
    model: str
    skin_model: str


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
    segmentation: SegmentationSummary | None = None


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


def preview_shrink(header: Header, max_side: int, min_side: int | None = None) -> int:
    """Shrink-on-load factor of the detector's input: the largest the decoder offers that
    keeps the decoded image's long side at least ``max_side`` (as libvips' thumbnail does).

    ``min_side`` (a thumbnail's input, `Engine.first_input_shrink`): on a camera-size source
    (at least `COARSE_INPUT_MIN_SOURCE` long) the decode may go on shrinking while it keeps
    ``min_side``. The BlazeFace models see the input at 128 and 192 px anyway, a thumbnail
    cannot show the faces only a finer input finds, and its pipeline decodes at the decoder's
    largest shrink too, so the two share one cheap decode (bench/README.md, "Object gravity
    cost")."""
    limit = SHRINK_ON_LOAD.get(header.format, 1)
    long_side, short_side = max(header.size), min(header.size)
    keep = max_side
    if min_side is not None and long_side >= COARSE_INPUT_MIN_SOURCE:
        keep = min(max_side, min_side)
    shrink = 1
    # The short side keeps a pixel too: decoders refuse a strip shrunk to nothing.
    while (
        shrink * 2 <= limit
        and long_side // (shrink * 2) >= keep
        and short_side // (shrink * 2) >= 1
    ):
        shrink *= 2
    return shrink


def _shrunk(size: tuple[int, int], shrink: int) -> tuple[int, int]:
    return -(-size[0] // shrink), -(-size[1] // shrink)


def source_info(
    header: Header,
    shrink: int,
    encoded_bytes: int,
    settings: Settings,
    detection: tuple[int, bool] | None = None,
    tiled_shrink: int | None = None,
) -> planning.SourceInfo:
    """What planning needs to know of the source, from its header alone. ``detection``: the
    detector input's (shrink, shared), when the request still has to detect; ``tiled_shrink``:
    the shrink of the tiled pass's input (`tiled_input_plan`), when the pass may run."""
    image = vips.normalise(header.image)  # lazy: only its bands and sample format are read
    stored = planning.Shape(*header.size, image.bands, 2 if image.format == "ushort" else 1)
    turned = settings.auto_rotate and header.orientation != 1
    upright = stored.turned() if turned and header.orientation >= 5 else stored
    decoded = -(-stored.width // shrink) * -(-stored.height // shrink)
    interlaced = bool(image.get("interlaced")) if image.get_typeof("interlaced") else False
    detection_input = None
    if detection is not None:
        preview_factor, shared = detection
        at_preview = stored.sized(*_shrunk(header.size, preview_factor))
        detection_input = planning.DetectionInput(
            preview_factor,
            shared,
            at_preview,
            planning.costs.decoder_bytes(header.format, stored, at_preview.pixels, interlaced),
        )
    tiled_input = None
    if detection is not None and tiled_shrink is not None:
        at_tiled = stored.sized(*_shrunk(header.size, tiled_shrink))
        tiled_input = planning.DetectionInput(
            tiled_shrink,
            False,
            at_tiled,
            planning.costs.decoder_bytes(header.format, stored, at_tiled.pixels, interlaced),
            side=face_refine.tiled_input_side(max(header.size)),
        )
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
        detection_input=detection_input,
        tiled_detection_input=tiled_input,
    )


def encode(image: pyvips.Image, output: OutputSpec, source_format: str, settings: Settings):
    """Encode with the requested (or the source's) format and quality; returns bytes, format.
    One encode, no search history: `imagesvc.encoding.encoder.encode_output` does the work."""
    result = encode_output(image, output, source_format, None, settings)
    return result.data, result.format


def detector_input(decoded: pyvips.Image, orientation: int, max_side: int) -> np.ndarray:
    """The detector's input, an sRGB uint8 HxWx3 array: ``decoded`` (the source decoded at
    ``preview_shrink``, normalised, as stored) downscaled to fit ``max_side``, then turned
    upright by the EXIF ``orientation``. Both RPCs make it this way from the same bytes, so
    they get the same detections."""
    width, height = decoded.width, decoded.height
    scale = min(1.0, max_side / max(width, height))
    # At least one pixel a side: a 65500x2 strip would otherwise be "bad dimensions".
    size = max(1, round(width * scale)), max(1, round(height * scale))
    preview = decoded
    if size != (width, height):
        preview = decoded.thumbnail_image(size[0], height=size[1], size="force", no_rotate=True)
    if preview.hasalpha():
        preview = flatten(preview, (255, 255, 255))
    if preview.interpretation != "srgb" or preview.format != "uchar":
        preview = preview.colourspace("srgb").cast("uchar")
    preview = preview.extract_band(0, n=3) if preview.bands > 3 else preview
    if preview.bands == 1:
        preview = preview.bandjoin([preview, preview])
    if orientation != 1:
        # Turned after the downscale, as libvips' thumbnail does: a small copy in memory
        # (the decode may be sequential) with the orientation set on it.
        preview = preview.copy_memory().copy()
        preview.set_type(pyvips.GValue.gint_type, "orientation", orientation)
        preview = preview.autorot()
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
    source: planning.SourceInfo  # what the plan started from (re-plans start there too)
    next_op: int = 0
    encoded: EncodeResult | None = None
    size: tuple[int, int] = (0, 0)
    # Sizes steps whose shape only their data decides actually produced (by step index).
    known_shapes: dict[int, tuple[int, int]] | None = None
    # Detections: the cache's key and answer (oriented source pixels), else the detector's
    # input, made at load when it shares the pipeline's decode.
    cache_key: CacheKey | None = None
    cached: tuple[DetectedObject, ...] | None = None
    preview: np.ndarray | None = None
    prepared: int = -1  # the step whose ``prepare`` ran on ``image`` (OpSpec.prepare)
    # False: the output could not show the faces the tiled pass finds (Engine._thumbnail_placement).
    tiled_pass: bool = True
    # True: a thumbnail of a camera-size source placed by its detections, whose detector
    # leaves out the models such a thumbnail does not need (Detector.detect's ``thumbnail``).
    thumbnail: bool = False
    # The long side the detector's input is made to fit (Engine._first_input_side).
    preview_side: int = 0


class Engine:
    """Runs requests; owns the worker pool and the admission limits."""

    def __init__(
        self,
        settings: Settings,
        detector: Detector | None,
        metrics: Metrics,
        quality_model=None,
        segmenter: Segmenter | None = None,
    ) -> None:
        """``quality_model``: the ML autoquality method's Triton client
        (``inference.autoquality_client.QualityPredictor``); None: ML searches by DSSIM,
        degraded. ``segmenter``: the person segmentation model's client
        (``inference.segmentation_client.PersonSegmenter``); None: segmentation is not
        configured (every need of it degrades, or fails by its policy)."""
        self.settings = settings
        self.detector = detector
        self.segmenter = segmenter
        self.metrics = metrics
        self.quality_model = quality_model
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="vips")
        # What autoquality learnt from earlier images: its first guesses (bounded).
        self._quality_history = GuessHistory()
        self._slots = asyncio.Semaphore(settings.workers)
        self._waiting = 0
        self._in_progress = 0  # requests holding a worker slot
        self.cache = DetectionCache(settings.detection_cache_entries)
        # Object gravity's default class weights (the models' classes files).
        self._class_weights = getattr(detector, "class_weights", None) or {}
        self._detector_identity: Hashable = None
        self._takes_classes = True
        self._takes_thumbnail = False
        # The tiled pass for small faces (IMAGESVC_DETECTION_TILED_PASS), when the detector has it.
        self._tiles = settings.detection_tiled_pass and can_tile(detector)
        if detector is not None:
            self._detector_identity = (
                detector_identity(detector),
                settings.detection_max_side,
                settings.detection_min_side,
                self._tiles,
            )
            self._takes_classes = _takes_classes(detector)
            self._takes_thumbnail = _takes_thumbnail(detector)

    @property
    def known_classes(self) -> frozenset[str]:
        return self.detector.classes if self.detector is not None else frozenset()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def first_input_shrink(self, header: Header, thumbnail: bool = False) -> int:
        """The shrink-on-load factor of the first pass's input: a function of the source, so
        that both RPCs make the same input from the same bytes (`preview_shrink`).

        ``thumbnail``: the request only places an output too small to show the tiled pass's
        faces (`_thumbnail_placement`; its answer is cached apart, `CacheKey.first_pass_only`):
        a camera-size source may then be decoded coarser, to IMAGESVC_DETECTION_MIN_SIDE,
        sharing the thumbnail's own decode. Everything else (DescribeImage, drawing, blurring,
        regions) gets the full input: at the coarse one the first pass found 3 fewer of 117
        labelled faces and 3 more false boxes (bench/README.md, "Object gravity cost")."""
        settings = self.settings
        min_side = settings.detection_min_side if thumbnail else None
        return preview_shrink(header, settings.detection_max_side, min_side)

    def tiled_input_plan(
        self, header: Header, classes: frozenset[str] | None
    ) -> tuple[int, int] | None:
        """The tiled pass's input, (long side, shrink-on-load factor), when the pass may run
        for this source and these classes: the detector has it, it is on, ``face`` is asked
        for, and the source is large enough for the rule (`face_refine.needs_tiled_pass`,
        whose other half, the faces the first pass finds, is only known after it)."""
        if not self._tiles or (classes is not None and "face" not in classes):
            return None
        long_side = max(header.size)
        first_side = face_refine.nominal_first_side(long_side, self.settings.detection_max_side)
        if long_side < face_refine.TILING_MIN_SOURCE_RATIO * first_side:
            return None
        side = face_refine.tiled_input_side(long_side)
        return side, preview_shrink(header, side)

    def input_tiles_possible(self, header: Header, classes: frozenset[str] | None) -> bool:
        """Whether the first input's own tiles may stand in for the tiled pass on this source
        (`face_refine.needs_input_tiles`, whose other half, the faces the first pass finds, is
        only known after it): the tiled pass is on, ``face`` is asked for, and the source is too
        small for a larger copy but gives a first input long enough to tile."""
        if not self._tiles or (classes is not None and "face" not in classes):
            return False
        long_side = max(header.size)
        first_side = face_refine.nominal_first_side(long_side, self.settings.detection_max_side)
        return face_refine.needs_input_tiles(long_side, first_side, ())

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
        self._in_progress += 1
        try:
            yield
        finally:
            self._in_progress -= 1
            self.metrics.images_in_progress(-1)
            self._slots.release()

    async def _work(self, func: Callable[..., T], *args, ctx: StepContext | None = None) -> T:
        """Run ``func`` on the worker pool.

        When the RPC is cancelled (or its deadline passes) meanwhile, the worker slot stays held
        until the thread has stopped: ``ctx.cancelled`` stops it at the next step boundary, and
        libvips is killed mid-encode. Releasing the slot earlier would let admission start new
        work while the old still burns the CPU.
        """
        return await self._submit(func, *args, ctx=ctx)

    def _submit(
        self, func: Callable[..., T], *args, ctx: StepContext | None = None
    ) -> Coroutine[None, None, T]:
        """``func`` submitted to the pool now (ahead of what is submitted later), and a
        coroutine awaiting it as ``_work`` does."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

        async def result() -> T:
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                if ctx is not None:
                    ctx.cancelled = True
                    ctx.kill()
                await asyncio.wait([future])
                if not future.cancelled():
                    future.exception()  # what the stopped work raised: the cancel says it
                raise
            except pyvips.Error as error:
                raise vips.classify(error) from error

        return result()

    async def _timed_step(self, name: str, ctx: StepContext, func: Callable[..., T], *args) -> T:
        started = time.perf_counter()
        try:
            return await self._work(func, *args, ctx=ctx)
        finally:
            self.metrics.step(name, time.perf_counter() - started)

    # --- ProcessImage ----------------------------------------------------------------------

    async def passthrough(self, request: ProcessRequest) -> ProcessResult | None:
        """The source itself, unprocessed, when skip_processing applies to it (``imagesvc.skip``);
        None when the request is to be processed. Only the header is read (on a worker):
        a source that is not an image of its format, or over the limits, fails as a processed
        request would."""
        data = request.data
        assert not isinstance(data, SourceUrl)  # the edge fetched it
        if not skip.wanted(vips.sniff_format(data), request.skip_processing, request.output):
            return None  # the common case costs a look at the leading bytes
        async with self.admitted():
            return await self._work(self._passthrough, request)

    def _passthrough(self, request: ProcessRequest) -> ProcessResult | None:
        data = request.data
        header = open_header(data, self.settings)
        if not skip.wanted(header.format, request.skip_processing, request.output):
            return None
        limit = self.settings.max_message_bytes - RESPONSE_HEADROOM_BYTES
        skip.check_limits(header.size, len(data), self.settings, limit)
        self.metrics.processing_skipped(header.format)
        return ProcessResult(bytes(data), header.format, *header.size, (), ())

    async def process(self, request: ProcessRequest, ctx_deadline: float) -> ProcessResult:
        self._loop = asyncio.get_running_loop()  # the ML predictor's calls run on it
        async with self.admitted():
            return await self._process(request, ctx_deadline)

    def _load(self, request: ProcessRequest, ctx: StepContext) -> _Run:
        """Read the header, plan the request and hold it to the budget, then open the source
        for decoding (nothing is decoded yet, unless the detector's input shares the decode:
        then the decode is copied to memory and the input made from it here).

        A request that needs detections looks them up in the cache first. On a miss the
        detector's input is the source decoded at ``preview_shrink``: when the pipeline's
        own decode may use that factor too (it needs no more pixels) and the decode is small,
        the pipeline decodes at it and both share one decode; else the input is decoded apart,
        beside the pipeline (``_separate_preview``)."""
        settings = self.settings
        header = open_header(request.data, settings)
        shrink = plan_shrink_on_load(header, request.pipelines, auto_rotate=settings.auto_rotate)
        key = cached = detection = None
        # Regions (segmentation) need the detector's input even when the detections are
        # cached or there is no detector: they segment the same image.
        regions = request.needs_regions
        detects = (request.needs_detections or regions) and self.detector is not None
        thumbnail = detects and self._thumbnail_placement(request, header, shrink)
        first_pass_enough = thumbnail and self._tiles_possible(header, request.detection_classes)
        thumbnail_models = thumbnail and max(header.size) >= COARSE_INPUT_MIN_SOURCE
        preview_side = self._first_input_side(request.detection_classes, thumbnail_models)
        if detects or regions:
            if detects and self.cache.enabled:
                key = CacheKey.of(request.data, request.detection_classes, self._detector_identity)
                cached = self.cache.get(key)
                if thumbnail:
                    # The complete answer serves this request too; else a thumbnail's own.
                    key = key.first_pass_only()
                    cached = cached if cached is not None else self.cache.get(key)
                self.metrics.detection_cache(cached is not None)
            if cached is None or regions:
                side = settings.detection_max_side
                factor = self.first_input_shrink(header, thumbnail=thumbnail)
                width, height = _shrunk(header.size, factor)
                shared = factor <= shrink and width * height <= SHARED_DECODE_SIDES * side * side
                shrink = factor if shared else shrink
                detection = (factor, shared)
        tiled = None
        if detection is not None and cached is None and not first_pass_enough:
            tiled = self.tiled_input_plan(header, request.detection_classes)
        source = source_info(
            header, shrink, len(request.data), settings, detection, tiled[1] if tiled else None
        )
        plan = planning.plan_request(
            source,
            request.pipelines,
            output_format(request.output, header.format),
            settings,
            encoding=request.output.encoding,
            regions=request.output.regions is not None,
        )
        planning.check_budget(plan, settings)
        image = header.image
        if shrink > 1:
            image = reopen_shrunk(header, shrink)
        image = vips.normalise(image)
        src_w, src_h = header.oriented_size if self.settings.auto_rotate else header.size
        ctx.source_size = (src_w, src_h)
        preview = None
        if detection is not None and detection[1]:
            try:
                image = ctx.materialise(image)
                started = time.perf_counter()
                preview = detector_input(image, header.orientation, preview_side)
                self.metrics.step("detect_prepare", time.perf_counter() - started)
            except pyvips.Error as error:
                raise _source_error(error, header, ctx) from error
        if self.settings.auto_rotate and header.orientation != 1:
            image = ctx.random_access(image).autorot()
        if (image.width, image.height) != (src_w, src_h):
            ctx.logical_size = (src_w, src_h)
            ctx.transform = Affine.scale(image.width / src_w, image.height / src_h)
        ops = tuple(op for pipeline in request.pipelines for op in pipeline)
        return _Run(
            request, header, ctx, image, ops, plan, source, cache_key=key, cached=cached,
            preview=preview, tiled_pass=not first_pass_enough, thumbnail=thumbnail_models,
            preview_side=preview_side,
        )  # fmt: skip

    def _first_input_side(self, classes: frozenset[str] | None, thumbnail: bool) -> int:
        """The long side the first pass's input is made to fit: IMAGESVC_DETECTION_MAX_SIDE,
        or for a ``thumbnail`` (``_Run.thumbnail``: only its models' first pass reads the
        input) no more than those models look at (``Detector.input_side``; 192 px for the
        full-range face model), so that libvips makes the model's own size from the decode
        and the detector does not resample it again (bench/README.md, "Object gravity
        cost")."""
        side = self.settings.detection_max_side
        sizer = getattr(self.detector, "input_side", None)
        if thumbnail and self._takes_thumbnail and callable(sizer):
            models_side = sizer(classes, thumbnail=True)
            if isinstance(models_side, int) and models_side > 0:
                side = min(side, models_side)
        return side

    def _tiles_possible(self, header: Header, classes: frozenset[str] | None) -> bool:
        """Whether a pass for small faces (the tiled pass, or the input's own tiles) could run
        for this source."""
        return self.tiled_input_plan(header, classes) is not None or self.input_tiles_possible(
            header, classes
        )

    def _thumbnail_placement(self, request: ProcessRequest, header: Header, shrink: int) -> bool:
        """Whether ``request`` is a thumbnail placed by its detections: its only use of the
        detections is its first step placing its output by them (gravity) at a scale where the
        faces only the passes for small faces find would come out too small to show
        (`face_refine.tiled_faces_visible`). The first pass serves it as well as they would
        (they are skipped where they could run), on a coarser input
        (`first_input_shrink`). Regions, drawing, blurring, pixelating and cropping to the
        objects need every face: never."""
        if request.needs_regions or self.settings.detection_min_output_face_px <= 0:
            return False
        ops = [op for pipeline in request.pipelines for op in pipeline]
        users = [i for i, op in enumerate(ops) if op.spec.needs_detections(op.options)]
        if users != [0]:
            return False
        shape = source_info(header, shrink, len(request.data), self.settings).shape
        scale = ops[0].spec.placement_scale(ops[0].options, shape)
        if scale is None:
            return False
        long_side = max(header.oriented_size)
        first_side = face_refine.nominal_first_side(long_side, self.settings.detection_max_side)
        return not face_refine.tiled_faces_visible(
            long_side,
            first_side,
            scale,
            min_output_face_px=self.settings.detection_min_output_face_px,
        )

    def _timed(self, name: str, func: Callable[..., T], *args) -> T:
        started = time.perf_counter()
        try:
            return func(*args)
        finally:
            self.metrics.step(name, time.perf_counter() - started)

    def _advance(self, run: _Run | None, request: ProcessRequest, ctx: StepContext) -> _Run:
        """Worker-thread side: load if needed, then run steps until one needs detections that
        are not there yet (the event loop awaits them) or, at the end, encode.

        One hop to the pool per stretch of steps keeps the event loop's share of each request
        small; the deadline (and cancellation) is still checked between every two steps, and
        inside them every libvips computation reads through the image ``ctx.watch`` names, so
        the deadline timer can kill it mid-way. After a step whose shape only its data decides
        (``PlannedStep.replan_after``), the rest is planned again from the image it produced
        and held to the budget before it runs.
        """
        if run is None:
            run = self._timed("load", self._load, request, ctx)
        try:
            while run.next_op < len(run.ops):
                op = run.ops[run.next_op]
                step = run.plan.steps[run.next_op]
                ctx.check_deadline()
                if op.spec.needs_detections(op.options) and ctx.objects is None:
                    if op.spec.prepare is not None and run.prepared != run.next_op:
                        # What the step can do without detections (a fill's scaling), into
                        # memory, while Triton works; with a worker to spare, also what it
                        # may need without them (the smart fallback's centre).
                        ctx.spare_worker = self._in_progress < self.settings.workers
                        run.image = self._timed(
                            f"{op.name}.prepare",
                            op.spec.prepare,
                            ctx.watch(run.image),
                            op.options,
                            ctx,
                        )
                        run.prepared = run.next_op
                    elif step.input_in_memory and not ctx.in_memory:
                        # Planned: the step reads its input at random (a detection op, or
                        # object gravity's smart fallback). Copied now, while Triton works.
                        run.image = ctx.materialise(run.image)
                    return run
                if (
                    op.spec.needs_detections(op.options)
                    and step.input_in_memory
                    and not ctx.in_memory
                ):
                    run.image = ctx.materialise(run.image)
                if step.copy_before:
                    # A second window operation in one lazy chain: see planning.WINDOW_ROWS.
                    run.image = ctx.materialise(run.image)
                image = ctx.watch(run.image)
                run.image = self._timed(op.name, op.spec.run, image, op.options, ctx)
                run.next_op += 1
                if step.replan_after:
                    self._replan(run, run.next_op - 1)
            if request.needs_regions and ctx.objects is None:
                # Region-aware autoquality: the encode waits for the regions (set before
                # the detections, which the event loop awaits).
                return run
            ctx.check_deadline()
            run.encoded = self._timed("encode", self._encode, run)
        except pyvips.Error as error:
            raise self._classify(error, run) from error
        run.size = (run.image.width, run.image.height)
        return run

    def _replan(self, run: _Run, index: int) -> None:
        """Plan the request again with the size step ``index`` produced, and refuse what is
        now over the budget before any later step runs."""
        if run.known_shapes is None:
            run.known_shapes = {}
        run.known_shapes[index] = (run.image.width, run.image.height)
        run.plan = planning.plan_request(
            run.source,
            run.request.pipelines,
            output_format(run.request.output, run.header.format),
            self.settings,
            known_shapes=run.known_shapes,
            encoding=run.request.output.encoding,
            regions=run.request.output.regions is not None,
        )
        planning.check_budget(run.plan, self.settings)

    def _encode(self, run: _Run) -> EncodeResult:
        """Encode, where libvips computes every pending step's pixels; autoquality, best
        format and max_bytes may encode more than once (imagesvc.encoding)."""
        header = run.header
        result = encode_output(
            run.ctx.watch(run.image),
            run.request.output,
            header.format,
            source_palette(header.image, header.format, run.request.data),
            self.settings,
            kill_check=run.ctx.check_deadline,
            history=self._quality_history,
            watch=run.ctx.watch,
            predictor=self._quality_predictor(run),
            regions=self._region_weights(run),
        )
        for reason, message in result.degradations:
            run.ctx.degrade(reason, "", message)
        data, fmt = result.data, result.format
        limit = self.settings.max_message_bytes - RESPONSE_HEADROOM_BYTES
        if len(data) > limit:
            raise ResponseTooLarge(
                f"the encoded result is {len(data)} bytes, over the {limit} bytes one response "
                "can carry; ask for a smaller size, a lower quality or another format",
                metadata={"bytes": str(len(data)), "limit_bytes": str(limit), "format": fmt},
            )
        report = result.report
        self.metrics.encoding(
            fmt,
            report.method,
            report.encodes,
            report.achieved_dssim if report.method in ("dssim", "ml") else None,
        )
        if report.method == "ml" and report.predicted_quality:
            self.metrics.autoquality_prediction(
                fmt, report.model_version, report.predicted_quality, report.quality
            )
        return result

    def _region_weights(self, run: _Run) -> RegionWeights | None:
        """The regions at the encoded image's size, when the output asks for region-aware
        autoquality; None otherwise, and (degraded) when segmentation was unavailable."""
        if run.request.output.regions is None:
            return None
        ctx = run.ctx
        if ctx.regions is None:
            ctx.degrade(
                SEGMENTATION_UNAVAILABLE,
                "",
                f"{failure_text(ctx.regions_failure or NOT_CONFIGURED)}, "
                "region-aware autoquality off: the whole image was held to the target",
            )
            return None
        return RegionWeights(*ctx.regions.at(ctx.transform, run.image.width, run.image.height))

    def _quality_predictor(self, run: _Run) -> TritonQualityPredictor | None:
        """The ML method's predictor for this request (its deadline bounds the call), when
        the request may use the method and there is a model client; else None (ML then
        searches by DSSIM, degraded)."""
        if self.quality_model is None or self._loop is None:
            return None
        encoding = run.request.output.encoding
        method = (
            encoding.autoquality.method
            if encoding is not None
            else self.settings.autoquality_method
        )
        if method != "ml":
            return None
        return TritonQualityPredictor(self.quality_model, self._loop, run.ctx.deadline)

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
        ctx = StepContext(self.settings, deadline, (0, 0), class_weights=self._class_weights)
        loop = asyncio.get_running_loop()
        # A timer on the loop, not a per-tile progress callback: that one cost ~1.3 ms per image.
        deadline_timer = loop.call_later(max(0.0, deadline - time.monotonic()), ctx.kill)
        detection: asyncio.Future[None] | None = None
        try:
            if request.needs_detections or request.needs_regions:
                # Load in a hop of its own, so detection starts before the pipeline's steps.
                run = await self._work(self._timed, "load", self._load, request, ctx, ctx=ctx)
                detection = self._start_detection(run)
                run = await self._work(self._advance, run, request, ctx, ctx=ctx)
            else:
                run = await self._work(self._advance, None, request, ctx, ctx=ctx)
            while run.encoded is None:
                assert detection is not None  # _advance waits only for detections (regions)
                await detection
                run = await self._work(self._advance, run, request, ctx, ctx=ctx)
        finally:
            if detection is not None:
                await _settled(detection)
            deadline_timer.cancel()
        encoded = run.encoded
        data, fmt = encoded.data, encoded.format
        self.metrics.image_bytes("input", run.header.format, len(request.data))
        self.metrics.image_bytes("output", fmt, len(data))
        for item in ctx.degradations:
            self.metrics.degradation(item.reason, item.operation)
        return ProcessResult(
            data,
            fmt,
            *run.size,
            tuple(ctx.objects or ()),
            tuple(ctx.degradations),
            encoded.report,
        )

    def _start_detection(self, run: _Run) -> asyncio.Future[None]:
        """Start the request's detections beside its pipeline; the future sets ``ctx.objects``
        (and ``ctx.detection_failure``) when they are known. The detector's input, when not
        made at load, is submitted to the pool now, ahead of the pipeline's next hop."""
        ctx = run.ctx
        if not run.request.needs_regions:
            if self.detector is None:
                ctx.detection_failure = "DETECTOR_NOT_CONFIGURED"
                ctx.objects = []
                return _done()
            if run.cached is not None:
                ctx.objects = self._in_pipeline_source(run.cached, run.header)
                return _done()
        preview: asyncio.Future[np.ndarray]
        if run.preview is not None:
            preview = _done(run.preview)
        else:
            shrink = run.source.detection_input.shrink if run.source.detection_input else 1
            # Submitted now, so the pool takes it before the pipeline's next hop.
            preview = asyncio.ensure_future(
                self._submit(
                    self._timed,
                    "detect_prepare",
                    self._separate_preview,
                    run.header,
                    run.request.data,
                    shrink,
                    ctx,
                    run.preview_side or None,
                    ctx=ctx,
                )
            )
        return asyncio.ensure_future(self._detect(run, preview))

    async def _detect(self, run: _Run, preview: asyncio.Future[np.ndarray]) -> None:
        ctx = run.ctx
        try:
            rgb = await preview
        finally:
            await _settled(preview)
        run.preview = None
        request = run.request
        # Segmentation (when the request needs regions) on the same input, beside detection.
        segmented = (
            asyncio.ensure_future(self._segment(rgb, ctx)) if request.needs_regions else None
        )
        try:
            if run.cached is not None:
                objects = run.cached
            else:
                objects = await self._detect_objects(
                    rgb,
                    run.header,
                    request.data,
                    request.detection_classes,
                    run.cache_key,
                    ctx,
                    tiled_pass=run.tiled_pass,
                    thumbnail=run.thumbnail,
                )
            if segmented is not None:
                ctx.regions = await self._regions(rgb, objects, await segmented, run.header, ctx)
        finally:
            if segmented is not None:
                await _settled(segmented)
        # Set last (ctx.detection_failure, ctx.regions are set by now): a worker thread
        # running the pipeline's steps meanwhile goes on past the first step that needs them.
        ctx.objects = self._in_pipeline_source(objects, run.header)

    async def _segment(self, rgb: np.ndarray, ctx: StepContext) -> np.ndarray | None:
        """The person probability of ``rgb`` (the detector's input); None when segmentation is
        not configured or Triton failed (``ctx.regions_failure`` says why)."""
        if self.segmenter is None:
            ctx.regions_failure = NOT_CONFIGURED
            return None
        try:
            return await self.segmenter.segment(rgb, timeout_s=max(ctx.remaining(), 0.0))
        except InferenceError as error:
            # Down, slow, or answering nonsense: the request still succeeds, degraded.
            if not isinstance(error, InferenceUnavailable):
                log.warning("segmentation_failed", reason=error.reason, error=str(error))
            ctx.regions_failure = error.reason
            return None

    async def _regions(
        self,
        rgb: np.ndarray,
        objects: Sequence[DetectedObject],
        person: np.ndarray | None,
        header: Header,
        ctx: StepContext,
    ) -> RegionMap | None:
        """The regions of ``rgb`` from its person mask and the faces among ``objects``
        (oriented source pixels), the skin model fitted on the worker pool; None without a
        mask."""
        if person is None:
            return None
        return await self._timed_step(
            "segment_regions", ctx, self._region_map, rgb, objects, person, header
        )

    def _region_map(
        self,
        rgb: np.ndarray,
        objects: Sequence[DetectedObject],
        person: np.ndarray,
        header: Header,
    ) -> RegionMap:
        width, height = header.oriented_size
        to_rgb = Affine.scale(rgb.shape[1] / width, rgb.shape[0] / height)
        faces = [to_rgb.box(o.box) for o in objects if o.class_name == "face"]
        skin, model = skin_probability(rgb, faces, person)
        # Regions are in oriented source pixels, as detections are (see _in_pipeline_source).
        to_pipeline = Affine()
        if not self.settings.auto_rotate and header.orientation != 1:
            to_pipeline = orientation_transform(header.orientation, *header.size).inverse()
        return RegionMap(
            person,
            skin,
            header.oriented_size,
            getattr(self.segmenter, "model_name", ""),
            model.source,
            to_pipeline,
        )

    def _in_pipeline_source(
        self, objects: tuple[DetectedObject, ...], header: Header
    ) -> list[DetectedObject]:
        """Detections in oriented source pixels, in the pipeline's source pixels: the same,
        unless the load leaves the EXIF orientation to the pipeline (IMAGESVC_AUTO_ROTATE)."""
        if self.settings.auto_rotate or header.orientation == 1:
            return list(objects)
        to_stored = orientation_transform(header.orientation, *header.size).inverse()
        return [
            DetectedObject(o.class_name, o.confidence, to_stored.box(o.box), o.model)
            for o in objects
        ]

    def _separate_preview(
        self,
        header: Header,
        data: SourceBytes,
        shrink: int,
        ctx: StepContext,
        max_side: int | None = None,
    ) -> np.ndarray:
        """The detector's input decoded from the source on its own (a source of its own over
        the same bytes: a libvips source is read by one decoder at a time), killable with
        the request. ``max_side``: its long side (default IMAGESVC_DETECTION_MAX_SIDE; the
        tiled pass's input is made the same way, larger)."""
        options = dict(header.load_options)
        if shrink > 1:
            options.update({"shrink": shrink} if header.format == "jpeg" else {"scale": 1 / shrink})
        try:
            decoded = vips.normalise(vips.load(vips.memory_source(data), **options))
            side = self.settings.detection_max_side if max_side is None else max_side
            return detector_input(ctx.watch_side(decoded), header.orientation, side)
        except pyvips.Error as error:
            raise _source_error(error, header, ctx) from error

    async def _detect_objects(
        self,
        rgb: np.ndarray,
        header: Header,
        data: SourceBytes,
        classes: frozenset[str] | None,
        key: CacheKey | None,
        ctx: StepContext,
        *,
        tiled_pass: bool = True,
        thumbnail: bool = False,
    ) -> tuple[DetectedObject, ...]:
        """Detections in ``rgb`` (the detector's input), refined by the tiled pass when the
        rule asks for it (and ``tiled_pass``: the output can show what it finds), in oriented
        source pixels, cached under ``key``; none when detection
        is unavailable (``ctx.detection_failure`` says why, and nothing is cached). When the
        first pass found no face, the rule counts the detector's face hints on ``rgb``
        (``face_hints``, when it has them: `inference.client.Detector.face_hints`). When only
        the hints or the tiled pass fail, the first pass's detections are returned, not
        cached."""
        detections = await self._call_detector(rgb, classes, ctx, thumbnail=thumbnail)
        if detections is None:
            return ()
        complete = True
        eligible = self.tiled_input_plan(header, classes)
        plan = eligible if tiled_pass else None
        outcome = "not_needed" if tiled_pass else "skipped_small_output"
        # The rules' pixel figures hold at the nominal input (face_refine.rule_terms).
        sides, heights = face_refine.rule_terms(
            max(header.oriented_size),
            max(rgb.shape[:2]),
            self.settings.detection_max_side,
            [d.height for d in detections if d.class_name == "face"],
        )
        if eligible is None and self.input_tiles_possible(header, classes):
            if tiled_pass and face_refine.needs_input_tiles(*sides, heights):
                refined = await self._input_tiles(rgb, detections, ctx)
                complete = refined is not None
                detections = detections if refined is None else refined
                outcome = "tiled" if complete else "unavailable"
            self.metrics.small_face_pass(outcome)
        hints: int | None = None
        hinter = getattr(self.detector, "face_hints", None)
        if plan is not None and callable(hinter) and face_refine.needs_face_hints(*sides, heights):
            try:
                hints = len(await hinter(rgb, timeout_s=max(ctx.remaining(), 0.0)))
            except InferenceError as error:
                log.info("face_hints_unavailable", reason=error.reason, error=str(error))
                plan, complete, outcome = None, False, "unavailable"
        if plan is not None and face_refine.needs_tiled_pass(*sides, heights, face_hints=hints):
            refined = await self._tiled_pass(rgb, detections, header, data, plan, ctx)
            complete = refined is not None
            detections = detections if refined is None else refined
            outcome = "tiled" if complete else "unavailable"
        if eligible is not None:
            self.metrics.small_face_pass(outcome)
        width, height = header.oriented_size
        to_source = Affine.scale(width / rgb.shape[1], height / rgb.shape[0])
        objects = tuple(
            DetectedObject(d.class_name, d.confidence, to_source.box(_box(d)), d.model)
            for d in detections
        )
        if key is not None and complete:
            self.cache.put(key, objects)
        return objects

    async def _tiled_pass(
        self,
        rgb: np.ndarray,
        first: list[Detection],
        header: Header,
        data: SourceBytes,
        plan: tuple[int, int],
        ctx: StepContext,
    ) -> list[Detection] | None:
        """The first pass's detections with the faces of the tiled pass merged in, in ``rgb``'s
        pixels; None when Triton failed meanwhile (the caller keeps the first pass: the answer
        the service gave before the tiled pass existed, so nothing is reported degraded).

        Its input is made like the first one (`_separate_preview`: a shrink-on-load decode of
        the source, turned upright, killable by the deadline) at the tiled side, on the worker
        pool; Triton is then given what is left of the RPC's deadline, never more."""
        side, shrink = plan
        large = await self._work(
            self._timed,
            "detect_tiled_prepare",
            self._separate_preview,
            header,
            data,
            shrink,
            ctx,
            side,
            ctx=ctx,
        )
        return await self._detect_tiles(large, first, (rgb.shape[1], rgb.shape[0]), ctx)

    async def _input_tiles(
        self, rgb: np.ndarray, first: list[Detection], ctx: StepContext
    ) -> list[Detection] | None:
        """The tiled pass on a source too small for a larger copy: the first input's own
        `face_refine.HINT_GRID` tiles (`face_refine.needs_input_tiles`), merged as the tiled
        pass's are, in ``rgb``'s pixels; None when Triton failed meanwhile (as `_tiled_pass`)."""
        size = (rgb.shape[1], rgb.shape[0])
        return await self._detect_tiles(rgb, first, size, ctx, grid=face_refine.HINT_GRID)

    async def _detect_tiles(
        self,
        tiled: np.ndarray,
        first: list[Detection],
        first_size: tuple[int, int],
        ctx: StepContext,
        grid: tuple[int, int] | None = None,
    ) -> list[Detection] | None:
        """The detector's ``detect_tiles`` with what is left of the RPC's deadline (``grid``
        passed only when given: None is the detector's own tiled-pass grid); None when Triton
        failed (logged)."""
        tiler = self.detector
        assert tiler is not None and can_tile(tiler)
        options = {} if grid is None else {"grid": grid}
        try:
            return await tiler.detect_tiles(  # type: ignore[attr-defined]
                tiled,
                first=first,
                first_size=first_size,
                timeout_s=max(ctx.remaining(), 0.0),
                **options,
            )
        except InferenceError as error:
            if not isinstance(error, InferenceUnavailable):
                log.warning("tiled_detection_failed", reason=error.reason, error=str(error))
            else:
                log.info("tiled_detection_unavailable", reason=error.reason)
            return None

    async def _call_detector(
        self,
        rgb: np.ndarray,
        classes: frozenset[str] | None,
        ctx: StepContext,
        *,
        thumbnail: bool = False,
    ) -> list[Detection] | None:
        if self.detector is None:
            ctx.detection_failure = "DETECTOR_NOT_CONFIGURED"
            return None
        # Never wait on Triton past the RPC's own deadline.
        timeout_s = max(ctx.remaining(), 0.0)
        try:
            if thumbnail and self._takes_thumbnail:
                return await self.detector.detect(  # type: ignore[call-arg]
                    rgb, classes=classes, timeout_s=timeout_s, thumbnail=True
                )
            if self._takes_classes:
                return await self.detector.detect(rgb, classes=classes, timeout_s=timeout_s)
            found = await self.detector.detect(rgb, timeout_s=timeout_s)
            return [d for d in found if classes is None or d.class_name in classes]
        except InferenceError as error:
            # Down, slow, or answering nonsense: the request still succeeds, degraded.
            if not isinstance(error, InferenceUnavailable):
                log.warning("detection_failed", reason=error.reason, error=str(error))
            ctx.detection_failure = error.reason
            return None

    # --- DescribeImage ---------------------------------------------------------------------

    async def describe(
        self,
        data: SourceBytes,
        detect: bool,
        deadline: float,
        *,
        classes: frozenset[str] | None = None,
        segment: bool = False,
        segmentation_mask: bool = False,
    ) -> DescribeResult:
        """The header; with ``detect``, the detections of ``classes`` (None: every class) in
        oriented source pixels, from the same detector input ProcessImage uses (and the same
        cache); with ``segment``, the regions of that input (the faces among its detections
        seed the skin model), and with ``segmentation_mask`` their class map as a PNG."""
        async with self.admitted():
            header = await self._work(open_header, data, self.settings)
            image = header.image
            pages = image.get("n-pages") if image.get_typeof("n-pages") else 1
            objects: tuple[DetectedObject, ...] = ()
            degradations: tuple[Degradation, ...] = ()
            segmentation = None
            if detect or segment:
                ctx = StepContext(self.settings, deadline, header.oriented_size)
                # Segmentation asks for the faces too; only the classes asked for are returned.
                wanted = classes if detect else frozenset({"face"})
                if segment and wanted is not None:
                    wanted = wanted | {"face"}
                found, regions = await self._describe_detect(header, data, wanted, ctx, segment)
                if detect:
                    objects = tuple(o for o in found if classes is None or o.class_name in classes)
                if detect and ctx.detection_failure is not None:
                    ctx.degrade(
                        "DETECTION_UNAVAILABLE",
                        "",
                        f"detection unavailable ({ctx.detection_failure}), no detections",
                    )
                if segment and regions is None:
                    failure = failure_text(ctx.regions_failure or NOT_CONFIGURED)
                    ctx.degrade(SEGMENTATION_UNAVAILABLE, "", f"{failure}, no segmentation")
                elif regions is not None:
                    segmentation = await self._work(summarise, regions, segmentation_mask)
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
                segmentation=segmentation,
            )

    async def _describe_detect(
        self,
        header: Header,
        data: SourceBytes,
        classes: frozenset[str] | None,
        ctx: StepContext,
        segment: bool = False,
    ) -> tuple[tuple[DetectedObject, ...], RegionMap | None]:
        """The detections of ``classes``, and with ``segment`` the regions of the same
        detector input (segmented beside detection; a cache hit still makes the input)."""
        if self.detector is None and not segment:
            ctx.detection_failure = "DETECTOR_NOT_CONFIGURED"
            return (), None
        loop = asyncio.get_running_loop()
        # Kills the detector's inputs (the tiled pass's too) when the deadline passes.
        deadline_timer = loop.call_later(max(0.0, ctx.remaining()), ctx.kill)
        try:
            key, cached, rgb = await self._timed_step(
                "detect_prepare", ctx, self._describe_preview, header, data, classes, ctx, segment
            )
            if not segment:
                if cached is not None:
                    return cached, None
                assert rgb is not None
                return await self._detect_objects(rgb, header, data, classes, key, ctx), None
            assert rgb is not None
            segmented = asyncio.ensure_future(self._segment(rgb, ctx))
            try:
                if cached is not None:
                    objects = cached
                else:
                    objects = await self._detect_objects(rgb, header, data, classes, key, ctx)
                regions = await self._regions(rgb, objects, await segmented, header, ctx)
            finally:
                await _settled(segmented)
            return objects, regions
        finally:
            deadline_timer.cancel()

    def _describe_preview(
        self,
        header: Header,
        data: SourceBytes,
        classes: frozenset[str] | None,
        ctx: StepContext,
        always: bool = False,
    ) -> tuple[CacheKey | None, tuple[DetectedObject, ...] | None, np.ndarray | None]:
        """Worker side: the cache's answer, else (and ``always``) the detector's input."""
        key = cached = None
        if self.cache.enabled and self.detector is not None:
            key = CacheKey.of(data, classes, self._detector_identity)
            cached = self.cache.get(key)
            self.metrics.detection_cache(cached is not None)
            if cached is not None and not always:
                return key, cached, None
        shrink = self.first_input_shrink(header)
        return key, cached, self._separate_preview(header, data, shrink, ctx)


def summarise(regions: RegionMap, with_mask: bool) -> SegmentationSummary:
    """DescribeImage's segmentation of ``regions``, at the analysis size."""
    classes = masks.labels(regions.person, regions.skin)
    return SegmentationSummary(
        masks.shares(classes),
        masks.to_png(classes) if with_mask else b"",
        regions.model,
        regions.skin_model,
    )


def _source_error(error: pyvips.Error, header: Header, ctx: StepContext) -> ImageSvcError:
    """The caller-facing error for a libvips failure while decoding the source on its own
    (the detector's input): the deadline or a cancel when the request was killed; else the
    source's fault when it does not decode, ours otherwise."""
    ctx.check_deadline()
    site = vips.failure_site(error)
    if site != "load" and not source_decodes(header, ctx):
        site = "load"
    return vips.classify(error, site or "process")


def _done(value=None) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


async def _settled(future: asyncio.Future) -> None:
    """Cancel ``future`` if it still runs and wait until it has stopped (its worker thread
    too: see Engine._work), without raising what it raised."""
    if not future.done():
        future.cancel()
    await asyncio.wait([future])
    if not future.cancelled():
        future.exception()  # retrieved: a failure the request already reported elsewhere


def _box(detection: Detection) -> Box:
    return Box(detection.left, detection.top, detection.width, detection.height)


__all__ = ["Engine", "ProcessResult", "DescribeResult", "ImageSvcError"]
