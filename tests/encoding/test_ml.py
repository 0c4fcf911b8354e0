"""The ML autoquality method in the encoder (imagesvc.encoding.ml, encoder.autoquality_ml):
predictors are fakes here whose curves come from real encodes of the test image (an exact
curve, one shifted in DSSIM, none); the Triton client is tested in tests/inference/."""

from __future__ import annotations

from dataclasses import replace

import pyvips
import pytest

from imagesvc.encoding import encoder as encoder_module
from imagesvc.encoding.dssim import DssimReference
from imagesvc.encoding.encoder import AUTOQUALITY_ML_UNAVAILABLE, encode_output
from imagesvc.encoding.ml import (
    PredictionUnavailable,
    QualityPrediction,
    TritonQualityPredictor,
)
from imagesvc.encoding.savers import SaveParams, prepare, save
from imagesvc.encoding.search import QualityCurve
from imagesvc.encoding.spec import EncodingSpec
from imagesvc.options import OutputSpec
from imagesvc.settings import Settings
from imagesvc.v1 import image_service_pb2 as pb
from tests.images import decode, from_array, textured

GRID = tuple(range(20, 96))  # every quality: an exact curve
TARGET = 0.012


def photo(width: int = 256, height: int = 192) -> pyvips.Image:
    return from_array(textured(width, height))


def measured_curve(image: pyvips.Image, fmt: str, factor: float = 1.0) -> QualityCurve:
    """The image's real DSSIM at GRID qualities (times ``factor``: a biased model)."""
    prepared, keep = prepare(image, fmt, False, True)
    prepared = prepared.copy_memory()
    reference = DssimReference(prepared)
    effort = {"webp": 4, "avif": 0}.get(fmt)
    points = []
    for q in GRID:
        data = save(prepared, SaveParams(fmt, q, effort=effort), keep)
        points.append((q, reference.dssim_of(data) * factor))
    return QualityCurve.from_points(points)


class FakePredictor:
    def __init__(self, curves=None, error: PredictionUnavailable | None = None, log_errors=None):
        self.curves = curves or {}
        self.error = error
        self.log_errors = log_errors or {}
        self.calls: list[tuple[str, ...]] = []
        self.meanwhiles: list[bool] = []  # per call: whether the caller gave work to overlap

    def predict(self, image, formats, meanwhile=None):
        self.calls.append(tuple(formats))
        self.meanwhiles.append(meanwhile is not None)
        if meanwhile is not None:
            meanwhile()
        if self.error is not None:
            raise self.error
        curves = {f: c for f, c in self.curves.items() if f in formats}
        return QualityPrediction("test-1", curves, self.log_errors)


def output(fmt: str, allowed_error: float = 0.001, **aq) -> OutputSpec:
    base = EncodingSpec.from_settings(Settings())
    spec = replace(
        base,
        autoquality=replace(
            base.autoquality,
            method="ml",
            target=TARGET,
            allowed_error=allowed_error,
            ranges=tuple((f, 20, 95) for f in ("jpeg", "webp", "avif")),
            **aq,
        ),
    )
    return OutputSpec(fmt, None, encoding=spec)


def encode(image, out, predictor):
    return encode_output(image, out, "png", None, Settings(), predictor=predictor)


def dssim_of(image: pyvips.Image, data: bytes) -> float:
    return DssimReference(image.copy_memory()).dssim_of(data)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_an_exact_curve_takes_one_encode(fmt):
    image = photo()
    predictor = FakePredictor({fmt: measured_curve(image, fmt)})
    result = encode(image, output(fmt, allowed_error=0.002), predictor)
    report = result.report
    assert report.method == "ml" and result.degradations == []
    assert report.model_version == "test-1"
    assert report.encodes == 1 and report.quality == report.predicted_quality
    assert abs(report.achieved_dssim - TARGET) <= 0.002
    assert report.achieved_dssim == pytest.approx(dssim_of(image, result.data), rel=1e-6)


def test_a_biased_curve_is_corrected_along_itself():
    image = photo()
    # The model says every quality is twice as good as it is: its guess is too low.
    predictor = FakePredictor({"jpeg": measured_curve(image, "jpeg", factor=0.5)})
    result = encode(image, output("jpeg"), predictor)
    report = result.report
    assert report.method == "ml" and report.target_met
    assert report.quality > report.predicted_quality  # corrected upwards
    assert report.encodes <= 3  # shifted through the measure, not searched from scratch
    assert dssim_of(image, result.data) <= TARGET + 0.001


