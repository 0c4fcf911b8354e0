"""Authentication of ImageService calls: bearer tokens and, with mutual TLS, client names.

Only the ``imagesvc.v1.ImageService`` methods are guarded; ``grpc.health.v1.Health`` and server
reflection stay open (probes and tooling carry no token).

- Tokens (``IMAGESVC_AUTH_TOKENS_PATH``): the ``authorization`` metadata must be
  ``Bearer <token>`` (scheme case-insensitive) with a token listed in the file, one per line,
  ``#`` comments. The file is read at start (missing, unreadable or without tokens: the start
  fails) and re-read when its mtime, size or inode changes, checked at most once a second, so
  tokens rotate without a restart; a file that becomes unreadable or empty keeps the last good
  list (and a warning is logged). Tokens are compared in constant time: the SHA-256 of the
  presented token against the SHA-256 of every accepted one, all of them, with
  ``hmac.compare_digest``. Tokens are never logged.
- Client names (``IMAGESVC_TLS_ALLOWED_CLIENT_NAMES``, with ``IMAGESVC_TLS_CLIENT_CA_PATH``):
  the client certificate's subject CN or one of its DNS SANs must be an allowed name.

A refusal raises :class:`~imagesvc.errors.Unauthenticated` / ``AuthTokenMissing`` /
``PermissionDenied`` inside the handler, before the servicer runs. This interceptor is installed
after (inside) :class:`~imagesvc.server.interceptors.ServerInterceptor`, so that one turns the
refusal into its status (the one place that does) and counts it in ``grpc_server_handled_total``
like any other outcome; refusals are also counted in ``imagesvc_auth_refusals_total{reason}``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Iterable, Sequence

import grpc
import structlog

from imagesvc.errors import AuthTokenMissing, PermissionDenied, Unauthenticated
from imagesvc.settings import Settings
from imagesvc.telemetry.metrics import Metrics

log = structlog.get_logger("imagesvc.auth")

GUARDED_SERVICES = frozenset({"imagesvc.v1.ImageService"})
RELOAD_INTERVAL_S = 1.0
TOKENS_SETTING = "IMAGESVC_AUTH_TOKENS_PATH"


class AuthConfigError(ValueError):
    """The authentication settings cannot be used; the message is one line naming the setting."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_tokens(text: str) -> list[str]:
    """Tokens of a token file: one per line, blank lines and ``#`` comment lines skipped."""
    tokens = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            tokens.append(line)
    return tokens


