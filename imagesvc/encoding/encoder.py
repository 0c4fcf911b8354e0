"""The encoder facade: format, quality (fixed or autoquality), max_bytes, per-format options,
PNG auto-quantization and best format, for one result image (README "Output encoding").

``encode_output`` is what ``engine.encode`` does, plus everything the encoding spec asks. With a
fixed quality, no max_bytes and one format it is one save, streamed from the image the engine
watches, as before. Anything needing more than one encode first copies the prepared image to
memory (that copy reads through the watched image, so the deadline kills it; pass ``watch`` to
have the engine watch the copy too) and calls ``kill_check`` between trial encodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pyvips

from imagesvc.encoding import best_format
from imagesvc.encoding import sample
from imagesvc.encoding.ml import (
    AUTOQUALITY_ML_UNAVAILABLE,
    PredictionUnavailable,
    QualityPrediction,
    QualityPredictor,
)
from imagesvc.encoding import regions as region_aware
from imagesvc.encoding.regions import RegionMeasure, RegionWeights
from imagesvc.encoding.search import (
    DSSIM_AIM,
    first_trial_for_one_encode,
    fit_max_bytes,
    search_quality,
)
from imagesvc.encoding.savers import (
    WRITABLE_FORMATS,
    SaveParams,
    png_palette_size,
    prepare,
    quality_step,
    save,
    source_palette,
)
from imagesvc.encoding.spec import ENUM_BY_METHOD, QUALITY_FORMATS, EncodingSpec
from imagesvc.options import ENUM_BY_FORMAT, OutputSpec
from imagesvc.settings import Settings
from imagesvc.v1 import image_service_pb2 as pb

__all__ = [
    "AUTOQUALITY_ML_UNAVAILABLE",
    "AUTOQUALITY_SKIPPED",
    "CandidateResult",
    "EncodeResult",
    "EncodingReportValues",
    "encode_output",
    "output_format",
    "source_palette",
]

AUTOQUALITY_SKIPPED = "AUTOQUALITY_SKIPPED"
BEST = "best"
# AVIF trial encodes run at this effort; the returned file is encoded once more at the
# requested effort (libaom's effort costs CPU much faster than it saves bytes).
AVIF_SEARCH_EFFORT = 0
# For the SIZE method: a file within 5 % under the target ends the search (search_quality's
# allowed_error is a fraction of the target for sizes; the request's is a DSSIM).
SIZE_ALLOWED_ERROR = 0.05
LOSSLESS_FORMATS = ("tiff",)  # always lossless (png unless quantized; webp/avif when asked)

# allowed_error at or above this trusts the ML prediction: one encode, no DSSIM measured
# (imgproxy Pro's "allowed error 1").
TRUST_PREDICTION_ERROR = 1.0


@dataclass(frozen=True, slots=True)
class CandidateResult:
    format: str
    size_bytes: int
    quality: int  # 0 when lossless
    lossless: bool
    near_lossless: bool = False
    palette_colors: int = 0
    predicted_quality: int = 0


@dataclass(frozen=True, slots=True)
class EncodingReportValues:
    """What the encoder decided (proto ``EncodingReport``; ``to_proto``)."""

    quality: int = 0  # of the returned file; 0 when lossless
    method: str = "none"  # none | size | dssim | ml: what chose the quality
    encodes: int = 1  # saves made for this result (every candidate's), the returned one included
    achieved_dssim: float = 0.0  # DSSIM of the returned file (dssim and ml methods), else 0
    target_met: bool = True  # autoquality's target and max_bytes; True when there was none
    lossless: bool = False
    palette_colors: int = 0  # entries of the PNG / GIF palette written, 0 otherwise
    candidates: tuple[CandidateResult, ...] = ()  # best format: every candidate, smallest first
    near_lossless: bool = False
    predicted_quality: int = 0  # ML: the model's first guess for the returned format, else 0
    model_version: str = ""  # ML: the quality model that predicted it, else ""
    # Region-aware autoquality: (region, DSSIM) for person, skin, clothes, background.
    region_dssim: tuple[tuple[str, float], ...] = ()

    def to_proto(self) -> pb.EncodingReport:
        return pb.EncodingReport(
            quality=self.quality,
            method=ENUM_BY_METHOD.get(self.method, pb.AUTOQUALITY_METHOD_NONE),
            encodes=self.encodes,
            achieved_dssim=self.achieved_dssim,
            target_met=self.target_met,
            lossless=self.lossless,
            palette_colors=self.palette_colors,
            predicted_quality=self.predicted_quality,
            model_version=self.model_version,
            region_dssim=[pb.RegionDssim(region=r, dssim=d) for r, d in self.region_dssim],
            candidates=[
                pb.FormatCandidate(
                    format=ENUM_BY_FORMAT[c.format],
                    size_bytes=c.size_bytes,
                    quality=c.quality,
                    lossless=c.lossless,
                    predicted_quality=c.predicted_quality,
                )
                for c in self.candidates
            ],
        )


@dataclass(frozen=True, slots=True)
class EncodeResult:
    data: bytes
    format: str
    report: EncodingReportValues
    # (reason, message): AUTOQUALITY_ML_UNAVAILABLE, AUTOQUALITY_SKIPPED
    degradations: list[tuple[str, str]] = field(default_factory=list)


def output_format(output: OutputSpec, source_format: str) -> str:
    """The requested format ("best" included), else the source's when it can be written, else
    JPEG (as ``engine.output_format``)."""
    return output.format or (source_format if source_format in WRITABLE_FORMATS else "jpeg")


def fixed_quality(output: OutputSpec, fmt: str, settings: Settings) -> int:
    """The request's quality, its per-format quality, then the settings' (as before)."""
    return (
        output.quality
        or output.format_quality.get(fmt)
        or settings.format_quality.get(fmt)
        or settings.quality
    )


def png_palette_colors(spec: EncodingSpec, source_colors: int | None) -> int | None:
    """The palette size a PNG output is quantized to, or None for full colour: AUTO quantizes
    when the source was paletted (to the request's ``colors``, else the source's palette size),
    ALWAYS to ``colors`` or IMAGESVC_PNG_QUANTIZATION_COLORS, NEVER never."""
    png = spec.png
    if png.quantize == "never":
        return None
    if png.quantize == "always":
        return png.colors or spec.png_colors_default
    if source_colors:
        return png.colors or source_colors
    return None


def gif_palette_size(data: bytes) -> int:
    """Entries of a GIF's global colour table (0 without one)."""
    if len(data) < 13 or data[:3] != b"GIF":
        return 0
    flags = data[10]
    return 1 << ((flags & 7) + 1) if flags & 0x80 else 0


