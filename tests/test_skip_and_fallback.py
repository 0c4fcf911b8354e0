"""skip_processing and the fallback image, below the server: settings, parsing, the decision,
the engine's passthrough and the fallback file's validation."""

from __future__ import annotations

import dataclasses
import time

import pydantic
import pytest

from imagesvc import fallback, skip, vips
from imagesvc.engine import Engine
from imagesvc.errors import (
    ImageDecodeFailed,
    InvalidRequest,
    ResponseTooLarge,
    ResultTooLarge,
    SourceNotFound,
    SourceTooLarge,
    SourceUnreachable,
)
from imagesvc.options import parse_process_request
from imagesvc.settings import Settings
from imagesvc.telemetry.metrics import NullMetrics
from imagesvc.v1 import image_service_pb2 as pb
from tests.sources.origin import sample_jpeg

JPEG = sample_jpeg(64, 48)


class SkipMetrics(NullMetrics):
    def __init__(self) -> None:
        self.skipped: list[str] = []

    def processing_skipped(self, fmt: str) -> None:
        self.skipped.append(fmt)


def test_settings_parse_and_validate():
    settings = Settings(skip_processing_formats="JPEG, png", fallback_image_http_code=0)
    assert settings.skip_processing_formats == ("jpeg", "png")
    assert Settings().skip_processing_formats == ()
    assert Settings().fallback_image_http_code == 200
    assert Settings().fallback_image_path == ""
    with pytest.raises(pydantic.ValidationError):
        Settings(skip_processing_formats="jpeg,bmp")
    for code in (-1, 42, 600):
        with pytest.raises(pydantic.ValidationError):
            Settings(fallback_image_http_code=code)


def parse(settings: Settings, **fields):
    message = pb.ProcessImageRequest(source=pb.ImageSource(data=JPEG), **fields)
    return parse_process_request(message, settings, frozenset())


def test_the_request_list_wins_over_the_setting():
    settings = Settings(skip_processing_formats="png")
    assert parse(settings).skip_processing == {"png"}
    chosen = parse(settings, skip_processing_formats=[pb.IMAGE_FORMAT_JPEG, pb.IMAGE_FORMAT_WEBP])
    assert chosen.skip_processing == {"jpeg", "webp"}
    with pytest.raises(InvalidRequest) as raised:
        parse(settings, skip_processing_formats=[pb.IMAGE_FORMAT_BEST])
    assert [v.field for v in raised.value.violations] == ["skip_processing_formats[0]"]


def test_fallback_image_is_parsed_as_a_source():
    settings = Settings()
    assert parse(settings).fallback is None
    assert parse(settings, fallback_image=pb.ImageSource(data=b"x")).fallback == b"x"
    url = parse(settings, fallback_image=pb.ImageSource(url="https://example.com/f.png"))
    assert url.fallback.url == "https://example.com/f.png"
    with pytest.raises(InvalidRequest) as raised:
        parse(settings, fallback_image=pb.ImageSource())
    assert [v.field for v in raised.value.violations] == ["fallback_image.data"]


def test_skip_decision():
    unspecified = parse(Settings()).output
    assert unspecified.format is None
    jpeg, png = (dataclasses.replace(unspecified, format=name) for name in ("jpeg", "png"))
    assert skip.wanted("jpeg", frozenset({"jpeg"}), unspecified)
    assert skip.wanted("jpeg", frozenset({"jpeg"}), jpeg)
    assert not skip.wanted("jpeg", frozenset({"jpeg"}), png)
    assert not skip.wanted("jpeg", frozenset({"png"}), unspecified)
    assert not skip.wanted(None, frozenset({"jpeg"}), unspecified)
    assert not skip.wanted(
        "jpeg", frozenset({"jpeg"}), dataclasses.replace(unspecified, format="best")
    )


def test_skip_limits():
    settings = Settings(max_result_dimension=100)
    skip.check_limits((100, 50), 10, settings, 10)
    with pytest.raises(ResultTooLarge):
        skip.check_limits((101, 50), 10, settings, 10)
    with pytest.raises(ResponseTooLarge):
        skip.check_limits((100, 50), 11, settings, 10)


@pytest.fixture
def engine():
    settings = Settings(workers=1)
    vips.configure(settings)
    metrics = SkipMetrics()
    engine = Engine(settings, None, metrics)
    yield engine
    engine.close()


async def test_passthrough(engine):
    settings = engine.settings
    request = parse(settings, skip_processing_formats=[pb.IMAGE_FORMAT_JPEG])
    result = await engine.passthrough(request)
    assert result is not None and result.data == JPEG
    assert (result.format, result.width, result.height) == ("jpeg", 64, 48)
    assert engine.metrics.skipped == ["jpeg"]
    assert await engine.passthrough(parse(settings)) is None  # nothing to skip
    corrupt = pb.ProcessImageRequest(
        source=pb.ImageSource(data=JPEG[:200]), skip_processing_formats=[pb.IMAGE_FORMAT_JPEG]
    )
    with pytest.raises(ImageDecodeFailed):
        await engine.passthrough(parse_process_request(corrupt, settings, frozenset()))
    # Processing works as before when the list does not match.
    result = await engine.process(parse(settings), time.monotonic() + 30)
    assert result.format == "jpeg" and result.data != JPEG


def test_fallback_replaces_fetch_and_decode_failures_only():
    assert fallback.replaces(SourceNotFound("x"))
    assert fallback.replaces(ImageDecodeFailed("x"))
    assert not fallback.replaces(SourceTooLarge("x"))
    assert not fallback.replaces(InvalidRequest("x"))
    assert fallback.http_status(SourceUnreachable("x"), 0) == 502
    assert fallback.http_status(SourceNotFound("x"), 0) == 404
    assert fallback.http_status(ImageDecodeFailed("x"), 0) == 422
    assert fallback.http_status(SourceNotFound("x"), 200) == 200


def test_fallback_file_is_read_and_validated(tmp_path):
    assert fallback.load_image(Settings()) is None
    path = tmp_path / "f.jpg"
    path.write_bytes(JPEG)
    settings = Settings(fallback_image_path=str(path))
    vips.configure(settings)
    assert fallback.load_image(settings) == JPEG
    path.write_bytes(JPEG[:-300])  # header intact, pixels cut short
    with pytest.raises(fallback.FallbackImageError, match="not a usable image"):
        fallback.load_image(settings)
    with pytest.raises(fallback.FallbackImageError, match="cannot read"):
        fallback.load_image(Settings(fallback_image_path=str(tmp_path / "missing.png")))
