"""The pose and palm models of model_repository/ are what inference.export_mediapipe_detectors
produced, and its reader of MediaPipe's compiled graphs decodes the protobuf wire format."""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

import pytest

from inference import export_blazeface
from inference import export_mediapipe_detectors as export
from inference.mediapipe_detectors import SPECS

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
NAMES = [name for name, *_ in export.MODELS]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("device", sorted(export_blazeface.CONFIG_FILES))
def test_configs_are_what_the_export_writes(name, device):
    spec = SPECS[name].ssd
    expected = export_blazeface._config_pbtxt(
        name,
        spec.input_size,
        spec.num_anchors,
        device,
        num_coords=spec.num_coords,
        generator=export.GENERATOR,
    )
    assert (REPOSITORY / name / export_blazeface.CONFIG_FILES[device]).read_text() == expected


def test_provenance_and_notice_record_the_committed_files():
    provenance = (REPOSITORY / "PROVENANCE.md").read_text()
    for name in NAMES:
        digest = hashlib.sha256((REPOSITORY / name / "1" / "model.onnx").read_bytes()).hexdigest()
        row = next(line for line in provenance.splitlines() if line.startswith(f"| `{name}` | `"))
        assert f"`{digest}`" in row, f"{name}: model.onnx changed without re-running the export"
        # Six figures against LiteRT (the fifth: batched vs alone), then LiteRT against itself.
        figures = next(
            line for line in provenance.splitlines() if re.match(rf"\| `{name}` \| \d", line)
        )
        assert re.fullmatch(rf"\| `{name}` \|( \d\.\d\de[-+]\d\d \|){{7}}", figures)
    assert export.SOURCE_WHEEL_SHA256 in provenance
    assert ".venv/bin/python -m inference.export_mediapipe_detectors" in provenance
    # Both exporters' sections are there, each once.
    for key in (export_blazeface.GENERATOR, export.GENERATOR):
        begin, end = export_blazeface._markers(REPOSITORY / "PROVENANCE.md", key)
        assert provenance.count(begin) == provenance.count(end) == 1
    begin, end = export_blazeface._markers(REPOSITORY / "NOTICE", export.GENERATOR)
    assert f"{begin}\n{export.NOTICE.rstrip()}\n{end}\n" in (REPOSITORY / "NOTICE").read_text()


# -- the protobuf wire format -------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _text(number: int, value: bytes) -> bytes:
    return _field(number, 2, _varint(len(value)) + value)


def test_decode_reads_varints_floats_strings_and_repeated_fields():
    schema = export.OPTION_FIELDS["SsdAnchorsCalculator"]
    message = (
        _field(1, 0, _varint(224))
        + _field(3, 5, struct.pack("<f", 0.1484375))
        + _field(10, 0, _varint(8))
        + _field(10, 0, _varint(16))
        + _text(10, _varint(32) + _varint(32))  # packed
        + _field(11, 5, struct.pack("<f", 1.0))
        + _field(14, 0, _varint(1))
    )
    assert export._decode(message, schema) == {
        "input_size_width": 224,
        "min_scale": 0.1484375,
        "strides": [8, 16, 32, 32],
        "aspect_ratios": [1.0],
        "fixed_anchor_size": True,
    }
    negative = _field(20, 0, _varint(-1))
    assert export._decode(negative, export.OPTION_FIELDS["TensorsToDetectionsCalculator"]) == {
        "max_results": -1
    }
    with pytest.raises(ValueError, match="unknown field 99"):
        export._decode(_field(99, 0, _varint(1)), schema)
    with pytest.raises(ValueError):
        export.wire_fields(b"\x08")  # a varint cut short


def test_read_graph_finds_a_graph_after_zero_padding():
    options = _text(247258239, _field(7, 0, _varint(5)))  # SsdAnchorsCalculatorOptions.ext
    node = _text(2, b"SsdAnchorsCalculator") + _text(6, b"anchors") + _text(7, options)
    graph = _text(1, node) + _text(20, b"SomeDetectionCpu")
    binary = b"\x01garbage\x00\x00\x00" + graph + b"\x00\x00tail"
    parsed = export.read_graph(binary, "SomeDetectionCpu")
    assert parsed["type"] == ["SomeDetectionCpu"]
    assert export.graph_node(parsed, "SsdAnchorsCalculator") == {"num_layers": 5}
    with pytest.raises(ValueError, match="0 serialized graphs"):
        export.read_graph(binary, "OtherCpu")


# -- compact weights ----------------------------------------------------------------------


def _graph_of(weights: dict, compact: bool):
    """A graph adding every weight (each shaped like the input) to the input: its outputs
    are the weights as onnxruntime sees them."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes, stored = (
        export.compact_weights(weights)
        if compact
        else ([], [numpy_helper.from_array(v, n) for n, v in weights.items()])
    )
    shape = next(iter(weights.values())).shape
    outputs = []
    for name in weights:
        nodes.append(helper.make_node("Add", ["input", name], [f"{name}_out"]))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, shape))
    graph = helper.make_graph(
        nodes,
        "weights",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        outputs,
        initializer=stored,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", export.OPSET)], ir_version=export.IR_VERSION
    )
    return model, np.zeros(shape, np.float32)


def test_compact_weights_rebuild_every_value_exactly_in_fewer_bytes():
    import numpy as np
    import onnx
    import onnxruntime as ort

    rng = np.random.default_rng(7)
    shape = (96, 80, 1, 1)  # 7680 elements
    half = rng.normal(0, 0.2, shape).astype(np.float16).astype(np.float32)
    sparse = np.where(rng.random(shape) < 0.75, 0.0, half).astype(np.float32)
    sparse.flat[-1] = 0.5  # a non-zero in the last, partly used byte of the mask
    weights = {
        "dense_half": half,
        "sparse_half": sparse,
        "full_precision": rng.normal(0, 0.2, shape).astype(np.float32),  # not float16-exact
        "all_zero": np.zeros(shape, np.float32),
    }
    sizes, outputs = {}, {}
    for compact in (False, True):
        model, x = _graph_of(weights, compact)
        onnx.checker.check_model(model, full_check=True)
        sizes[compact] = len(model.SerializeToString())
        session = ort.InferenceSession(model.SerializeToString())
        outputs[compact] = session.run(None, {"input": x})
    for name, dense, rebuilt in zip(weights, outputs[False], outputs[True], strict=True):
        assert np.array_equal(dense, weights[name]) and np.array_equal(rebuilt, dense), name
    # Per element: float16 saves 2 bytes (dense_half, all_zero); the sparse one keeps a bit
    # and a quarter of float16 values (saves ~3.4); less the rebuilding nodes.
    assert sizes[False] - sizes[True] > 7 * 7680
    stored = {t.name for t in export.compact_weights(weights)[1]}
    assert "full_precision" in stored and "dense_half_f16" in stored
    assert {"sparse_half_sparse_mask", "sparse_half_sparse_values"} <= stored


def test_the_committed_detectors_are_stored_compactly():
    for name in NAMES:
        assert (REPOSITORY / name / "1" / "model.onnx").stat().st_size < 5 * 1024 * 1024