def _signature(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _reason(error: OSError | UnicodeDecodeError) -> str:
    return getattr(error, "strerror", None) or str(error)


class TokenFile:
    """The accepted tokens (as SHA-256 digests), re-read when the file changes."""

    def __init__(self, path: str, *, reload_interval_s: float = RELOAD_INTERVAL_S) -> None:
        self.path = path
        self._interval = reload_interval_s
        self._digests: tuple[bytes, ...] = ()
        self._signature: tuple[int, int, int, int] | None = None
        self._checked = 0.0
        self._failing = False
        try:
            self._load()
        except (OSError, UnicodeDecodeError) as error:
            raise AuthConfigError(
                f"cannot read {TOKENS_SETTING} {path}: {_reason(error)}"
            ) from None
        if not self._digests:
            raise AuthConfigError(f"{TOKENS_SETTING} {path} lists no token")

    def _load(self) -> bool:
        """Read the file if it changed; True when a new, non-empty list was taken."""
        with open(self.path, "rb") as file:
            signature = _signature(os.fstat(file.fileno()))
            if signature == self._signature:
                return False
            tokens = parse_tokens(file.read().decode("utf-8"))
        if not tokens and self._digests:
            # An empty file is a mistake (or a write caught half way): keep the last good list,
            # and look again once the file changes.
            self._signature = signature
            log.warning("auth_tokens_empty", path=self.path, kept=len(self._digests))
            return False
        self._digests = tuple(_digest(token) for token in tokens)
        self._signature = signature
        return True

    def refresh(self) -> None:
        """Re-read the file when it changed, at most once per reload interval."""
        now = time.monotonic()
        if now - self._checked < self._interval:
            return
        self._checked = now
        try:
            reloaded = self._load()
        except (OSError, UnicodeDecodeError) as error:
            if not self._failing:  # once per failure, not once a second
                log.warning(
                    "auth_tokens_unreadable",
                    path=self.path,
                    error=_reason(error),
                    kept=len(self._digests),
                )
            self._failing = True
            return
        if self._failing:
            log.info("auth_tokens_readable", path=self.path)
        self._failing = False
        if reloaded:
            log.info("auth_tokens_reloaded", path=self.path, tokens=len(self._digests))

    def accepts(self, token: str) -> bool:
        """Constant time in the token and in which accepted token (if any) it equals."""
        self.refresh()
        presented = _digest(token)
        match = False
        for accepted in self._digests:
            match |= hmac.compare_digest(presented, accepted)
        return match


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of the ``authorization`` metadata; raises the refusal when there is none."""
    value = None
    for key, item in metadata or ():
        if key.lower() == "authorization":
            value = item.decode("latin-1") if isinstance(item, bytes) else item
            break
    if value is None:
        raise AuthTokenMissing("this call needs authorization metadata: Bearer <token>")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("the authorization metadata must be: Bearer <token>")
    return token


def client_names(auth_context: dict[str, Sequence[bytes]]) -> set[str]:
    """The peer certificate's subject CN and DNS SANs, from gRPC's auth context."""
    names = set()
    keys = ["x509_common_name"]
    # Newer gRPC lists DNS SANs on their own; the combined property also holds IPs, URIs, emails.
    keys.append(
        "x509_dns_name" if "x509_dns_name" in auth_context else "x509_subject_alternative_name"
    )
    for key in keys:
        for value in auth_context.get(key, ()):
            names.add(value.decode("utf-8", errors="replace"))
    return names


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the ImageService calls; everything else passes untouched."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        tokens: TokenFile | None = None,
        allowed_client_names: Iterable[str] = (),
    ) -> None:
        self._metrics = metrics
        self._tokens = tokens
        self._allowed = frozenset(allowed_client_names)
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        full_method = handler_call_details.method
        wrapped = self._wrapped.get(full_method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        service = full_method.lstrip("/").rpartition("/")[0]
        if handler is None or service not in GUARDED_SERVICES:
            return handler
        if handler.unary_unary is None:  # ImageService is all unary; refuse rather than pass
            raise RuntimeError(f"{full_method}: only unary methods can be guarded")
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._guard(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[full_method] = wrapped
        return wrapped

    def check(self, context: grpc.aio.ServicerContext) -> None:
        """Raises the refusal (counted) when the call may not proceed."""
        try:
            if self._tokens is not None:
                token = bearer_token(context.invocation_metadata())
                if not self._tokens.accepts(token):
                    raise Unauthenticated("the bearer token is not accepted")
            if self._allowed:
                names = client_names(context.auth_context())
                if not names & self._allowed:
                    raise PermissionDenied(
                        "the client certificate's name is not allowed "
                        "(IMAGESVC_TLS_ALLOWED_CLIENT_NAMES)",
                        metadata={"client_names": ",".join(sorted(names))},
                    )
        except (Unauthenticated, PermissionDenied) as error:
            self._metrics.auth_refused(error.reason)
            raise

    def _guard(self, behaviour):
        check = self.check

        async def handle(request, context: grpc.aio.ServicerContext):
            check(context)
            return await behaviour(request, context)

        return handle


def interceptor(settings: Settings, metrics: Metrics) -> AuthInterceptor | None:
    """The interceptor the settings ask for (None: nothing to check).

    Reads the token file now; raises AuthConfigError (one line, naming the setting)."""
    tokens = TokenFile(settings.auth_tokens_path) if settings.auth_tokens_path else None
    allowed = tuple(settings.tls_allowed_client_names)
    if allowed and not settings.tls_client_ca_path:
        raise AuthConfigError(
            "IMAGESVC_TLS_ALLOWED_CLIENT_NAMES needs mutual TLS: set IMAGESVC_TLS_CLIENT_CA_PATH"
        )
    if tokens is None and not allowed:
        return None
    return AuthInterceptor(metrics, tokens=tokens, allowed_client_names=allowed)
