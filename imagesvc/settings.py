"""Service configuration: every key comes from an ``IMAGESVC_*`` environment variable.

Settings are read and validated once in ``main()`` before any port opens, so a bad value fails
the start instead of the first request. The README's configuration table mirrors this class.
"""

from __future__ import annotations

import functools
import json
import os
import ssl
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Output formats a request may name, keyed by the names used in env vars.
FORMAT_NAMES = ("jpeg", "png", "webp", "avif", "gif", "tiff")
# Source formats the service can decode; each maps to the libvips loader classes it unblocks.
SOURCE_FORMAT_LOADERS = {
    "jpeg": ("VipsForeignLoadJpeg",),
    "png": ("VipsForeignLoadPng",),
    "webp": ("VipsForeignLoadWebp",),
    "gif": ("VipsForeignLoadNsgif", "VipsForeignLoadGif"),
    "avif": ("VipsForeignLoadHeif",),
    "tiff": ("VipsForeignLoadTiff",),
}


# What the process holds besides its requests' images: the interpreter, gRPC, libvips, numpy.
PROCESS_RESERVE_MB = 256
DEFAULT_REQUEST_MEMORY_MB = 1024
_CGROUP_MEMORY_LIMITS = (
    "/sys/fs/cgroup/memory.max",  # cgroup v2
    "/sys/fs/cgroup/memory/memory.limit_in_bytes",  # cgroup v1
)


def container_memory_limit_mb(paths: tuple[str, ...] = _CGROUP_MEMORY_LIMITS) -> int | None:
    """The memory limit of this container (the pod's ``limits.memory``), or None when there is
    none: no cgroup file, ``max``, or v1's "unlimited" (a number beyond any machine)."""
    for path in paths:
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text) // 2**20
        return None
    return None


