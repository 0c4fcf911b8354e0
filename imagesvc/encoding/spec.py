"""What the caller asked of the encoder, validated once at the edge into immutable values with
every default resolved from the settings: autoquality, max_bytes, per-format options and the
best-format candidates (README "Output encoding").

Precedence of the autoquality bounds for a format: the request's per-format range, then the
request's min/max, then the per-format setting, then IMAGESVC_AUTOQUALITY_MIN / _MAX.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imagesvc.settings import Settings
from imagesvc.v1 import image_service_pb2 as pb

LOSSY_FORMATS = ("jpeg", "webp", "avif")
# Formats autoquality and max_bytes act on: quality means nothing to png (lossless), gif, tiff.
QUALITY_FORMATS = LOSSY_FORMATS
BEST_CANDIDATE_FORMATS = ("jpeg", "png", "webp", "avif")

METHOD_BY_ENUM = {
    pb.AUTOQUALITY_METHOD_NONE: "none",
    pb.AUTOQUALITY_METHOD_SIZE: "size",
    pb.AUTOQUALITY_METHOD_DSSIM: "dssim",
    pb.AUTOQUALITY_METHOD_ML: "ml",
}
ENUM_BY_METHOD = {name: number for number, name in METHOD_BY_ENUM.items()}
PNG_QUANTIZE_BY_ENUM = {
    pb.PNG_QUANTIZE_AUTO: "auto",
    pb.PNG_QUANTIZE_ALWAYS: "always",
    pb.PNG_QUANTIZE_NEVER: "never",
}
WEBP_COMPRESSION_BY_ENUM = {
    pb.WEBP_COMPRESSION_LOSSY: "lossy",
    pb.WEBP_COMPRESSION_NEAR_LOSSLESS: "near_lossless",
    pb.WEBP_COMPRESSION_LOSSLESS: "lossless",
}
AVIF_SUBSAMPLE_BY_ENUM = {
    pb.AVIF_SUBSAMPLE_AUTO: "auto",
    pb.AVIF_SUBSAMPLE_ON: "on",
    pb.AVIF_SUBSAMPLE_OFF: "off",
}


@dataclass(frozen=True, slots=True)
class AutoqualitySpec:
    method: str = "none"  # none | size | dssim | ml
    target: float = 0.02  # DSSIM for dssim/ml, bytes for size
    allowed_error: float = 0.001
    # Per format (jpeg, webp, avif): the inclusive quality range the search may use.
    ranges: tuple[tuple[str, int, int], ...] = ()
    max_resolution_mp: float = 0.0  # above it: the fixed quality; 0: no limit

    def bounds(self, fmt: str) -> tuple[int, int]:
        for name, low, high in self.ranges:
            if name == fmt:
                return low, high
        raise KeyError(fmt)


@dataclass(frozen=True, slots=True)
class JpegSpec:
    progressive: bool = False
    no_subsample: bool = False
    trellis_quant: bool = False
    overshoot_deringing: bool = False
    optimize_scans: bool = False
    quant_table: int = 0


@dataclass(frozen=True, slots=True)
class PngSpec:
    interlaced: bool = False
    quantize: str = "auto"  # auto | always | never
    colors: int = 0  # 0: the source's palette size (auto) or the setting


@dataclass(frozen=True, slots=True)
class WebpSpec:
    compression: str = "lossy"  # lossy | near_lossless | lossless
    smart_subsample: bool = False


@dataclass(frozen=True, slots=True)
class AvifSpec:
    subsample: str = "auto"  # auto | on | off
    effort: int = 2


@dataclass(frozen=True, slots=True)
class EncodingSpec:
    autoquality: AutoqualitySpec = field(default_factory=AutoqualitySpec)
    max_bytes: int = 0  # 0: no limit
    jpeg: JpegSpec = field(default_factory=JpegSpec)
    png: PngSpec = field(default_factory=PngSpec)
    webp: WebpSpec = field(default_factory=WebpSpec)
    avif: AvifSpec = field(default_factory=AvifSpec)
    best_candidates: tuple[str, ...] = ("jpeg", "webp", "avif")
    png_colors_default: int = 256  # IMAGESVC_PNG_QUANTIZATION_COLORS
    webp_effort: int = 4

    @classmethod
    def from_settings(cls, settings: Settings) -> EncodingSpec:
        """The spec of a request that sets no encoding field."""
        return parse_encoding(pb.OutputOptions(), settings, _NoViolations())


class _NoViolations:
    def add(self, path: str, message: str) -> None:  # pragma: no cover - defaults are valid
        raise ValueError(f"{path}: {message}")


def _opt(msg, name: str, default):
    return getattr(msg, name) if msg.HasField(name) else default


def _quality(value: int, path: str, violations) -> int | None:
    if value == 0:
        return None
    if not 1 <= value <= 100:
        violations.add(path, "must be within [1, 100]")
        return None
    return value


def parse_encoding(msg: pb.OutputOptions, settings: Settings, violations) -> EncodingSpec:
    """Validate the encoding fields of ``OutputOptions``; ``violations.add(path, message)``
    collects every problem (paths start with ``output.``)."""
    from imagesvc.options import FORMAT_BY_ENUM  # options imports this module

    aq = msg.autoquality
    # A quality the request names wins over the settings' method (not over its own).
    method = "none" if msg.quality or msg.format_quality else settings.autoquality_method
    if aq.method != pb.AUTOQUALITY_METHOD_UNSPECIFIED:
        if aq.method in METHOD_BY_ENUM:
            method = METHOD_BY_ENUM[aq.method]
        else:
            violations.add("output.autoquality.method", f"unknown method {aq.method}")
    target = aq.target if aq.target else settings.autoquality_target
    if aq.target and not (aq.target > 0 and aq.target < float("inf")):
        violations.add("output.autoquality.target", "must be a finite number > 0")
    elif method == "size" and aq.target and aq.target < 1:
        violations.add("output.autoquality.target", "for SIZE, a number of bytes >= 1")
    elif method in ("dssim", "ml") and aq.target and aq.target > 1:
        violations.add("output.autoquality.target", "for DSSIM and ML, within (0, 1]")
    if method == "size" and not aq.target:
        # The setting's default (0.02) is a DSSIM; SIZE needs bytes from the request.
        if settings.autoquality_target < 1:
            violations.add(
                "output.autoquality.target", "SIZE needs a target in bytes (the setting is a DSSIM)"
            )
    allowed = aq.allowed_error if aq.HasField("allowed_error") else None
    if allowed is not None and not 0 < allowed <= 1:
        violations.add("output.autoquality.allowed_error", "must be within (0, 1]")
    allowed_error = allowed if allowed is not None and 0 < allowed <= 1 else None

    req_min = _quality(aq.min_quality, "output.autoquality.min_quality", violations)
    req_max = _quality(aq.max_quality, "output.autoquality.max_quality", violations)
    per_format: dict[str, tuple[int | None, int | None]] = {}
    for index, item in enumerate(aq.format_ranges):
        path = f"output.autoquality.format_ranges[{index}]"
        name = FORMAT_BY_ENUM.get(item.format)
        if name not in QUALITY_FORMATS:
            violations.add(f"{path}.format", "one of jpeg, webp, avif")
            continue
        per_format[name] = (
            _quality(item.min_quality, f"{path}.min_quality", violations),
            _quality(item.max_quality, f"{path}.max_quality", violations),
        )
    ranges = []
    for fmt in QUALITY_FORMATS:
        fmt_min, fmt_max = per_format.get(fmt, (None, None))
        low = fmt_min or req_min or settings.autoquality_format_min.get(fmt)
        high = fmt_max or req_max or settings.autoquality_format_max.get(fmt)
        low = low or settings.autoquality_min
        high = high or settings.autoquality_max
        if low > high:
            where = "output.autoquality" if (req_min or req_max or fmt in per_format) else None
            if where:
                violations.add(where, f"{fmt}: min quality {low} is above max quality {high}")
            low = high
        ranges.append((fmt, low, high))
    autoquality = AutoqualitySpec(
        method,
        float(target),
        allowed_error if allowed_error is not None else settings.autoquality_allowed_error,
        tuple(ranges),
        settings.autoquality_max_resolution_mp,
    )

    jpeg = msg.jpeg
    quant_table = _opt(jpeg, "quant_table", settings.jpeg_quant_table)
    if not 0 <= quant_table <= 8:
        violations.add("output.jpeg.quant_table", "must be within [0, 8]")
    jpeg_spec = JpegSpec(
        _opt(jpeg, "progressive", settings.jpeg_progressive),
        _opt(jpeg, "no_subsample", settings.jpeg_no_subsample),
        _opt(jpeg, "trellis_quant", settings.jpeg_trellis_quant),
        _opt(jpeg, "overshoot_deringing", settings.jpeg_overshoot_deringing),
        _opt(jpeg, "optimize_scans", settings.jpeg_optimize_scans),
        min(max(quant_table, 0), 8),
    )

    png = msg.png
    quantize = settings.png_quantize
    if png.quantize != pb.PNG_QUANTIZE_UNSPECIFIED:
        if png.quantize in PNG_QUANTIZE_BY_ENUM:
            quantize = PNG_QUANTIZE_BY_ENUM[png.quantize]
        else:
            violations.add("output.png.quantize", f"unknown PngQuantize {png.quantize}")
    if png.colors and not 2 <= png.colors <= 256:
        violations.add("output.png.colors", "must be within [2, 256]")
    png_spec = PngSpec(
        _opt(png, "interlaced", settings.png_interlaced),
        quantize,
        png.colors if 2 <= png.colors <= 256 else 0,
    )

    webp = msg.webp
    compression = settings.webp_compression
    if webp.compression != pb.WEBP_COMPRESSION_UNSPECIFIED:
        if webp.compression in WEBP_COMPRESSION_BY_ENUM:
            compression = WEBP_COMPRESSION_BY_ENUM[webp.compression]
        else:
            violations.add("output.webp.compression", f"unknown WebpCompression {webp.compression}")
    webp_spec = WebpSpec(compression, _opt(webp, "smart_subsample", settings.webp_smart_subsample))

    avif = msg.avif
    subsample = settings.avif_subsample
    if avif.subsample != pb.AVIF_SUBSAMPLE_UNSPECIFIED:
        if avif.subsample in AVIF_SUBSAMPLE_BY_ENUM:
            subsample = AVIF_SUBSAMPLE_BY_ENUM[avif.subsample]
        else:
            violations.add("output.avif.subsample", f"unknown AvifSubsample {avif.subsample}")
    effort = _opt(avif, "effort", settings.avif_effort)
    if not 0 <= effort <= 9:
        violations.add("output.avif.effort", "must be within [0, 9]")
    avif_spec = AvifSpec(subsample, min(max(effort, 0), 9))

    candidates: list[str] = []
    for index, value in enumerate(msg.best_format_candidates):
        name = FORMAT_BY_ENUM.get(value)
        if name not in BEST_CANDIDATE_FORMATS:
            violations.add(
                f"output.best_format_candidates[{index}]", "one of jpeg, png, webp, avif"
            )
        elif name not in candidates:
            candidates.append(name)

    return EncodingSpec(
        autoquality,
        msg.max_bytes,
        jpeg_spec,
        png_spec,
        webp_spec,
        avif_spec,
        tuple(candidates) or settings.best_format_candidates,
        settings.png_quantization_colors,
        settings.webp_effort,
    )
