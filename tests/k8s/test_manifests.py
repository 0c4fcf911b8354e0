"""Render every kustomization in k8s/ and check it: schema first, then the properties that matter.

Each target is rendered with ``kubectl kustomize`` (the kustomize the cluster tooling uses). Every
document of a built-in kind is validated in strict mode (unknown fields are errors) with
kubernetes-validate, against two Kubernetes versions:

- 1.29, the first release with native sidecars (``initContainers[].restartPolicy: Always``) on by
  default, i.e. the oldest cluster these manifests can run on;
- the newest schema bundled with kubernetes-validate.

Custom resources (only the Prometheus Operator ServiceMonitor) have no bundled schema: they are
listed in CUSTOM_KINDS and checked by dedicated tests instead. Any other kind without a schema
fails the test.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, latest_version

KUBECTL = shutil.which("kubectl")
if KUBECTL is None:
    pytest.skip("kubectl is not on PATH; cannot render the kustomizations", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"

MIN_KUBERNETES = "1.29.0"
VALIDATION_VERSIONS = (MIN_KUBERNETES, latest_version())
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

APP = "imagesvc"
TRITON = "triton"
MODEL_COPY = "model-repository"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
READINESS_SERVICE = "imagesvc.v1.ImageService"
DEFAULT_GRACE_PERIOD_S = 10.0  # imagesvc.settings.Settings.grace_period_s
DEFAULT_DRAIN_S = 5.0  # imagesvc.settings.Settings.drain_s
RECOMMENDED_LABELS = ("name", "instance", "version", "component", "part-of")

# Overlays a user would build as-is, plus compositions with the opt-in components, built the way
# k8s/README.md tells users to: DataDog in an overlay on top of prod, and the presets, auth-tokens
# and object-storage components added to (a copy of) the prod overlay's own `components`, with the
# IRSA annotation k8s/README.md shows.
FEATURES = ("presets", "auth-tokens", "object-storage")
TARGETS = ("base", "dev", "prod", "prod+datadog", "prod+features")
PROD_TARGETS = tuple(t for t in TARGETS if t.startswith("prod"))
IRSA_ROLE_ARN = "arn:aws:iam::111122223333:role/imagesvc"  # AWS's documentation account
IRSA_PATCH = f"""\
apiVersion: v1
kind: ServiceAccount
metadata:
  name: imagesvc
  annotations:
    eks.amazonaws.com/role-arn: {IRSA_ROLE_ARN}
