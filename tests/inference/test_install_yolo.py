"""``python -m inference.install_yolo``: configs read from the ONNX graph itself, batching
decided by running it, refusals, and the local sidecar's rewrite of what it writes."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from inference.install_yolo import InstallError, install, main
from inference.sidecar import derive_python_backend_repository
from tests.inference.yolo_models import write_fp16_onnx, write_yolo_onnx

CLASSES_TEXT = "person\ncar=2\ndog\n"
COLUMNS = np.zeros((7, 6), dtype=np.float32)  # a yolov8 layout for 3 classes, 6 candidates
ROWS = np.zeros((84, 8), dtype=np.float32)  # a YOLOX head at 64 for 3 classes


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "classes.txt").write_text(CLASSES_TEXT)
    return tmp_path


def _config(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _tensors(config):
    return [(t.name, t.data_type, list(t.dims)) for t in [*config.input, *config.output]]


def _install(workdir, onnx_path, name="m", **kwargs):
    kwargs.setdefault("repository", workdir / "repo")
    return install(onnx_path, name, workdir / "classes.txt", **kwargs)


def test_a_dynamic_batch_gets_max_batch_size_and_dims_without_it(workdir):
    onnx_path = write_yolo_onnx(workdir / "m.onnx", COLUMNS, net_size=None)
    installed = _install(workdir, onnx_path, net_size=64)
    model_dir = workdir / "repo" / "m"
    assert installed.path == model_dir and installed.max_batch_size == 16
    assert (model_dir / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    assert (model_dir / "classes.txt").read_text() == CLASSES_TEXT

    cpu = _config(model_dir / "config.pbtxt")
    fp32 = model_config_pb2.TYPE_FP32
    assert (cpu.name, cpu.backend, cpu.max_batch_size) == ("m", "onnxruntime", 16)
    # Sides were dynamic: the net size; the output dims are what the graph produced at 64.
    assert _tensors(cpu) == [("images", fp32, [3, 64, 64]), ("output0", fp32, [7, 6])]
    assert [g.kind for g in cpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert not cpu.HasField("dynamic_batching")
    assert cpu.parameters["intra_op_thread_count"].string_value == "1"

    # The GPU config is the CPU one on the GPU with the dynamic batcher, nothing else.
    gpu = _config(model_dir / "configs" / "gpu.pbtxt")
    expected = model_config_pb2.ModelConfig()
    expected.CopyFrom(cpu)
    expected.instance_group[0].kind = model_config_pb2.ModelInstanceGroup.KIND_GPU
    expected.dynamic_batching.SetInParent()
    assert gpu == expected


def test_a_graph_fixed_to_one_image_gets_max_batch_size_0_and_its_own_size(workdir):
    onnx_path = write_yolo_onnx(workdir / "m.onnx", ROWS, net_size=64, batch=1)
    installed = _install(workdir, onnx_path)  # no --net-size: the graph's 64
    assert (installed.net_size, installed.max_batch_size) == (64, 0)
    assert installed.contract.batched is False
    fp32 = model_config_pb2.TYPE_FP32
    for path in ("config.pbtxt", "configs/gpu.pbtxt"):
        config = _config(workdir / "repo" / "m" / path)
        assert config.max_batch_size == 0
        assert _tensors(config) == [("images", fp32, [1, 3, 64, 64]), ("output0", fp32, [1, 84, 8])]
        assert not config.HasField("dynamic_batching")  # Triton allows none without batching


def test_a_batch_that_only_looks_dynamic_is_not_batched(workdir):
    onnx_path = write_yolo_onnx(workdir / "m.onnx", COLUMNS, net_size=64, pin_batch=True)
    installed = _install(workdir, onnx_path)
    assert installed.max_batch_size == 0
    config = _config(workdir / "repo" / "m" / "config.pbtxt")
    assert [list(t.dims) for t in [*config.input, *config.output]] == [[1, 3, 64, 64], [1, 7, 6]]


def test_dynamic_sides_default_to_416(workdir):
    installed = _install(workdir, write_yolo_onnx(workdir / "m.onnx", COLUMNS, net_size=None))
    assert installed.net_size == 416
    assert installed.contract.input_dims == (3, 416, 416)


def test_the_net_size_must_match_a_fixed_graph(workdir):
    onnx_path = write_yolo_onnx(workdir / "m.onnx", COLUMNS, net_size=64)
    with pytest.raises(InstallError, match="fixed at 64x64, not --net-size 416.*--net-size 64"):
        _install(workdir, onnx_path, net_size=416)
    with pytest.raises(InstallError, match="multiple of 32"):
        _install(workdir, onnx_path, net_size=100)


def test_several_outputs_need_output_to_pick_one(workdir):
    onnx_path = write_yolo_onnx(workdir / "m.onnx", COLUMNS, extra_output="probe")
    with pytest.raises(InstallError, match=r"2 outputs \(output0 .*probe.*--output"):
        _install(workdir, onnx_path)
    _install(workdir, onnx_path, output="output0")
    config = _config(workdir / "repo" / "m" / "config.pbtxt")
    assert [t.name for t in config.output] == ["output0"]
    with pytest.raises(InstallError, match="no output 'boxes'"):
        _install(workdir, onnx_path, name="n", output="boxes")


def test_net_type_checks_the_layout_and_the_classes(workdir):
    onnx_path = write_yolo_onnx(workdir / "m.onnx", COLUMNS, net_size=64)
    _install(workdir, onnx_path, net_type="yolov8")
    with pytest.raises(InstallError, match=r"--net-type yolov5: .*rows \[N, 8\]"):
        _install(workdir, onnx_path, name="n", net_type="yolov5")
    with pytest.raises(InstallError, match="unknown net type"):
        _install(workdir, onnx_path, name="n", net_type="yolov99")
    assert not (workdir / "repo" / "n").exists()


def test_an_installed_model_is_replaced_only_with_force(workdir):
    onnx_path = write_yolo_onnx(workdir / "m.onnx", COLUMNS, net_size=64)
    _install(workdir, onnx_path)
    (workdir / "classes.txt").write_text("a\nb\nc\n")
    with pytest.raises(InstallError, match="exists; pass --force"):
        _install(workdir, onnx_path)
    _install(workdir, onnx_path, force=True)
    assert (workdir / "repo" / "m" / "classes.txt").read_text() == "a\nb\nc\n"
    assert sorted(p.name for p in (workdir / "repo").iterdir()) == ["m"]  # no leftovers


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda d: write_fp16_onnx(d / "m.onnx"), "FLOAT16"),
        (lambda d: (d / "m.onnx").write_bytes(b"not a model") and d / "m.onnx", "cannot load"),
        (lambda d: d / "missing.onnx", "cannot load"),
    ],
)
def test_models_it_cannot_serve_are_refused(workdir, setup, match):
    with pytest.raises(InstallError, match=match):
        _install(workdir, setup(workdir))
    assert list((workdir / "repo").iterdir()) == []


def test_bad_names_and_classes_files_are_refused(workdir):
    onnx_path = write_yolo_onnx(workdir / "m.onnx", COLUMNS, net_size=64)
    with pytest.raises(InstallError, match="model name"):
        _install(workdir, onnx_path, name="../escape")
    (workdir / "classes.txt").write_text("person\nperson\n")
    with pytest.raises(InstallError, match="listed twice"):
        _install(workdir, onnx_path)


def test_the_local_sidecar_derives_python_backend_twins(workdir, tmp_path):
    _install(workdir, write_yolo_onnx(workdir / "a.onnx", COLUMNS, net_size=None), "a", net_size=64)
    _install(workdir, write_yolo_onnx(workdir / "b.onnx", ROWS, batch=1), "b")
    derived = tmp_path / "derived"
    assert derive_python_backend_repository(workdir / "repo", derived) == ["a", "b"]
    for name in ("a", "b"):
        for path in ("config.pbtxt", "configs/gpu.pbtxt"):
            source = _config(workdir / "repo" / name / path)
            twin = _config(derived / name / path)
            assert twin.backend == "python"
            assert _tensors(twin) == _tensors(source)
            assert twin.max_batch_size == source.max_batch_size
        assert (derived / name / "1" / "model.py").is_file()
        assert (derived / name / "classes.txt").read_text() == CLASSES_TEXT


def test_cli(workdir, capsys):
    onnx_path = write_yolo_onnx(workdir / "m.onnx", COLUMNS, net_size=64)
    argv = ["--onnx", str(onnx_path), "--name", "m", "--classes", str(workdir / "classes.txt")]
    argv += ["--repository", str(workdir / "repo")]
    assert main([*argv, "--net-type", "yolov8"]) == 0
    out = capsys.readouterr().out
    assert "IMAGESVC_OBJECT_DETECTION_MODEL=m" in out
    assert "IMAGESVC_OBJECT_DETECTION_NET_SIZE=64" in out
    assert main(argv) == 2
    assert "exists; pass --force" in capsys.readouterr().err
