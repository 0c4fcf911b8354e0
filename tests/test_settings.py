"""Settings come from IMAGESVC_* environment variables and are validated up front."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from imagesvc.settings import SOURCE_FORMAT_LOADERS, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("IMAGESVC_"):
            monkeypatch.delenv(name)


def test_defaults():
    settings = Settings()
    assert settings.quality == 80
    assert settings.auto_rotate is True
    assert set(settings.source_formats) == set(SOURCE_FORMAT_LOADERS)
    assert settings.format_quality == {"avif": 65, "webp": 79}
    assert settings.workers >= 1
    assert settings.max_src_pixels == 50_000_000


def test_environment_with_prefix(monkeypatch):
    monkeypatch.setenv("IMAGESVC_QUALITY", "61")
    monkeypatch.setenv("IMAGESVC_AUTO_ROTATE", "false")
    monkeypatch.setenv("IMAGESVC_MAX_SRC_RESOLUTION_MP", "2.5")
    monkeypatch.setenv("QUALITY", "12")  # no prefix: ignored
    settings = Settings()
    assert settings.quality == 61
    assert settings.auto_rotate is False
    assert settings.max_src_pixels == 2_500_000


def test_source_formats_from_a_comma_list(monkeypatch):
    monkeypatch.setenv("IMAGESVC_SOURCE_FORMATS", " JPEG, png ,,webp")
    assert Settings().source_formats == ("jpeg", "png", "webp")


def test_source_formats_from_json(monkeypatch):
    monkeypatch.setenv("IMAGESVC_SOURCE_FORMATS", '["gif", "tiff"]')
    assert Settings().source_formats == ("gif", "tiff")


@pytest.mark.parametrize("value", ["jpeg,svg", "bmp"])
def test_unknown_source_formats_fail(monkeypatch, value):
    monkeypatch.setenv("IMAGESVC_SOURCE_FORMATS", value)
    with pytest.raises(ValidationError, match="unknown source formats"):
        Settings()


def test_format_quality_json(monkeypatch):
    monkeypatch.setenv("IMAGESVC_FORMAT_QUALITY", '{"jpeg": 90, "avif": 40}')
    assert Settings().format_quality == {"jpeg": 90, "avif": 40}


@pytest.mark.parametrize(
    ("value", "message"),
    [('{"bmp": 50}', "unknown format"), ('{"jpeg": 0}', "1..100"), ('{"png": 101}', "1..100")],
)
def test_bad_format_quality_fails(monkeypatch, value, message):
    monkeypatch.setenv("IMAGESVC_FORMAT_QUALITY", value)
    with pytest.raises(ValidationError, match=message):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMAGESVC_QUALITY", "0"),
        ("IMAGESVC_QUALITY", "101"),
        ("IMAGESVC_WORKERS", "0"),
        ("IMAGESVC_MAX_QUEUE", "-1"),
        ("IMAGESVC_PORT", "70000"),
        ("IMAGESVC_MAX_SRC_RESOLUTION_MP", "0"),
        ("IMAGESVC_AVIF_EFFORT", "10"),
        ("IMAGESVC_LOG_FORMAT", "xml"),
        ("IMAGESVC_DETECTION_MAX_SIDE", "32"),
        ("IMAGESVC_AUTO_ROTATE", "maybe"),
    ],
)
def test_out_of_range_values_fail(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.quality = 10


def test_keyword_arguments_override_the_environment(monkeypatch):
    monkeypatch.setenv("IMAGESVC_WORKERS", "3")
    assert Settings(workers=1).workers == 1
    assert Settings().workers == 3


def test_the_request_memory_budget_is_the_containers_limit_over_the_workers(tmp_path):
    from imagesvc.settings import container_memory_limit_mb, request_memory_budget_mb

    v2 = tmp_path / "memory.max"
    v2.write_text("4294967296\n")  # a 4Gi pod limit
    assert container_memory_limit_mb((str(v2),)) == 4096
    assert request_memory_budget_mb(4, 4096) == (4096 - 256) // 4
    assert request_memory_budget_mb(64, 1024) == 64  # never below the floor
    v2.write_text("max\n")
    assert container_memory_limit_mb((str(v2),)) is None
    v1 = tmp_path / "memory.limit_in_bytes"
    v1.write_text(str(2**63 - 4096))  # cgroup v1 without a limit
    assert container_memory_limit_mb((str(tmp_path / "absent"), str(v1))) is None
    assert request_memory_budget_mb(2, None) == 1024


def test_an_explicit_request_memory_budget_wins():
    assert Settings(max_request_memory_mb=300, workers=2).request_memory_mb == 300
    derived = Settings(workers=2).request_memory_mb
    assert derived >= 64
