"""The one place where exceptions become gRPC statuses, plus the standard RPC metrics
(grpc_server_started_total / handled_total / handling_seconds)."""

from __future__ import annotations

import asyncio
import time

import grpc
import structlog

from imagesvc.errors import ImageSvcError, ProcessingFailed
from imagesvc.server.status import to_grpc_status
from imagesvc.telemetry.metrics import Metrics

log = structlog.get_logger("imagesvc.rpc")


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming RPCs (health Watch, reflection) pass through untouched
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        return grpc.unary_unary_rpc_method_handler(
            self._wrap(handler.unary_unary, service, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(self, behaviour, service: str, method: str):
        metrics = self._metrics

        async def handle(request, context: grpc.aio.ServicerContext):
            started = time.perf_counter()
            metrics.rpc_started(service, method)
            code = grpc.StatusCode.OK
            try:
                return await behaviour(request, context)
            except ImageSvcError as error:
                code = error.code
                metrics.error(error.reason)
                log.info("rpc_rejected", method=method, reason=error.reason, message=error.message)
                await context.abort_with_status(to_grpc_status(error))
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                metrics.error(ProcessingFailed.reason)
                log.exception("rpc_failed", method=method)
                await context.abort_with_status(
                    to_grpc_status(ProcessingFailed("internal error; the failure was logged"))
                )
            finally:
                metrics.rpc_handled(service, method, code.name, time.perf_counter() - started)

        return handle
