"""The fallback image (imgproxy's IMGPROXY_FALLBACK_IMAGE_*): processed instead of a source that
cannot be fetched or decoded, with the same pipelines and output (``server.servicer``).

Fallback errors are the source's own failures: it is missing (SOURCE_NOT_FOUND), the origin or
the network failed (SOURCE_UNREACHABLE), it may not be fetched (SOURCE_FORBIDDEN: the origin's
401/403 as well as the allowlist and the SSRF guard, which fetch nothing either way), or it is
not an image the service decodes (IMAGE_DECODE_FAILED, IMAGE_FORMAT_UNRECOGNIZED,
IMAGE_FORMAT_UNSUPPORTED). Never a fault of the request itself (INVALID_REQUEST, EXPIRED, ...),
a limit (IMAGE_TOO_LARGE, SOURCE_TOO_LARGE, REQUEST_TOO_COSTLY) or the service's state
(OVERLOADED, DEADLINE_EXCEEDED, DETECTION_UNAVAILABLE): those keep their error.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyvips

from imagesvc.engine import open_header
from imagesvc.errors import ImageSvcError
from imagesvc.settings import Settings
from imagesvc.sources.url import UrlFetcher, UrlProblem, normalize_url

# Reason of each error the fallback replaces -> the HTTP status a gateway would answer it with
# (fallback_status when IMAGESVC_FALLBACK_IMAGE_HTTP_CODE is 0).
HTTP_STATUS_BY_REASON = {
    "SOURCE_NOT_FOUND": 404,
    "SOURCE_FORBIDDEN": 403,
    "SOURCE_UNREACHABLE": 502,
    "IMAGE_DECODE_FAILED": 422,
    "IMAGE_FORMAT_UNRECOGNIZED": 422,
    "IMAGE_FORMAT_UNSUPPORTED": 422,
}


class FallbackImageError(Exception):
    """IMAGESVC_FALLBACK_IMAGE_PATH is unusable; the message is one line."""


def replaces(error: ImageSvcError) -> bool:
    """Whether the fallback image is served instead of ``error``."""
    return error.reason in HTTP_STATUS_BY_REASON


def http_status(error: ImageSvcError, configured: int) -> int:
    """fallback_status: IMAGESVC_FALLBACK_IMAGE_HTTP_CODE, or the error's HTTP equivalent for 0."""
    return configured or HTTP_STATUS_BY_REASON[error.reason]


def load_image(settings: Settings) -> bytes | None:
    """The bytes of IMAGESVC_FALLBACK_IMAGE_PATH (None when unset), read once at start and
    decoded whole, so that a file that would fail every fallback fails the start instead.
    Needs libvips configured (``vips.configure``): the loader allowlist applies."""
    path = settings.fallback_image_path
    if not path:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise FallbackImageError(
            f"cannot read IMAGESVC_FALLBACK_IMAGE_PATH {path}: {error.strerror or error}"
        ) from None
    _check_usable(data, f"IMAGESVC_FALLBACK_IMAGE_PATH {path}", settings)
    return data


async def fetch_image(settings: Settings) -> bytes | None:
    """The bytes behind IMAGESVC_FALLBACK_IMAGE_URL (None when unset), fetched once at start as
    a url source would be (allow-list, SSRF guard, size and time limits) and checked like
    ``load_image``. A fallback that changes at its origin is picked up on the next start."""
    url = settings.fallback_image_url
    if not url:
        return None
    where = f"IMAGESVC_FALLBACK_IMAGE_URL {url}"
    try:
        normalized = str(normalize_url(url))
    except UrlProblem as problem:
        raise FallbackImageError(f"{where} is not a usable URL: {problem}") from None
    fetcher = UrlFetcher(settings)
    try:
        data = await fetcher.fetch(
            normalized, time.monotonic() + settings.source_download_timeout_s
        )
    except ImageSvcError as error:
        raise FallbackImageError(f"cannot fetch {where}: {error.reason}: {error.message}") from None
    finally:
        await fetcher.close()
    _check_usable(data, where, settings)
    return data


def _check_usable(data: bytes, where: str, settings: Settings) -> None:
    try:
        header = open_header(data, settings)
        header.image.avg()  # every pixel: a truncated file fails here, not on a request
    except (ImageSvcError, pyvips.Error) as error:
        message = " ".join(str(getattr(error, "message", None) or error).split())
        raise FallbackImageError(f"{where} is not a usable image: {message}") from None
