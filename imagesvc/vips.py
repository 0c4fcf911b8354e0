"""libvips process settings, source sniffing and error classification.

imgproxy's and the libvips checklist's advice for untrusted input: operation cache off, one
libvips thread per image (parallelism comes from the worker pool), and only allowlisted loaders.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pyvips

from imagesvc.errors import (
    ImageDecodeFailed,
    ImageFormatUnrecognized,
    ImageFormatUnsupported,
    ImageSvcError,
    ProcessingFailed,
    ResultUnencodable,
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
    """Re-register pyvips' libvips log handler for warnings and errors only (idempotent), and
    make a libvips warning raised from inside that handler harmless (see
    ``recursive_warnings_are_not_fatal``).

    pyvips keeps the handler id in a module global that its atexit hook unregisters; it is
    updated here so that hook removes this handler instead.
    """
    glib = pyvips.glib_lib
    if pyvips._log_handler_id:
        glib.g_log_remove_handler(b"VIPS", pyvips._log_handler_id)
    pyvips._log_handler_id = glib.g_log_set_handler(
        b"VIPS", _LOGGED_LEVELS, pyvips._log_handler_cb, pyvips.ffi.NULL
    )
    recursive_warnings_are_not_fatal()


_G_LOG_LEVEL_ERROR = 1 << 2


def _glib() -> ctypes.CDLL | None:
    """The GLib libvips runs on, through ctypes (pyvips' cffi module does not declare the
    functions needed here): the loaded library that exports them, the libvips of the
    pyvips-binary wheel (GLib is linked into it) or a system libglib."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        if ".so" in path and ("vips" in path or "glib" in path) and "_libvips" not in path:
            library = ctypes.CDLL(path)
            if hasattr(library, "g_log_set_always_fatal"):
                return library
    return None


def recursive_warnings_are_not_fatal() -> None:
    """GLib treats a log message raised while the same thread is inside a log handler as
    fatal, and aborts the process. The handler here is Python: its allocations can run the
    garbage collector, which may free a failed libvips loader, which logs a warning ("read gave
    10 warnings") from inside the handler: a crafted JPEG could abort the server that way.
    Errors stay fatal; a recursive warning goes to GLib's fallback handler (stderr)."""
    glib = _glib()
    if glib is None:  # pragma: no cover - a libvips build without GLib in a known place
        return
    glib.g_log_set_always_fatal(ctypes.c_int(_G_LOG_LEVEL_ERROR))
    glib.g_log_set_fatal_mask(b"VIPS", ctypes.c_int(_G_LOG_LEVEL_ERROR))


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


# Where a libvips error was raised, from the domain that starts each line of its error text
# (``domain: message``). Loaders and the codec libraries behind them name themselves one way,
# savers another; the first line is the root cause, later lines are its callers.
_SAVE_DOMAIN_MARKERS = ("save", "vips2")
_LOAD_DOMAIN_MARKERS = ("load", "vipsjpeg", "vipspng", "spng", "tiff2vips", "vipsgif")
_LOAD_DOMAINS = {"webp", "heif", "gif", "tiff", "png", "jpeg", "source", "vipssource"}
# libjpeg's error manager serves both directions; this one only ever comes from compressing
# (a source that large is refused at its header).
_JPEG_SAVE_MESSAGES = ("maximum supported image dimension",)


def failure_site(error: pyvips.Error) -> str | None:
    """``"load"`` when a decoder raised ``error``, ``"save"`` when an encoder did, None when its
    text does not say (some decoders fail without a message, e.g. a PNG whose IHDR CRC is bad)."""
    lines = [line.strip() for line in (error.detail or "").splitlines() if ":" in line]
    for line in lines:
        domain, _, message = line.partition(":")
        domain, message = domain.strip().lower(), message.strip().lower()
        if any(marker in domain for marker in _SAVE_DOMAIN_MARKERS) or (
            domain == "vipsjpeg" and message.startswith(_JPEG_SAVE_MESSAGES)
        ):
            return "save"
        if domain in _LOAD_DOMAINS or any(marker in domain for marker in _LOAD_DOMAIN_MARKERS):
            return "load"
    return None


def summary(error: pyvips.Error) -> str:
    """The root cause of a libvips error in one line, for the caller's message."""
    detail = [line.strip() for line in (error.detail or "").splitlines() if line.strip()]
    return detail[0] if detail else (error.message or "libvips error")


def classify(error: pyvips.Error, site: str | None = None) -> ImageSvcError:
    """Turn a libvips failure into a domain error, by where it happened.

    ``site`` is what the caller knows: ``"load"`` while a header is read or once the source
    proved corrupt, ``"process"`` for a failure of ours; otherwise the error text says.
    Decoding is lazy, so a corrupt source can fail inside any step or the encode, and not
    every decoder says so (see ``engine.Engine._classify``, which decodes the source alone to
    find out).
    """
    site = site or failure_site(error)
    if site == "load":
        return ImageDecodeFailed(f"the source image could not be decoded: {summary(error)}")
    if site == "save":
        return ResultUnencodable(f"the result could not be encoded: {summary(error)}")
    return ProcessingFailed(f"image processing failed: {summary(error)}")


# Colour spaces the pipeline does not work in: converted to sRGB at load (as libvips' own
# thumbnail does), so every step sees 8- or 16-bit grey or sRGB with at most one alpha band.
_COLOUR = ("srgb", "rgb16")
_GREY = ("b-w", "grey16")


def normalise(image: pyvips.Image) -> pyvips.Image:
    """The source in the form every step expects: 1 (grey) or 3 (sRGB) colour bands, plus an
    alpha band when the source has one, extra bands dropped; 8- or 16-bit samples.

    CMYK goes to sRGB through the embedded profile when there is one; other colour spaces
    (Lab, XYZ, scRGB, ...) and sample formats (float, signed, 32-bit) are converted by libvips'
    colourspace and clipped to 8 bits. Lazy: nothing is computed here.
    """
    interpretation, bands, band_format = image.interpretation, image.bands, image.format
    if band_format in ("uchar", "ushort") and (
        (interpretation in _COLOUR and bands in (3, 4))
        or (interpretation in _GREY and bands in (1, 2))
    ):
        return image  # what every decoder gives for ordinary images: three property reads
    alpha = bool(image.hasalpha())
    if interpretation == "cmyk" and image.get_typeof("icc-profile-data"):
        image = image.icc_transform("srgb", embedded=True, intent="perceptual")
    elif interpretation not in _COLOUR + _GREY and image.bands >= 3:
        image = image.colourspace("srgb")
    elif interpretation not in _COLOUR + _GREY:
        image = image.copy(interpretation="grey16" if image.format == "ushort" else "b-w")
    colour = 1 if image.interpretation in _GREY else 3
    wanted = colour + (1 if alpha and image.bands > colour else 0)
    if image.bands > wanted:
        image = image.extract_band(0, n=wanted)
    elif image.bands < wanted:  # a 2-band "sRGB" image: read it as grey + alpha
        image = image.copy(interpretation="b-w")
    if image.format not in ("uchar", "ushort"):
        image = image.colourspace("srgb" if colour == 3 else "b-w")
        if image.format not in ("uchar", "ushort"):
            image = image.cast("uchar")
    return image