# --- the facade ---------------------------------------------------------------------------


def encode_output(
    image: pyvips.Image,
    output: OutputSpec,
    source_format: str,
    source_palette: int | None,
    settings: Settings,
    *,
    kill_check: Callable[[], None] | None = None,
    history=None,
    watch: Callable[[pyvips.Image], pyvips.Image] | None = None,
    predictor: QualityPredictor | None = None,
    regions: RegionWeights | None = None,
) -> EncodeResult:
    """Encode the result image as ``output`` asks.

    ``source_palette``: ``source_palette(header image, source format)``, for PNG
    auto-quantization. ``kill_check`` (the engine's deadline check) runs between trial encodes.
    ``history``: a ``search.GuessHistory`` (its prior for the format, size bucket and method
    seeds each search, which it then learns from) or a ``search.QualityCurve`` used as the
    prior as it is; None: no prior. ``watch`` names the in-memory
    copy trial encodes read from (the engine's ``StepContext.watch``), so a deadline kills a
    running trial encode too. ``predictor``: the ML method's curves (None, or a predictor that
    cannot answer: ML falls back to DSSIM, degraded). ``regions``: the regions at ``image``'s
    size, when ``output.regions`` asks for region-aware autoquality and segmentation ran (None:
    plain autoquality; the engine reports why).
    """
    spec = output.encoding or EncodingSpec.from_settings(settings)
    job = _Job(output, spec, settings, source_palette, kill_check, history, watch, predictor)
    if output.regions is not None and regions is not None:
        job.regions = regions
    fmt = output_format(output, source_format)
    if fmt == BEST:
        return job.best(image)
    return job.single(image, fmt)


@dataclass
class _Outcome:
    data: bytes
    params: SaveParams
    method: str = "none"
    dssim: float = 0.0
    target_met: bool = True
    predicted_quality: int = 0
    regions: tuple[tuple[str, float], ...] = ()  # region-aware: DSSIM by region


