"""The local Triton launcher: repository derivation, stub install, lifecycle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from inference import sidecar
from inference.sidecar import (
    RUNNER,
    SidecarError,
    TritonSidecar,
    derive_python_backend_repository,
    install_python_backend_stub,
    python_backend_config,
    resolve_stub_pythonpath,
    resolve_triton_home,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

ONNX_CONFIG = """\
name: "detector"
backend: "onnxruntime"
max_batch_size: 0
default_model_filename: "model.onnx"
input [ { name: "input" data_type: TYPE_FP32 dims: [ 1, 4 ] } ]
output [ { name: "out" data_type: TYPE_FP32 dims: [ 1, 4 ] } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""

GPU_CONFIG = """\
name: "detector"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "input" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "out" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { kind: KIND_GPU count: 2 gpus: [ 0 ] }, { kind: KIND_CPU count: 1 } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
"""


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


# -- config and repository derivation ----------------------------------------------------


def test_onnxruntime_config_becomes_python_backend_with_the_same_contract():
    derived = _parse(python_backend_config(ONNX_CONFIG))
    original = _parse(ONNX_CONFIG)
    assert derived.backend == "python"
    assert not derived.default_model_filename
    original.backend = "python"
    original.ClearField("default_model_filename")
    assert derived == original  # names, dtypes, dims, batching, parameters: all kept


def test_gpu_instances_run_on_the_cpu_with_batching_kept():
    derived = _parse(python_backend_config(GPU_CONFIG))
    kinds = [
        (model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind), g.count, list(g.gpus))
        for g in derived.instance_group
    ]
    assert kinds == [("KIND_CPU", 2, []), ("KIND_CPU", 1, [])]
    assert derived.max_batch_size == 8
    assert derived.dynamic_batching.max_queue_delay_microseconds == 100
    assert list(derived.input) == list(_parse(GPU_CONFIG).input)


def test_platform_onnxruntime_onnx_is_recognised():
    derived = _parse(python_backend_config('name: "m"\nplatform: "onnxruntime_onnx"\n'))
    assert derived.backend == "python" and not derived.platform


def test_other_backends_are_not_rewritten():
    assert python_backend_config('name: "m"\nbackend: "python"\n') is None
    assert python_backend_config('name: "m"\nplatform: "ensemble"\n') is None


def test_a_config_triton_could_not_parse_is_refused():
    with pytest.raises(text_format.ParseError):
        python_backend_config(ONNX_CONFIG.replace("max_batch_size", "max_batch"))


def test_derived_repository(tmp_path):
    source = tmp_path / "repo"
    (source / "detector" / "1").mkdir(parents=True)
    (source / "detector" / "2").mkdir()
    (source / "detector" / "01").mkdir()  # ignored by Triton
    (source / "detector" / "configs").mkdir()
    (source / "detector" / "config.pbtxt").write_text(ONNX_CONFIG)
    (source / "detector" / "configs" / "gpu.pbtxt").write_text(GPU_CONFIG)
    (source / "detector" / "1" / "model.onnx").write_bytes(b"onnx-1")
    (source / "detector" / "2" / "model.onnx").write_bytes(b"onnx-2")
    (source / "custom" / "1").mkdir(parents=True)
    (source / "custom" / "config.pbtxt").write_text('name: "custom"\nbackend: "python"\n')
    (source / "custom" / "1" / "model.py").write_text("# custom model\n")
    (source / "PROVENANCE.md").write_text("not a model")
    target = tmp_path / "derived"

    names = derive_python_backend_repository(source, target)

    assert names == ["custom", "detector"]
    assert sorted(p.name for p in target.iterdir()) == ["custom", "detector"]
    assert _parse((target / "detector" / "config.pbtxt").read_text()).backend == "python"
    # Triton's custom config is derived in place, for tritonserver --model-config-name.
    gpu = _parse((target / "detector" / "configs" / "gpu.pbtxt").read_text())
    assert gpu.backend == "python" and gpu.HasField("dynamic_batching")
    for version in ("1", "2"):
        assert (target / "detector" / version / "model.py").read_text() == RUNNER.read_text()
        assert (
            target / "detector" / version / "model.onnx"
        ).read_bytes() == f"onnx-{version}".encode()
    assert not (target / "detector" / "01" / "model.py").exists()
    assert not (target / "detector" / "configs" / "model.py").exists()
    assert (target / "custom" / "1" / "model.py").read_text() == "# custom model\n"
    assert (target / "custom" / "config.pbtxt").read_text() == 'name: "custom"\nbackend: "python"\n'
    # The source is untouched.
    assert (source / "detector" / "config.pbtxt").read_text() == ONNX_CONFIG
    assert (source / "detector" / "configs" / "gpu.pbtxt").read_text() == GPU_CONFIG
    assert not (source / "detector" / "1" / "model.py").exists()