"""


def _kustomize(path: Path) -> list[dict]:
    result = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _prod_with(directory: Path, components: list[Path], patches: list[dict] = ()) -> Path:
    """A copy of the prod overlay in ``directory`` with ``components`` added to its own, as a user
    adds them to an overlay (resources added by a component then get the overlay's namespace and
    labels, which a kustomization on top of prod would not give them)."""
    prod = K8S / "overlays" / "prod"
    for file in prod.iterdir():
        if file.is_file():
            shutil.copy(file, directory)
    kustomization = yaml.safe_load((prod / "kustomization.yaml").read_text())

    # kustomize refuses absolute paths to other kustomizations; relative ones may leave the root.
    def relocated(entry: str) -> str:
        return os.path.relpath(prod / entry, directory) if (prod / entry).is_dir() else entry

    kustomization["resources"] = [relocated(r) for r in kustomization["resources"]]
    kustomization["components"] = [relocated(c) for c in kustomization.get("components", [])] + [
        os.path.relpath(c, directory) for c in components
    ]
    kustomization["patches"] = kustomization.get("patches", []) + list(patches)
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return directory


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    composed = tmp_path_factory.mktemp("prod-datadog")
    # kustomize refuses absolute paths to other kustomizations; relative ones may leave the root.
    prod, datadog = (
        os.path.relpath(K8S / p, composed) for p in ("overlays/prod", "components/datadog")
    )
    (composed / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [prod],
                "components": [datadog],
                "labels": [{"pairs": {"tags.datadoghq.com/env": "prod"}, "includeTemplates": True}],
            }
        )
    )
    features = _prod_with(
        tmp_path_factory.mktemp("prod-features"),
        [K8S / "components" / name for name in FEATURES],
        [{"patch": IRSA_PATCH}],
    )
    return {
        "base": _kustomize(K8S / "base"),
        "dev": _kustomize(K8S / "overlays" / "dev"),
        "prod": _kustomize(K8S / "overlays" / "prod"),
        "prod+datadog": _kustomize(composed),
        "prod+features": _kustomize(features),
    }


# ---- helpers ------------------------------------------------------------------------------------


def _all(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: list[dict], kind: str, name: str = APP) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _pod(docs: list[dict]) -> dict:
    return _one(docs, "Deployment")["spec"]["template"]["spec"]


def _container(containers: list[dict], name: str) -> dict:
    found = [c for c in containers if c["name"] == name]
    assert len(found) == 1, (
        f"expected one container {name!r}, found {[c['name'] for c in containers]}"
    )
    return found[0]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _volume_file(pod: dict, container: dict, variable: str) -> tuple[dict, dict, str]:
    """The volume, the mount and the path inside the mount of the file a ``*_PATH`` variable of
    ``container`` names; the mount must be read-only."""
    path = PurePosixPath(_env(container)[variable]["value"])
    mounts = [m for m in container.get("volumeMounts", []) if path.is_relative_to(m["mountPath"])]
    assert len(mounts) == 1, f"{variable}={path} is inside {len(mounts)} mounts"
    (mount,) = mounts
    assert mount.get("readOnly") is True, f"{variable}: {mount['name']} is mounted read-write"
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    return volume, mount, str(path.relative_to(mount["mountPath"]))


def _generated(docs: list[dict], kind: str, name: str) -> dict:
    """The one ``kind`` a generator named ``name`` made (kustomize adds a content hash)."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(f"{name}-")]
    assert len(found) == 1, f"expected one generated {kind} {name}-<hash>, found {len(found)}"
    return found[0]


def _container_port(pod: dict, port: int | str) -> int:
    """Resolve a probe/Service port (number or container port name) to its number."""
    if isinstance(port, int):
        return port
    numbers = [
        p["containerPort"]
        for c in pod["containers"] + pod.get("initContainers", [])
        for p in c.get("ports", [])
        if p.get("name") == port
    ]
    assert len(numbers) == 1, f"port name {port!r} resolves to {numbers}"
    return numbers[0]


def _triton_flag(triton: dict, flag: str) -> str | None:
    argv = triton.get("command", []) + triton.get("args", [])
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")]
    assert len(values) <= 1, f"--{flag} given {len(values)} times"
    return values[0] if values else None


# ---- schema -------------------------------------------------------------------------------------