class _Job:
    def __init__(
        self,
        output: OutputSpec,
        spec: EncodingSpec,
        settings: Settings,
        source_colors: int | None,
        kill_check: Callable[[], None] | None,
        history,
        watch: Callable[[pyvips.Image], pyvips.Image] | None,
        predictor: QualityPredictor | None,
    ) -> None:
        self.output = output
        self.spec = spec
        self.settings = settings
        self.source_colors = source_colors
        self.kill_check = kill_check or (lambda: None)
        self.history = history
        self.watch = watch or (lambda image: image)
        self.predictor = predictor
        self._prediction: QualityPrediction | None = None
        self.model_version = ""
        self.encodes = 0
        self.degradations: list[tuple[str, str]] = []
        self._references: dict[bool, object] = {}
        self._method: str | None = None
        self.regions: RegionWeights | None = None  # set by encode_output when they apply
        self._region_measure: RegionMeasure | None = None

    # --- what to do ---------------------------------------------------------------------

    def params(self, fmt: str, **changes) -> SaveParams:
        """The save parameters of ``fmt`` at its fixed quality, with the request's options."""
        spec = self.spec
        base = SaveParams(fmt, fixed_quality(self.output, fmt, self.settings))
        if fmt == "jpeg":
            base = replace(base, spec=spec.jpeg)
        elif fmt == "png":
            base = replace(
                base, spec=spec.png, palette_colors=png_palette_colors(spec, self.source_colors)
            )
        elif fmt == "webp":
            mode = spec.webp.compression
            base = replace(
                base,
                spec=spec.webp,
                effort=spec.webp_effort,
                lossless=mode == "lossless",
                near_lossless=mode == "near_lossless",
            )
        elif fmt == "avif":
            base = replace(base, spec=spec.avif, effort=spec.avif.effort)
        return replace(base, **changes)

    def method(self, image: pyvips.Image) -> str:
        """The autoquality method that applies to this image (degradations noted once)."""
        if self._method is not None:
            return self._method
        aq = self.spec.autoquality
        method = aq.method
        if method != "none" and aq.max_resolution_mp > 0:
            megapixels = image.width * image.height / 1e6
            if megapixels > aq.max_resolution_mp:
                self.degradations.append(
                    (
                        AUTOQUALITY_SKIPPED,
                        f"autoquality skipped: the image is {megapixels:.1f} MP, over the "
                        f"{aq.max_resolution_mp:g} MP limit; the fixed quality was used",
                    )
                )
                method = "none"
        if method == "ml" and self.predictor is None:
            self.degradations.append(
                (
                    AUTOQUALITY_ML_UNAVAILABLE,
                    "the ML quality predictor is unavailable; the quality was searched by DSSIM",
                )
            )
            method = "dssim"
        self._method = method
        return method

    def searches(self, params: SaveParams, method: str) -> bool:
        """Whether this encode needs more than one save."""
        lossy = params.format in QUALITY_FORMATS and not params.lossless
        if not lossy:
            return False
        if params.near_lossless:
            return bool(self.spec.max_bytes)
        return method != "none" or bool(self.spec.max_bytes)

    # --- one format ---------------------------------------------------------------------

    def single(self, image: pyvips.Image, fmt: str) -> EncodeResult:
        params = self.params(fmt)
        method = self.method(image) if _quality_chosen(params) else "none"
        prepared, keep = prepare(image, fmt, self.output.keep_icc, self.output.strip_metadata)
        if self.regions is not None:
            filtered = self.with_regions(prepared)
            if filtered is not None:
                return self.single_regions(filtered, params, keep, method)
        if not self.searches(params, method):
            data = self.save(prepared, params, keep)
            outcome = _Outcome(data, params)
            if self.spec.max_bytes:  # not lowered for lossless formats, but reported
                outcome.target_met = len(data) <= self.spec.max_bytes
            return self.result(outcome, ())
        prepared = self.in_memory(prepared)
        outcome = self.encode_searched(prepared, params, keep, method)
        return self.result(outcome, ())

    # --- region-aware autoquality (imagesvc.encoding.regions) ---------------------------

    def with_regions(self, prepared: pyvips.Image) -> pyvips.Image | None:
        """The encoder input with its background pre-filtered, in memory, the region measure
        set for the lossy searches; None when regions do not apply (the autoquality method is
        not DSSIM or ML for this image, or no person is in it): plain autoquality."""
        regions = self.regions
        spec = self.output.regions
        aq = self.spec.autoquality
        if regions is None or spec is None or aq.method not in ("dssim", "ml"):
            return None
        megapixels = prepared.width * prepared.height / 1e6
        if aq.max_resolution_mp > 0 and megapixels > aq.max_resolution_mp:
            return None  # autoquality is skipped (reported by the search path)
        if regions.person.shape != (prepared.height, prepared.width):
            raise ValueError(
                f"region masks are {regions.person.shape}, the image "
                f"{prepared.height}x{prepared.width}"
            )
        if not region_aware.has_person(regions):
            return None
        plan = region_aware.plan(spec, aq.target, aq.allowed_error, prepared.width, prepared.height)
        original = self.in_memory(prepared)
        self.kill_check()
        filtered = self.in_memory(region_aware.prefiltered(original, regions, plan))
        # The DSSIM references are built at the first measure (lossless encodes need none).
        self._region_measure = RegionMeasure(
            original, filtered, regions, plan, check=self.kill_check
        )
        return filtered

    def single_regions(
        self, filtered: pyvips.Image, params: SaveParams, keep: str, method: str
    ) -> EncodeResult:
        """One format, regions applied: lossy formats search on the region measure, the
        others encode the pre-filtered input."""
        if not self.searches(params, method):
            data = self.save(filtered, params, keep)
            outcome = _Outcome(data, params)
            if self.spec.max_bytes:
                outcome.target_met = len(data) <= self.spec.max_bytes
            return self.result(outcome, ())
        outcome = self.region_outcome(self.encode_searched(filtered, params, keep, method))
        return self.result(outcome, ())

    def region_outcome(self, outcome: _Outcome) -> _Outcome:
        """A searched outcome with its region report (person's DSSIM as achieved_dssim; the
        target met when the person's and the background's are, and max_bytes)."""
        measure = self._region_measure
        if measure is None or outcome.method not in ("dssim", "ml"):
            return outcome
        values = measure.regions(outcome.data)
        max_bytes = self.spec.max_bytes
        met = measure.meets(values) and not (max_bytes and len(outcome.data) > max_bytes)
        return _Outcome(
            outcome.data,
            outcome.params,
            outcome.method,
            values.get("person", 0.0),
            met,
            outcome.predicted_quality,
            tuple(values.items()),
        )

    def dssim_measure(self, prepared: pyvips.Image):
        """What DSSIM searches measure: the region measure when regions apply, else the
        whole image's DSSIM."""
        if self._region_measure is not None:
            return self._region_measure
        return self.reference(prepared)

    def in_memory(self, image: pyvips.Image) -> pyvips.Image:
        """The image computed once into memory (several encodes read it)."""
        return self.watch(image.copy_memory())

    def save(self, image: pyvips.Image, params: SaveParams, keep: str) -> bytes:
        self.kill_check()
        self.encodes += 1
        return save(image, params, keep)

    def reference(self, prepared: pyvips.Image):
        from imagesvc.encoding.dssim import DssimReference

        key = bool(prepared.hasalpha())
        if key not in self._references:
            self._references[key] = DssimReference(prepared, check=self.kill_check)
        return self._references[key]

    def encode_searched(
        self, prepared: pyvips.Image, params: SaveParams, keep: str, method: str
    ) -> _Outcome:
        """A lossy format's encode at the quality ``method`` picks, then within max_bytes.
        AVIF's trial encodes run at ``AVIF_SEARCH_EFFORT``; the returned file is encoded once
        more at the requested effort (and kept only if it still fits max_bytes)."""
        trial = params
        if params.format == "avif" and (params.effort or 0) > AVIF_SEARCH_EFFORT:
            trial = replace(params, effort=AVIF_SEARCH_EFFORT)

        def encode(quality: int) -> bytes:
            return self.save(prepared, replace(trial, quality=quality), keep)

        def final(quality: int) -> bytes:
            return self.save(prepared, replace(params, quality=quality), keep)

        later = final if trial is not params else None
        max_bytes = self.spec.max_bytes
        if method != "none" and not params.near_lossless:
            # With max_bytes the final effort waits until the size is settled.
            outcome = self.autoquality(
                prepared, trial, keep, encode, None if max_bytes else later, method
            )
            if not max_bytes:
                later = None  # done by the search
        else:
            outcome = _Outcome(encode(trial.quality), trial)
        if max_bytes and len(outcome.data) > max_bytes:
            outcome = self.fit(prepared, outcome, encode, max_bytes)
        if later is not None:
            data = later(outcome.params.quality)
            if not (max_bytes and len(data) > max_bytes >= len(outcome.data)):
                dssim = outcome.dssim
                if outcome.method in ("dssim", "ml"):
                    dssim = self.dssim_measure(prepared).dssim_of(data)
                met = outcome.target_met and not (max_bytes and len(data) > max_bytes)
                outcome = _Outcome(
                    data, outcome.params, outcome.method, dssim, met, outcome.predicted_quality
                )
        return replace_params(outcome, effort=params.effort)

    def prediction(self, image: pyvips.Image, formats: tuple[str, ...]) -> QualityPrediction | None:
        """The ML curves of ``formats`` for ``image``, asked once per result (best format asks
        for every candidate in one call); None, with the degradation noted once, when the
        predictor cannot answer. Unless the request trusts the prediction, the DSSIM
        reference of ``image`` (which the check needs) is built while the answer is awaited."""
        if self._prediction is None and self.predictor is not None:
            meanwhile = None
            if self.spec.autoquality.allowed_error < TRUST_PREDICTION_ERROR:

                def meanwhile() -> None:
                    self.dssim_measure(image)

            try:
                self._prediction = self.predictor.predict(image, formats, meanwhile)
            except PredictionUnavailable as error:
                self.predictor = None
                self.degradations.append(
                    (
                        AUTOQUALITY_ML_UNAVAILABLE,
                        f"{error.message} ({error.reason}); the quality was searched by DSSIM",
                    )
                )
        return self._prediction

    def autoquality(
        self,
        prepared: pyvips.Image,
        params: SaveParams,
        keep: str,
        encode: Callable[[int], bytes],
        final: Callable[[int], bytes] | None,
        method: str,
    ) -> _Outcome:
        if method == "ml":
            outcome = self.autoquality_ml(prepared, params, keep, encode, final)
            if outcome is not None:
                return outcome
            method = "dssim"  # the degradation is noted
        aq = self.spec.autoquality
        low, high = aq.bounds(params.format)
        kind = "size" if method == "size" else "dssim"
        measure = len if kind == "size" else self.dssim_measure(prepared)
        allowed_error = SIZE_ALLOWED_ERROR if kind == "size" else aq.allowed_error
        options = dict(
            target=aq.target,
            low=low,
            high=high,
            allowed_error=allowed_error,
            final=final,
            quality_step=quality_step(params.format),
        )
        # The cheap estimate: a sampled mosaic of the image, encoded with the same options
        # (imagesvc.encoding.sample). Its encodes are not counted in ``encodes`` (saves of
        # the result); the search reports their cost in encodes (estimate_cost).
        # With regions the mosaic is the person's tiles and estimates the person's DSSIM (the
        # measure that binds: the background's target is looser and its input pre-filtered);
        # every full trial is still held to the whole region measure.
        region = self._region_measure
        estimator = sample.estimator(
            prepared,
            kind,
            lambda image, quality: save(image, replace(params, quality=quality), keep),
            check=self.kill_check,
            fixed_key=(replace(params, quality=0), keep),
            region=region.person_weights if region is not None else None,
        )
        if estimator is not None:
            options.update(estimate=estimator, estimate_cost=estimator.cost)
        history = self.history
        if history is not None and hasattr(history, "search"):
            key_method = "regions" if self._region_measure is not None else method
            key = history.key(params.format, prepared.width, prepared.height, key_method)
            scale = float(prepared.width * prepared.height) if kind == "size" else 1.0
            found = history.search(key, encode, measure, kind=kind, scale=scale, **options)
        else:
            found = search_quality(encode, measure, kind=kind, prior=history, **options)
        # The search counted its own encodes through self.save.
        dssim = float(found.achieved) if kind == "dssim" else 0.0
        return _Outcome(
            found.data, replace(params, quality=found.quality), method, dssim, found.target_met
        )

    def autoquality_ml(
        self,
        prepared: pyvips.Image,
        params: SaveParams,
        keep: str,
        encode: Callable[[int], bytes],
        final: Callable[[int], bytes] | None,
    ) -> _Outcome | None:
        """The ML method (README "Autoquality by ML"): the predicted curve inverted for the
        search's aim, one encode and one DSSIM to check it, corrections along the curve shifted
        through the measures (``search_quality`` with the curve as prior and the guess first).
        ``allowed_error`` >= TRUST_PREDICTION_ERROR trusts the guess: one encode (at the final
        effort), no DSSIM. None when there is no prediction for this format."""
        fmt = params.format
        prediction = self.prediction(prepared, (fmt,))
        if prediction is None:
            return None
        try:
            curve = prediction.curve(fmt)
        except PredictionUnavailable as error:
            self.degradations.append(
                (
                    AUTOQUALITY_ML_UNAVAILABLE,
                    f"{error.message} ({error.reason}); the quality was searched by DSSIM",
                )
            )
            return None
        self.model_version = prediction.version
        aq = self.spec.autoquality
        low, high = aq.bounds(fmt)
        # AVIF: every encode at the requested effort (``final``), not a trial at effort 0 and
        # the answer again: the check usually settles it in one encode, and the correction
        # shifts the curve (learnt at effort 0) through what the final effort measures.
        encode, final = (final, None) if final is not None else (encode, None)
        if aq.allowed_error >= TRUST_PREDICTION_ERROR:
            guess = prediction.quality_for(fmt, aq.target, low, high)
            data = encode(guess)
            return _Outcome(data, replace(params, quality=guess), "ml", 0.0, True, guess)
        aim = aq.target + DSSIM_AIM * aq.allowed_error
        guess = prediction.quality_for(fmt, aim, low, high)
        # Where the low end is likelier to settle the search in one encode, it goes first.
        first = first_trial_for_one_encode(
            curve, aq.target, aq.allowed_error, low, high, guess, prediction.log_error(fmt)
        )
        found = search_quality(
            encode,
            self.dssim_measure(prepared),
            kind="dssim",
            target=aq.target,
            low=low,
            high=high,
            allowed_error=aq.allowed_error,
            first_guess=first,
            prior=curve,
            quality_step=quality_step(fmt),
        )
        return _Outcome(
            found.data,
            replace(params, quality=found.quality),
            "ml",
            float(found.achieved),
            found.target_met,
            guess,
        )

    def fit(
        self,
        prepared: pyvips.Image,
        outcome: _Outcome,
        encode: Callable[[int], bytes],
        max_bytes: int,
    ) -> _Outcome:
        """max_bytes: the highest quality under ``outcome``'s whose file fits, else the
        smallest tried (target not met)."""
        params = outcome.params
        found = fit_max_bytes(encode, outcome.data, params.quality, max_bytes)
        dssim = 0.0
        if outcome.method in ("dssim", "ml"):
            dssim = self.dssim_measure(prepared).dssim_of(found.data)
        aq = self.spec.autoquality
        # The autoquality target may no longer hold at the lower quality: report both.
        if outcome.method in ("dssim", "ml"):
            met = found.target_met and dssim <= aq.target + aq.allowed_error
        else:
            met = found.target_met and outcome.target_met
        return _Outcome(
            found.data,
            replace(params, quality=found.quality),
            outcome.method,
            dssim,
            met,
            outcome.predicted_quality,
        )

    # --- best format --------------------------------------------------------------------

    def best(self, image: pyvips.Image) -> EncodeResult:
        formats = self.spec.best_candidates
        has_alpha = bool(image.hasalpha())
        limit = self.settings.best_format_max_resolution_mp
        megapixels = image.width * image.height / 1e6
        # One prepared copy in memory for every candidate (jpeg flattens it lazily).
        base, keep = prepare(image, "png", self.output.keep_icc, self.output.strip_metadata)
        base = self.in_memory(base)
        if self.regions is not None:
            # Every candidate encodes the pre-filtered input; the lossy ones search on the
            # region measure.
            base = self.with_regions(base) or base
        if limit > 0 and megapixels > limit:
            measured = None
            names = formats[:1]
        else:
            measured = best_format.complexity(base)
            names = formats
        plan = best_format.candidates(names, has_alpha, measured)
        if self.method(base) == "ml":
            # Every lossy candidate's curve in one call (the model predicts them together).
            lossy = tuple(
                c.format
                for c in plan
                if c.format in QUALITY_FORMATS and not c.lossless and not c.near_lossless
            )
            if lossy:
                self.prediction(base, lossy)
        tried = self.try_all(base, keep, plan)
        max_bytes = self.spec.max_bytes
        if max_bytes and min(len(o.data) for o in tried) > max_bytes and measured is not None:
            # The lossless family did not fit: the lossy candidates may.
            lossy = [c for c in best_format.candidates(names, has_alpha, None) if not c.lossless]
            if any(c.format in QUALITY_FORMATS for c in lossy) and measured.synthetic:
                tried += self.try_all(base, keep, lossy)
        tried.sort(key=lambda o: len(o.data))
        candidates = tuple(_candidate(o) for o in tried)
        return self.result(tried[0], candidates)

    def try_all(
        self, base: pyvips.Image, keep: str, plan: list[best_format.Candidate]
    ) -> list[_Outcome]:
        out = []
        for candidate in plan:
            fmt = candidate.format
            params = self.params(fmt)
            if fmt == "png":
                colours = candidate.palette_colors or params.palette_colors
                params = replace(params, palette_colors=colours)
            elif fmt == "webp":
                params = replace(
                    params,
                    lossless=candidate.lossless,
                    near_lossless=candidate.near_lossless,
                    quality=best_format.NEAR_LOSSLESS_LEVEL
                    if candidate.near_lossless
                    else params.quality,
                )
            prepared, _ = prepare(base, fmt, True, False)  # flatten for jpeg; profile handled
            method = self.method(base) if _quality_chosen(params) else "none"
            if self.searches(params, method):
                outcome = self.encode_searched(prepared, params, keep, method)
                out.append(self.region_outcome(outcome))
            else:
                data = self.save(prepared, params, keep)
                met = not (self.spec.max_bytes and len(data) > self.spec.max_bytes)
                out.append(_Outcome(data, params, target_met=met))
        return out

    # --- the report ---------------------------------------------------------------------

    def result(self, outcome: _Outcome, candidates: tuple[CandidateResult, ...]) -> EncodeResult:
        params = outcome.params
        lossless = _lossless(params)
        palette = 0
        if params.format == "png" and params.palette_colors:
            palette = png_palette_size(outcome.data) or 0
        elif params.format == "gif":
            palette = gif_palette_size(outcome.data)
        report = EncodingReportValues(
            quality=0 if lossless or params.format not in QUALITY_FORMATS else params.quality,
            method=outcome.method,
            encodes=self.encodes,
            achieved_dssim=outcome.dssim,
            target_met=outcome.target_met,
            lossless=lossless,
            palette_colors=palette,
            candidates=candidates,
            near_lossless=params.near_lossless and not params.lossless,
            predicted_quality=outcome.predicted_quality,
            model_version=self.model_version if outcome.method == "ml" else "",
            region_dssim=outcome.regions,
        )
        return EncodeResult(outcome.data, params.format, report, list(self.degradations))


def _quality_chosen(params: SaveParams) -> bool:
    """Whether autoquality applies: the lossy encodes of JPEG, WebP and AVIF."""
    return params.format in QUALITY_FORMATS and not params.lossless and not params.near_lossless


def replace_params(outcome: _Outcome, **changes) -> _Outcome:
    return _Outcome(
        outcome.data,
        replace(outcome.params, **changes),
        outcome.method,
        outcome.dssim,
        outcome.target_met,
        outcome.predicted_quality,
        outcome.regions,
    )


def _lossless(params: SaveParams) -> bool:
    if params.format == "png":
        return not params.palette_colors
    if params.format in LOSSLESS_FORMATS:
        return True
    return params.lossless


def _candidate(outcome: _Outcome) -> CandidateResult:
    params = outcome.params
    lossless = _lossless(params)
    palette = png_palette_size(outcome.data) or 0 if params.format == "png" else 0
    return CandidateResult(
        params.format,
        len(outcome.data),
        0 if lossless or params.format not in QUALITY_FORMATS else params.quality,
        lossless,
        params.near_lossless and not params.lossless,
        palette if params.palette_colors else 0,
        outcome.predicted_quality,
    )
