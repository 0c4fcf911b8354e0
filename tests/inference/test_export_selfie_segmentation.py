"""The selfie segmentation model of model_repository/ is what
inference.export_selfie_segmentation produced, and its reader of MediaPipe's graph checks the
options the pre-processing depends on."""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

import onnx
import pytest

from inference import export_blazeface
from inference import export_selfie_segmentation as export

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
MODEL_DIR = REPOSITORY / export.MODEL_NAME


@pytest.mark.parametrize("device", sorted(export_blazeface.CONFIG_FILES))
def test_configs_are_what_the_export_writes(device):
    path = MODEL_DIR / export_blazeface.CONFIG_FILES[device]
    assert path.read_text() == export._config_pbtxt(device)


def test_provenance_and_notice_record_the_committed_file():
    provenance = (REPOSITORY / "PROVENANCE.md").read_text()
    onnx_bytes = (MODEL_DIR / "1" / "model.onnx").read_bytes()
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    row = next(
        line for line in provenance.splitlines() if line.startswith("| `selfie_segmentation` | `")
    )
    assert f"`{digest}` | {len(onnx_bytes)} |" in row, "model.onnx changed without the export"
    figures = next(
        line
        for line in provenance.splitlines()
        if re.match(r"\| `selfie_segmentation` \| \d", line)
    )
    cells = [c.strip() for c in figures.strip("|").split("|")[1:]]
    assert float(cells[1]) <= export.RAW_TOL and float(cells[2]) >= export.MASK_AGREEMENT
    assert ".venv/bin/python -m inference.export_selfie_segmentation" in provenance
    begin, end = export_blazeface._markers(REPOSITORY / "PROVENANCE.md", export.GENERATOR)
    assert provenance.count(begin) == provenance.count(end) == 1
    begin, end = export_blazeface._markers(REPOSITORY / "NOTICE", export.GENERATOR)
    assert f"{begin}\n{export.NOTICE.rstrip()}\n{end}\n" in (REPOSITORY / "NOTICE").read_text()


def test_the_onnx_graph_is_plain_opset_13_with_the_transposed_convolution():
    model = onnx.load(str(MODEL_DIR / "1" / "model.onnx"))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", export.OPSET)]
    ops = {node.op_type for node in model.graph.node}
    assert ops <= {
        "Transpose", "Conv", "Relu", "Clip", "HardSigmoid", "Mul", "Add", "AveragePool",
        "Sigmoid", "Resize", "ConvTranspose",
    }  # fmt: skip
    (deconv,) = [n for n in model.graph.node if n.op_type == "ConvTranspose"]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in deconv.attribute}
    assert attributes == {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0]}
    assert len(deconv.input) == 3, "with MediaPipe's bias"
    props = {p.key: p.value for p in model.metadata_props}
    provenance = (REPOSITORY / "PROVENANCE.md").read_text()
    assert f"`{props['source_tflite_sha256']}`" in provenance


# -- MediaPipe's graph --------------------------------------------------------------------------


def _varint(value: int) -> bytes:
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


def _image_to_tensor(width: int, height: int, keep_aspect_ratio: bool, low: float) -> bytes:
    options = (
        _field(1, 0, _varint(width))
        + _field(2, 0, _varint(height))
        + _field(3, 0, _varint(int(keep_aspect_ratio)))
        + _text(4, _field(1, 5, struct.pack("<f", low)) + _field(2, 5, struct.pack("<f", 1.0)))
        + _field(6, 0, _varint(1))
    )
    return _text(2, b"ImageToTensorCalculator") + _text(7, _text(334361939, options))


def _graph(keep_aspect_ratio: bool = False, low: float = 0.0, activation: int = 0) -> bytes:
    container = (
        _text(2, _image_to_tensor(256, 256, keep_aspect_ratio, low))
        + _text(2, _image_to_tensor(256, 144, keep_aspect_ratio, low))
        + _field(3, 0, _varint(0))
    )
    switch = _text(2, b"SwitchContainer") + _text(7, _text(export._CONTAINER_EXT, container))
    inference = _text(2, b"InferenceCalculator") + _text(
        7, _text(336783863, _text(5, _text(4, b"")))
    )
    segmentation = _text(2, b"TensorsToSegmentationCalculator") + _text(
        7, _text(374311106, _field(2, 0, _varint(activation)))
    )
    nodes = b"".join(_text(1, node) for node in (switch, inference, segmentation))
    return nodes + _text(10, b"IMAGE:image") + _text(20, export.GRAPH_TYPE.encode())


def test_read_graph_decodes_the_switch_container_and_the_calculators():
    graph = export.read_graph(_graph())
    assert graph["select"] == 0
    assert graph["image_to_tensor"][0] == {
        "output_tensor_width": 256,
        "output_tensor_height": 256,
        "keep_aspect_ratio": False,
        "output_tensor_float_range": {"min": 0.0, "max": 1.0},
        "border_mode": 1,
    }
    assert graph["segmentation"] == {"activation": 0}
    assert graph["inference"]["delegate"] == ["xnnpack"]
    assert export.check_graph(graph, [1, 256, 256, 3]) == []


@pytest.mark.parametrize(
    ("graph", "problem"),
    [
        (_graph(keep_aspect_ratio=True), "keep_aspect_ratio"),
        (_graph(low=-1.0), "input range"),
        (_graph(activation=1), "activation"),
    ],
    ids=["letterbox", "range", "sigmoid"],
)
def test_check_graph_refuses_options_the_preprocessing_does_not_follow(graph, problem):
    problems = export.check_graph(export.read_graph(graph))
    assert len(problems) == 1 and problem in problems[0]


def test_the_numpy_kernel_is_mediapipes_transpose_convolution():
    """Scatter form of transpose_conv_bias.cc on a tiny case worked out by hand: a 2 x 2 input,
    one channel, a 2 x 2 kernel of stride 2 tiles the kernel scaled by each input pixel."""
    import numpy as np

    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2, 1)
    weights = np.array([1.0, 10.0, 100.0, 1000.0]).reshape(1, 2, 2, 1)
    out = export.mediapipe_transpose_conv_bias(x, weights, np.array([0.5]), (2, 2), same=True)
    kernel = weights[0, :, :, 0]
    expected = np.block([[1 * kernel, 2 * kernel], [3 * kernel, 4 * kernel]]) + 0.5
    np.testing.assert_array_equal(out[0, :, :, 0], expected)
    # SAME with a 3 x 3 kernel on 3 x 3: MediaPipe's Prepare pads 3 - (3 - 1) % 2 - 1 = 2, so
    # the output is 2 * (3 - 1) + 3 - 2 = 5 pixels (TensorFlow's SAME would give 6), cropped 1
    # on top and left: the centre tap of input pixel i lands at 2 * i + 1 - 1.
    centre = np.zeros((1, 3, 3, 1))
    centre[0, 1, 1, 0] = 1.0
    out = export.mediapipe_transpose_conv_bias(
        np.ones((1, 3, 3, 1)), centre, np.zeros(1), (2, 2), same=True
    )
    assert out.shape == (1, 5, 5, 1)
    line = [1, 0, 1, 0, 1]
    np.testing.assert_array_equal(out[0, :, :, 0], np.outer(line, line))
