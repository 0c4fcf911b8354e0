"""ProcessImage end to end: real server, real libvips, real local Triton."""

from __future__ import annotations

import numpy as np
import pytest
import pyvips
from skimage.metrics import structural_similarity

from imagesvc.v1 import image_service_pb2 as pb
from tests.server import scenes

pytestmark = [pytest.mark.triton]


def decode(data: bytes) -> pyvips.Image:
    return pyvips.Image.new_from_buffer(data, "")


def fill_square(gravity: pb.Gravity, size: int = 256) -> pb.Pipeline:
    resize = pb.Resize(type=pb.RESIZING_TYPE_FILL, width=size, height=size, gravity=gravity)
    return pb.Pipeline(operations=[pb.Operation(resize=resize)])


async def crop_offset(
    stub, source: bytes, gravity: pb.Gravity
) -> tuple[int, pb.ProcessImageResponse]:
    """Run a 256x256 fill of the wide scene and find where in the scaled scene the crop lies."""
    response = await stub.ProcessImage(
        pb.ProcessImageRequest(
            source=pb.ImageSource(data=source),
            pipelines=[fill_square(gravity)],
            output=pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG),
        ),
        timeout=30,
    )
    assert (response.width, response.height) == (256, 256)
    scaled = decode(source).resize(0.5, kernel="lanczos3").numpy()
    return scenes.find_offset(decode(response.data).numpy(), scaled), response


async def test_object_gravity_keeps_the_face_where_centre_and_smart_cut_it(stub):
    source = scenes.wide_scene().pngsave_buffer()
    obj_offset, response = await crop_offset(
        stub, source, pb.Gravity(object=pb.ObjectGravity(classes=["face"]))
    )
    assert not response.degradations
    [face] = [d for d in response.detections if d.class_name == "face"]
    # Detections come back in source pixels and cover the known face.
    assert scenes.near_face_box(face.box), face.box
    assert face.confidence > 0.5
    face_left, face_right = face.box.left * 0.5, (face.box.left + face.box.width) * 0.5

    def face_inside(offset: int) -> bool:  # the scene is scaled by 0.5 before the crop
        return offset <= face_left and face_right <= offset + 256

    assert face_inside(obj_offset), f"object gravity crop at x={obj_offset} cuts the face"

    centre_offset, _ = await crop_offset(stub, source, pb.Gravity())
    assert centre_offset == (768 - 256) // 2 and not face_inside(centre_offset)
    smart_offset, _ = await crop_offset(stub, source, pb.Gravity(smart=pb.SmartGravity()))
    assert not face_inside(smart_offset), "the scene no longer fools smart crop; fix the scene"


async def test_blur_detections_changes_the_face_and_nothing_else(stub):
    source_image = scenes.astronaut()
    response = await stub.ProcessImage(
        pb.ProcessImageRequest(
            source=pb.ImageSource(data=source_image.pngsave_buffer()),
            pipelines=[
                pb.Pipeline(
                    operations=[
                        pb.Operation(blur_detections=pb.BlurDetections(sigma=8, classes=["face"]))
                    ]
                )
            ],
            output=pb.OutputOptions(format=pb.IMAGE_FORMAT_PNG),
        ),
        timeout=30,
    )
    before = source_image.numpy().astype(np.int16)
    after = decode(response.data).numpy().astype(np.int16)
    [face] = response.detections
    b = face.box
    inside = np.zeros(before.shape[:2], dtype=bool)
    inside[b.top : b.top + b.height, b.left : b.left + b.width] = True
    # Lossless in and out: every pixel outside the face box is untouched...
    assert np.array_equal(before[~inside], after[~inside])
    # ...and the face itself is visibly smoothed.
    diff = np.abs(before[inside] - after[inside]).mean()
    assert diff > 4, diff
    assert scenes.near_face_box(b), b


async def test_chained_pipelines_run_in_order_on_the_previous_result(stub):
    source = scenes.astronaut().jpegsave_buffer(Q=92)
    request = pb.ProcessImageRequest(
        source=pb.ImageSource(data=source),
        pipelines=[
            pb.Pipeline(operations=[pb.Operation(resize=pb.Resize(width=300))]),
            pb.Pipeline(
                operations=[
                    pb.Operation(crop=pb.Crop(width=0.5, height=100)),
                    pb.Operation(rotate=pb.Rotate(angle=90)),
                ]
            ),
        ],
        output=pb.OutputOptions(format=pb.IMAGE_FORMAT_WEBP, quality=90),
    )
    response = await stub.ProcessImage(request, timeout=30)
    assert response.format == pb.IMAGE_FORMAT_WEBP
    # 512 -> 300 wide, crop 150x100 from the centre, rotate: 100x150.
    assert (response.width, response.height) == (100, 150)
    result = decode(response.data)
    assert result.get("vips-loader").startswith("webpload")
    expected = (
        scenes.astronaut()
        .resize(300 / 512, kernel="lanczos3")
        .extract_area(75, 100, 150, 100)
        .rot("d90")
    )
    ssim = structural_similarity(expected.numpy(), result.numpy(), channel_axis=2, data_range=255)
    assert ssim > 0.9, ssim


