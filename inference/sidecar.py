"""Run the real Triton Inference Server on this machine, on CPU, as imagesvc's sidecar.

Usage::

    python -m inference.sidecar [--model-repository model_repository] [--grpc-port 8001]
                                [--http-port 8000] [--metrics-port 8002] [--host 127.0.0.1]
                                [--triton-home DIR] [--ready-timeout 120]
                                [--model-config-name gpu]

or, from Python (tests, the dev runner)::

    with TritonSidecar(grpc_port=0) as sidecar:      # 0: pick a free ephemeral port
        client = ...(sidecar.grpc_url)               # "127.0.0.1:PORT"

One repository, two worlds
--------------------------
``model_repository/`` is written for stock Triton, which in Kubernetes runs the ONNX
models with its onnxruntime backend (``backend: "onnxruntime"``). The Triton that runs
here comes from the ``nvidia-pytriton`` wheel (tritonserver 2.51 with only the python
backend), so the launcher derives a temporary repository from it:

- every model whose config says ``backend: "onnxruntime"`` (or ``platform:
  "onnxruntime_onnx"``) is copied with ``backend: "python"`` instead, and each of its
  version folders gets ``model.py`` = `inference/triton_onnx_model.py`, the generic
  runner, next to the same ``model.onnx``. Configs are parsed and rewritten with
  Triton's own ``ModelConfig`` proto (from tritonclient): inputs, outputs, dims,
  ``max_batch_size``, ``dynamic_batching`` and ``parameters`` are unchanged, so clients
  see the same contract in both worlds. This Triton has no GPU, so ``KIND_GPU``
  instance groups become ``KIND_CPU``;
- every config file of such a model is derived the same way: ``config.pbtxt`` and each
  ``configs/<name>.pbtxt`` (Triton's custom model configurations). ``--model-config-name
  NAME`` is passed to tritonserver, which then loads ``configs/NAME.pbtxt`` where a model
  has one and ``config.pbtxt`` otherwise, as stock Triton does in Kubernetes
  (``k8s/overlays/prod`` uses ``gpu``);
- every other model is copied as it is;
- files at the top of the repository (PROVENANCE.md, LICENSE, NOTICE) are not models
  and are left out.

Triton then starts with ``--model-repository`` on that copy, the pytriton backends
folder, loopback-only addresses, ``--strict-readiness=true`` and a bounded
``--exit-timeout-secs``. The launcher waits (bounded) until the server and every model
report ready over HTTP, forwards SIGTERM/SIGINT as one SIGTERM to tritonserver, and
removes the temporary repository when it stops.

Where things come from
----------------------
- Triton: ``--triton-home`` / ``$IMAGESVC_TRITON_HOME``, default
  ``<repo>/.venv/opt/pytriton/pytriton/tritonserver`` (the Makefile installs
  ``nvidia-pytriton`` there without its dependencies).
- The python-backend stub for this interpreter's Python version is copied from
  ``python_backend_stubs/<X.Y>/`` into ``backends/python/`` (idempotent, atomic): its
  RPATH finds the bundled libraries relative to that folder. It links the system
  ``libpython<X.Y>.so.1.0`` (Debian ``libpython3.11``).
- numpy and onnxruntime for the stub: ``--stub-pythonpath`` / ``$IMAGESVC_TRITON_PYTHONPATH``,
  default ``<repo>/.venv/opt/triton-python``, installed apart from the service's venv from
  ``inference/triton-python-requirements.txt``. numpy there must be 1.x: this Triton's
  python backend reads numpy 1's dtype layout and, with numpy 2, sends every output
  tensor empty without any error; the launcher refuses numpy 2. The directories reach
  the runner in ``$IMAGESVC_TRITON_PYTHONPATH`` (the stub runs Python in isolated mode,
  which ignores ``PYTHONPATH``; see `inference.triton_onnx_model`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes.util
import filecmp
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from google.protobuf.text_format import ParseError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "model_repository"
DEFAULT_TRITON_HOME = REPO_ROOT / ".venv" / "opt" / "pytriton" / "pytriton" / "tritonserver"
DEFAULT_STUB_PYTHONPATH = REPO_ROOT / ".venv" / "opt" / "triton-python"
STUB_REQUIREMENTS = Path(__file__).with_name("triton-python-requirements.txt")
TRITON_HOME_ENV = "IMAGESVC_TRITON_HOME"
PYTHONPATH_ENV = "IMAGESVC_TRITON_PYTHONPATH"
RUNNER = Path(__file__).with_name("triton_onnx_model.py")
STUB_NAME = "triton_python_backend_stub"

CUSTOM_CONFIGS = "configs"  # <model>/configs/<name>.pbtxt, picked by --model-config-name


class SidecarError(RuntimeError):
    """Triton could not be started, or did not become ready in time."""


def resolve_triton_home(triton_home: str | os.PathLike | None = None) -> Path:
    """``triton_home``, else ``$IMAGESVC_TRITON_HOME``, else the Makefile's location."""
    home = Path(triton_home or os.environ.get(TRITON_HOME_ENV) or DEFAULT_TRITON_HOME)
    if not (home / "bin" / "tritonserver").is_file():
        raise SidecarError(
            f"no tritonserver under {home}; run `make install` (it installs nvidia-pytriton "
            f"into .venv/opt/pytriton) or point --triton-home / ${TRITON_HOME_ENV} at "
            "pytriton/tritonserver"
        )
    return home


