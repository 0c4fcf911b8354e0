"""Fixtures shared by the operation tests: configured libvips, settings and step contexts."""

from __future__ import annotations

import time

import pytest

from imagesvc import vips
from imagesvc.context import DetectedObject, StepContext
from imagesvc.options import ParseContext, Violations
from imagesvc.settings import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    settings = Settings()
    vips.configure(settings)
    return settings


@pytest.fixture
def make_ctx(settings):
    """StepContext for an image of the given (oriented source) size."""

    def make(
        width: int,
        height: int,
        objects: list[DetectedObject] | None = None,
        detection_failure: str | None = None,
    ) -> StepContext:
        return StepContext(
            settings,
            time.monotonic() + 60,
            (width, height),
            objects=objects,
            detection_failure=detection_failure,
        )

    return make


@pytest.fixture
def pctx(settings) -> ParseContext:
    return ParseContext(settings, frozenset({"face", "person"}), Violations())
