"""MediaPipe detectors as DetectionModels, and the models the service builds from settings
(no Triton: outputs are made by hand or by onnxruntime in-process)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import skimage.data

from inference.blazeface import SHORT_RANGE, clip_boxes, decode, generate_anchors, weighted_nms
from inference.client import (
    DEFAULT_MODELS,
    SHORT_RANGE_EXTRA_SCORE,
    default_model_repository,
    shipped_models,
)
from inference.mediapipe_detectors import (
    POSE_ROI,
    SPECS,
    MediaPipeDetector,
    read_classes,
)
from inference.ssd import roi_rects, rotated_rect_bounds

REPOSITORY = default_model_repository()


def _session(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    path = REPOSITORY / name / "1" / "model.onnx"
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_the_shipped_classes_files():
    assert {name: read_classes(REPOSITORY, name) for name in DEFAULT_MODELS} == {
        "blazeface_short_range": (("face",), {}),
        "blazeface_full_range": (("face",), {}),
        "pose_detection": (("person",), {}),
        "palm_detection_full": (("hand",), {}),
    }
    for name, spec in SPECS.items():
        assert (REPOSITORY / name / "classes.txt").read_text() == spec.classes_file


def test_classes_and_weights_come_from_the_classes_file(tmp_path):
    (tmp_path / "pose_detection").mkdir()
    (tmp_path / "pose_detection" / "classes.txt").write_text("# people\nPerson = 2\n")
    model = MediaPipeDetector.from_repository("pose_detection", tmp_path)
    assert model.classes == ("person",) and model.class_weights == {"person": 2.0}
    assert model.score_threshold == 0.5 and model.nms_threshold == pytest.approx(0.3)


def test_a_single_class_head_refuses_other_classes_files(tmp_path):
    (tmp_path / "pose_detection").mkdir()
    (tmp_path / "pose_detection" / "classes.txt").write_text("person\nhand\n")
    with pytest.raises(ValueError, match="one class"):
        MediaPipeDetector.from_repository("pose_detection", tmp_path)
    with pytest.raises(ValueError, match="cannot read its classes file"):
        MediaPipeDetector.from_repository("palm_detection_full", tmp_path)
    with pytest.raises(ValueError, match="not a MediaPipe detector"):
        MediaPipeDetector.from_repository("yolo", tmp_path)


def test_shipped_models_follow_the_enabled_setting():
    assert [m.name for m in shipped_models()] == list(DEFAULT_MODELS)
    kept = shipped_models(enabled=("pose_detection", "blazeface_full_range"))
    assert [m.name for m in kept] == ["blazeface_full_range", "pose_detection"]
    short, full = shipped_models(face_score_threshold=0.7, nms_threshold=0.2)[:2]
    assert (full.score_threshold, full.nms_threshold) == (0.7, 0.2)
    # Short range takes SHORT_RANGE_EXTRA_SCORE more (it scored textures at 0.50-0.54).
    assert short.score_threshold == pytest.approx(0.7 + SHORT_RANGE_EXTRA_SCORE)
    assert short.nms_threshold == 0.2
    assert shipped_models()[2].score_threshold == 0.5  # MediaPipe's, for pose
    with pytest.raises(ValueError, match="unknown detection models"):
        shipped_models(enabled=("pose_detection", "no_such_model"))


def test_tensor_specs_are_the_configs():
    model = MediaPipeDetector.from_repository("palm_detection_full", REPOSITORY)
    assert model.inputs == {"input": ("FP32", [192, 192, 3])}
    assert model.outputs == {
        "regressors": ("FP32", [2016, 18]),
        "classificators": ("FP32", [2016, 1]),
    }


def test_face_decoding_is_the_blazeface_path():
    """A BlazeFace model decodes as inference.blazeface always did: decode, map back,
    weighted NMS, clip."""
    model = MediaPipeDetector.from_repository("blazeface_short_range", REPOSITORY)
    image = skimage.data.astronaut()
    inputs, box = model.prepare(image)
    regressors, classificators = _session("blazeface_short_range").run(None, inputs)
    boxes, scores = decode(regressors, classificators, SHORT_RANGE, 0.5)
    boxes, scores = weighted_nms(box.to_image(boxes), scores, 0.3)
    expected = clip_boxes(boxes, 512, 512)
    found = model.decode(
        {"regressors": regressors, "classificators": classificators}, box, (512, 512)
    )
    assert len(found) == len(expected) == 1
    got = [[d.left, d.top, d.right, d.bottom] for d in found]
    assert np.array_equal(np.array(got), expected)
    assert [d.confidence for d in found] == scores.tolist()
    assert found[0].class_name == "face" and found[0].model == "blazeface_short_range"


def test_a_person_is_the_body_region_not_the_face_box():
    """Outputs made by hand: one pose detection whose face box and keypoints are known."""
    model = MediaPipeDetector.from_repository("pose_detection", REPOSITORY)
    image = np.zeros((448, 448, 3), np.uint8)  # 2x the input: no letterbox bars
    inputs, box = model.prepare(image)
    assert inputs["input"].shape == (1, 224, 224, 3)
    anchors = generate_anchors(SPECS["pose_detection"].ssd)
    index = 1568 + 2 * (5 * 14 + 5)  # stride-16 cell (5, 5): anchor 5.5 / 14 both ways
    regressors = np.zeros((1, len(anchors), 12), np.float32)
    classificators = np.full((1, len(anchors), 1), -30.0, np.float32)
    classificators[0, index] = 3.0
    regressors[0, index, :4] = [0, -40, 20, 24]  # the face, 40 input px above the anchor
    regressors[0, index, 4:8] = [0, 30, 0, -30]  # mid-hip 30 px below, size point 30 above
    found = model.decode(
        {"regressors": regressors, "classificators": classificators}, box, (448, 448)
    )
    assert len(found) == 1 and found[0].class_name == "person"
    centre = anchors[index] * 448
    hip, size_point = centre + [0, 60], centre - [0, 60]  # in image pixels (x2)
    rect = roi_rects(np.zeros((1, 4)), np.array([[hip, size_point, hip, hip]]), POSE_ROI)
    expected = rotated_rect_bounds(rect)[0]
    assert (found[0].left, found[0].top, found[0].right, found[0].bottom) == pytest.approx(
        tuple(expected)
    )
    # Upright: a square of 2 x 120 px x 1.25 on the hips, far larger than the 40 x 48 face.
    assert found[0].width == found[0].height == pytest.approx(300)


@pytest.mark.parametrize("name", ["pose_detection", "palm_detection_full"])
def test_a_batch_gives_what_each_image_gives_alone(name):
    spec = SPECS[name].ssd
    session = _session(name)
    batch = np.random.default_rng(5).uniform(*spec.input_range, (4, *spec.input_shape[1:]))
    together = session.run(["regressors", "classificators"], {"input": batch.astype(np.float32)})
    assert [t.shape for t in together] == [
        (4, spec.num_anchors, spec.num_coords),
        (4, spec.num_anchors, 1),
    ]
    for index in range(len(batch)):
        alone = session.run(None, {"input": batch[index : index + 1].astype(np.float32)})
        for got, want in zip(together, alone, strict=True):
            np.testing.assert_allclose(got[index], want[0], rtol=0, atol=1e-5)
    assert not np.allclose(together[0][0], together[0][1])


def _wide_astronaut() -> np.ndarray:
    canvas = np.full((512, 900, 3), 128, np.uint8)
    canvas[:, 300:812] = skimage.data.astronaut()
    return canvas


@pytest.mark.parametrize(
    "image",
    [skimage.data.astronaut(), _wide_astronaut(), skimage.data.coffee()],
    ids=["astronaut", "wide", "coffee"],
)
def test_the_blazeface_pair_merges_as_it_always_did(image):
    """Both face models of shipped_models, merged by the client, give what one weighted NMS
    over the union of both models' boxes, then a clip, always gave (inference.blazeface)."""
    from inference.blazeface import FULL_RANGE, merge
    from inference.client import merge_detections

    height, width = image.shape[:2]
    models = [m for m in shipped_models() if m.name.startswith("blazeface")]
    per_model, union = [], []
    for model, variant in zip(models, (SHORT_RANGE, FULL_RANGE), strict=True):
        inputs, box = model.prepare(image)
        regressors, classificators = _session(model.name).run(None, inputs)
        boxes, scores = decode(regressors, classificators, variant, 0.5)
        union.append((box.to_image(boxes), scores))
        outputs = {"regressors": regressors, "classificators": classificators}
        per_model.append(model.decode(outputs, box, (width, height)))
    boxes, scores = merge(union, 0.3)
    expected = clip_boxes(boxes, width, height)
    found = merge_detections(
        per_model, 0.3, groups=[m.nms_group for m in models], image_size=(width, height)
    )
    assert len(found) == len(expected)
    got = np.array([[d.left, d.top, d.right, d.bottom] for d in found]).reshape(-1, 4)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert [d.confidence for d in found] == scores.tolist()