def install_python_backend_stub(triton_home: Path, python_version: str | None = None) -> Path:
    """Copy the stub for ``python_version`` (default: this interpreter's) into the python
    backend folder, unless an identical one is there. Safe against concurrent launchers."""
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    source = triton_home / "python_backend_stubs" / version / STUB_NAME
    if not source.is_file():
        available = sorted(p.name for p in (triton_home / "python_backend_stubs").glob("*"))
        raise SidecarError(
            f"no python backend stub for Python {version} in {source.parent.parent} "
            f"(has {available})"
        )
    if ctypes.util.find_library(f"python{version}") is None:
        raise SidecarError(
            f"the Triton stub links libpython{version}.so.1.0, which is not installed "
            f"(Debian: libpython{version})"
        )
    target = triton_home / "backends" / "python" / STUB_NAME
    if target.is_file() and filecmp.cmp(source, target, shallow=False):
        return target
    staging = target.with_name(f".{STUB_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
    shutil.copy2(source, staging)
    os.replace(staging, target)
    return target


def resolve_stub_pythonpath(
    stub_pythonpath: Sequence[str | os.PathLike] | None = None,
) -> list[Path]:
    """Where the stub imports numpy and onnxruntime from: ``stub_pythonpath``, else
    ``$IMAGESVC_TRITON_PYTHONPATH``, else DEFAULT_STUB_PYTHONPATH. Checked, because a
    wrong numpy fails silently (empty outputs) rather than loudly."""
    if stub_pythonpath is None:
        from_env = os.environ.get(PYTHONPATH_ENV)
        stub_pythonpath = from_env.split(os.pathsep) if from_env else [DEFAULT_STUB_PYTHONPATH]
    entries = [Path(p).resolve() for p in stub_pythonpath if str(p)]
    install = (
        f"{Path(sys.executable).name} -m pip install --no-deps --target {DEFAULT_STUB_PYTHONPATH} "
        f"-r {STUB_REQUIREMENTS.relative_to(REPO_ROOT)}"
    )
    for package in ("numpy", "onnxruntime"):
        if not any((entry / package / "__init__.py").is_file() for entry in entries):
            raise SidecarError(
                f"no {package} for the Triton stub in {[str(e) for e in entries]}; "
                f"install with: {install}"
            )
    numpy_entry = next(entry for entry in entries if (entry / "numpy" / "__init__.py").is_file())
    versions = [d.name.split("-")[1] for d in numpy_entry.glob("numpy-*.dist-info")]
    if not versions or int(versions[0].split(".")[0]) >= 2:
        raise SidecarError(
            f"the Triton stub would import numpy {versions or '(unknown version)'} from "
            f"{numpy_entry}; tritonserver 2.51's python backend needs numpy<2 (with numpy 2 it "
            f"returns empty outputs); install with: {install}"
        )
    return entries


def python_backend_config(config_text: str) -> str | None:
    """The python-backend twin of an onnxruntime model's config (``config.pbtxt`` or
    ``configs/<name>.pbtxt``), or None if the config is not an onnxruntime one.

    Parsed and written with Triton's ``ModelConfig`` proto, so a config Triton could not
    parse fails here too (``google.protobuf.text_format.ParseError``).
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    if config.backend != "onnxruntime" and config.platform != "onnxruntime_onnx":
        return None
    config.backend = "python"
    config.ClearField("platform")
    # A model filename meant for the ONNX backend would point the python backend at the
    # .onnx file instead of model.py.
    config.ClearField("default_model_filename")
    # This Triton has no GPU: GPU instances run on the CPU; the contract is unchanged.
    for group in config.instance_group:
        if group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU:
            group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
            del group.gpus[:]
    return "# Derived by inference/sidecar.py for the local python-backend Triton.\n" + (
        text_format.MessageToString(config)
    )


def _is_version_folder(path: Path) -> bool:
    # Triton ignores version folders that are not numeric or that start with "0".
    return path.is_dir() and path.name.isdigit() and not path.name.startswith("0")


def derive_python_backend_repository(source: Path, target: Path) -> list[str]:
    """Fill ``target`` with the local-Triton version of the ``source`` repository.

    Returns the model names (folder names), sorted.
    """
    names = []
    for model_dir in sorted(
        p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")
    ):
        destination = target / model_dir.name
        shutil.copytree(model_dir, destination, ignore=shutil.ignore_patterns("__pycache__"))
        config_paths = [destination / "config.pbtxt"]
        config_paths += sorted((destination / CUSTOM_CONFIGS).glob("*.pbtxt"))
        derived = {}
        for path in filter(Path.is_file, config_paths):
            try:
                derived[path] = python_backend_config(path.read_text())
            except ParseError as error:
                where = path.relative_to(target)
                raise SidecarError(f"{where}: not a Triton model config: {error}") from error
        if any(text is not None for text in derived.values()):
            for path, text in derived.items():
                if text is None:
                    raise SidecarError(f"{model_dir.name}: {path.name} is not onnxruntime")
                path.write_text(text)
            for version in filter(_is_version_folder, destination.iterdir()):
                shutil.copyfile(RUNNER, version / "model.py")
        names.append(model_dir.name)
    if not names:
        raise SidecarError(f"no models in {source}")
    return names


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago (the caller must tolerate a race)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class TritonSidecar:
    """A tritonserver process serving a derived copy of a model repository.

    Ports given as 0 are replaced by free ephemeral ports at `start`. Use as a context
    manager (start, wait until ready, stop) or call `start`, `wait_ready` and `stop`.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike = DEFAULT_MODEL_REPOSITORY,
        *,
        triton_home: str | os.PathLike | None = None,
        stub_pythonpath: Sequence[str | os.PathLike] | None = None,
        host: str = "127.0.0.1",
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        exit_timeout_s: int = 10,
        ready_timeout_s: float = 120.0,
        log_verbose: int = 0,
        inherit_output: bool = False,
        model_config_name: str | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        if model_config_name is not None and (
            not model_config_name or any(c.isspace() or c in "/\\" for c in model_config_name)
        ):
            raise SidecarError(f"bad model config name {model_config_name!r}")
        # tritonserver --model-config-name: configs/<name>.pbtxt where a model has one.
        self.model_config_name = model_config_name
        self.triton_home = resolve_triton_home(triton_home)
        self.stub_pythonpath = resolve_stub_pythonpath(stub_pythonpath)
        self.host = host
        self._requested_ports = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}
        self.ports = dict(self._requested_ports)
        self.exit_timeout_s = exit_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.log_verbose = log_verbose
        # True: tritonserver writes to our stdout/stderr (the CLI); False: to `log_path`.
        self.inherit_output = inherit_output
        self.model_names: list[str] = []
        self.log_path: Path | None = None
        self._workdir: Path | None = None
        self._process: subprocess.Popen | None = None
        self._log_file = None
        self._shm_prefix = ""
        self.stopping = False

    # -- addresses -------------------------------------------------------------------

    @property
    def grpc_url(self) -> str:
        """``host:port`` for tritonclient.grpc."""
        return f"{_url_host(self.host)}:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        """``host:port`` for tritonclient.http (no scheme, as tritonclient expects)."""
        return f"{_url_host(self.host)}:{self.ports['http']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.ports['metrics']}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def exit_status(self) -> int | None:
        """tritonserver's exit status once it has exited (negative: killed by that signal;
        -11 is a crash), else None."""
        return self._process.poll() if self._process is not None else None

    # -- lifecycle -------------------------------------------------------------------

    def command(self) -> list[str]:
        """The tritonserver command line (ports must be resolved)."""
        home = self.triton_home
        return [
            str(home / "bin" / "tritonserver"),
            f"--model-repository={self._workdir / 'models'}",
            f"--backend-directory={home / 'backends'}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports['grpc']}",
            f"--http-address={self.host}",
            f"--http-port={self.ports['http']}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports['metrics']}",
            # CPU only: no pinned host memory, which would need a CUDA driver.
            "--pinned-memory-pool-byte-size=0",
            # The python backend names its /dev/shm regions with this prefix; a unique one
            # lets several sidecars (tests next to a dev server) share a machine.
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--log-verbose={self.log_verbose}",
        ] + ([f"--model-config-name={self.model_config_name}"] if self.model_config_name else [])

    def start(self) -> None:
        """Derive the repository, install the stub and launch tritonserver (non-blocking)."""
        if self._process is not None:
            raise SidecarError("already started")
        install_python_backend_stub(self.triton_home)
        self._workdir = Path(tempfile.mkdtemp(prefix="imagesvc-triton-"))
        try:
            self._launch_process()
        except BaseException:
            self.stop()
            raise

    def _launch_process(self) -> None:
        self.model_names = derive_python_backend_repository(
            self.model_repository, self._workdir / "models"
        )
        self.ports = {
            name: port if port else free_port(self.host)
            for name, port in self._requested_ports.items()
        }
        self._shm_prefix = f"imagesvc_{os.getpid()}_{secrets.token_hex(4)}_"
        env = dict(os.environ)
        env[PYTHONPATH_ENV] = os.pathsep.join(str(p) for p in self.stub_pythonpath)
        if self.inherit_output:
            stdout = None
        else:
            self.log_path = self._workdir / "tritonserver.log"
            self._log_file = stdout = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.stopping = False
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            env=env,
            # Its own process group: a terminal's Ctrl-C reaches only the launcher, which
            # forwards one SIGTERM, and stop() can clean up the stubs if Triton hangs.
            start_new_session=True,
        )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the server and every model are ready over HTTP.

        Raises SidecarError (with the end of Triton's log) if tritonserver exits first or
        ``timeout`` (default ``ready_timeout_s``) passes.
        """
        if self._process is None:
            raise SidecarError("not started")
        deadline = time.monotonic() + (self.ready_timeout_s if timeout is None else timeout)
        base = f"http://{self.http_url}"
        paths = ["/v2/health/ready"] + [f"/v2/models/{name}/ready" for name in self.model_names]
        while True:
            if self._process.poll() is not None:
                raise SidecarError(
                    f"tritonserver exited with status {self._process.returncode}{self.log_tail()}"
                )
            if all(self._http_ok(base + path) for path in paths):
                return
            if time.monotonic() > deadline:
                waited = self.ready_timeout_s if timeout is None else timeout
                raise SidecarError(f"Triton not ready after {waited:.0f}s{self.log_tail()}")
            time.sleep(0.1)

    def launch(self, timeout: float | None = None, attempts: int = 3) -> None:
        """`start` then `wait_ready`; when every port is ephemeral, retry if one was taken
        between choosing it and Triton binding it."""
        ephemeral = not any(self._requested_ports.values())
        for attempt in range(1, (attempts if ephemeral else 1) + 1):
            self.start()
            try:
                self.wait_ready(timeout)
                return
            except SidecarError as error:
                port_clash = "already in use" in str(error)
                self.stop()
                if not (ephemeral and port_clash and attempt < attempts):
                    raise

    def terminate(self) -> None:
        """Ask tritonserver to shut down (SIGTERM) without waiting; signal-handler safe."""
        self.stopping = True
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Block until tritonserver exits; its exit status."""
        if self._process is None:
            raise SidecarError("not started")
        while True:
            try:
                return self._process.wait()
            except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
                continue

    def stop(self) -> int | None:
        """Stop tritonserver (SIGTERM, then SIGKILL after the exit timeout) and remove the
        derived repository. Idempotent. Returns tritonserver's exit status, if it ran."""
        returncode = None
        if self._process is not None:
            self.terminate()
            try:
                returncode = self._process.wait(timeout=self.exit_timeout_s + 5)
            except subprocess.TimeoutExpired:
                returncode = None
            # The group is the one start() created for this tritonserver; anything still in
            # it (a hung server, orphaned stubs) is ours to kill.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
            if returncode is None:
                returncode = self._process.wait()
            self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._shm_prefix:
            for leftover in Path("/dev/shm").glob(self._shm_prefix + "*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self.log_path = None
        return returncode

    def __enter__(self) -> TritonSidecar:
        self.launch()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- helpers ---------------------------------------------------------------------

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 40) -> str:
        """The end of tritonserver's log, headed, for an error message ("" when it logs to our
        own stdout, or is gone)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        if self._log_file is not None:
            self._log_file.flush()
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n--- tritonserver log (end) ---\n" + "\n".join(tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inference.sidecar",
        description="Run the local CPU Triton sidecar on imagesvc's model repository.",
    )
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--grpc-port", type=int, default=8001, help="0: a free ephemeral port")
    parser.add_argument("--http-port", type=int, default=8000, help="0: a free ephemeral port")
    parser.add_argument("--metrics-port", type=int, default=8002, help="0: a free ephemeral port")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: loopback only)"
    )
    parser.add_argument(
        "--triton-home",
        type=Path,
        default=None,
        help=f"pytriton's tritonserver folder (${TRITON_HOME_ENV})",
    )
    parser.add_argument(
        "--stub-pythonpath",
        default=None,
        help=f"{os.pathsep}-separated folders with numpy<2 and onnxruntime for the python "
        f"backend (${PYTHONPATH_ENV}; default {DEFAULT_STUB_PYTHONPATH.relative_to(REPO_ROOT)})",
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=120.0, help="seconds to wait for readiness"
    )
    parser.add_argument(
        "--exit-timeout", type=int, default=10, help="tritonserver --exit-timeout-secs"
    )
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument(
        "--model-config-name",
        default=None,
        help="load <model>/configs/NAME.pbtxt where a model has one (e.g. gpu, whose "
        "KIND_GPU instances run on the CPU here), as tritonserver --model-config-name",
    )
    args = parser.parse_args(argv)

    try:
        sidecar = TritonSidecar(
            args.model_repository,
            triton_home=args.triton_home,
            stub_pythonpath=args.stub_pythonpath.split(os.pathsep)
            if args.stub_pythonpath
            else None,
            host=args.host,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            exit_timeout_s=args.exit_timeout,
            ready_timeout_s=args.ready_timeout,
            log_verbose=args.log_verbose,
            inherit_output=True,
            model_config_name=args.model_config_name,
        )
    except SidecarError as error:
        print(f"sidecar: {error}", file=sys.stderr)
        return 2

    def forward(signum, _frame):
        sidecar.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        sidecar.start()
        try:
            sidecar.wait_ready()
        except SidecarError as error:
            if not sidecar.stopping:
                print(f"sidecar: {error}", file=sys.stderr)
                return 1
        else:
            print(
                f"sidecar: ready, models {', '.join(sidecar.model_names)}; grpc {sidecar.grpc_url}, "
                f"http {sidecar.http_url}, metrics {sidecar.metrics_url}",
                file=sys.stderr,
                flush=True,
            )
        returncode = sidecar.wait()
        return 0 if sidecar.stopping and returncode in (0, -signal.SIGTERM) else returncode or 0
    except SidecarError as error:
        print(f"sidecar: {error}", file=sys.stderr)
        return 1
    finally:
        sidecar.stop()


if __name__ == "__main__":
    sys.exit(main())
