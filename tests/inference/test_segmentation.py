"""Selfie segmentation (issue 11's person mask): the pre- and post-processing maths of
`inference.segmentation` without Triton, the committed model's contract, what it makes of a
photograph of a person and of images without one, and the same masks through the real local
Triton as from onnxruntime in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import skimage.data
import tritonclient.grpc as triton_grpc
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from inference.segmentation import (
    SELFIE_SEGMENTATION,
    MaskMapping,
    SegmentationModel,
    postprocess,
    preprocess,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "model_repository" / SELFIE_SEGMENTATION.name
SPEC = SELFIE_SEGMENTATION


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        str(MODEL_DIR / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )


def _mask(session, rgb: np.ndarray, out_w: int | None = None, out_h: int | None = None):
    tensor, mapping = preprocess(rgb)
    (raw,) = session.run([SPEC.output_name], {SPEC.input_name: tensor})
    height, width = rgb.shape[:2]
    return postprocess(raw, mapping, out_w or width, out_h or height)


# The astronaut (skimage.data.astronaut(), 512 x 512): her head, her orange suit down to the
# bottom edge, and the helmet she holds at the lower right, as boxes (x0, y0, x1, y1) read off
# the photograph. Outside them: the flag (top left), the grey backdrop and the shuttle model
# (top right).
ASTRONAUT = ((150, 15, 300, 190), (20, 190, 370, 512), (270, 340, 512, 512))
ASTRONAUT_TORSO = (100, 250, 330, 400)  # the suit, well inside her outline
ASTRONAUT_BACKGROUND = ((0, 0, 128, 128), (384, 0, 512, 128))  # flag; backdrop by the shuttle


def _region(boxes, width: int = 512, height: int = 512) -> np.ndarray:
    region = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in boxes:
        region[y0:y1, x0:x1] = True
    return region


def _no_person_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:400]
    checker = ((yy // 25 + xx // 25) % 2 * 200 + 20).astype(np.uint8)
    gradient = np.stack([xx * 255 // 399, yy * 255 // 299, np.full_like(xx, 90)], axis=-1)
    return {
        "flat": np.full((300, 400, 3), 128, np.uint8),
        "noise": rng.integers(0, 256, (300, 400, 3), dtype=np.uint8),
        "checkerboard": np.repeat(checker[..., None], 3, axis=-1),
        "gradient": gradient.astype(np.uint8),
    }


# --- preprocess --------------------------------------------------------------------------------


def test_preprocess_gives_the_model_input_in_zero_to_one():
    rgb = np.random.default_rng(1).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    tensor, mapping = preprocess(rgb)
    assert tensor.shape == SPEC.input_shape == (1, 256, 256, 3)
    assert tensor.dtype == np.float32
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    assert mapping == MaskMapping(
        image_width=500, image_height=300, input_width=256, input_height=256
    )


def test_preprocess_maps_0_and_255_to_the_ends_of_the_range():
    for value, expected in ((0, 0.0), (255, 1.0), (51, 0.2)):
        tensor, _ = preprocess(np.full((40, 70, 3), value, np.uint8))
        np.testing.assert_allclose(tensor, expected, atol=1e-6)


def test_preprocess_stretches_the_whole_image_without_bars():
    """MediaPipe's ImageToTensorCalculator for this model has keep_aspect_ratio: false: a wide
    image fills the square (no letterbox), each half of it landing on each half of the input."""
    rgb = np.zeros((100, 400, 3), np.uint8)
    rgb[:, :200] = (255, 0, 0)
    rgb[:, 200:] = (0, 0, 255)
    tensor, _ = preprocess(rgb)
    left, right = tensor[0, :, :127], tensor[0, :, 129:]
    np.testing.assert_allclose(left, np.broadcast_to([1.0, 0.0, 0.0], left.shape), atol=1e-6)
    np.testing.assert_allclose(right, np.broadcast_to([0.0, 0.0, 1.0], right.shape), atol=1e-6)
    assert (tensor[0].sum(axis=-1) > 0.99).all(), "no black border anywhere"


def test_preprocess_keeps_positions_proportional():
    """A pixel at (x, y) of the image lands at (x * 256 / W, y * 256 / H) of the input."""
    rgb = np.zeros((300, 600, 3), np.uint8)
    rgb[150:210, 300:420] = 255  # x 300..420, y 150..210 -> x 128..179.2, y 128..179.2
    tensor, _ = preprocess(rgb)
    white = tensor[0, ..., 0] > 0.5
    ys, xs = np.nonzero(white)
    assert (xs.min(), ys.min()) == (128, 128)
    assert xs.max() in (178, 179) and ys.max() in (178, 179)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((0, 10, 3), np.uint8),
    ],
    ids=["grey", "rgba", "float", "empty"],
)
def test_preprocess_rejects_what_is_not_an_rgb_uint8_image(bad):
    with pytest.raises(ValueError):
        preprocess(bad)


def test_a_letterboxing_spec_is_refused_rather_than_stretched():
    letterboxed = SegmentationModel(
        "m", "input", "mask", 256, 256, (0.0, 1.0), keep_aspect_ratio=True
    )
    with pytest.raises(ValueError, match="letterbox"):
        preprocess(np.zeros((10, 10, 3), np.uint8), letterboxed)


# --- postprocess -------------------------------------------------------------------------------

MAPPING = MaskMapping(image_width=600, image_height=200, input_width=256, input_height=256)


@pytest.mark.parametrize(
    "shape", [(256, 256), (256, 256, 1), (1, 256, 256, 1)], ids=["HW", "HW1", "1HW1"]
)
def test_postprocess_accepts_the_mask_with_or_without_batch_and_channel(shape):
    mask = np.full(shape, 0.25, np.float32)
    out = postprocess(mask, MAPPING, 600, 200)
    assert out.shape == (200, 600) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_postprocess_stretches_the_mask_back_over_the_whole_image():
    mask = np.zeros((256, 256), np.float32)
    mask[:, :128] = 1.0  # the left half of the input is the left half of the image
    mask[192:, :] = 0.5  # and its bottom quarter the image's bottom quarter
    out = postprocess(mask, MAPPING, 600, 200)
    np.testing.assert_allclose(out[:140, :290], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[:140, 310:], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[160:, :], 0.5, atol=1e-6)
    # Bilinear across the edge, symmetric about x = 300 (input column 128).
    row = out[50]
    assert 0.0 < row[299] < 1.0 and 0.0 < row[300] < 1.0
    np.testing.assert_allclose(row[299] + row[300], 1.0, atol=1e-6)
    assert np.all(np.diff(row[280:320]) <= 0)


def test_postprocess_at_any_output_size():
    mask = np.random.default_rng(2).uniform(0, 1, (256, 256)).astype(np.float32)
    assert postprocess(mask, MAPPING, 60, 20).shape == (20, 60)  # e.g. the service's output
    np.testing.assert_array_equal(postprocess(mask, MAPPING, 256, 256), mask)
    smaller = postprocess(mask, MAPPING, 128, 128)
    # Shrinking by 2 averages 2 x 2 blocks (antialiased), it does not pick one pixel.
    blocks = mask.reshape(128, 2, 128, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(smaller, blocks, atol=1e-5)


def test_postprocess_clips_to_a_probability():
    mask = np.linspace(-0.5, 1.5, 256 * 256, dtype=np.float32).reshape(256, 256)
    out = postprocess(mask, MAPPING, 300, 300)
    assert out.min() == 0.0 and out.max() == 1.0


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((2, 256, 256, 1), (10, 10)),
        ((256, 256, 2), (10, 10)),
        ((128, 128), (10, 10)),
        ((256, 256), (0, 10)),
    ],
)
def test_postprocess_rejects_what_it_cannot_map(shape, size):
    with pytest.raises(ValueError):
        postprocess(np.zeros(shape, np.float32), MAPPING, *size)


def test_preprocess_then_postprocess_puts_a_region_back_where_it_was():
    """The round trip through the 256 x 256 input keeps a region in place, whatever the aspect
    ratio: channel 0 of the input, taken as a mask, maps back onto the marked rectangle."""
    rgb = np.zeros((360, 720, 3), np.uint8)
    rgb[90:270, 180:540] = 255
    tensor, mapping = preprocess(rgb)
    back = postprocess(tensor[0, ..., :1], mapping, 720, 360) > 0.5
    expected = np.zeros((360, 720), bool)
    expected[90:270, 180:540] = True
    assert (back != expected).mean() < 0.005
    assert back[100:260, 190:530].all() and not back[:80].any() and not back[:, :170].any()


# --- the committed model -----------------------------------------------------------------------


def test_the_spec_the_configs_and_the_onnx_graph_tell_one_contract(session):
    for path in (MODEL_DIR / "config.pbtxt", MODEL_DIR / "configs" / "gpu.pbtxt"):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert config.name == SPEC.name and config.backend == "onnxruntime"
        assert config.max_batch_size == 16
        for tensors, spec_tensors in ((config.input, SPEC.inputs), (config.output, SPEC.outputs)):
            assert {
                t.name: (
                    model_config_pb2.DataType.Name(t.data_type).removeprefix("TYPE_"),
                    list(t.dims),
                )
                for t in tensors
            } == dict(spec_tensors)
    (graph_input,) = session.get_inputs()
    (graph_output,) = session.get_outputs()
    assert (graph_input.name, graph_input.shape) == (SPEC.input_name, ["batch", 256, 256, 3])
    assert (graph_output.name, graph_output.shape) == (SPEC.output_name, ["batch", 256, 256, 1])
    assert not (MODEL_DIR / "classes.txt").exists(), "not a detector: no classes"
    assert (MODEL_DIR / "1" / "model.onnx").stat().st_size < 1_000_000


def test_the_mask_covers_the_astronaut(session):
    person = _mask(session, skimage.data.astronaut()) > SPEC.threshold
    region = _region(ASTRONAUT)
    iou = (person & region).sum() / (person | region).sum()
    assert iou >= 0.8, iou
    x0, y0, x1, y1 = ASTRONAUT_TORSO
    assert person[y0:y1, x0:x1].mean() >= 0.99
    for x0, y0, x1, y1 in ASTRONAUT_BACKGROUND:
        assert person[y0:y1, x0:x1].mean() <= 0.01
    assert person[~region].mean() <= 0.05


@pytest.mark.parametrize("name", sorted(_no_person_images()))
def test_an_image_without_a_person_gives_an_empty_mask(session, name):
    mask = _mask(session, _no_person_images()[name])
    assert (mask > SPEC.threshold).mean() <= 0.01
    assert mask.mean() <= 0.05


def test_a_batch_gives_what_each_image_gives_alone(session):
    images = [skimage.data.astronaut(), *_no_person_images().values()]
    batch = np.concatenate([preprocess(image)[0] for image in images])
    (together,) = session.run([SPEC.output_name], {SPEC.input_name: batch})
    for index, sample in enumerate(batch):
        (alone,) = session.run([SPEC.output_name], {SPEC.input_name: sample[None]})
        np.testing.assert_allclose(together[index : index + 1], alone, rtol=0, atol=1e-6)


# --- through the real local Triton -------------------------------------------------------------


@pytest.mark.triton
def test_triton_serves_the_same_masks_as_onnxruntime_in_process(triton_sidecar, session):
    assert SPEC.name in triton_sidecar.model_names
    images = [skimage.data.astronaut(), _no_person_images()["checkerboard"]]
    batch = np.concatenate([preprocess(image)[0] for image in images])
    client = triton_grpc.InferenceServerClient(triton_sidecar.grpc_url)
    try:
        metadata = client.get_model_metadata(SPEC.name, client_timeout=10.0)
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
            (SPEC.input_name, "FP32", [-1, 256, 256, 3])
        ]
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
            (SPEC.output_name, "FP32", [-1, 256, 256, 1])
        ]
        results = []
        for rows in (batch[:1], batch[1:], batch):  # each image alone, and both as one batch
            infer_input = triton_grpc.InferInput(SPEC.input_name, list(rows.shape), "FP32")
            infer_input.set_data_from_numpy(rows)
            result = client.infer(SPEC.name, [infer_input], client_timeout=30.0)
            got = result.as_numpy(SPEC.output_name)
            (want,) = session.run([SPEC.output_name], {SPEC.input_name: rows})
            assert got.shape == want.shape == (len(rows), 256, 256, 1)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
            results.append(got)
    finally:
        client.close()
    # The astronaut's mask, served by Triton, covers her; the checkerboard's is empty.
    astronaut, checkerboard, _ = results
    person = postprocess(astronaut, preprocess(images[0])[1], 512, 512) > SPEC.threshold
    region = _region(ASTRONAUT)
    assert (person & region).sum() / (person | region).sum() >= 0.8
    assert (checkerboard > SPEC.threshold).mean() <= 0.01