@pytest.mark.parametrize(
    "fmt",
    [
        pb.IMAGE_FORMAT_JPEG,
        pb.IMAGE_FORMAT_PNG,
        pb.IMAGE_FORMAT_WEBP,
        pb.IMAGE_FORMAT_AVIF,
        pb.IMAGE_FORMAT_GIF,
        pb.IMAGE_FORMAT_TIFF,
    ],
)
async def test_every_output_format_decodes_back(stub, fmt):
    source = scenes.astronaut().jpegsave_buffer(Q=90)
    response = await stub.ProcessImage(
        pb.ProcessImageRequest(
            source=pb.ImageSource(data=source),
            pipelines=[pb.Pipeline(operations=[pb.Operation(resize=pb.Resize(width=128))])],
            output=pb.OutputOptions(format=fmt),
        ),
        timeout=60,
    )
    assert response.format == fmt
    result = decode(response.data)
    assert (result.width, result.height) == (128, 128) == (response.width, response.height)
    loader = {
        pb.IMAGE_FORMAT_JPEG: "jpegload",
        pb.IMAGE_FORMAT_PNG: "pngload",
        pb.IMAGE_FORMAT_WEBP: "webpload",
        pb.IMAGE_FORMAT_AVIF: "heifload",
        pb.IMAGE_FORMAT_GIF: "gifload",
        pb.IMAGE_FORMAT_TIFF: "tiffload",
    }[fmt]
    assert result.get("vips-loader").startswith(loader)


async def test_describe_reports_header_and_detections(stub):
    # Stored turned 90° anticlockwise with EXIF orientation 6 ("turn clockwise to display"):
    # displayed upright, so the face must be found where it is in the upright astronaut.
    source = scenes.astronaut().rot("d270").copy()
    source.set_type(pyvips.GValue.gint_type, "orientation", 6)
    data = source.jpegsave_buffer(Q=90)
    response = await stub.DescribeImage(
        pb.DescribeImageRequest(source=pb.ImageSource(data=data), detect=True), timeout=30
    )
    assert response.format == pb.IMAGE_FORMAT_JPEG
    assert (response.width, response.height, response.orientation) == (512, 512, 6)
    assert response.size_bytes == len(data) and response.pages == 1 and not response.has_alpha
    # Every class was asked for: the face among whatever else the models find.
    [face] = [d for d in response.detections if d.class_name == "face"]
    assert scenes.near_face_box(face.box), face.box


async def test_sources_over_grpcs_default_4_mb_message_limit_are_accepted(stub):
    noise = np.random.default_rng(11).integers(0, 255, (1400, 1400, 3), dtype=np.uint8)
    source = pyvips.Image.new_from_array(noise).copy(interpretation="srgb").pngsave_buffer()
    assert len(source) > 5 * 1024 * 1024
    response = await stub.ProcessImage(
        pb.ProcessImageRequest(
            source=pb.ImageSource(data=source),
            pipelines=[pb.Pipeline(operations=[pb.Operation(resize=pb.Resize(width=140))])],
        ),
        timeout=60,
    )
    assert (response.width, response.height) == (140, 140)
    assert response.format == pb.IMAGE_FORMAT_PNG


async def test_describe_detects_the_classes_asked_for_and_agrees_with_process(stub):
    data = scenes.astronaut().jpegsave_buffer(Q=90)
    described = await stub.DescribeImage(
        pb.DescribeImageRequest(source=pb.ImageSource(data=data), detect=True, classes=["face"]),
        timeout=30,
    )
    assert [d.class_name for d in described.detections] == ["face"]
    gravity = pb.Gravity(object=pb.ObjectGravity(classes=["face"]))
    processed = await stub.ProcessImage(
        pb.ProcessImageRequest(
            source=pb.ImageSource(data=data),
            pipelines=[
                pb.Pipeline(
                    operations=[
                        pb.Operation(
                            resize=pb.Resize(
                                type=pb.RESIZING_TYPE_FILL, width=256, height=256, gravity=gravity
                            )
                        )
                    ]
                )
            ],
        ),
        timeout=30,
    )
    # The same bytes, the same detector input: the same detections in both RPCs.
    assert list(processed.detections) == list(described.detections)
