"""YOLO models brought by the user: pre- and post-processing on tiny ONNX models of every
supported layout (in-process onnxruntime, no Triton), settings validation, and one run through
the real local Triton on a repository written by ``python -m inference.install_yolo``.

Expected boxes are worked out by hand from the documented conventions (Ultralytics' centred
letterbox, YOLOX's top-left resize and grid decoding), not taken from the code under test.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from imagesvc.settings import Settings
from inference.classes_file import parse_classes_file
from inference.errors import InferenceError
from inference.yolo import (
    NET_TYPES,
    TritonContract,
    YoloConfigError,
    YoloModel,
    letterbox,
    model_from_settings,
    nms_per_class,
    placement,
    yolox_grid,
    yolox_strides,
)
from tests.inference.yolo_models import write_yolo_onnx

S = 64  # net size of the tiny models
# The test image is 128 x 64 (W x H): r = min(64 / 64, 64 / 128) = 0.5, resized to 64 x 32.
# Ultralytics centres it (pad_y = (64 - 32) // 2 = 16), YOLOX keeps it top-left (pad 0).
IMAGE_W, IMAGE_H = 128, 64
CLASSES_TEXT = "# tiny\nperson\ncar=2\ndog\n"
CLASSES = parse_classes_file(CLASSES_TEXT)
PERSON, CAR, DOG = range(3)

# What the tiny models "see", in image pixels: (x1, y1, x2, y2), class, objectness, class score.
# car/car overlap: x 16..80 vs 24..88 (same y), IoU = 56 / 72 = 0.78 > 0.4: the weaker goes.
# person on the car's box: another class, so NMS keeps both. dog: 0.5 x 0.3 = 0.15 < 0.2.
OBJECTS = [
    ((16, 16, 80, 48), CAR, 0.9, 0.8),  # score 0.72
    ((24, 16, 88, 48), CAR, 0.9, 0.7),  # score 0.63, suppressed by the first
    ((16, 16, 80, 48), PERSON, 0.75, 0.6),  # score 0.45
    ((100, 0, 120, 20), DOG, 0.5, 0.3),  # score 0.15, under the threshold
]
EXPECTED = [("car", 0.72, (16, 16, 80, 48)), ("person", 0.45, (16, 16, 80, 48))]


def _to_input(box, *, centred: bool):
    """Image pixels to net-input pixels for the 128 x 64 image: x / 2, y / 2 (+ 16 centred)."""
    x1, y1, x2, y2 = box
    pad = 16 if centred else 0
    return (x1 / 2, y1 / 2 + pad, x2 / 2, y2 / 2 + pad)


def _cxcywh(box):
    x1, y1, x2, y2 = box
    return ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)


def _class_scores(label, score):
    scores = [0.0] * len(CLASSES)
    scores[label] = score
    return scores


def _rows_with_objectness(*, centred=True, total=6):
    rows = np.zeros((total, 5 + len(CLASSES)), dtype=np.float32)
    for i, (box, label, objectness, score) in enumerate(OBJECTS):
        rows[i] = [
            *_cxcywh(_to_input(box, centred=centred)),
            objectness,
            *_class_scores(label, score),
        ]
    return rows


def _rows_without_objectness(total=6):
    rows = np.zeros((total, 4 + len(CLASSES)), dtype=np.float32)
    for i, (box, label, objectness, score) in enumerate(OBJECTS):
        rows[i] = [
            *_cxcywh(_to_input(box, centred=True)),
            *_class_scores(label, objectness * score),
        ]
    return rows


def _end_to_end_rows(total=10):
    rows = np.zeros((total, 6), dtype=np.float32)
    for i, (box, label, objectness, score) in enumerate(OBJECTS):
        rows[i] = [*_to_input(box, centred=True), objectness * score, label]
    return rows


# YOLOX at S = 64: stride 8 (8 x 8 cells, rows 0-63), 16 (4 x 4, rows 64-79), 32 (2 x 2, 80-83),
# each row-major. A box with centre (cx, cy) and size (w, h) in cell (gx, gy) of stride s is
# written as dx = cx / s - gx, dy = cy / s - gy, log(w / s), log(h / s) (YOLOX's decoding inverted).
YOLOX_CELLS = [(8, 2, 1), (8, 3, 1), (16, 1, 0), (32, 1, 0)]  # (stride, gx, gy) per object
YOLOX_ROW = {8: 0, 16: 64, 32: 80}
YOLOX_CELLS_PER_SIDE = {8: 8, 16: 4, 32: 2}


def _yolox_rows():
    rows = np.zeros((84, 5 + len(CLASSES)), dtype=np.float32)
    for (box, label, objectness, score), (stride, gx, gy) in zip(OBJECTS, YOLOX_CELLS, strict=True):
        cx, cy, w, h = _cxcywh(_to_input(box, centred=False))
        row = YOLOX_ROW[stride] + gy * YOLOX_CELLS_PER_SIDE[stride] + gx
        rows[row] = [
            cx / stride - gx,
            cy / stride - gy,
            math.log(w / stride),
            math.log(h / stride),
            objectness,
            *_class_scores(label, score),
        ]
    return rows


LAYOUTS = {
    "yolov5": lambda: _rows_with_objectness(),
    "yolov7": lambda: _rows_with_objectness(),
    "yolov6": lambda: _rows_with_objectness(),
    "yolov6-no-objectness": lambda: _rows_without_objectness(),
    "yolov8": lambda: _rows_without_objectness().T,
    "yolov9": lambda: _rows_without_objectness().T,
    "yolov11": lambda: _rows_without_objectness().T,
    "yolov10": lambda: _end_to_end_rows(),
    "yolox": lambda: _yolox_rows(),
}


def _model(net_type, table, **kwargs):
    contract = TritonContract("images", (3, S, S), "output0", tuple(table.shape))
    return YoloModel("tiny", net_type.split("-")[0], CLASSES, contract, net_size=S, **kwargs)


def _run(path: Path, feeds: dict) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


def _detect(model, onnx_path, image):
    feeds, state = model.prepare(image)
    return model.decode(_run(onnx_path, feeds), state, (image.shape[1], image.shape[0]))


def _summary(detections):
    return [
        (
            d.class_name,
            round(d.confidence, 4),
            tuple(round(v, 3) for v in (d.left, d.top, d.right, d.bottom)),
        )
        for d in detections
    ]


def _expected(items):
    return [(name, round(score, 4), tuple(float(v) for v in box)) for name, score, box in items]


@pytest.fixture
def grey_image():
    return np.full((IMAGE_H, IMAGE_W, 3), 90, dtype=np.uint8)


# -- every layout, through a tiny ONNX model -----------------------------------------------


def test_every_net_type_has_a_layout_test():
    assert {name.split("-")[0] for name in LAYOUTS} == set(NET_TYPES)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_decodes_to_the_objects_in_image_pixels(tmp_path, grey_image, layout):
    table = LAYOUTS[layout]()
    path = write_yolo_onnx(tmp_path / "m.onnx", table, net_size=S)
    model = _model(layout, table)
    detections = _detect(model, path, grey_image)
    assert _summary(detections) == _expected(EXPECTED)
    assert {d.model for d in detections} == {"tiny"}


@pytest.mark.parametrize("layout", ["yolov5", "yolov8", "yolov10", "yolox"])
def test_confidence_threshold_is_a_minimum(tmp_path, grey_image, layout):
    table = LAYOUTS[layout]()
    path = write_yolo_onnx(tmp_path / "m.onnx", table, net_size=S)
    strict = _model(layout, table, confidence_threshold=0.5)
    assert [d.class_name for d in _detect(strict, path, grey_image)] == ["car"]
    lax = _model(layout, table, confidence_threshold=0.1)
    assert sorted(d.class_name for d in _detect(lax, path, grey_image)) == ["car", "dog", "person"]


@pytest.mark.parametrize("layout", ["yolov5", "yolov8", "yolox"])
def test_nms_threshold_decides_whether_overlapping_boxes_of_one_class_merge(
    tmp_path, grey_image, layout
):
    table = LAYOUTS[layout]()
    path = write_yolo_onnx(tmp_path / "m.onnx", table, net_size=S)
    # The two cars overlap with IoU 0.78: kept apart above that, merged below.
    loose = _model(layout, table, nms_threshold=0.8)
    cars = [d for d in _detect(loose, path, grey_image) if d.class_name == "car"]
    assert [(round(d.confidence, 4), round(d.left, 3)) for d in cars] == [
        (0.72, 16.0),
        (0.63, 24.0),
    ]
    tight = _model(layout, table, nms_threshold=0.7)
    assert [d.class_name for d in _detect(tight, path, grey_image)] == ["car", "person"]


def test_boxes_are_clipped_to_the_image(tmp_path, grey_image):
    table = np.zeros((7, 4), dtype=np.float32)
    # Input box x 48..72 (past the 64 px canvas), y 8..24 (in the top padding, 0..16): image
    # x 96..144 -> clipped to 128, y (8 - 16) * 2 = -16 -> 0 and (24 - 16) * 2 = 16.
    table[:, 0] = [60, 16, 24, 16, 0.9, 0.0, 0.0]
    path = write_yolo_onnx(tmp_path / "m.onnx", table, net_size=S)
    (only,) = _detect(_model("yolov8", table), path, grey_image)
    assert (only.left, only.top, only.right, only.bottom) == (96.0, 0.0, 128.0, 16.0)


def test_yolov10_rows_with_a_class_outside_the_classes_file_are_dropped(tmp_path, grey_image):
    table = _end_to_end_rows()
    table[4] = [8, 24, 40, 40, 0.99, 7]  # class 7 of 3
    table[5] = [8, 24, 40, 40, 0.98, -1]
    path = write_yolo_onnx(tmp_path / "m.onnx", table, net_size=S)
    assert _summary(_detect(_model("yolov10", table), path, grey_image)) == _expected(EXPECTED)


# -- pre-processing, seen through the model's output ----------------------------------------

# The probe adds input[0, c, y, x] to the person score of row 0 (objectness 1): the detection's
# confidence is then exactly what the pre-processing put in that input cell.


def _probe_table(layout):
    if layout == "yolox":
        rows = np.zeros((84, 8), dtype=np.float32)
        rows[0] = [0.0, 0.0, math.log(2), math.log(2), 1.0, 0.0, 0.0, 0.0]  # a 16 px box at (0, 0)
        return rows, (0, 5)
    columns = np.zeros((7, 5), dtype=np.float32)
    columns[0:4, 0] = [32, 32, 16, 16]
    return columns, (4, 0)


@pytest.mark.parametrize(
    ("layout", "swap_rb", "channel", "expected"),
    [
        ("yolov8", False, 0, 200 / 255),  # R of an (R, G, B) = (200, 50, 10) image, in [0, 1]
        ("yolov8", True, 0, 10 / 255),  # swap-RB: channel 0 is B
        ("yolov8", False, 2, 10 / 255),
        ("yolov8", True, 2, 200 / 255),
        ("yolox", False, 0, 200 / 255),  # YOLOX gets 0..255: the model scales by 1 / 255 here
        ("yolox", True, 0, 10 / 255),
    ],
)
def test_channel_order_and_scale_reach_the_model(tmp_path, layout, swap_rb, channel, expected):
    table, cell = _probe_table(layout)
    gain = 1 / 255 if layout == "yolox" else 1.0
    path = write_yolo_onnx(  # y 24: inside the image for both (centred 16-47, top-left 0-31)
        tmp_path / "m.onnx", table, probe=(channel, 24, 32), probe_cells=[cell], probe_gain=gain
    )
    image = np.zeros((IMAGE_H, IMAGE_W, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 200, 50, 10
    model = _model(layout, table, swap_rb=swap_rb, confidence_threshold=0.01)
    (person,) = _detect(model, path, image)
    assert person.class_name == "person"
    assert person.confidence == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    ("layout", "y", "expected"),
    [
        ("yolov8", 4, 114 / 255),  # centred: rows 0-15 of the input are padding
        ("yolov8", 60, 114 / 255),  # and rows 48-63
        ("yolov8", 30, 200 / 255),  # the image
        ("yolox", 4, 200 / 255),  # top-left: rows 0-31 are the image
        ("yolox", 40, 114 / 255),  # rows 32-63 padding, 0..255
    ],
)
def test_letterbox_padding_is_grey_114_where_each_family_puts_it(tmp_path, layout, y, expected):
    table, cell = _probe_table(layout)
    gain = 1 / 255 if layout == "yolox" else 1.0
    path = write_yolo_onnx(
        tmp_path / "m.onnx", table, probe=(0, y, 32), probe_cells=[cell], probe_gain=gain
    )
    image = np.full((IMAGE_H, IMAGE_W, 3), 200, dtype=np.uint8)
    (person,) = _detect(_model(layout, table, confidence_threshold=0.01), path, image)
    assert person.confidence == pytest.approx(expected, abs=1e-5)


# -- the maths on their own -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "centred", "expected"),
    [
        # 100 x 49 into 64: r = 0.64; Ultralytics rounds 31.36 to 31 and pads (64 - 31) / 2 =
        # 16.5 as round(16.4) = 16 on top, 17 below.
        ((100, 49), True, (64, 31, 0, 16)),
        ((100, 47), True, (64, 30, 0, 17)),  # 30.08 -> 30, 17 each side
        ((100, 49), False, (64, 31, 0, 0)),  # YOLOX: int(31.36), top-left
        ((49, 100), False, (31, 64, 0, 0)),
        ((32, 16), True, (64, 32, 0, 16)),  # scaled up: r = 2
        ((300, 300), True, (64, 64, 0, 0)),
    ],
)
def test_placement(size, centred, expected):
    where = placement(*size, S, centred=centred)
    assert (where.resized_width, where.resized_height, where.pad_x, where.pad_y) == expected


def test_placement_maps_boxes_both_ways():
    where = placement(100, 49, S, centred=True)  # 64 x 31 at (0, 16)
    image_boxes = np.array([[0, 0, 100, 49], [25, 7, 50, 14]], dtype=np.float64)
    on_input = where.to_input(image_boxes)
    np.testing.assert_allclose(on_input[0], [0, 16, 64, 47])
    np.testing.assert_allclose(where.to_image(on_input), image_boxes)


def test_letterbox_canvas():
    image = np.full((10, 20, 3), 7, dtype=np.uint8)  # r = 3.2: 64 x 32 at y 16
    canvas, where = letterbox(image, S, centred=True)
    assert canvas.shape == (S, S, 3) and canvas.dtype == np.float32
    assert (where.pad_y, where.resized_height) == (16, 32)
    assert np.all(canvas[:16] == 114) and np.all(canvas[48:] == 114)
    np.testing.assert_allclose(canvas[16:48], 7, atol=1e-4)
    with pytest.raises(ValueError, match="uint8"):
        letterbox(image.astype(np.float32), S, centred=True)


def test_yolox_grid_is_row_major_per_stride():
    cells, strides = yolox_grid(S, (8, 16, 32))
    assert len(cells) == 84 and yolox_strides(S, 84) == (8, 16, 32)
    assert cells[9].tolist() == [1, 1] and strides[9, 0] == 8  # row 9 of the 8 x 8 grid
    assert cells[64 + 6].tolist() == [2, 1] and strides[70, 0] == 16
    assert cells[83].tolist() == [1, 1] and strides[83, 0] == 32
    assert yolox_strides(S, 64 + 16 + 4 + 1) == (8, 16, 32, 64)  # P6 adds one 1 x 1 cell
    with pytest.raises(ValueError, match="84 or 85 rows"):
        yolox_strides(S, 90)


def test_nms_per_class():
    boxes = np.array(
        [
            [0, 0, 10, 10],  # 0: best
            [1, 0, 11, 10],  # 1: IoU with 0 = 90 / 110 = 0.82 -> suppressed
            [6, 0, 16, 10],  # 2: IoU with 0 = 40 / 160 = 0.25 -> kept
            [0, 0, 10, 10],  # 3: same box as 0, another class -> kept
        ],
        dtype=np.float64,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    classes = np.array([0, 0, 0, 1])
    assert nms_per_class(boxes, scores, classes, 0.4).tolist() == [0, 2, 3]
    assert nms_per_class(boxes, scores, classes, 0.85).tolist() == [0, 1, 2, 3]
    assert nms_per_class(boxes, scores, classes, 0.2).tolist() == [0, 3]
    assert nms_per_class(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.4).tolist() == []


# -- the DetectionModel contract ------------------------------------------------------------


def test_classes_and_weights_come_from_the_classes_file():
    table = LAYOUTS["yolov8"]()
    model = _model("yolov8", table)
    assert model.classes == ("person", "car", "dog")
    assert model.class_weights == {"car": 2.0}
    assert model.name == "tiny"
    assert model.inputs == {"images": ("FP32", [3, S, S])}
    assert model.outputs == {"output0": ("FP32", list(table.shape))}
    feeds, _ = model.prepare(np.zeros((5, 9, 3), dtype=np.uint8))
    assert feeds["images"].shape == (1, 3, S, S) and feeds["images"].dtype == np.float32


def test_decode_refuses_outputs_that_do_not_fit_the_contract(grey_image):
    table = LAYOUTS["yolov8"]()
    model = _model("yolov8", table)
    _, state = model.prepare(grey_image)
    with pytest.raises(InferenceError) as missing:
        model.decode({}, state, (IMAGE_W, IMAGE_H))
    with pytest.raises(InferenceError) as wrong:
        model.decode({"output0": np.zeros((1, 8, 6), np.float32)}, state, (IMAGE_W, IMAGE_H))
    assert missing.value.reason == wrong.value.reason == "TRITON_BAD_RESPONSE"


@pytest.mark.parametrize(
    ("net_type", "dims", "match"),
    [
        ("yolov8", (8, 6), r"3 classes .* columns \[7, N\]"),  # one class too many in the model
        ("yolov5", (6, 7), r"rows \[N, 8\]"),
        ("yolov6", (6, 9), r"rows \[N, 8 or 7\]"),
        ("yolov10", (300, 7), r"\[K, 6\]"),
        ("yolox", (90, 8), "84 or 85 rows"),
        ("yolov8", (7,), "2-d per image"),
    ],
)
def test_output_dims_are_checked_against_the_layout_and_the_classes(net_type, dims, match):
    contract = TritonContract("images", (3, S, S), "output0", dims)
    with pytest.raises(YoloConfigError, match=match):
        YoloModel("tiny", net_type, CLASSES, contract, net_size=S)


def test_yolox_takes_the_p5_and_p6_grids():
    for rows in (84, 85):  # strides 8-32, and 8-64 (one more 1 x 1 cell at S = 64)
        contract = TritonContract("images", (3, S, S), "output0", (rows, 8))
        assert YoloModel("tiny", "yolox", CLASSES, contract, net_size=S).outputs


def test_input_dims_and_net_size_must_agree():
    contract = TritonContract("images", (3, 640, 640), "output0", (7, 100))
    with pytest.raises(YoloConfigError, match="640x640 inputs, the net size is 64") as error:
        YoloModel("tiny", "yolov8", CLASSES, contract, net_size=S)
    assert error.value.settings == ("NET_SIZE",)
    dynamic = TritonContract("images", (3, -1, -1), "output0", (7, -1))
    YoloModel("tiny", "yolov8", CLASSES, dynamic, net_size=S)
    with pytest.raises(YoloConfigError, match="multiple of 32"):
        YoloModel("tiny", "yolov8", CLASSES, dynamic, net_size=100)


# -- settings -------------------------------------------------------------------------------


@pytest.fixture
def repository(tmp_path):
    """A model repository with a yolov8-layout model ``tiny`` installed by install_yolo."""
    from inference.install_yolo import install

    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "classes.txt").write_text(CLASSES_TEXT)
    onnx_path = write_yolo_onnx(tmp_path / "tiny.onnx", LAYOUTS["yolov8"](), net_size=None)
    install(onnx_path, "tiny", tmp_path / "classes.txt", net_size=S, repository=repo)
    return repo


@pytest.fixture(autouse=True)
def _no_detection_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("IMAGESVC_OBJECT_DETECTION_"):
            monkeypatch.delenv(name)


def _settings(**values):
    values.setdefault("object_detection_model", "tiny")
    values.setdefault("object_detection_net_type", "yolov8")
    values.setdefault("object_detection_net_size", S)
    return Settings(**values)


def test_settings_defaults_are_imgproxys():
    settings = Settings()
    assert settings.object_detection_model == ""
    assert settings.object_detection_net_type == "yolox"
    assert settings.object_detection_classes == ""
    assert settings.object_detection_net_size == 416
    assert settings.object_detection_confidence_threshold == 0.2
    assert settings.object_detection_nms_threshold == 0.4
    assert settings.object_detection_swap_rb is False
    assert model_from_settings(settings) is None


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("IMAGESVC_OBJECT_DETECTION_MODEL", "tiny")
    monkeypatch.setenv("IMAGESVC_OBJECT_DETECTION_SWAP_RB", "true")
    monkeypatch.setenv("IMAGESVC_OBJECT_DETECTION_NET_SIZE", "640")
    settings = Settings()
    assert (settings.object_detection_model, settings.object_detection_swap_rb) == ("tiny", True)
    assert settings.object_detection_net_size == 640


def test_model_from_settings(repository):
    model = model_from_settings(
        _settings(object_detection_confidence_threshold=0.3, object_detection_swap_rb=True),
        repository=repository,
    )
    assert isinstance(model, YoloModel)
    assert (model.name, model.kind.name, model.net_size) == ("tiny", "yolov8", S)
    assert (model.confidence_threshold, model.nms_threshold, model.swap_rb) == (0.3, 0.4, True)
    assert model.classes == ("person", "car", "dog") and model.class_weights == {"car": 2.0}
    assert model.batched


def test_an_explicit_classes_file_wins(repository, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("cat=0.5\nbus\nbike\n")
    model = model_from_settings(
        _settings(object_detection_classes=str(other)), repository=repository
    )
    assert model.classes == ("cat", "bus", "bike") and model.class_weights == {"cat": 0.5}


@pytest.mark.parametrize(
    ("values", "setting", "match"),
    [
        ({"object_detection_net_type": "yolov12"}, "NET_TYPE", "unknown net type 'yolov12'"),
        ({"object_detection_net_type": "yolo-nas"}, "NET_TYPE", "not supported"),
        ({"object_detection_net_type": "yolov5"}, "NET_TYPE", r"rows \[N, 8\]"),
        ({"object_detection_net_size": 640}, "NET_SIZE", "64x64 inputs, the net size is 640"),
        ({"object_detection_net_size": 100}, "NET_SIZE", "multiple of 32"),
        ({"object_detection_model": "absent"}, "MODEL", "no model 'absent' in"),
        ({"object_detection_classes": "/nonexistent/c.txt"}, "CLASSES", "cannot read"),
    ],
)
def test_bad_settings_fail_naming_the_setting(repository, values, setting, match):
    with pytest.raises(YoloConfigError, match=match) as error:
        model_from_settings(_settings(**values), repository=repository)
    assert str(error.value).startswith("IMAGESVC_OBJECT_DETECTION_")
    assert f"IMAGESVC_OBJECT_DETECTION_{setting}" in str(error.value).split(":")[0]


def test_a_classes_file_that_does_not_parse_names_the_setting_and_the_line(repository, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("person\ncar=heavy\n")
    with pytest.raises(YoloConfigError, match=r"^IMAGESVC_OBJECT_DETECTION_CLASSES: .*bad.txt:2"):
        model_from_settings(_settings(object_detection_classes=str(bad)), repository=repository)


def test_a_classes_file_with_the_wrong_number_of_classes_is_refused(repository, tmp_path):
    four = tmp_path / "four.txt"
    four.write_text("a\nb\nc\nd\n")
    with pytest.raises(YoloConfigError, match="CLASSES.*4 classes") as error:
        model_from_settings(_settings(object_detection_classes=str(four)), repository=repository)
    assert "IMAGESVC_OBJECT_DETECTION_NET_TYPE" in str(error.value)


def test_a_model_without_a_config_points_at_the_installer(repository):
    (repository / "bare").mkdir()
    (repository / "bare" / "classes.txt").write_text(CLASSES_TEXT)
    with pytest.raises(YoloConfigError, match=r"^IMAGESVC_OBJECT_DETECTION_MODEL: .*install_yolo"):
        model_from_settings(_settings(object_detection_model="bare"), repository=repository)


# -- through the real local Triton ----------------------------------------------------------


@pytest.fixture(scope="module")
def yolo_sidecar(tmp_path_factory):
    """The local Triton on a repository with two tiny models installed by the CLI: a yolov8
    layout with a dynamic batch and dynamic sides, and a raw YOLOX head fixed to a batch of
    one (``max_batch_size: 0``), probing one input pixel into the person score."""
    from inference.install_yolo import main
    from inference.sidecar import TritonSidecar

    root = tmp_path_factory.mktemp("yolo")
    repo = root / "repo"
    repo.mkdir()
    (root / "classes.txt").write_text(CLASSES_TEXT)
    v8 = write_yolo_onnx(root / "v8.onnx", LAYOUTS["yolov8"](), net_size=None)
    yolox_rows = _yolox_rows()
    # Row 31 = cell (7, 3) of stride 8: a 16 x 16 box centred on (56, 24) of the input, whose
    # person score is input[0, 0, 8, 8] / 255.
    yolox_rows[31] = [0.0, 0.0, math.log(2), math.log(2), 1.0, 0.0, 0.0, 0.0]
    yolox = write_yolo_onnx(
        root / "yolox.onnx",
        yolox_rows,
        batch=1,
        probe=(0, 8, 8),
        probe_cells=[(31, 5)],
        probe_gain=1 / 255,
    )
    for name, path, net_type in (("tiny_v8", v8, "yolov8"), ("tiny_yolox", yolox, "yolox")):
        argv = ["--onnx", str(path), "--name", name, "--classes", str(root / "classes.txt")]
        argv += ["--repository", str(repo), "--net-type", net_type]
        argv += ["--net-size", str(S)] if name == "tiny_v8" else []
        assert main(argv) == 0
    with TritonSidecar(repo) as sidecar:
        yield sidecar, repo


def _infer(url, model, feeds):
    import tritonclient.grpc as triton_grpc

    (name, tensor), (output,) = *feeds.items(), model.outputs
    client = triton_grpc.InferenceServerClient(url)
    try:
        infer_input = triton_grpc.InferInput(name, list(tensor.shape), "FP32")
        infer_input.set_data_from_numpy(tensor)
        result = client.infer(
            model.name,
            [infer_input],
            outputs=[triton_grpc.InferRequestedOutput(output)],
            client_timeout=30.0,
        )
        metadata = client.get_model_metadata(model.name, client_timeout=10.0)
        config = client.get_model_config(model.name, client_timeout=10.0).config
        return {output: result.as_numpy(output)}, metadata, config
    finally:
        client.close()


@pytest.mark.triton
@pytest.mark.parametrize(
    ("name", "net_type", "batched"), [("tiny_v8", "yolov8", True), ("tiny_yolox", "yolox", False)]
)
def test_installed_models_detect_through_the_real_triton(yolo_sidecar, name, net_type, batched):
    sidecar, repo = yolo_sidecar
    settings = _settings(
        object_detection_model=name,
        object_detection_net_type=net_type,
        object_detection_swap_rb=True,
    )
    model = model_from_settings(settings, repository=repo)
    assert model.batched is batched
    image = np.zeros((IMAGE_H, IMAGE_W, 3), dtype=np.uint8)
    image[..., 0], image[..., 2] = 30, 255  # swap-RB: channel 0 carries the blue 255
    feeds, state = model.prepare(image)
    outputs, metadata, config = _infer(sidecar.grpc_url, model, feeds)

    # The contract Triton reports is the one the model declares (the client checks it).
    (input_name, (_, input_dims)), (output_name, (_, output_dims)) = (
        *model.inputs.items(),
        *model.outputs.items(),
    )
    batch = [-1] if batched else [1]
    assert [(t.name, list(t.shape)) for t in metadata.inputs] == [(input_name, batch + input_dims)]
    assert [(t.name, list(t.shape)) for t in metadata.outputs] == [
        (output_name, batch + output_dims)
    ]
    assert config.max_batch_size == (16 if batched else 0)
    assert config.backend == "python"  # the sidecar's twin of the onnxruntime config

    detections = model.decode(outputs, state, (IMAGE_W, IMAGE_H))
    expected = list(EXPECTED)
    if net_type == "yolox":
        # The probe row: input box (48, 16, 64, 32) = image (96, 32, 128, 64) (x 2, top-left),
        # person, score 255 / 255 = 1: the blue 255 swapped into channel 0, sent as 0..255.
        expected.insert(0, ("person", 1.0, (96, 32, 128, 64)))
    assert _summary(detections) == _expected(expected)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c.replace("TYPE_FP32", "TYPE_FP16", 1), "TYPE_FP16, expected TYPE_FP32"),
        (lambda c: c.replace("max_batch_size: 16", "max_batch_size: 0"), "batch of 1 in front"),
        (
            lambda c: c.replace(
                "output {", 'output { name: "x" data_type: TYPE_FP32 dims: 1 }\noutput {'
            ),
            "one input and one output",
        ),
        (lambda c: c + "\nnot_a_field: 1\n", "not a Triton model config"),
    ],
)
def test_a_config_that_is_not_a_yolo_contract_names_the_model_setting(repository, edit, match):
    config = repository / "tiny" / "config.pbtxt"
    config.write_text(edit(config.read_text()))
    with pytest.raises(YoloConfigError, match=f"^IMAGESVC_OBJECT_DETECTION_MODEL: .*{match}"):
        model_from_settings(_settings(), repository=repository)