def request_memory_budget_mb(workers: int, limit_mb: int | None) -> int:
    """Each worker's share of the container's memory after the process's own reserve."""
    if limit_mb is None:
        return DEFAULT_REQUEST_MEMORY_MB
    return max(64, (limit_mb - PROCESS_RESERVE_MB) // workers)


def _default_workers() -> int:
    # os.cpu_count() ignores cgroup CPU quotas; sched_getaffinity at least honours cpusets.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    """imagesvc configuration (prefix ``IMAGESVC_``)."""

    model_config = SettingsConfigDict(env_prefix="IMAGESVC_", frozen=True, extra="ignore")

    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free port).")
    metrics_host: str = Field("127.0.0.1", description="Address of the Prometheus endpoint.")
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="Prometheus /metrics port; 0 disables the endpoint."
    )
    workers: int = Field(
        default_factory=_default_workers, ge=1, description="Images processed at once (CPU pool)."
    )
    max_queue: int = Field(
        32,
        ge=0,
        description="Requests allowed to wait for a worker; beyond it RESOURCE_EXHAUSTED.",
    )
    max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest gRPC request/response message."
    )
    # --- url sources (README "Sources"; imagesvc/sources) ---
    allowed_sources: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="URL prefixes a url source must start with, comma-separated (each with a "
        "path, e.g. https://images.example.com/; s3://BUCKET/ prefixes for object sources); "
        "empty: any http or https URL and any object.",
    )
    allow_loopback_source_addresses: bool = Field(
        False,
        description="Let url sources connect to loopback addresses (127/8, ::1, 0.0.0.0, ::).",
    )
    allow_private_source_addresses: bool = Field(
        False,
        description="Let url sources connect to private addresses (10/8, 172.16/12, "
        "192.168/16, 100.64/10, fc00::/7).",
    )
    allow_link_local_source_addresses: bool = Field(
        False,
        description="Let url sources connect to link-local addresses (169.254/16, the cloud "
        "metadata address included, fe80::/10).",
    )
    source_ca_path: str = Field(
        "",
        description="PEM bundle of CAs trusted for https url sources besides the system's "
        "(an internal platform's own CA); checked at start.",
    )
    max_redirects: int = Field(5, ge=0, description="Most redirects a url source may follow.")
    source_download_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Most time a url source's download may take, redirects included (the RPC "
        "deadline, when shorter, wins).",
    )
    max_source_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="Largest url source body, in bytes, enforced while it streams (data "
        "sources are bounded by IMAGESVC_MAX_MESSAGE_BYTES).",
    )
    etag_buster: str = Field(
        "",
        description="Mixed into every ETag: change it when a change of settings, models or "
        "libvips changes the service's output, so that clients' copies stop validating.",
    )
    ttl_s: int = Field(
        31536000,
        ge=0,
        description="max-age of a response's cache_control hint (capped by the request's "
        "expires); 0: no-cache.",
    )
    # --- skip_processing and the fallback image (README "Skip processing and fallback image") ---
    skip_processing_formats: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Source formats returned unprocessed when the output format is the same or "
        "unspecified, comma-separated (a request's skip_processing_formats wins).",
    )
    fallback_image_path: str = Field(
        "",
        description="Image file processed instead of a source that cannot be fetched or "
        "decoded; read and validated at start. Empty: no fallback.",
    )
    fallback_image_http_code: int = Field(
        200,
        ge=0,
        le=599,
        description="fallback_status of a fallback response (100..599); 0: the HTTP "
        "equivalent of the source's error.",
    )
    fallback_image_url: str = Field(
        "",
        description="http(s) URL of the fallback image, fetched once at start like a url "
        "source (allow-list and SSRF guard included); IMAGESVC_FALLBACK_IMAGE_PATH wins.",
    )
    # --- object sources (README "Sources"; imagesvc/sources/objects.py) ---
    s3_enabled: bool = Field(False, description="Accept object sources (S3-compatible storage).")
    s3_endpoint_url: str = Field(
        "",
        description="Endpoint of an S3-compatible store (MinIO, Ceph, ...); empty: AWS S3. "
        "Credentials and region come from the standard AWS environment / IRSA chain.",
    )
    s3_region: str = Field("", description="Region of the S3 client; empty: from the AWS chain.")
    # --- presets (README "Presets"; imagesvc/presets.py) ---
    presets_path: str = Field(
        "",
        description="YAML or JSON file of named presets (partial ProcessImageRequests in "
        "proto-JSON), validated at start; a preset named default applies to every request.",
    )
    only_presets: bool = Field(
        False,
        description="Requests may name presets but carry no pipelines, output or "
        "skip_processing_formats of their own.",
    )
    # --- authentication (README "Authentication and TLS"; imagesvc/server/auth.py) ---
    auth_tokens_path: str = Field(
        "",
        description="File of accepted bearer tokens, one per line (# comments); re-read when "
        "it changes, so tokens rotate without a restart. Empty: no token needed.",
    )
    tls_cert_path: str = Field(
        "", description="PEM certificate chain of the gRPC server; with tls_key_path: TLS."
    )
    tls_key_path: str = Field("", description="PEM private key of tls_cert_path.")
    tls_client_ca_path: str = Field(
        "",
        description="PEM CA bundle: when set, callers must present a client certificate it "
        "signed (mutual TLS).",
    )
    tls_allowed_client_names: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="With mutual TLS: the client certificate subject CNs / DNS SANs allowed, "
        "comma-separated (others get PERMISSION_DENIED); empty: any certificate the CA signed.",
    )
    max_src_resolution_mp: float = Field(
        50.0,
        gt=0,
        description="Largest source in megapixels (width x height of the decoded frame).",
    )
    max_pipelines: int = Field(10, ge=1, description="Most chained pipelines in one request.")
    max_operations: int = Field(32, ge=1, description="Most operations in one pipeline.")
    max_result_dimension: int = Field(
        16384, ge=1, description="Largest width or height of the result."
    )
    max_result_mp: float = Field(
        50.0,
        gt=0,
        description="Largest image, in megapixels, any step may produce (result included).",
    )
    max_request_work_s: float = Field(
        10.0,
        gt=0,
        description="Most CPU-seconds a request may plan (estimated before decoding).",
    )
    max_request_memory_mb: int | None = Field(
        None,
        ge=64,
        description=(
            "Most memory a request may plan to hold at once (estimated before decoding); "
            "unset: the container's memory limit, less a reserve, over the workers (1024 "
            "without a limit)."
        ),
    )
    default_deadline_s: float = Field(
        30.0, gt=0, description="Deadline applied when the caller sets none."
    )
    grace_period_s: float = Field(
        10.0, ge=0, description="On SIGTERM, time in-flight RPCs get before the server stops."
    )
    drain_s: float = Field(
        5.0,
        ge=0,
        description="On SIGTERM, time health says NOT_SERVING while new RPCs are still served.",
    )
    auto_rotate: bool = Field(True, description="Apply the EXIF orientation at load time.")
    # NoDecode: the env value is a comma-separated list, split by the validator below.
    source_formats: Annotated[tuple[str, ...], NoDecode] = Field(
        ("jpeg", "png", "webp", "gif", "avif", "tiff"),
        description="Source formats that may be decoded (libvips loader allowlist).",
    )
    fail_on_warning_formats: Annotated[tuple[str, ...], NoDecode] = Field(
        ("jpeg",),
        description="Source formats refused on any decoder warning, not only on errors.",
    )
    quality: int = Field(80, ge=1, le=100, description="Default output quality.")
    format_quality: dict[str, int] = Field(
        default_factory=lambda: {"avif": 65, "webp": 79},
        description='Per-format default quality, JSON, e.g. {"avif": 65}.',
    )
    avif_effort: int = Field(2, ge=0, le=9, description="AVIF encoder effort (CPU vs size).")
    webp_effort: int = Field(4, ge=0, le=6, description="WebP encoder effort (CPU vs size).")
    # --- Encoding: autoquality, best format, per-format options (README "Output encoding") ---
    autoquality_method: Literal["none", "size", "dssim", "ml"] = Field(
        "none", description="How the quality is chosen when a request names no method."
    )
    autoquality_target: float = Field(
        0.02, gt=0, description="Target: DSSIM for dssim/ml, bytes for size."
    )
    autoquality_min: int = Field(70, ge=1, le=100, description="Lowest quality autoquality tries.")
    autoquality_max: int = Field(80, ge=1, le=100, description="Highest quality autoquality tries.")
    autoquality_format_min: dict[str, int] = Field(
        default_factory=lambda: {"avif": 60},
        description='Per-format lowest quality, JSON, e.g. {"avif": 60}.',
    )
    autoquality_format_max: dict[str, int] = Field(
        default_factory=lambda: {"avif": 65},
        description='Per-format highest quality, JSON, e.g. {"avif": 65}.',
    )
    autoquality_allowed_error: float = Field(
        0.001, gt=0, le=1, description="How far the DSSIM may be from the target (1: any)."
    )
    autoquality_max_resolution_mp: float = Field(
        0.0, ge=0, description="Above this many megapixels the fixed quality is used; 0: no limit."
    )
    best_format_candidates: Annotated[tuple[str, ...], NoDecode] = Field(
        ("jpeg", "webp", "avif"),
        description="Formats IMAGE_FORMAT_BEST tries (png is added for images with alpha).",
    )
    best_format_max_resolution_mp: float = Field(
        0.0,
        ge=0,
        description="Above this many megapixels best format tries only its first candidate; 0: no limit.",
    )
    jpeg_progressive: bool = Field(False, description="Progressive JPEG.")
    jpeg_no_subsample: bool = Field(False, description="JPEG chroma at full resolution (4:4:4).")
    jpeg_trellis_quant: bool = Field(False, description="mozjpeg trellis quantisation.")
    jpeg_overshoot_deringing: bool = Field(False, description="mozjpeg overshoot deringing.")
    jpeg_optimize_scans: bool = Field(False, description="mozjpeg scan optimisation (progressive).")
    jpeg_quant_table: int = Field(0, ge=0, le=8, description="mozjpeg quantisation table 0..8.")
    png_interlaced: bool = Field(False, description="Interlaced (Adam7) PNG.")
    png_quantize: Literal["auto", "always", "never"] = Field(
        "auto",
        description="auto: quantize a PNG when the source was paletted (PNG or GIF), to its "
        "palette size; always; never.",
    )
    png_quantization_colors: int = Field(
        256, ge=2, le=256, description="Palette size when quantizing without a source palette."
    )
    webp_compression: Literal["lossy", "near_lossless", "lossless"] = Field(
        "lossy", description="WebP compression."
    )
    webp_smart_subsample: bool = Field(False, description="WebP sharp (smart) chroma subsampling.")
    avif_subsample: Literal["auto", "on", "off"] = Field(
        "auto", description="AVIF chroma subsampling: auto (4:4:4 from quality 90), on, off."
    )
    triton_url: str = Field("127.0.0.1:8001", description="Triton sidecar gRPC address.")
    triton_timeout_s: float = Field(
        0.5, gt=0, description="Client timeout of one Triton inference; then the op degrades."
    )
    triton_retry_after_s: float = Field(
        2.0,
        ge=0,
        description="After Triton fails, skip it (degrade at once) this long before probing again.",
    )
    autoquality_ml_model: str = Field(
        "autoquality",
        description="Triton model of the ML autoquality method; empty: no model (ML then "
        "searches by DSSIM, reported as AUTOQUALITY_ML_UNAVAILABLE).",
    )
    segmentation_model: str = Field(
        "selfie_segmentation",
        description="Triton model of person segmentation (blur_background, draw_segmentation, "
        "DescribeImage segment, region-aware autoquality); empty: no segmentation (reported as "
        "SEGMENTATION_UNAVAILABLE).",
    )
    detection_score_threshold: float = Field(0.5, ge=0, le=1, description="Min face score.")
    detection_nms_threshold: float = Field(0.3, ge=0, le=1, description="Weighted-NMS IoU.")
    # NoDecode: a comma-separated list of Triton model names, split by the validator below.
    detection_models: Annotated[tuple[str, ...], NoDecode] = Field(
        ("blazeface_short_range", "blazeface_full_range", "pose_detection", "palm_detection_full"),
        description="Shipped detection models that may run (Triton model names); the requested "
        "classes pick among them (see Detection models and classes).",
    )

    @field_validator("detection_models", mode="before")
    @classmethod
    def _split_detection_models(cls, value: object) -> object:
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
        if isinstance(value, list | tuple):
            value = tuple(str(v).strip() for v in value if str(v).strip())
        return value

    detection_max_side: int = Field(
        512, ge=64, description="Long side of the downscaled copy sent to the detector."
    )
    detection_min_side: int = Field(
        288,
        ge=32,
        description="For a thumbnail placed by its detections (an output too small to show the "
        "tiled pass's faces) of a source at least 2048 px long, the detector's input may be as "
        "short as this when that lets the decoder shrink more: one cheaper decode, shared with "
        "the thumbnail's. Equal to IMAGESVC_DETECTION_MAX_SIDE: never (see Detections).",
    )
    detection_tiled_pass: bool = Field(
        True,
        description="Small faces: when the first pass found no face 40 px or taller at the "
        "detector's input, run BlazeFace full range again on 12 overlapping tiles of a 2048 px "
        "copy (a source at least 1.5x that input, when the face hints say so) or on 4 tiles of "
        "the input itself (a smaller source, input >= 384 px) (see Detections); false: never.",
    )
    detection_min_output_face_px: float = Field(
        16.0,
        ge=0,
        description="When a request only places its first step's crop by the detections "
        "(object gravity) and draws it so small that faces the tiled pass finds would come out "
        "shorter than this, skip the face hints and the tiled pass; 0: never skip.",
    )
    detection_cache_entries: int = Field(
        1024,
        ge=0,
        description="Detections kept in memory (LRU by source bytes, classes and detector "
        "configuration), so the same bytes go to Triton once; 0 disables the cache.",
    )
    object_gravity_mode: Literal["max_score_area", "one_best", "one_best_centermost"] = Field(
        "max_score_area",
        description="What object gravity and crop_objects keep when a request names no mode "
        "(imgproxy Pro IMGPROXY_OBJECT_DETECTION_GRAVITY_MODE; see Object gravity).",
    )
    object_detection_fallback_to_smart_crop: bool = Field(
        True,
        description="Object gravity that finds no object crops like smart gravity; false: centre.",
    )
    # Bring your own YOLO model (imgproxy Pro's IMGPROXY_OBJECT_DETECTION_*): checked at start-up
    # by inference.yolo.model_from_settings against the classes file and the model's config.
    object_detection_model: str = Field(
        "",
        description="Triton model name of a YOLO model in model_repository/ (installed with "
        "python -m inference.install_yolo); empty: none.",
    )
    object_detection_net_type: str = Field(
        "yolox",
        description="Output layout of the YOLO model: yolox, yolov5, yolov6, yolov7, yolov8, "
        "yolov9, yolov10 or yolov11.",
    )
    object_detection_classes: str = Field(
        "",
        description="Classes file of the YOLO model (one name per line, optional =weight); "
        "empty: model_repository/<model>/classes.txt.",
    )
    object_detection_net_size: int = Field(
        416, ge=32, description="Square input size of the YOLO model (a multiple of 32)."
    )
    object_detection_confidence_threshold: float = Field(
        0.2, ge=0, le=1, description="Min score of a YOLO detection."
    )
    object_detection_nms_threshold: float = Field(
        0.4, ge=0, le=1, description="IoU above which YOLO boxes of one class are suppressed."
    )
    object_detection_swap_rb: bool = Field(
        False, description="Feed the YOLO model BGR instead of RGB (BGR-trained models)."
    )
    health_poll_s: float = Field(
        5.0, gt=0, description="How often Triton readiness is polled for health and metrics."
    )
    malloc_arena_max: int = Field(
        1,
        ge=0,
        description="Most glibc malloc arenas, set at start (mallopt M_ARENA_MAX; see Memory); "
        "0: glibc's default (8 per CPU). MALLOC_ARENA_MAX, when set, wins.",
    )
    malloc_tuning: bool = Field(
        True,
        description="Keep freed large blocks in glibc malloc for the next request (see Memory).",
    )
    free_memory_interval_s: float = Field(
        10.0, ge=0, description="How often unused malloc memory goes back to the OS; 0: never."
    )
    log_level: str = Field("info", description="debug, info, warning or error.")
    log_format: str = Field("console", description="console or json.")
    dogstatsd_enabled: bool = Field(
        False, description="Also send metrics to DogStatsD (DD_AGENT_HOST, DD_DOGSTATSD_PORT)."
    )
    dogstatsd_namespace: str = Field("imagesvc", description="Prefix of DogStatsD metric names.")

    @field_validator("source_formats", "fail_on_warning_formats", mode="before")
    @classmethod
    def _split_formats(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):  # NoDecode: a JSON list is ours to decode
                value = json.loads(value)
            else:
                value = value.split(",")
            return tuple(str(part).strip().lower() for part in value if str(part).strip())
        return value

    @field_validator("source_formats", "fail_on_warning_formats")
    @classmethod
    def _known_source_formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(SOURCE_FORMAT_LOADERS))
        if unknown:
            raise ValueError(
                f"unknown source formats {unknown}; known: {sorted(SOURCE_FORMAT_LOADERS)}"
            )
        return value

    @field_validator("skip_processing_formats", mode="before")
    @classmethod
    def _split_skip_formats(cls, value: object) -> object:
        return cls._split_formats(value)

    @field_validator("skip_processing_formats")
    @classmethod
    def _known_skip_formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(FORMAT_NAMES))
        if unknown:
            raise ValueError(f"unknown formats {unknown}; known: {FORMAT_NAMES}")
        return value

    @field_validator("source_ca_path")
    @classmethod
    def _loadable_ca_bundle(cls, value: str) -> str:
        if value:
            try:
                ssl.create_default_context().load_verify_locations(cafile=value)
            except (OSError, ssl.SSLError) as error:
                raise ValueError(f"cannot load the CA bundle {value}: {error}") from None
        return value

    @field_validator("fallback_image_http_code")
    @classmethod
    def _http_code(cls, value: int) -> int:
        if value != 0 and not 100 <= value <= 599:
            raise ValueError("fallback_image_http_code must be 0 or an HTTP status, 100..599")
        return value

    @field_validator("allowed_sources", "tls_allowed_client_names", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        """A comma-separated (or JSON list) env value -> a tuple of its non-empty items."""
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("[") else value.split(",")
        if isinstance(value, list | tuple):
            value = tuple(str(v).strip() for v in value if str(v).strip())
        return value

    @field_validator("allowed_sources")
    @classmethod
    def _prefixes_with_path(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for prefix in value:
            scheme, sep, rest = prefix.partition("://")
            # Without a path, https://example.com would also let in https://example.com.evil.org/
            # and https://example.com@evil.org/.
            if scheme.lower() not in ("http", "https", "s3") or not sep or "/" not in rest:
                raise ValueError(
                    f"allowed source {prefix!r} must be an http://, https:// or s3:// prefix "
                    "with a path, e.g. https://images.example.com/ or s3://bucket/"
                )
        return value

    @field_validator("best_format_candidates", mode="before")
    @classmethod
    def _split_candidates(cls, value: object) -> object:
        return cls._split_formats(value)

    @field_validator("best_format_candidates")
    @classmethod
    def _known_candidates(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - {"jpeg", "png", "webp", "avif"})
        if unknown or not value:
            raise ValueError(
                f"best format candidates must be some of jpeg, png, webp, avif: {value}"
            )
        return value

    @field_validator("format_quality", "autoquality_format_min", "autoquality_format_max")
    @classmethod
    def _known_format_quality(cls, value: dict[str, int]) -> dict[str, int]:
        for name, quality in value.items():
            if name not in FORMAT_NAMES:
                raise ValueError(f"unknown format {name!r}; known: {FORMAT_NAMES}")
            if not 1 <= quality <= 100:
                raise ValueError(f"quality for {name} must be 1..100")
        return value

    @field_validator("log_format")
    @classmethod
    def _known_log_format(cls, value: str) -> str:
        if value not in ("console", "json"):
            raise ValueError("log_format must be console or json")
        return value

    @functools.cached_property
    def request_memory_mb(self) -> int:
        """The per-request memory budget in force (IMAGESVC_MAX_REQUEST_MEMORY_MB or derived)."""
        if self.max_request_memory_mb is not None:
            return self.max_request_memory_mb
        return request_memory_budget_mb(self.workers, container_memory_limit_mb())

    @property
    def max_src_pixels(self) -> int:
        return int(self.max_src_resolution_mp * 1_000_000)