def test_a_config_triton_could_not_parse_fails_the_derivation(tmp_path):
    (tmp_path / "repo" / "m" / "configs").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text(ONNX_CONFIG.replace("detector", "m"))
    (tmp_path / "repo" / "m" / "configs" / "gpu.pbtxt").write_text("instance_groups [ ]")
    with pytest.raises(SidecarError, match=r"m/configs/gpu\.pbtxt: not a Triton model config"):
        derive_python_backend_repository(tmp_path / "repo", tmp_path / "derived")


def test_a_model_whose_configs_use_different_backends_is_refused(tmp_path):
    (tmp_path / "repo" / "m" / "configs").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_text(ONNX_CONFIG.replace("detector", "m"))
    (tmp_path / "repo" / "m" / "configs" / "gpu.pbtxt").write_text('name: "m" backend: "python"')
    with pytest.raises(SidecarError, match="gpu.pbtxt is not onnxruntime"):
        derive_python_backend_repository(tmp_path / "repo", tmp_path / "derived")


def test_the_real_repository_derives_to_python_backend_models(tmp_path):
    names = derive_python_backend_repository(REPO_ROOT / "model_repository", tmp_path / "models")
    assert names == [
        "autoquality",
        "blazeface_full_range",
        "blazeface_short_range",
        "palm_detection_full",
        "pose_detection",
        "selfie_segmentation",
    ]
    cpu = model_config_pb2.ModelInstanceGroup.KIND_CPU
    for name in names:
        assert (tmp_path / "models" / name / "1" / "model.py").is_file()
        for config_file in ("config.pbtxt", "configs/gpu.pbtxt"):
            derived = _parse((tmp_path / "models" / name / config_file).read_text())
            original = _parse((REPO_ROOT / "model_repository" / name / config_file).read_text())
            assert derived.backend == "python"
            assert [g.kind for g in derived.instance_group] == [cpu]
            assert derived.max_batch_size == original.max_batch_size > 0
            assert derived.dynamic_batching == original.dynamic_batching
            assert list(derived.input) == list(original.input)
            assert list(derived.output) == list(original.output)


def test_an_empty_repository_is_an_error(tmp_path):
    with pytest.raises(SidecarError, match="no models"):
        derive_python_backend_repository(tmp_path, tmp_path / "derived")


# -- where Triton and the stub's packages come from --------------------------------------


def _fake_triton_home(root: Path, stub: bytes = b"stub-3.11") -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tritonserver").write_text("#!/bin/sh\n")
    (root / "backends" / "python").mkdir(parents=True)
    (root / "python_backend_stubs" / "3.11").mkdir(parents=True)
    (root / "python_backend_stubs" / "3.11" / sidecar.STUB_NAME).write_bytes(stub)
    return root


def test_triton_home_resolution(tmp_path, monkeypatch):
    home = _fake_triton_home(tmp_path / "home")
    assert resolve_triton_home(home) == home
    monkeypatch.setenv(sidecar.TRITON_HOME_ENV, str(home))
    assert resolve_triton_home() == home
    with pytest.raises(SidecarError, match="make install"):
        resolve_triton_home(tmp_path / "missing")


def test_stub_install_is_idempotent_and_refreshes_a_stale_copy(tmp_path):
    home = _fake_triton_home(tmp_path / "home")
    target = install_python_backend_stub(home, "3.11")
    assert target == home / "backends" / "python" / sidecar.STUB_NAME
    assert target.read_bytes() == b"stub-3.11"
    first = target.stat().st_ino
    install_python_backend_stub(home, "3.11")
    assert target.stat().st_ino == first  # identical: not copied again
    target.write_bytes(b"stale")
    install_python_backend_stub(home, "3.11")
    assert target.read_bytes() == b"stub-3.11"
    assert sorted(p.name for p in target.parent.iterdir()) == [sidecar.STUB_NAME]
    with pytest.raises(SidecarError, match=r"no python backend stub for Python 3\.99"):
        install_python_backend_stub(home, "3.99")


def _fake_packages(root: Path, numpy_version: str | None, onnxruntime: bool = True) -> Path:
    root.mkdir(parents=True)
    if numpy_version:
        (root / "numpy").mkdir()
        (root / "numpy" / "__init__.py").write_text("")
        (root / f"numpy-{numpy_version}.dist-info").mkdir()
    if onnxruntime:
        (root / "onnxruntime").mkdir()
        (root / "onnxruntime" / "__init__.py").write_text("")
    return root


