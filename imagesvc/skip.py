"""skip_processing (imgproxy's skp): a source whose format is in the request's (or the
setting's) list, asked for in that same format or none, goes back as it came: its header read by
libvips and held to the limits a processed request meets, no pixel decoded
(``engine.Engine.passthrough``)."""

from __future__ import annotations

from imagesvc.errors import ResponseTooLarge, ResultTooLarge
from imagesvc.options import OutputSpec
from imagesvc.settings import Settings


def wanted(source_format: str | None, skip_formats: frozenset[str], output: OutputSpec) -> bool:
    """Whether a source of ``source_format`` is returned unprocessed."""
    return source_format in skip_formats and output.format in (None, source_format)


def check_limits(size: tuple[int, int], encoded_bytes: int, settings: Settings, limit: int) -> None:
    """The limits a processed request of the same size meets beyond the source's pixel limit
    (``engine.open_header`` checks that one): the result's sides, and one response message
    (``limit`` bytes)."""
    width, height = size
    if max(width, height) > settings.max_result_dimension:
        raise ResultTooLarge(
            f"the result would be {width}x{height}, over the "
            f"{settings.max_result_dimension} px limit",
            metadata={
                "width": str(width),
                "height": str(height),
                "limit": str(settings.max_result_dimension),
            },
        )
    if encoded_bytes > limit:
        raise ResponseTooLarge(
            f"the source is {encoded_bytes} bytes, over the {limit} bytes one response can carry",
            metadata={"bytes": str(encoded_bytes), "limit_bytes": str(limit)},
        )
