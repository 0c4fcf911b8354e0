"""Object gravity modes and crop_objects end to end: real server, libvips and local Triton, on a
scene where two faces cannot both fit the crop."""

from __future__ import annotations

import pytest
import pyvips

from imagesvc.v1 import image_service_pb2 as pb
from tests.server import scenes

pytestmark = [pytest.mark.triton]

CROP_W, CROP_H = 225, 400  # 9:16 at the scene's full height: no scaling, only the crop


@pytest.fixture(scope="module")
def scene():
    image, big, little = scenes.two_heads()
    return image.pngsave_buffer(), image.numpy(), big, little


async def portrait(stub, source: bytes, gravity: pb.ObjectGravity):
    resize = pb.Resize(
        type=pb.RESIZING_TYPE_FILL, width=CROP_W, height=CROP_H, gravity=pb.Gravity(object=gravity)
    )
    return await stub.ProcessImage(
        pb.ProcessImageRequest(
            source=pb.ImageSource(data=source),
            pipelines=[pb.Pipeline(operations=[pb.Operation(resize=resize)])],
            output=pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG),
        ),
        timeout=30,
    )


def whole(span: tuple[float, float], offset: int, slack: float = 8) -> bool:
    return offset - slack <= span[0] and span[1] <= offset + CROP_W + slack


def cut(span: tuple[float, float], offset: int) -> bool:
    overlaps = span[0] < offset + CROP_W and span[1] > offset
    return overlaps and not whole(span, offset, slack=0)


@pytest.mark.parametrize(
    ("mode", "kept"),
    [
        (pb.OBJECT_GRAVITY_MODE_UNSPECIFIED, "big"),  # the default, max_score_area
        (pb.OBJECT_GRAVITY_MODE_MAX_SCORE_AREA, "big"),
        (pb.OBJECT_GRAVITY_MODE_ONE_BEST, "big"),
        (pb.OBJECT_GRAVITY_MODE_ONE_BEST_CENTERMOST, "little"),
    ],
)
async def test_each_mode_keeps_one_face_whole_and_cuts_none(stub, scene, mode, kept):
    source, pixels, big, little = scene
    response = await portrait(stub, source, pb.ObjectGravity(classes=["face"], mode=mode))
    assert not response.degradations
    assert len([d for d in response.detections if d.class_name == "face"]) == 2
    out = pyvips.Image.new_from_buffer(response.data, "").numpy()
    offset = scenes.find_offset(out, pixels)
    expected, other = (big, little) if kept == "big" else (little, big)
    assert whole(expected, offset), (offset, expected)
    assert not cut(other, offset), (offset, other)


async def test_objects_position_west_puts_the_kept_face_at_the_left_edge(stub, scene):
    source, pixels, big, _ = scene
    gravity = pb.ObjectGravity(
        classes=["face"],
        position=pb.ObjectsPosition(compass=pb.CompassGravity(position=pb.COMPASS_WEST)),
    )
    response = await portrait(stub, source, gravity)
    out = pyvips.Image.new_from_buffer(response.data, "").numpy()
    offset = scenes.find_offset(out, pixels)
    [face] = [d for d in response.detections if d.box.left < 400]
    assert (
        abs(offset - face.box.left) <= 1
    )  # the face's left edge on the crop's (boxes are whole px)


async def test_crop_objects_crops_to_the_padded_faces(stub, scene):
    source, _, _, _ = scene
    response = await stub.ProcessImage(
        pb.ProcessImageRequest(
            source=pb.ImageSource(data=source),
            pipelines=[
                pb.Pipeline(
                    operations=[
                        pb.Operation(crop_objects=pb.CropObjects(padding=1.2, classes=["face"]))
                    ]
                )
            ],
            output=pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG),
        ),
        timeout=30,
    )
    assert not response.degradations
    faces = [d.box for d in response.detections if d.class_name == "face"]
    assert len(faces) == 2
    left = min(b.left for b in faces)
    right = max(b.left + b.width for b in faces)
    top = min(b.top for b in faces)
    bottom = max(b.top + b.height for b in faces)
    # Detections are reported in whole pixels: allow them their rounding.
    assert abs(response.width - 1.2 * (right - left)) <= 3
    assert abs(response.height - 1.2 * (bottom - top)) <= 3
