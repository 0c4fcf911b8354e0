"""The one place where exceptions become gRPC statuses, plus the standard RPC metrics
(grpc_server_started_total / handled_total / handling_seconds)."""

from __future__ import annotations

import asyncio
import time

import grpc
import structlog

from imagesvc.errors import Cancelled, DeadlineExceeded, ImageSvcError, ProcessingFailed
from imagesvc.server.status import to_grpc_status
from imagesvc.telemetry.metrics import Metrics

log = structlog.get_logger("imagesvc.rpc")

# A client whose deadline passes cancels the call itself; its cancel reaches the server up to one
# network latency before the server's copy of the deadline expires.
DEADLINE_SLACK_S = 0.25


def cancelled_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """What the caller saw when the handler was cancelled: DEADLINE_EXCEEDED when its deadline
    had (all but) passed, else CANCELLED (a real cancel, or the server shutting down)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= DEADLINE_SLACK_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # Wrapped unary handlers by full method name: a server's handlers never change, so
        # each is wrapped once rather than on every call.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        full_method = handler_call_details.method
        wrapped = self._wrapped.get(full_method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming RPCs (health Watch, reflection) pass through untouched
        service, _, method = full_method.lstrip("/").rpartition("/")
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._wrap(handler.unary_unary, service, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[full_method] = wrapped
        return wrapped

    def _wrap(self, behaviour, service: str, method: str):
        metrics = self._metrics

        async def handle(request, context: grpc.aio.ServicerContext):
            started = time.perf_counter()
            metrics.rpc_started(service, method)
            code = grpc.StatusCode.OK
            recorded = False

            def handled(status: grpc.StatusCode) -> None:
                # Before an abort sends the status: a caller that reads the metrics right after
                # the answer finds it counted.
                nonlocal recorded
                recorded = True
                metrics.rpc_handled(service, method, status.name, time.perf_counter() - started)

            try:
                return await behaviour(request, context)
            except ImageSvcError as error:
                code = error.code
                metrics.error(error.reason)
                if code == grpc.StatusCode.INTERNAL:  # ours, not the caller's: keep the traceback
                    log.exception(
                        "rpc_failed", method=method, reason=error.reason, message=error.message
                    )
                else:
                    log.info(
                        "rpc_rejected", method=method, reason=error.reason, message=error.message
                    )
                handled(code)
                await context.abort_with_status(to_grpc_status(error))
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = cancelled_code(context)
                metrics.error(
                    DeadlineExceeded.reason
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED
                    else Cancelled.reason
                )
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                metrics.error(ProcessingFailed.reason)
                log.exception("rpc_failed", method=method)
                handled(code)
                await context.abort_with_status(
                    to_grpc_status(ProcessingFailed("internal error; the failure was logged"))
                )
            finally:
                if not recorded:
                    handled(code)

        return handle
