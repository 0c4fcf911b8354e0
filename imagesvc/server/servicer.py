"""ImageService: bytes in, options out, engine, proto back. No image logic lives here.

Requests arrive undeserialized and are decoded by ``wire.decode_request``, which hands the
source image over without copying it and answers an undecodable request with
INVALID_ARGUMENT; ``register`` installs the handlers that way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time

import grpc

from imagesvc import caching, fallback
from imagesvc.context import Degradation, DetectedObject
from imagesvc.engine import Engine, ProcessResult
from imagesvc.errors import ImageSvcError
from imagesvc.options import (
    ENUM_BY_FORMAT,
    ParseContext,
    ProcessRequest,
    SourceBytes,
    SourceObject,
    SourceUrl,
    Violations,
    parse_classes,
    parse_process_request,
    parse_source,
)
from imagesvc.presets import Presets
from imagesvc.server.wire import decode_request
from imagesvc.settings import Settings
from imagesvc.sources.objects import ObjectFetcher
from imagesvc.sources.url import UrlFetcher
from imagesvc.telemetry.metrics import Metrics, NullMetrics
from imagesvc.v1 import image_service_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageService"].full_name
# Sources larger than this are hashed off the event loop (hashlib releases the GIL).
HASH_INLINE_BYTES = 1 << 20


class ImageServiceServicer:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        fetcher: UrlFetcher | None = None,
        *,
        object_fetcher: ObjectFetcher | None = None,
        metrics: Metrics | None = None,
        version: str = "",
        fallback_image: bytes | None = None,
        presets: Presets | None = None,
    ) -> None:
        """``fallback_image``: IMAGESVC_FALLBACK_IMAGE_PATH's bytes, validated
        (``imagesvc.fallback.load_image``); a request's own fallback_image wins. ``presets``:
        IMAGESVC_PRESETS_PATH's, validated (``imagesvc.presets``)."""
        self._engine = engine
        self._presets = presets if presets is not None else Presets({})
        self._fallback_image = fallback_image
        self._settings = settings
        self._metrics = metrics if metrics is not None else NullMetrics()
        self._version = version  # in every ETag: a new release invalidates the old ones
        # url sources; the owner (server.app) closes it when the server stops.
        self._fetcher = fetcher if fetcher is not None else UrlFetcher(settings)
        # object sources; likewise closed by the owner.
        self._object_fetcher = (
            object_fetcher if object_fetcher is not None else ObjectFetcher(settings)
        )

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """One handler per ImageService RPC, taking its request as raw bytes."""
        return {
            "ProcessImage": grpc.unary_unary_rpc_method_handler(
                self.ProcessImage,
                response_serializer=pb.ProcessImageResponse.SerializeToString,
            ),
            "DescribeImage": grpc.unary_unary_rpc_method_handler(
                self.DescribeImage,
                response_serializer=pb.DescribeImageResponse.SerializeToString,
            ),
        }

    def register(self, server: grpc.aio.Server) -> None:
        handlers = self.method_handlers()
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )
        server.add_registered_method_handlers(SERVICE_NAME, handlers)

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        if remaining is None or remaining > 1e8:  # no deadline set by the caller
            remaining = self._settings.default_deadline_s
        return time.monotonic() + remaining

    async def ProcessImage(
        self, raw: bytes, context: grpc.aio.ServicerContext
    ) -> pb.ProcessImageResponse:
        request, source_data = decode_request(raw, pb.ProcessImageRequest)
        expires = request.expires if request.HasField("expires") else None
        caching.check_expires(expires)  # before anything is parsed, fetched or decoded
        request = self._presets.apply(request)  # everything below sees the merged options
        options = parse_process_request(
            request, self._settings, self._engine.known_classes, source_data
        )
        deadline = self._deadline(context)
        try:
            return await self._process(request, options, expires, deadline)
        except ImageSvcError as error:
            replacement = options.fallback if options.fallback is not None else self._fallback_image
            if replacement is None or not fallback.replaces(error):
                raise
            return await self._process_fallback(options, replacement, error, deadline)

    async def _process(
        self, request: pb.ProcessImageRequest, options: ProcessRequest, expires, deadline: float
    ) -> pb.ProcessImageResponse:
        canonical = caching.canonical_options(request)
        if_none_match = request.if_none_match
        locator = _locator(options.data)
        if isinstance(options.data, SourceUrl | SourceObject):
            source_kind = "url" if isinstance(options.data, SourceUrl) else "object"
            # Fetched only once the whole request is valid; the engine gets the bytes.
            conditional = self._conditional_headers(canonical, if_none_match, locator)
            if isinstance(options.data, SourceUrl):
                fetched = await self._fetcher.fetch_source(options.data.url, deadline, conditional)
            else:
                fetched = await self._object_fetcher.fetch_source(
                    options.data, deadline, conditional
                )
            if fetched.not_modified:  # the origin confirmed the validator the caller's etag holds
                return self._not_modified(if_none_match, source_kind, expires)
            identity = caching.origin_identity(fetched.etag, fetched.last_modified, fetched.data)
            options = dataclasses.replace(options, data=fetched.data)
        else:
            source_kind = "data"
            identity = await _digest(options.data)
        etag = self._etag(canonical, identity, locator)
        if if_none_match and if_none_match == etag:
            return self._not_modified(etag, source_kind, expires)
        skipped = await self._engine.passthrough(options)
        if skipped is not None:
            response = _response(skipped)
            response.processing_skipped = True
        else:
            response = _response(await self._engine.process(options, deadline))
        # A degraded result is not the one the options ask for: nothing to revalidate.
        if not response.degradations:
            response.etag = etag
            self._set_freshness(response, expires)
        return response

    async def _process_fallback(
        self,
        options: ProcessRequest,
        replacement: SourceBytes | SourceUrl | SourceObject,
        error: ImageSvcError,
        deadline: float,
    ) -> pb.ProcessImageResponse:
        """The fallback image processed as the source would have been; a fallback that fails
        as well gives the source's ``error``. Never an etag: the result is not the source's."""
        try:
            data = await self._source_bytes(replacement, deadline)
            result = await self._engine.process(
                dataclasses.replace(options, data=data, fallback=None), deadline
            )
        except ImageSvcError:
            raise error from None
        self._metrics.fallback_used(error.reason)
        response = _response(result)
        response.fallback_used = True
        response.fallback_status = fallback.http_status(
            error, self._settings.fallback_image_http_code
        )
        response.fallback_reason = error.reason
        return response

    def _etag(self, canonical: bytes, identity: caching.SourceIdentity, locator: str = "") -> str:
        return caching.make_etag(
            canonical, identity, self._settings.etag_buster, self._version, locator
        )

    def _conditional_headers(
        self, canonical: bytes, if_none_match: str, locator: str
    ) -> dict[str, str] | None:
        """The conditional request to send the origin: when the caller's etag is the one these
        options get for this source and the origin validator it carries, ask whether that is
        still current."""
        validator = caching.origin_validator(if_none_match) if if_none_match else None
        if validator is None or self._etag(canonical, validator, locator) != if_none_match:
            return None
        if validator.kind == caching.ORIGIN_ETAG:
            return {"If-None-Match": validator.value}
        return {"If-Modified-Since": validator.value}

    def _not_modified(self, etag: str, source_kind: str, expires) -> pb.ProcessImageResponse:
        self._metrics.not_modified(source_kind)
        response = pb.ProcessImageResponse(etag=etag, not_modified=True)
        self._set_freshness(response, expires)
        return response

    def _set_freshness(self, response: pb.ProcessImageResponse, expires) -> None:
        """cache_control, and expires when the result may be cached at all."""
        now = time.time()
        response.cache_control = caching.cache_control(self._settings.ttl_s, expires, now)
        max_age = caching.max_age(response.cache_control)
        if max_age:
            response.expires.FromSeconds(int(now) + max_age)

    async def DescribeImage(
        self, raw: bytes, context: grpc.aio.ServicerContext
    ) -> pb.DescribeImageResponse:
        request, lifted = decode_request(raw, pb.DescribeImageRequest)
        caching.check_expires(request.expires if request.HasField("expires") else None)
        pctx = ParseContext(self._settings, self._engine.known_classes, Violations())
        data = parse_source(request.source, "source", pctx, lifted)
        # Checked whether or not detect is set: a misspelt class is an error either way.
        classes = parse_classes(request.classes, "classes", pctx)
        pctx.violations.raise_if_any()
        deadline = self._deadline(context)
        source = await self._source_bytes(data, deadline)
        result = await self._engine.describe(
            source,
            request.detect,
            deadline,
            classes=classes,
            segment=request.segment,
            segmentation_mask=request.segment and request.segmentation_mask,
        )
        segmentation = None
        if result.segmentation is not None:
            summary = result.segmentation
            segmentation = pb.Segmentation(
                background=summary.shares["background"],
                skin=summary.shares["skin"],
                clothes=summary.shares["clothes"],
                mask_png=summary.mask_png,
                model=summary.model,
                skin_model=summary.skin_model,
            )
        return pb.DescribeImageResponse(
            format=ENUM_BY_FORMAT.get(result.format, pb.IMAGE_FORMAT_UNSPECIFIED),
            width=result.width,
            height=result.height,
            orientation=result.orientation,
            has_alpha=result.has_alpha,
            size_bytes=result.size_bytes,
            pages=result.pages,
            detections=[_detection(obj) for obj in result.objects],
            degradations=[_degradation(item) for item in result.degradations],
            segmentation=segmentation,
        )

    async def _source_bytes(
        self, source: SourceBytes | SourceUrl | SourceObject, deadline: float
    ) -> SourceBytes:
        if isinstance(source, SourceUrl):
            return await self._fetcher.fetch(source.url, deadline)
        if isinstance(source, SourceObject):
            return await self._object_fetcher.fetch(source, deadline)
        return source


