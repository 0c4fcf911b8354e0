"""Tiny ONNX models with the output layouts of the YOLO families, built with onnx's helper API.

Each model's output is a constant table (the test writes the rows or columns a YOLO family
would) plus, optionally, one input pixel added to chosen cells: that lets a test see what the
pre-processing really sent (channel order, scaling, padding) through the model's output.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from onnx import TensorProto, checker, helper, numpy_helper, save

OPSET = 13
IR_VERSION = 8  # readable by every onnxruntime the project runs


def write_yolo_onnx(
    path: Path,
    table: np.ndarray,
    *,
    net_size: int | None = 64,
    batch: int | None = None,
    probe: tuple[int, int, int] = (0, 0, 0),
    probe_cells: Iterable[tuple[int, int]] = (),
    probe_gain: float = 1.0,
    input_name: str = "images",
    output_name: str = "output0",
    extra_output: str | None = None,
    pin_batch: bool = False,
) -> Path:
    """Write a model: input ``[batch, 3, S, S]`` FP32, output ``[batch, *table.shape]`` =
    ``table + probe_gain * input[:, c, y, x]`` on ``probe_cells`` (``probe`` = ``(c, y, x)``).

    ``net_size`` None: dynamic sides (``height``, ``width``); ``batch`` None: a dynamic
    batch, else that fixed batch. ``extra_output`` adds a second output (the pixel).
    ``pin_batch``: the output goes through a Reshape to a batch of 1, so the graph declares a
    dynamic batch but fails on two images (exports that trace the batch as a constant).
    """
    table = np.asarray(table, dtype=np.float32)
    mask = np.zeros_like(table)
    for row, column in probe_cells:
        mask[row, column] = probe_gain
    channel, y, x = probe
    batch_dim = "batch" if batch is None else batch
    side = ("height", "width") if net_size is None else (net_size, net_size)
    initializers = [
        numpy_helper.from_array(table[None], "table"),
        numpy_helper.from_array(mask[None], "mask"),
        numpy_helper.from_array(np.array([channel, y, x], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([channel + 1, y + 1, x + 1], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 1, 1], dtype=np.int64), "pixel_shape"),
    ]
    nodes = [
        helper.make_node("Slice", [input_name, "starts", "ends", "axes"], ["pixel4"]),
        helper.make_node("Reshape", ["pixel4", "pixel_shape"], ["pixel"]),
        helper.make_node("Mul", ["pixel", "mask"], ["probed"]),
        helper.make_node("Add", ["table", "probed"], ["summed" if pin_batch else output_name]),
    ]
    if pin_batch:
        initializers.append(
            numpy_helper.from_array(np.array([1, *table.shape], dtype=np.int64), "one_shape")
        )
        nodes.append(helper.make_node("Reshape", ["summed", "one_shape"], [output_name]))
    outputs = [
        helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch_dim, *table.shape])
    ]
    if extra_output:
        nodes.append(helper.make_node("Identity", ["pixel"], [extra_output]))
        outputs.append(
            helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, [batch_dim, 1, 1])
        )
    graph = helper.make_graph(
        nodes,
        "tiny_yolo",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch_dim, 3, *side])],
        outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    return path


def write_fp16_onnx(path: Path, net_size: int = 64) -> Path:
    """A model whose input is FP16 (``half=True`` exports): the installer refuses it."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["images"], ["as_float"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["as_float"], ["output0"], axes=[1], keepdims=0),
        ],
        "fp16",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT16, [1, 3, net_size, net_size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, net_size, net_size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    checker.check_model(model)
    save(model, str(path))
    return path