def test_allowed_error_one_trusts_the_model(monkeypatch):
    image = photo()
    measured = []
    real = DssimReference.dssim_of
    monkeypatch.setattr(
        DssimReference, "dssim_of", lambda self, data: measured.append(1) or real(self, data)
    )
    curve = measured_curve(image, "webp")
    measured.clear()
    result = encode(image, output("webp", allowed_error=1.0), FakePredictor({"webp": curve}))
    report = result.report
    assert (report.method, report.encodes, report.achieved_dssim) == ("ml", 1, 0.0)
    assert report.quality == report.predicted_quality == round(curve.quality_for(TARGET))
    assert measured == []  # no DSSIM when the model is trusted
    assert decode(result.data).width == image.width


@pytest.mark.parametrize("allowed_error", [0.002, 1.0])
def test_the_dssim_reference_is_built_while_the_prediction_is_awaited(monkeypatch, allowed_error):
    image = photo()
    curve = measured_curve(image, "jpeg")
    built = []
    real_init = DssimReference.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(DssimReference, "__init__", counting_init)

    class Recording(FakePredictor):
        def predict(self, image, formats, meanwhile=None):
            answer = super().predict(image, formats, meanwhile)
            self.built_by_the_answer = len(built)
            return answer

    predictor = Recording({"jpeg": curve})
    result = encode(image, output("jpeg", allowed_error=allowed_error), predictor)
    assert result.report.method == "ml"
    if allowed_error < 1.0:
        # Checked: the reference the check needs was built during the call, and only then.
        assert predictor.meanwhiles == [True] and predictor.built_by_the_answer == 1
        assert len(built) == 1
        assert result.report.achieved_dssim == pytest.approx(dssim_of(image, result.data), rel=1e-6)
    else:
        # Trusted: no DSSIM, so nothing to build.
        assert predictor.meanwhiles == [False] and built == []


@pytest.mark.parametrize("allowed_error", [1.0, 0.002])
def test_avif_encodes_only_at_the_requested_effort(monkeypatch, allowed_error):
    # No trial at effort 0 then the answer again: with a good curve, one encode.
    image = photo(128, 96)
    efforts = []
    real = encoder_module.save
    monkeypatch.setattr(
        encoder_module, "save", lambda i, p, k: efforts.append(p.effort) or real(i, p, k)
    )
    curve = measured_curve(image, "avif")
    out = output("avif", allowed_error=allowed_error)
    result = encode(image, out, FakePredictor({"avif": curve}))
    requested = EncodingSpec.from_settings(Settings()).avif.effort
    assert efforts and set(efforts) == {requested}
    assert result.report.encodes == len(efforts)
    if allowed_error == 1.0:
        assert result.report.encodes == 1


def test_predictor_unavailable_searches_by_dssim_and_says_why():
    image = photo()
    predictor = FakePredictor(error=PredictionUnavailable("TRITON_CIRCUIT_OPEN", "down"))
    result = encode(image, output("jpeg"), predictor)
    assert result.report.method == "dssim" and result.report.model_version == ""
    assert [reason for reason, _ in result.degradations] == [AUTOQUALITY_ML_UNAVAILABLE]
    assert "TRITON_CIRCUIT_OPEN" in result.degradations[0][1]
    assert result.report.target_met


def test_a_format_without_a_model_searches_by_dssim():
    image = photo()
    predictor = FakePredictor({"jpeg": measured_curve(image, "jpeg")})
    result = encode(image, output("webp"), predictor)
    assert result.report.method == "dssim"
    assert [reason for reason, _ in result.degradations] == [AUTOQUALITY_ML_UNAVAILABLE]
    assert "AUTOQUALITY_NO_MODEL" in result.degradations[0][1]


def test_best_format_asks_once_for_every_candidate():
    image = photo(128, 96)
    curves = {f: measured_curve(image, f) for f in ("jpeg", "webp", "avif")}
    predictor = FakePredictor(curves)
    result = encode(image, OutputSpec("best", None, encoding=output("jpeg").encoding), predictor)
    assert len(predictor.calls) == 1
    assert set(predictor.calls[0]) == {"jpeg", "webp", "avif"}
    report = result.report
    assert report.method == "ml" and report.model_version == "test-1"
    lossy = [c for c in report.candidates if not c.lossless]
    assert lossy and all(c.predicted_quality > 0 for c in lossy)
    proto = report.to_proto()
    assert proto.model_version == "test-1" and proto.predicted_quality == report.predicted_quality
    assert proto.method == pb.AUTOQUALITY_METHOD_ML


# --- the service's predictor over a client (the Triton client itself: tests/inference) ---