def _response(result: ProcessResult) -> pb.ProcessImageResponse:
    """The result as a response without caching hints: no etag, cache_control "no-cache"."""
    return pb.ProcessImageResponse(
        data=result.data,
        format=ENUM_BY_FORMAT[result.format],
        width=result.width,
        height=result.height,
        detections=[_detection(obj) for obj in result.objects],
        degradations=[_degradation(item) for item in result.degradations],
        encoding=result.encoding.to_proto() if result.encoding is not None else None,
        cache_control="no-cache",
    )


def _locator(source: SourceBytes | SourceUrl | SourceObject) -> str:
    """Where a fetched source comes from, for its ETag; "" for bytes."""
    if isinstance(source, SourceUrl):
        return source.url
    if isinstance(source, SourceObject):
        return f"s3://{source.bucket}/{source.key}?versionId={source.version_id}"
    return ""


async def _digest(data: SourceBytes) -> caching.SourceIdentity:
    if len(data) <= HASH_INLINE_BYTES:
        return caching.digest_identity(data)
    return await asyncio.to_thread(caching.digest_identity, data)


def _detection(obj: DetectedObject) -> pb.Detection:
    # Rounded outwards, like the pixels the detection operations touch.
    box = obj.box
    left, top = max(0, math.floor(box.left)), max(0, math.floor(box.top))
    return pb.Detection(
        class_name=obj.class_name,
        confidence=obj.confidence,
        box=pb.BoundingBox(
            left=left,
            top=top,
            width=max(0, math.ceil(box.right) - left),
            height=max(0, math.ceil(box.bottom) - top),
        ),
        model=obj.model,
    )


def _degradation(item: Degradation) -> pb.Degradation:
    return pb.Degradation(reason=item.reason, operation=item.operation, message=item.message)
