"""libvips process settings, source sniffing and error classification.

imgproxy's and the libvips checklist's advice for untrusted input: operation cache off, one
libvips thread per image (parallelism comes from the worker pool), and only allowlisted loaders.
"""

from __future__ import annotations

import pyvips

from imagesvc.errors import (
    ImageDecodeFailed,
    ImageFormatUnrecognized,
    ImageFormatUnsupported,
    ImageSvcError,
    ProcessingFailed,
)
from imagesvc.settings import SOURCE_FORMAT_LOADERS, Settings

# Loader nickname prefix -> our format name.
_FORMAT_BY_LOADER = {
    "jpegload": "jpeg",
    "pngload": "png",
    "webpload": "webp",
    "gifload": "gif",
    "heifload": "avif",
    "tiffload": "tiff",
}

# Formats recognised by their leading bytes, to tell "not allowed here" from "not an image".
_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF8", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
    (b"%PDF", "pdf"),
    (b"8BPS", "psd"),
    (b"\x00\x00\x01\x00", "ico"),
    (b"\xff\x0a", "jxl"),
    (b"\x00\x00\x00\x0cJXL ", "jxl"),
)


# pyvips hands every libvips log message to Python logging, from libvips' own threads, so each
# takes the GIL; a resize alone logs five INFO lines, and a pipeline waiting for the GIL held by
# the event loop stalls. Warnings and errors are worth that; INFO and DEBUG are left to GLib's
# default handler, which drops them unless G_MESSAGES_DEBUG asks for them.
_LOGGED_LEVELS = (
    pyvips.GLogLevelFlags.LEVEL_WARNING
    | pyvips.GLogLevelFlags.LEVEL_CRITICAL
    | pyvips.GLogLevelFlags.LEVEL_ERROR
    | pyvips.GLogLevelFlags.FLAG_FATAL
    | pyvips.GLogLevelFlags.FLAG_RECURSION
)


def log_warnings_only() -> None:
    """Re-register pyvips' libvips log handler for warnings and errors only (idempotent).

    pyvips keeps the handler id in a module global that its atexit hook unregisters; it is
    updated here so that hook removes this handler instead.
    """
    glib = pyvips.glib_lib
    if pyvips._log_handler_id:
        glib.g_log_remove_handler(b"VIPS", pyvips._log_handler_id)
    pyvips._log_handler_id = glib.g_log_set_handler(
        b"VIPS", _LOGGED_LEVELS, pyvips._log_handler_cb, pyvips.ffi.NULL
    )


def configure(settings: Settings) -> None:
    """Process-wide libvips settings; call once before the first image."""
    log_warnings_only()
    pyvips.cache_set_max(0)
    pyvips.cache_set_max_mem(0)
    pyvips.cache_set_max_files(0)
    pyvips.vips_lib.vips_concurrency_set(1)
    pyvips.block_untrusted_set(True)
    pyvips.operation_block_set("VipsForeignLoad", True)
    for fmt in settings.source_formats:
        for loader in SOURCE_FORMAT_LOADERS[fmt]:
            pyvips.operation_block_set(loader, False)


def sniff_format(data: bytes | memoryview) -> str | None:
    """Best guess of the format from leading bytes: for error messages, and to tell AVIF from
    HEIC (both read by heifload)."""
    head = bytes(data[:64])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        # Major brand, then the compatible brands after the minor version (AVIFs may say mif1).
        size = min(int.from_bytes(head[:4], "big"), len(head))
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, size - 3, 4)}
        return "avif" if brands & {b"avif", b"avis"} else "heic"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    text = bytes(data[:1024]).lstrip().lower()
    if text.startswith(b"<?xml") or text.startswith(b"<svg"):
        return "svg" if b"<svg" in text else None
    return None


def loader_for(data: bytes | memoryview) -> str:
    """Our format name of the allowlisted loader that will decode ``data``.

    Raises ImageFormatUnsupported for a recognised format that is not allowed and
    ImageFormatUnrecognized for bytes that are not an image.
    """
    # from_buffer: no copy, and it takes a memoryview as well as bytes.
    pointer = pyvips.vips_lib.vips_foreign_find_load_buffer(pyvips.ffi.from_buffer(data), len(data))
    if pointer != pyvips.ffi.NULL:
        operation = pyvips.ffi.string(pointer).decode()
        nickname = pyvips.nickname_find(pyvips.type_from_name(operation))
        for prefix, fmt in _FORMAT_BY_LOADER.items():
            # heifload also reads HEIC, which is not an accepted (or decodable) source format.
            if nickname.startswith(prefix) and (fmt != "avif" or sniff_format(data) == "avif"):
                return fmt
    guess = sniff_format(data)
    if guess is not None:
        raise ImageFormatUnsupported(
            f"source format {guess} is not accepted here", metadata={"format": guess}
        )
    raise ImageFormatUnrecognized("the source bytes are not a recognised image format")


def memory_source(data: bytes | memoryview) -> pyvips.Source:
    """A libvips source reading ``data`` in place. ``Image.new_from_buffer`` copies the bytes
    on every load; a source does not, and can be loaded from more than once. pyvips keeps
    ``data`` alive for as long as any image computed from the source lives."""
    return pyvips.Source.new_from_memory(data)


def load(source: pyvips.Source, **options) -> pyvips.Image:
    """Open ``source`` with the loader libvips picks for it (only allowlisted ones run)."""
    return pyvips.Image.new_from_source(source, "", **options)


_DECODE_HINTS = (
    "load",
    "jpeg",
    "png",
    "webp",
    "gif",
    "heif",
    "tiff",
    "premature",
    "truncated",
    "corrupt",
    "read error",
    "out of order",
    "libspng",
)


def classify(error: pyvips.Error) -> ImageSvcError:
    """Turn a libvips failure into a domain error.

    Decoding is lazy, so a corrupt source fails at pixel-pull time inside any step or at save;
    failures that name a loader or a codec's complaint are the source's fault (INVALID_ARGUMENT),
    anything else is ours (INTERNAL).
    """
    text = f"{error.message} {error.detail or ''}".lower()
    detail = (error.detail or error.message).strip().splitlines()
    summary = detail[-1] if detail else "libvips error"
    if any(hint in text for hint in _DECODE_HINTS):
        return ImageDecodeFailed(f"the source image could not be decoded: {summary}")
    return ProcessingFailed(f"image processing failed: {summary}")
