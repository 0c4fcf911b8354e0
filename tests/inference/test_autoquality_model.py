"""The committed autoquality model (model_repository/autoquality): its configs, its curve
description, the ONNX graph's contract and behaviour, and the same curves through the real
local Triton as from onnxruntime in-process."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import pyvips
import skimage.data
import tritonclient.grpc as triton_grpc
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from inference import autoquality as aq

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "model_repository" / "autoquality"
ONNX_PATH = MODEL_DIR / "1" / "model.onnx"
REPORT = REPO_ROOT / "inference" / "training" / "autoquality" / "report.json"
KIND = model_config_pb2.ModelInstanceGroup.Kind


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _params(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


@pytest.fixture(scope="module")
def spec() -> aq.CurveSpec:
    return aq.CurveSpec.load(MODEL_DIR / "curve.json")


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(ONNX_PATH), options, providers=["CPUExecutionProvider"])


def _photo_features() -> np.ndarray:
    rows = []
    for photo in (skimage.data.astronaut(), skimage.data.coffee(), skimage.data.camera()):
        image = pyvips.Image.new_from_array(np.ascontiguousarray(photo))
        rows.append(aq.features(image.copy(interpretation="srgb" if image.bands == 3 else "b-w")))
    return np.stack(rows)


# --- the files -------------------------------------------------------------------------------


def test_config_curve_json_and_onnx_tell_one_contract(spec, session):
    config = _parse(MODEL_DIR / "config.pbtxt")
    params = _params(config)
    assert config.name == "autoquality" and config.backend == "onnxruntime"
    assert config.max_batch_size >= 3, "best format asks for every candidate in one call"
    assert [
        (t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.input
    ] == [(spec.input_name, "TYPE_FP32", [aq.N_FEATURES])]
    assert [
        (t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.output
    ] == [(spec.output_name, "TYPE_FP32", [len(spec.formats), len(spec.grid)])]
    assert params["version"] == spec.version
    assert params["formats"].split(",") == list(spec.formats)
    assert [int(q) for q in params["grid"].split(",")] == list(spec.grid)
    assert int(params["features_version"]) == spec.features_version == aq.FEATURES_VERSION
    assert params["intra_op_thread_count"] == "1"
    assert set(spec.formats) == {"jpeg", "webp", "avif"}
    assert list(spec.grid) == sorted(set(spec.grid))
    curve = json.loads((MODEL_DIR / "curve.json").read_text())
    assert curve["features"] == list(aq.FEATURE_NAMES)
    # The ONNX graph: same names, dynamic batch, the config's dims.
    (graph_in,) = session.get_inputs()
    (graph_out,) = session.get_outputs()
    assert graph_in.name == spec.input_name and graph_out.name == spec.output_name
    assert isinstance(graph_in.shape[0], str) and isinstance(graph_out.shape[0], str)
    assert graph_in.shape[1:] == [aq.N_FEATURES]
    assert graph_out.shape[1:] == [len(spec.formats), len(spec.grid)]


def test_gpu_config_is_the_default_contract_on_the_gpu():
    default = _parse(MODEL_DIR / "config.pbtxt")
    gpu = _parse(MODEL_DIR / "configs" / "gpu.pbtxt")
    assert [KIND.Name(g.kind) for g in default.instance_group] == ["KIND_CPU"]
    assert [KIND.Name(g.kind) for g in gpu.instance_group] == ["KIND_GPU"]
    assert gpu.HasField("dynamic_batching") and not default.HasField("dynamic_batching")
    for config in (gpu, default):
        config.ClearField("instance_group")
        config.ClearField("dynamic_batching")
    assert gpu == default


def test_the_version_names_the_committed_weights(spec):
    digest = hashlib.sha256(ONNX_PATH.read_bytes()).hexdigest()
    assert spec.version.endswith(digest[:8]), "model.onnx changed without re-running train.py"
    provenance = (REPO_ROOT / "model_repository" / "PROVENANCE.md").read_text()
    assert f"`{digest}`" in provenance and f"`{spec.version}`" in provenance
    report = json.loads(REPORT.read_text())
    assert report["version"] == spec.version and report["onnx"]["sha256"] == digest
    assert (
        "inference/training/autoquality/train.py"
        in (REPO_ROOT / "model_repository" / "NOTICE").read_text()
    )


def test_the_onnx_is_small_and_loadable_by_stock_triton():
    assert ONNX_PATH.stat().st_size < 1_000_000
    model = onnx.load(str(ONNX_PATH))
    onnx.checker.check_model(model, full_check=True)
    # Triton 24.10's onnxruntime (1.19) reads IR <= 10 and opset <= 21.
    assert model.ir_version <= 10
    assert all(o.version <= 21 for o in model.opset_import if o.domain in ("", "ai.onnx"))


# --- what the graph computes -----------------------------------------------------------------


def test_every_predicted_curve_is_non_increasing(session, spec):
    rng = np.random.default_rng(11)
    real = _photo_features()
    # Real features, and far outside them (scaled, shuffled): the graph's last step makes
    # every curve non-increasing whatever the input.
    batch = np.concatenate(
        [real, real * rng.uniform(0.0, 3.0, real.shape), rng.normal(0, 5, (5, aq.N_FEATURES))]
    ).astype(np.float32)
    out = session.run([spec.output_name], {spec.input_name: batch})[0]
    assert out.shape == (len(batch), len(spec.formats), len(spec.grid))
    assert np.all(np.isfinite(out))
    assert np.all(np.diff(out, axis=2) <= 1e-6)


def test_a_batch_gives_what_each_row_gives_alone(session, spec):
    batch = _photo_features()
    together = session.run([spec.output_name], {spec.input_name: batch})[0]
    for row in range(len(batch)):
        alone = session.run([spec.output_name], {spec.input_name: batch[row : row + 1]})[0]
        np.testing.assert_allclose(together[row], alone[0], rtol=0, atol=1e-5)
    assert not np.allclose(together[0], together[1])


def _synthetic(kind: str) -> np.ndarray:
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:480, 0:640]
    base = np.stack([x / 640 * 200 + 20, y / 480 * 180 + 40, 120 + 0 * x], axis=2)
    if kind == "noisy":
        base = base + rng.normal(0, 20, base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def test_a_noisy_picture_is_predicted_harder_than_a_smooth_one(session, spec):
    """Honest sanity of the weights: at every quality, noise costs more DSSIM than a smooth
    gradient, so a target needs a higher quality for it, in every format."""
    feats = np.stack([aq.features_of_pixels(_synthetic(k)) for k in ("smooth", "noisy")])
    smooth, noisy = session.run([spec.output_name], {spec.input_name: feats})[0]
    for f, fmt in enumerate(spec.formats):
        middle = [i for i, q in enumerate(spec.grid) if 40 <= q <= 85]
        assert np.all(noisy[f, middle] > smooth[f, middle]), fmt
        q_smooth = aq.quality_for(spec.grid, smooth[f], 0.02)
        q_noisy = aq.quality_for(spec.grid, noisy[f], 0.02)
        assert q_noisy > q_smooth, fmt


def test_predicted_qualities_for_photographs_are_plausible(session, spec):
    out = session.run([spec.output_name], {spec.input_name: _photo_features()})[0]
    for curves in out:
        for f, fmt in enumerate(spec.formats):
            q = aq.quality_for(spec.grid, curves[f], 0.02)
            assert 15 <= q <= 100, (fmt, q)
            # Stricter targets need higher qualities.
            assert aq.quality_for(spec.grid, curves[f], 0.01) >= q
            assert aq.quality_for(spec.grid, curves[f], 0.03) <= q
            assert -12 < curves[f].min() and curves[f].max() < math.log(0.5)


# --- through the real local Triton -----------------------------------------------------------


@pytest.mark.triton
def test_triton_serves_the_same_curves_as_onnxruntime_in_process(triton_sidecar, session, spec):
    assert "autoquality" in triton_sidecar.model_names
    batch = np.concatenate([_photo_features(), _photo_features()[:1] * 0.5]).astype(np.float32)
    client = triton_grpc.InferenceServerClient(triton_sidecar.grpc_url)
    try:
        metadata = client.get_model_metadata("autoquality", client_timeout=10.0)
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
            (spec.input_name, "FP32", [-1, aq.N_FEATURES])
        ]
        config = client.get_model_config("autoquality", client_timeout=10.0).config
        assert _params(config)["version"] == spec.version  # what the service will report
        for rows in (batch[:1], batch):  # one image's features, and a batch of them
            infer_input = triton_grpc.InferInput(spec.input_name, list(rows.shape), "FP32")
            infer_input.set_data_from_numpy(rows)
            result = client.infer("autoquality", [infer_input], client_timeout=10.0)
            got = result.as_numpy(spec.output_name)
            want = session.run([spec.output_name], {spec.input_name: rows})[0]
            assert got.shape == want.shape == (len(rows), len(spec.formats), len(spec.grid))
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    finally:
        client.close()