def test_bundled_schemas_cover_native_sidecars():
    bundled = all_versions()
    assert MIN_KUBERNETES in bundled, f"kubernetes-validate no longer bundles {MIN_KUBERNETES}"
    # Strict validation of a container with restartPolicy must pass, and of a misspelt field fail,
    # so that the schema checks below can fail at all.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {
            "initContainers": [{"name": "side", "image": "x", "restartPolicy": "Always"}],
            "containers": [{"name": "main", "image": "x"}],
        },
    }
    bad = copy.deepcopy(pod)
    bad["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    for version in VALIDATION_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, version, strict=True)


@pytest.mark.parametrize("version", VALIDATION_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_documents_validate_strictly(rendered, target, version):
    docs = rendered[target]
    assert docs, f"{target} rendered nothing"
    for doc in docs:
        where = f"{target}: {doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue  # no bundled schema; see test_servicemonitor
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{where} is invalid for Kubernetes {version}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{where}: {e.message}; add it to CUSTOM_KINDS only with its own test")


def test_expected_resources(rendered):
    kinds = {
        t: sorted((d["kind"], d["metadata"]["name"]) for d in docs) for t, docs in rendered.items()
    }
    core = [
        ("Deployment", APP),
        ("PodDisruptionBudget", APP),
        ("Service", APP),
        ("Service", f"{APP}-headless"),
        ("ServiceAccount", APP),
    ]
    assert kinds["base"] == sorted(core + [("HorizontalPodAutoscaler", APP)])
    assert kinds["dev"] == sorted(core), "dev runs one fixed replica: no HPA"
    prod = sorted(core + [("HorizontalPodAutoscaler", APP), ("ServiceMonitor", APP)])
    assert kinds["prod"] == prod
    assert kinds["prod+datadog"] == prod
    # Only the presets ConfigMap is added; the auth tokens' Secret is the user's to create.
    generated = _generated(rendered["prod+features"], "ConfigMap", f"{APP}-presets")
    assert kinds["prod+features"] == sorted(prod + [("ConfigMap", generated["metadata"]["name"])])


# ---- the Triton native sidecar and its model repository -----------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_triton_is_a_native_sidecar(rendered, target):
    pod = _pod(rendered[target])
    triton = _container(pod.get("initContainers", []), TRITON)
    assert triton["image"] == TRITON_IMAGE
    assert triton.get("restartPolicy") == "Always", "Triton must be a native sidecar"
    assert triton not in pod["containers"]

    startup = triton.get("startupProbe", {}).get("httpGet")
    assert startup, "the sidecar needs a startupProbe: the app starts only once it passes"
    assert startup["path"] == "/v2/health/ready"
    assert _container_port(pod, startup["port"]) == 8000
    liveness = triton.get("livenessProbe", {}).get("httpGet")
    assert liveness and liveness["path"] == "/v2/health/live"
    assert _container_port(pod, liveness["port"]) == 8000

    assert triton["args"][0] == "tritonserver"
    assert _triton_flag(triton, "model-repository") == "/models"
    # Without strict readiness /v2/health/ready passes before the models are loaded.
    assert _triton_flag(triton, "strict-readiness") == "true"
    assert _triton_flag(triton, "exit-timeout-secs") is not None
    assert {p["containerPort"] for p in triton["ports"]} == {8000, 8001, 8002}


@pytest.mark.parametrize("target", TARGETS)
def test_model_repository_is_copied_before_triton_starts(rendered, target):
    pod = _pod(rendered[target])
    names = [c["name"] for c in pod["initContainers"]]
    assert names.index(MODEL_COPY) < names.index(TRITON), f"init containers in order {names}"

    copier = _container(pod["initContainers"], MODEL_COPY)
    triton = _container(pod["initContainers"], TRITON)
    app = _container(pod["containers"], APP)
    assert "restartPolicy" not in copier, "the copy is a regular init container: it must finish"
    assert copier["image"] == app["image"], "the models must come from the same imagesvc build"

    triton_models = [m for m in triton["volumeMounts"] if m["mountPath"] == "/models"]
    assert len(triton_models) == 1
    volume = triton_models[0]["name"]
    copier_mounts = {m["name"]: m for m in copier["volumeMounts"]}
    assert volume in copier_mounts, "the copier must write to the volume Triton reads"
    assert not copier_mounts[volume].get("readOnly", False)
    assert copier["command"][-2:] == [
        "/app/model_repository/.",
        copier_mounts[volume]["mountPath"] + "/",
    ]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[volume], "the models volume is per pod"


# ---- the app container --------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_app_probes(rendered, target):
    app = _container(_pod(rendered[target])["containers"], APP)

    readiness = app["readinessProbe"]["grpc"]
    assert readiness == {"port": 50051, "service": READINESS_SERVICE}

    # Process-only: an empty (or absent) service name, so a Triton outage never restarts the app.
    liveness = app["livenessProbe"]["grpc"]
    assert liveness["port"] == 50051
    assert liveness.get("service", "") == ""

    startup = app.get("startupProbe", {}).get("grpc")
    assert startup and startup["port"] == 50051 and startup.get("service", "") == ""


@pytest.mark.parametrize("target", TARGETS)
def test_app_container_contract(rendered, target):
    pod = _pod(rendered[target])
    app = _container(pod["containers"], APP)
    assert app["image"].startswith("imagesvc:")
    assert app["command"] == ["python", "-m", "imagesvc.server"]
    assert {p["name"]: p["containerPort"] for p in app["ports"]} == {"grpc": 50051, "metrics": 9464}

    env = _env(app)
    expected = {
        "IMAGESVC_HOST": "0.0.0.0",
        "IMAGESVC_PORT": "50051",
        "IMAGESVC_METRICS_HOST": "0.0.0.0",
        "IMAGESVC_METRICS_PORT": "9464",
        "IMAGESVC_TRITON_URL": "127.0.0.1:8001",
        "IMAGESVC_LOG_FORMAT": "json",
        "VIPS_CONCURRENCY": "1",
        "MALLOC_ARENA_MAX": "1",
        "TMPDIR": "/tmp",
    }
    assert {k: env.get(k, {}).get("value") for k in expected} == expected

    # Workers follow the CPU limit, whatever an overlay sets it to.
    workers = env["IMAGESVC_WORKERS"]["valueFrom"]["resourceFieldRef"]
    assert workers["resource"] == "limits.cpu"
    assert workers.get("containerName", APP) == APP
    assert str(workers.get("divisor", "1")) == "1"

    # TMPDIR is a size-limited emptyDir: the root filesystem is read-only.
    tmp = [m for m in app["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1
    volume = {v["name"]: v for v in pod["volumes"]}[tmp[0]["name"]]
    assert volume.get("emptyDir", {}).get("sizeLimit")


def test_every_imagesvc_variable_is_a_setting(rendered):
    """pydantic-settings ignores unknown IMAGESVC_* variables, so a typo here would go unnoticed."""
    from imagesvc.settings import Settings

    assert set(rendered) == set(TARGETS)
    for target, docs in rendered.items():
        for container in _pod(docs)["containers"] + _pod(docs)["initContainers"]:
            for name in _env(container):
                if name.startswith("IMAGESVC_"):
                    field = name.removeprefix("IMAGESVC_").lower()
                    assert field in Settings.model_fields, f"{target}: {name} is not a setting"


@pytest.mark.parametrize("target", TARGETS)
def test_termination_outlasts_drain_and_sidecar_exit(rendered, target):
    pod = _pod(rendered[target])
    app = _container(pod["containers"], APP)
    triton = _container(pod["initContainers"], TRITON)
    grace = float(_env(app).get("IMAGESVC_GRACE_PERIOD_S", {}).get("value", DEFAULT_GRACE_PERIOD_S))
    drain = float(_env(app).get("IMAGESVC_DRAIN_S", {}).get("value", DEFAULT_DRAIN_S))
    readiness = app["readinessProbe"]
    unready_after = readiness.get("periodSeconds", 10) * readiness.get("failureThreshold", 3)
    # The app keeps serving until the readiness probe has had time to take it out of rotation.
    assert drain >= unready_after
    # Triton is stopped only after the app exits, within the same terminationGracePeriodSeconds.
    triton_exit = float(_triton_flag(triton, "exit-timeout-secs"))
    assert pod["terminationGracePeriodSeconds"] > drain + grace + triton_exit


# ---- security and resources ---------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_is_locked_down(rendered, target):
    pod = _pod(rendered[target])
    pod_ctx = pod.get("securityContext", {})
    assert pod.get("automountServiceAccountToken") is False
    for c in pod["initContainers"] + pod["containers"]:
        ctx = c.get("securityContext", {})
        effective = {**pod_ctx, **ctx}
        name = f"{target}: {c['name']}"
        assert effective.get("runAsNonRoot") is True, name
        assert effective.get("runAsUser", 1) != 0, name
        assert ctx.get("readOnlyRootFilesystem") is True, name
        assert ctx.get("allowPrivilegeEscalation") is False, name
        assert ctx.get("capabilities", {}).get("drop") == ["ALL"], name
        assert not ctx.get("capabilities", {}).get("add"), name
        assert ctx.get("privileged", False) is False, name
        assert effective.get("seccompProfile", {}).get("type") == "RuntimeDefault", name


def _quantity(value: str | int) -> float:
    value = str(value)
    if value.endswith("m"):
        return float(value[:-1]) / 1000
    return float(value)


@pytest.mark.parametrize("target", TARGETS)
def test_resources(rendered, target):
    pod = _pod(rendered[target])
    for c in pod["initContainers"] + pod["containers"]:
        requests = c["resources"]["requests"]
        limits = c["resources"]["limits"]
        assert _quantity(requests["cpu"]) == _quantity(limits["cpu"]), (
            f"{c['name']}: cpu request != limit"
        )
        assert limits.get("memory"), f"{c['name']}: no memory limit"


def test_gpu_only_in_prod(rendered):
    for target in PROD_TARGETS:
        pod = _pod(rendered[target])
        triton = _container(pod["initContainers"], TRITON)
        assert str(triton["resources"]["limits"].get("nvidia.com/gpu")) == "1"
        assert str(triton["resources"]["requests"].get("nvidia.com/gpu")) == "1"
        # The GPU variants of the model configs (configs/gpu.pbtxt) where a model ships one.
        assert _triton_flag(triton, "model-config-name") == "gpu"
        app = _container(pod["containers"], APP)
        assert "nvidia.com/gpu" not in app["resources"].get("limits", {})
    for target in ("base", "dev"):
        pod = _pod(rendered[target])
        for c in pod["initContainers"] + pod["containers"]:
            for section in c["resources"].values():
                assert "nvidia.com/gpu" not in section, f"{target}: {c['name']} asks for a GPU"
        assert _triton_flag(_container(pod["initContainers"], TRITON), "model-config-name") is None


def test_the_prod_gpu_serves_every_model(rendered):
    """With --model-config-name=gpu Triton loads <model>/configs/gpu.pbtxt and falls back to
    config.pbtxt (KIND_CPU) where there is none: every model the pod copies into /models must
    ship that file, on the GPU, or the rented GPU sits idle."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repository = ROOT / "model_repository"
    models = sorted(p for p in repository.iterdir() if p.is_dir())
    assert models, "no models in model_repository/"
    for target in PROD_TARGETS:
        triton = _container(_pod(rendered[target])["initContainers"], TRITON)
        config_name = _triton_flag(triton, "model-config-name")
        for model in models:
            path = model / "configs" / f"{config_name}.pbtxt"
            assert path.is_file(), f"{target}: {model.name} would fall back to config.pbtxt"
            config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
            kinds = {
                model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group
            }
            assert kinds == {"KIND_GPU"}, f"{target}: {model.name} runs on {kinds}"
            assert config.backend == "onnxruntime", "the stock Triton image's ONNX backend"


@pytest.mark.parametrize("target", TARGETS)
def test_port_names_are_unique_in_the_pod(rendered, target):
    pod = _pod(rendered[target])
    names = [
        p["name"] for c in pod["initContainers"] + pod["containers"] for p in c.get("ports", [])
    ]
    assert len(names) == len(set(names)), names


# ---- labels, Services, PDB, HPA -----------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_recommended_labels(rendered, target):
    docs = rendered[target]
    deployment = _one(docs, "Deployment")
    app = _container(deployment["spec"]["template"]["spec"]["containers"], APP)
    tag = app["image"].rsplit(":", 1)[1]
    for labels, where in [(d["metadata"].get("labels", {}), d["kind"]) for d in docs] + [
        (deployment["spec"]["template"]["metadata"]["labels"], "pod template")
    ]:
        for key in RECOMMENDED_LABELS:
            assert labels.get(f"app.kubernetes.io/{key}"), (
                f"{target}: {where} lacks app.kubernetes.io/{key}"
            )
        assert labels["app.kubernetes.io/version"] == tag, (
            f"{target}: {where} version label != image tag"
        )
    # Selectors are immutable: they must not carry the version.
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert "app.kubernetes.io/version" not in selector
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("target", TARGETS)
def test_services(rendered, target):
    docs = rendered[target]
    pod = _pod(docs)
    pod_labels = _one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]

    service = _one(docs, "Service", APP)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert (
        ports["grpc"]["port"] == 50051
        and _container_port(pod, ports["grpc"]["targetPort"]) == 50051
    )
    assert (
        ports["metrics"]["port"] == 9464
        and _container_port(pod, ports["metrics"]["targetPort"]) == 9464
    )
    assert ports["grpc"].get("appProtocol") == "grpc"

    headless = _one(docs, "Service", f"{APP}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]
    assert _container_port(pod, headless["spec"]["ports"][0]["targetPort"]) == 50051

    for svc in (service, headless):
        selector = svc["spec"]["selector"]
        assert selector and selector.items() <= pod_labels.items()
        for port in svc["spec"]["ports"]:
            _container_port(pod, port["targetPort"])  # every named targetPort exists


@pytest.mark.parametrize("target", TARGETS)
def test_pdb(rendered, target):
    docs = rendered[target]
    pdb = _one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    pod_labels = _one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize("target", TARGETS)
def test_replicas_and_hpa(rendered, target):
    docs = rendered[target]
    deployment = _one(docs, "Deployment")
    hpas = _all(docs, "HorizontalPodAutoscaler")
    if target == "dev":
        assert not hpas
        assert deployment["spec"]["replicas"] == 1
        return
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    (hpa,) = hpas
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", APP)
    # CPU of the app container alone: a pod-wide target would average in the sidecar's request.
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "ContainerResource"
    assert metric["containerResource"]["name"] == "cpu"
    assert metric["containerResource"]["container"] == APP
    _container(deployment["spec"]["template"]["spec"]["containers"], APP)
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    if target.startswith("prod"):
        assert hpa["spec"]["minReplicas"] >= 3


# ---- components ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", PROD_TARGETS)
def test_servicemonitor(rendered, target):
    docs = rendered[target]
    monitor = _one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [
        s for s in _all(docs, "Service") if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert any(s["metadata"]["name"] == APP for s in selected)
    endpoints = {e["port"]: e for e in monitor["spec"]["endpoints"]}
    assert endpoints["metrics"].get("path", "/metrics") == "/metrics"
    for port in endpoints:
        # Exactly one selected Service exposes each scraped port, so no pod is scraped twice.
        owners = [s for s in selected if port in {p["name"] for p in s["spec"]["ports"]}]
        assert len(owners) == 1, f"port {port} is exposed by {len(owners)} selected Services"


def test_datadog_component(rendered):
    plain = _pod(rendered["prod"])
    pod = _pod(rendered["prod+datadog"])
    labels = _one(rendered["prod+datadog"], "Deployment")["spec"]["template"]["metadata"]["labels"]
    env = _env(_container(pod["containers"], APP))

    assert env["IMAGESVC_DOGSTATSD_ENABLED"]["value"] == "true"
    assert env["DD_AGENT_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env["DD_DOGSTATSD_PORT"]["value"] == "8125"
    for name in ("DD_ENV", "DD_SERVICE", "DD_VERSION"):
        source = env[name].get("value") or env[name]["valueFrom"]["fieldRef"]["fieldPath"]
        if source.startswith("metadata.labels['"):
            label = source[len("metadata.labels['") : -2]
            assert labels.get(label), f"{name} reads label {label}, which the pod template lacks"
    # The component only adds: the base environment and the container order are intact.
    plain_env = _env(_container(plain["containers"], APP))
    assert plain_env.items() <= env.items()
    assert "IMAGESVC_DOGSTATSD_ENABLED" not in plain_env
    assert [c["name"] for c in pod["initContainers"]] == [
        c["name"] for c in plain["initContainers"]
    ]


def _only_adds(plain: dict, pod: dict) -> None:
    """A component adds to the app container and the pod; it changes nothing that was there."""
    app, plain_app = (_container(p["containers"], APP) for p in (pod, plain))
    assert _env(plain_app).items() <= _env(app).items()
    assert all(m in app["volumeMounts"] for m in plain_app["volumeMounts"])
    assert all(v in pod["volumes"] for v in plain["volumes"])
    assert pod["initContainers"] == plain["initContainers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert app[probe] == plain_app[probe]


def test_feature_components_only_add(rendered):
    _only_adds(_pod(rendered["prod"]), _pod(rendered["prod+features"]))


def test_presets_component(rendered, tmp_path):
    from imagesvc import presets
    from imagesvc.settings import Settings

    docs = rendered["prod+features"]
    pod = _pod(docs)
    app = _container(pod["containers"], APP)
    volume, _, file = _volume_file(pod, app, "IMAGESVC_PRESETS_PATH")

    config_map = _generated(docs, "ConfigMap", f"{APP}-presets")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    # Added by the overlay's own components: in the overlay's namespace, with its labels.
    assert config_map["metadata"]["namespace"] == _one(docs, "Deployment")["metadata"]["namespace"]
    example = (K8S / "components" / "presets" / "presets.yaml").read_text()
    assert config_map["data"] == {file: example}

    # The example starts: it loads and validates as the server does at start (no class names).
    path = tmp_path / file
    path.write_text(example)
    settings = Settings(presets_path=str(path))
    loaded = presets.load(settings)
    presets.validate(loaded, settings, frozenset())
    assert "thumbnail" in loaded.by_name
    assert loaded.default is None, "the example must not change every request"


def test_an_overlay_replaces_the_presets(tmp_path):
    """k8s/README.md: a Component listed after components/presets replaces the example (the
    overlay's own configMapGenerator runs before its components and cannot)."""
    replacement = tmp_path / "my-presets"
    replacement.mkdir()
    (replacement / "presets.yaml").write_text("small:\n  output: {quality: 50}\n")
    (replacement / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1alpha1",
                "kind": "Component",
                "configMapGenerator": [
                    {"name": f"{APP}-presets", "behavior": "replace", "files": ["presets.yaml"]}
                ],
            }
        )
    )
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    docs = _kustomize(_prod_with(overlay, [K8S / "components" / "presets", replacement]))
    config_map = _generated(docs, "ConfigMap", f"{APP}-presets")
    assert config_map["data"] == {"presets.yaml": "small:\n  output: {quality: 50}\n"}
    volume, _, _ = _volume_file(
        _pod(docs), _container(_pod(docs)["containers"], APP), "IMAGESVC_PRESETS_PATH"
    )
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]


def test_auth_tokens_component(rendered):
    docs = rendered["prod+features"]
    pod = _pod(docs)
    app = _container(pod["containers"], APP)
    volume, mount, file = _volume_file(pod, app, "IMAGESVC_AUTH_TOKENS_PATH")

    secret = volume["secret"]
    assert secret["secretName"] == f"{APP}-auth-tokens"
    assert secret.get("optional", False) is False, "without its tokens the service cannot start"
    keys = {item["path"]: item["key"] for item in secret.get("items", [])}
    assert keys.get(file, file) == "tokens"
    # A subPath mount is never updated: token rotation without a restart needs the directory.
    for container in pod["containers"] + pod["initContainers"]:
        for m in container.get("volumeMounts", []):
            if m["name"] == mount["name"]:
                assert "subPath" not in m and "subPathExpr" not in m
    assert not _all(docs, "Secret"), "the Secret is the user's to create"
    # Health stays open (README "Authentication and TLS"): the probes need no token.
    assert app["readinessProbe"]["grpc"]["service"] == READINESS_SERVICE


def test_object_storage_component(rendered):
    from imagesvc.settings import Settings

    env = _env(_container(_pod(rendered["prod+features"])["containers"], APP))
    assert env["IMAGESVC_S3_ENABLED"]["value"] == "true"
    # No allow-list is imposed; the commented example in the patch is a valid setting.
    assert "IMAGESVC_ALLOWED_SOURCES" not in env
    patch = (K8S / "components" / "object-storage" / "deployment-patch.yaml").read_text()
    lines = patch.splitlines()
    (index,) = [i for i, line in enumerate(lines) if "IMAGESVC_ALLOWED_SOURCES" in line]
    example = lines[index + 1].split("value:", 1)[1].strip()
    assert any(p.startswith("s3://") for p in Settings(allowed_sources=example).allowed_sources)

    # No role ARN is shipped; the overlay's patch (k8s/README.md) is the only annotation.
    assert not _one(rendered["prod"], "ServiceAccount")["metadata"].get("annotations")
    account = _one(rendered["prod+features"], "ServiceAccount")
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": IRSA_ROLE_ARN}
    assert _pod(rendered["prod+features"])["serviceAccountName"] == APP
