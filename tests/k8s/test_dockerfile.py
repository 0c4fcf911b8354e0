"""No Docker engine here to build the Dockerfile: check what ties it to the manifests."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    pairs = []
    for text in logical:
        keyword, _, rest = text.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def _base_pod() -> dict:
    docs = yaml.safe_load_all((ROOT / "k8s" / "base" / "deployment.yaml").read_text())
    (deployment,) = [d for d in docs if d and d["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]


def _container(pod: dict, name: str) -> dict:
    return next(c for c in pod["containers"] + pod["initContainers"] if c["name"] == name)


def test_base_image_is_python_311_slim_bookworm():
    args = {
        rest.split("=", 1)[0]: rest.split("=", 1)[1]
        for k, rest in _instructions()
        if k == "ARG" and "=" in rest
    }
    base = _final_stage()[0][1].split()[0]
    base = args.get(base.strip("${}"), base)
    assert base == "python:3.11-slim-bookworm"


def test_runs_as_the_uid_the_manifests_expect():
    users = [rest for k, rest in _final_stage() if k == "USER"]
    assert users, "the runtime stage must drop root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and uid != "0", "numeric, so the kubelet can verify runAsNonRoot"
    pod = _base_pod()
    for name in ("imagesvc", "model-repository"):
        ctx = _container(pod, name)["securityContext"]
        assert str(ctx["runAsUser"]) == uid, name
        if gid:
            assert str(ctx["runAsGroup"]) == gid, name


def test_ships_the_model_repository_where_the_init_container_copies_from():
    copies = [shlex.split(rest) for k, rest in _final_stage() if k == "COPY"]
    assert ["model_repository/", "/app/model_repository/"] in copies
    command = _container(_base_pod(), "model-repository")["command"]
    assert "/app/model_repository/." in command


def test_cmd_matches_the_deployment_command():
    (cmd,) = [rest for k, rest in _final_stage() if k == "CMD"]
    assert json.loads(cmd) == _container(_base_pod(), "imagesvc")["command"]


def test_generates_the_protobuf_code_from_the_repository_proto():
    runs = " ".join(rest for k, rest in _instructions() if k == "RUN")
    assert "grpc_tools.protoc" in runs
    proto = "protos/imagesvc/v1/image_service.proto"
    assert proto in runs and (ROOT / proto).is_file()


def test_dockerignore_is_an_allowlist_without_generated_code():
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", (
        "start from nothing, so .venv, .git and local data never enter the context"
    )
    for needed in ("pyproject.toml", "protos/", "imagesvc/", "inference/", "model_repository/"):
        assert f"!{needed}" in lines
    # Re-excluded after the allowlist: regenerated in the build stage.
    assert lines.index("imagesvc/v1/") > lines.index("!imagesvc/")