class FakeClient:
    timeout_s = 0.5

    def __init__(self, error=None):
        self.error = error
        self.timeouts = []

    def predict_blocking(self, loop, features, timeout_s, *, meanwhile=None):
        self.timeouts.append(timeout_s)
        if meanwhile is not None:
            meanwhile()
        if self.error is not None:
            raise self.error
        import numpy as np

        grid = (30, 60, 90)

        class Answer:
            version = "v"

            def points(self, fmt):
                return [(q, float(np.exp(-3 - q / 30))) for q in grid]

            curves = {"jpeg": None, "webp": None}

        return Answer()


def test_triton_predictor_bounds_the_call_by_the_deadline():
    import time

    client = FakeClient()
    predictor = TritonQualityPredictor(
        client, None, time.monotonic() + 0.2, features=lambda image: [0.0]
    )
    prediction = predictor.predict(photo(32, 32), ("jpeg", "avif"))
    assert set(prediction.curves) == {"jpeg"} and prediction.version == "v"
    assert 0 < client.timeouts[0] <= 0.2


def test_triton_predictor_past_the_deadline_or_failing_is_unavailable():
    import time

    from inference.errors import InferenceUnavailable

    past = TritonQualityPredictor(
        FakeClient(), None, time.monotonic() - 1, features=lambda image: [0.0]
    )
    with pytest.raises(PredictionUnavailable) as caught:
        past.predict(photo(32, 32), ("jpeg",))
    assert caught.value.reason == "TRITON_TIMEOUT"
    failing = TritonQualityPredictor(
        FakeClient(InferenceUnavailable("TRITON_UNAVAILABLE", "refused")),
        None,
        time.monotonic() + 5,
        features=lambda image: [0.0],
    )
    with pytest.raises(PredictionUnavailable) as caught:
        failing.predict(photo(32, 32), ("jpeg",))
    assert caught.value.reason == "TRITON_UNAVAILABLE"


def test_an_image_too_small_for_the_features_is_searched_by_dssim():
    import time

    class NeverCalled:
        timeout_s = 0.5

        def predict_blocking(self, loop, features, timeout_s, *, meanwhile=None):
            raise AssertionError("no features, no call")

    predictor = TritonQualityPredictor(NeverCalled(), None, time.monotonic() + 5)
    result = encode(photo(12, 10), output("jpeg"), predictor)
    assert result.report.method == "dssim"
    assert [reason for reason, _ in result.degradations] == [AUTOQUALITY_ML_UNAVAILABLE]
    assert "AUTOQUALITY_IMAGE_UNSUPPORTED" in result.degradations[0][1]
    assert decode(result.data).width == 12


def test_a_model_with_a_known_error_tries_the_low_end_first_when_it_likely_meets_there():
    image = photo()
    truth = measured_curve(image, "jpeg")
    # A target the image meets at q40, its low end, with DSSIM to spare; the model is 15 %
    # pessimistic, so it guesses above q40.
    target = truth.value_at(40) * 1.05
    model = QualityCurve.from_points([(q, v * 1.15) for q, v in truth.points])
    base = output("jpeg")
    spec = replace(
        base.encoding,
        autoquality=replace(base.encoding.autoquality, target=target, ranges=(("jpeg", 40, 95),)),
    )
    out = replace(base, encoding=spec)
    plain = encode(image, out, FakePredictor({"jpeg": model}))
    assert plain.report.predicted_quality > 40
    assert plain.report.quality == 40 and plain.report.encodes == 2
    known = encode(image, out, FakePredictor({"jpeg": model}, log_errors={"jpeg": 0.26}))
    assert known.report.quality == 40 and known.report.encodes == 1
    # The reported prediction is still the model's own guess.
    assert known.report.predicted_quality == plain.report.predicted_quality
    assert known.report.target_met


def _prediction(points) -> QualityPrediction:
    return QualityPrediction("aq-test", {"jpeg": QualityCurve.from_points(points)})


@pytest.mark.parametrize(
    "points, expected",
    [
        # A flat graphic: the model's curve flat at a DSSIM far under any target (its first
        # and last segments give no crossing to extrapolate): met from the low end on.
        ([(15, 4e-7), (30, 4e-7), (60, 1e-9), (95, 1e-13)], 30),
        ([(15, 1e-7), (95, 1e-7)], 30),
        # Over the target at every quality, and flat: nothing meets it, the high end.
        ([(15, 0.2), (30, 0.2), (95, 0.2)], 90),
        # A crossing inside the range is found as before.
        ([(30, 0.04), (90, 0.005)], None),
    ],
)
def test_the_guess_of_a_curve_that_never_crosses_the_target_is_the_end_it_implies(points, expected):
    prediction = _prediction(points)
    guess = prediction.quality_for("jpeg", 0.02, 30, 90)
    if expected is None:
        assert 30 < guess < 90
        assert prediction.curve("jpeg").value_at(guess) == pytest.approx(0.02, rel=0.05)
    else:
        assert guess == expected