def test_stub_packages_must_have_numpy_1_and_onnxruntime(tmp_path, monkeypatch):
    good = _fake_packages(tmp_path / "good", "1.26.4")
    assert resolve_stub_pythonpath([good]) == [good]
    monkeypatch.setenv(sidecar.PYTHONPATH_ENV, str(good))
    assert resolve_stub_pythonpath() == [good]
    with pytest.raises(SidecarError, match="numpy<2"):
        resolve_stub_pythonpath([_fake_packages(tmp_path / "numpy2", "2.4.6")])
    with pytest.raises(SidecarError, match=r"triton-python-requirements\.txt"):
        resolve_stub_pythonpath([_fake_packages(tmp_path / "no-ort", "1.26.4", onnxruntime=False)])
    with pytest.raises(SidecarError, match="no numpy"):
        resolve_stub_pythonpath([tmp_path / "nothing"])


def test_the_command_binds_loopback_only(tmp_path):
    instance = TritonSidecar(grpc_port=18001, http_port=18000, metrics_port=18002)
    instance._workdir = tmp_path
    instance._shm_prefix = "test_"
    command = instance.command()
    for flag in (
        "--grpc-address=127.0.0.1",
        "--http-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
    ):
        assert flag in command
    assert "--strict-readiness=true" in command
    assert any(arg.startswith("--exit-timeout-secs=") for arg in command)
    assert f"--model-repository={tmp_path / 'models'}" in command
    assert instance.grpc_url == "127.0.0.1:18001" and instance.http_url == "127.0.0.1:18000"
    assert not any(arg.startswith("--model-config-name") for arg in command)


def test_the_model_config_name_reaches_tritonserver(tmp_path):
    instance = TritonSidecar(model_config_name="gpu")
    instance._workdir = tmp_path
    instance.ports = {"grpc": 1, "http": 2, "metrics": 3}
    assert "--model-config-name=gpu" in instance.command()
    for bad in ("", "a b", "../gpu"):
        with pytest.raises(SidecarError, match="bad model config name"):
            TritonSidecar(model_config_name=bad)


# -- the real Triton ----------------------------------------------------------------------


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


@pytest.mark.triton
def test_the_session_sidecar_serves_every_model(triton_sidecar):
    assert triton_sidecar.running
    assert triton_sidecar.model_names == [
        "autoquality",
        "blazeface_full_range",
        "blazeface_short_range",
        "palm_detection_full",
        "pose_detection",
        "selfie_segmentation",
    ]
    assert triton_sidecar.grpc_url.startswith("127.0.0.1:")
    assert _get(f"http://{triton_sidecar.http_url}/v2/health/ready")[0] == 200
    for name in triton_sidecar.model_names:
        assert _get(f"http://{triton_sidecar.http_url}/v2/models/{name}/ready")[0] == 200
    status, metrics = _get(triton_sidecar.metrics_url)
    assert status == 200 and "nv_inference_request_success" in metrics


@pytest.mark.triton
def test_stop_shuts_triton_down_and_cleans_up():
    instance = TritonSidecar()
    instance.launch()
    workdir, pid, prefix = instance._workdir, instance.pid, instance._shm_prefix
    assert workdir.is_dir() and list(Path("/dev/shm").glob(prefix + "*"))
    returncode = instance.stop()
    assert returncode == 0
    assert not workdir.exists()
    assert not list(Path("/dev/shm").glob(prefix + "*"))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert instance.stop() is None  # idempotent


@pytest.mark.triton
def test_a_broken_model_fails_readiness_with_the_log(tmp_path):
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "config.pbtxt").write_text(ONNX_CONFIG.replace("detector", "broken"))
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    instance = TritonSidecar(tmp_path)
    with pytest.raises(SidecarError, match=r"(?s)exited with status.*broken"):
        instance.launch(timeout=60)
    assert instance._workdir is None  # launch() stopped and cleaned up


@pytest.mark.triton
def test_cli_forwards_sigint_and_exits_cleanly():
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inference.sidecar",
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--metrics-port",
            "0",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        for line in process.stderr:
            if line.startswith("sidecar: ready"):
                break
            assert time.monotonic() < deadline, "sidecar did not become ready"
        else:
            pytest.fail(f"sidecar exited early with {process.wait()}")
        http = line.split("http ")[1].split(",")[0]
        assert _get(f"http://{http}/v2/health/ready")[0] == 200
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=30)  # drains Triton's shutdown log
        assert process.returncode == 0, rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.triton
def test_a_taken_port_is_reported(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        instance = TritonSidecar(http_port=taken.getsockname()[1])
        with pytest.raises(SidecarError, match="already in use"):
            instance.launch(timeout=60)


def test_a_failed_start_leaves_nothing_behind(tmp_path):
    instance = TritonSidecar(tmp_path)  # no models
    with pytest.raises(SidecarError, match="no models"):
        instance.start()
    assert instance._workdir is None and instance.pid is None
