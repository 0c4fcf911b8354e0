"""ETags and expiry of ProcessImage results (README "Caching: ETag and expires").

An ETag is a strong, quoted entity tag::

    "<hash>"                      the source identified by a hash of its bytes
    "<hash>.<validator>"          the source identified by its origin's validator

``hash`` is 32 hex digits of SHA-256 over (length-prefixed): the ETag scheme, the service
version, IMAGESVC_ETAG_BUSTER, the canonical processing options and the source identity.
``validator`` is base64url of the origin's validator (``e`` + its strong ETag, or ``m`` + its
Last-Modified): a later request's if_none_match carries it back, so the edge can ask the origin
conditionally (If-None-Match / If-Modified-Since) without remembering anything. Tampering with it
gains nothing: the hash covers it, so the ETag then never matches.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from imagesvc.errors import Expired
from imagesvc.v1 import image_service_pb2 as pb

# Bump when the derivation changes, so that no old ETag can match a new one by accident.
ETAG_SCHEME = b"imagesvc-etag-2"
HASH_HEX = 32

# Source identity kinds: a hash of the bytes, the origin's strong ETag, its Last-Modified.
DIGEST = "d"
ORIGIN_ETAG = "e"
LAST_MODIFIED = "m"


@dataclass(frozen=True, slots=True)
class SourceIdentity:
    kind: str  # DIGEST, ORIGIN_ETAG or LAST_MODIFIED
    value: str

    @property
    def from_origin(self) -> bool:
        return self.kind != DIGEST


def digest_identity(data: bytes | memoryview) -> SourceIdentity:
    return SourceIdentity(DIGEST, hashlib.blake2b(data, digest_size=32).hexdigest())


def origin_identity(
    etag: str | None, last_modified: str | None, data: bytes | memoryview | None
) -> SourceIdentity | None:
    """The origin's strong ETag, else its Last-Modified, else the hash of ``data`` (None when
    there are neither validators nor bytes). Weak ETags (W/"...") promise equivalence, not the
    same bytes, so they are not used."""
    if etag and not etag.startswith("W/") and _printable(etag):
        return SourceIdentity(ORIGIN_ETAG, etag)
    if last_modified and _printable(last_modified):
        return SourceIdentity(LAST_MODIFIED, last_modified)
    if data is not None:
        return digest_identity(data)
    return None


def _printable(text: str) -> bool:
    return len(text) <= 1024 and all(0x20 <= ord(ch) <= 0x7E for ch in text)


def canonical_options(request: pb.ProcessImageRequest) -> bytes:
    """The request's processing options, serialized deterministically: the request without its
    source, its fallback image and its caching fields (if_none_match, expires), unknown fields
    dropped. Equal
    options give equal bytes whatever order or encoding they arrived in."""
    options = pb.ProcessImageRequest()
    options.pipelines.extend(request.pipelines)
    # Whether the source comes back unprocessed; fallback_image is not here: a fallback
    # response has no etag.
    options.skip_processing_formats.extend(request.skip_processing_formats)
    if request.HasField("output"):
        options.output.CopyFrom(request.output)
    options.DiscardUnknownFields()
    return options.SerializeToString(deterministic=True)


def make_etag(
    options: bytes, identity: SourceIdentity, buster: str, version: str, locator: str = ""
) -> str:
    """``locator`` (the source's URL) is hashed with an origin validator: two origins may hand
    out the same ETag or Last-Modified, and a caller's etag for one must not make the other's
    origin answer 304. A hash of the bytes needs none: the same bytes are the same source."""
    digest = hashlib.sha256()
    for part in (
        ETAG_SCHEME,
        version.encode(),
        buster.encode(),
        options,
        identity.kind.encode(),
        identity.value.encode(),
        (locator if identity.from_origin else "").encode(),
    ):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    tag = digest.hexdigest()[:HASH_HEX]
    if identity.from_origin:
        encoded = base64.urlsafe_b64encode((identity.kind + identity.value).encode())
        tag += "." + encoded.rstrip(b"=").decode()
    return f'"{tag}"'


def origin_validator(if_none_match: str) -> SourceIdentity | None:
    """The origin validator an ETag of ours carries, or None (a data-source ETag, a foreign or
    malformed one)."""
    if len(if_none_match) > 4096 or not (
        if_none_match.startswith('"') and if_none_match.endswith('"')
    ):
        return None
    _, dot, encoded = if_none_match[1:-1].partition(".")
    if not dot or not encoded:
        return None
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, ValueError):
        return None
    kind, value = raw[:1], raw[1:]
    if kind not in (ORIGIN_ETAG, LAST_MODIFIED) or not value or not _printable(value):
        return None
    return SourceIdentity(kind, value)


def check_expires(expires: timestamp_pb2.Timestamp | None, now: float | None = None) -> None:
    """Raise Expired when ``expires`` (None: unset) is in the past."""
    if expires is None:
        return
    now = time.time() if now is None else now
    if expires.seconds + expires.nanos / 1e9 <= now:
        try:
            when = expires.ToJsonString()
        except ValueError:  # out of Timestamp's range: still a time, long past
            when = str(expires.seconds)
        raise Expired("the request expired (expires is in the past)", metadata={"expires": when})


def cache_control(
    ttl_s: int, expires: timestamp_pb2.Timestamp | None, now: float | None = None
) -> str:
    """``max-age=N``: IMAGESVC_TTL_S, capped by the request's expires; ``no-cache`` when that
    leaves nothing."""
    max_age = ttl_s
    if expires is not None:
        now = time.time() if now is None else now
        max_age = min(max_age, int(expires.seconds + expires.nanos / 1e9 - now))
    return f"max-age={max_age}" if max_age > 0 else "no-cache"


def max_age(cache_control_value: str) -> int:
    """N of a ``max-age=N`` value made by ``cache_control``; 0 for ``no-cache``."""
    _, sep, seconds = cache_control_value.partition("max-age=")
    return int(seconds) if sep and seconds.isdigit() else 0
