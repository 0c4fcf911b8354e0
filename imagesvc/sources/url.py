"""url sources: the bytes behind an http(s) URL, fetched safely.

One ``UrlFetcher`` per server holds one aiohttp ``ClientSession`` (one connection pool, created on
the first fetch, closed when the server stops). Each fetch:

- checks the URL against IMAGESVC_ALLOWED_SOURCES (prefixes of the normalised URL);
- connects only to addresses the SSRF guard allows (imagesvc.sources.guard: the check runs on
  the resolved address that is connected to, so DNS rebinding cannot slip past it);
- follows redirects itself, at most IMAGESVC_MAX_REDIRECTS, each hop checked again like the
  first URL (scheme, credentials, allow-list, guard);
- refuses a declared Content-Length over IMAGESVC_MAX_SOURCE_BYTES before reading the body, and
  stops reading as soon as the streamed body passes it (a missing or lying Content-Length does
  not help); bodies are read as sent (no transparent decompression: no gzip bombs);
- gives up after IMAGESVC_SOURCE_DOWNLOAD_TIMEOUT_S, or at the RPC deadline when that is sooner.
- returns the origin's validators (ETag, Last-Modified) with the body, and sends conditional
  headers when asked (``fetch_source``), an origin's 304 then meaning "not modified"
  (imagesvc.caching builds ETags from them).

Failures become the domain errors of imagesvc.errors (SOURCE_NOT_FOUND, SOURCE_FORBIDDEN,
SOURCE_UNREACHABLE, SOURCE_TOO_LARGE, DEADLINE_EXCEEDED); none is INTERNAL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from imagesvc.errors import (
    DeadlineExceeded,
    SourceForbidden,
    SourceNotFound,
    SourceTooLarge,
    SourceUnreachable,
)
from imagesvc.settings import Settings
from imagesvc.sources.guard import (
    AddressPolicy,
    AddressRefused,
    GuardedResolver,
    IPAddress,
    check,
    guarded_socket_factory,
    parse_address,
)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
MAX_URL_LENGTH = 8192
# How long a caller should wait before retrying a transient failure (RetryInfo).
RETRY_AFTER_S = 1.0
USER_AGENT = "imagesvc"


@dataclass(frozen=True, slots=True)
class FetchedSource:
    """A url source's body (None when the origin answered 304 to a conditional request) and the
    origin's validators, as sent."""

    data: bytes | None
    etag: str | None
    last_modified: str | None
    not_modified: bool = False


class UrlProblem(ValueError):
    """Why a URL is not a fetchable source (a field violation at the edge)."""


def normalize_url(text: str) -> URL:
    """The URL as fetched, or UrlProblem: absolute http(s), a host, no credentials."""
    if not text:
        raise UrlProblem("the source URL is required")
    if len(text) > MAX_URL_LENGTH:
        raise UrlProblem(f"at most {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise UrlProblem("must not contain whitespace or control characters")
    try:
        url = URL(text)
        host = url.host
    except (ValueError, TypeError):
        raise UrlProblem("not a valid URL") from None
    if url.scheme not in ("http", "https"):
        raise UrlProblem("only http and https URLs can be fetched")
    if not host:
        raise UrlProblem("the URL must name a host")
    if url.raw_user is not None or url.raw_password is not None:
        raise UrlProblem("credentials in the URL are not supported")
    try:
        url.port  # noqa: B018 - an out-of-range port raises here
    except ValueError:
        raise UrlProblem("not a valid port") from None
    return url.with_fragment(None)


def canonical(url: URL) -> str:
    """What IMAGESVC_ALLOWED_SOURCES prefixes are compared with: lower-case scheme and host,
    the default port left out."""
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    port = "" if url.is_default_port() else f":{url.port}"
    return f"{url.scheme}://{host.lower()}{port}{url.raw_path_qs}"


def allowed(url: URL, prefixes: tuple[str, ...]) -> bool:
    if not prefixes:
        return True
    text = canonical(url)
    return any(text.startswith(canonical_prefix(prefix)) for prefix in prefixes)


def canonical_prefix(prefix: str) -> str:
    scheme, _, rest = prefix.partition("://")
    authority, slash, path = rest.partition("/")
    authority = authority.lower()
    default = {"http": ":80", "https": ":443"}.get(scheme.lower())
    if default and authority.endswith(default):
        authority = authority[: -len(default)]
    return f"{scheme.lower()}://{authority}{slash}{path}"


class UrlFetcher:
    """Fetches url sources through one pooled ClientSession (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        resolver: AbstractResolver | None = None,
        on_fetch: Callable[[float], None] | None = None,
    ) -> None:
        self._settings = settings
        self._policy = AddressPolicy.from_settings(settings)
        self._inner_resolver = resolver
        self._on_fetch = on_fetch
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self._policy, self._inner_resolver),
                socket_factory=guarded_socket_factory(self._policy),
                limit=100,
                limit_per_host=16,
                ttl_dns_cache=10,
                ssl=self._ssl_context(),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                trust_env=False,  # no proxy from the environment: the guard sees the origin
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    def _ssl_context(self) -> ssl.SSLContext:
        """Certificates are always verified: against the system's CAs, plus
        IMAGESVC_SOURCE_CA_PATH's (an internal platform's own CA)."""
        context = ssl.create_default_context()
        if self._settings.source_ca_path:
            context.load_verify_locations(cafile=self._settings.source_ca_path)
        return context

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str, deadline: float) -> bytes:
        """The body behind ``url`` (already validated by the edge, see normalize_url), by
        ``deadline`` (time.monotonic()) at the latest."""
        fetched = await self.fetch_source(url, deadline)
        assert fetched.data is not None  # unconditional: never not_modified
        return fetched.data

    async def fetch_source(
        self, url: str, deadline: float, conditional: Mapping[str, str] | None = None
    ) -> FetchedSource:
        """Like fetch, with the origin's validators; ``conditional`` headers (If-None-Match or
        If-Modified-Since) make an origin's 304 a FetchedSource with ``not_modified`` set and no
        data."""
        started = time.monotonic()
        budget = self._settings.source_download_timeout_s
        rpc_left = deadline - started
        rpc_bound = rpc_left <= budget
        if rpc_left <= 0:
            raise DeadlineExceeded("the deadline passed before the source was fetched")
        try:
            async with asyncio.timeout(min(budget, rpc_left)):
                return await self._follow(normalize_url(url), dict(conditional or {}))
        except TimeoutError:
            if rpc_bound:
                raise DeadlineExceeded("the deadline passed while the source was fetched") from None
            raise SourceUnreachable(
                f"the source took longer than {budget:g} s to download "
                "(IMAGESVC_SOURCE_DOWNLOAD_TIMEOUT_S)",
                metadata={"cause": "timeout"},
                retry_after_s=RETRY_AFTER_S,
            ) from None
        except UrlProblem as problem:  # a redirect's Location; the request's URL was checked
            raise SourceUnreachable(
                f"the source redirected to an unusable URL: {problem}",
                metadata={"cause": "bad_redirect"},
            ) from None
        finally:
            if self._on_fetch is not None:
                self._on_fetch(time.monotonic() - started)

    def _check_target(self, url: URL) -> URL:
        """``url`` if it may be fetched, with an IP-literal host in its canonical form."""
        if not allowed(url, self._settings.allowed_sources):
            raise SourceForbidden(
                "the source URL is not allowed (IMAGESVC_ALLOWED_SOURCES)",
                metadata={"cause": "not_allowed"},
            )
        host = url.raw_host or ""
        address = literal_address(host)
        if address is None:
            return url  # a name: the guarded resolver checks what it resolves to
        try:
            check(str(address), self._policy)
        except AddressRefused as refused:
            raise _forbidden(refused) from None
        if isinstance(address, ipaddress.IPv4Address) and host != str(address):
            # 2130706433, 0x7f.1, 017700000001, 127.1: the address getaddrinfo would make of it.
            return url.with_host(str(address))
        return url

    async def _follow(self, url: URL, conditional: dict[str, str]) -> FetchedSource:
        session = self._session_now()
        redirects = 0
        while True:
            url = self._check_target(url)
            try:
                async with session.get(url, allow_redirects=False, headers=conditional) as response:
                    if response.status in REDIRECT_STATUSES:
                        location = response.headers.get("Location")
                        if not location:
                            raise SourceUnreachable(
                                f"the source answered HTTP {response.status} without a Location",
                                metadata={"cause": "bad_redirect"},
                            )
                        redirects += 1
                        if redirects > self._settings.max_redirects:
                            raise SourceUnreachable(
                                f"the source redirected more than {self._settings.max_redirects}"
                                " times (IMAGESVC_MAX_REDIRECTS)",
                                metadata={"cause": "too_many_redirects"},
                            )
                        url = _redirect_target(response.url, location)
                        continue
                    etag = response.headers.get("ETag")
                    last_modified = response.headers.get("Last-Modified")
                    if response.status == 304 and conditional:
                        return FetchedSource(None, etag, last_modified, not_modified=True)
                    _check_status(response.status, response.headers.get("Retry-After"))
                    return FetchedSource(await self._read(response), etag, last_modified)
            except AddressRefused as refused:
                raise _forbidden(refused) from None
            except aiohttp.ClientConnectorCertificateError:
                # Not retried: the same certificate will be offered again.
                raise SourceUnreachable(
                    "the source's TLS certificate is not trusted (see IMAGESVC_SOURCE_CA_PATH)",
                    metadata={"cause": "tls_certificate"},
                ) from None
            except aiohttp.ClientConnectorSSLError:
                raise SourceUnreachable(
                    "the TLS handshake with the source failed",
                    metadata={"cause": "tls_handshake"},
                    retry_after_s=RETRY_AFTER_S,
                ) from None
            except aiohttp.ClientConnectorError as error:
                if isinstance(error.os_error, AddressRefused):
                    raise _forbidden(error.os_error) from None
                raise SourceUnreachable(
                    "could not connect to the source",
                    metadata={"cause": "connect_failed"},
                    retry_after_s=RETRY_AFTER_S,
                ) from None
            except aiohttp.InvalidURL:
                raise SourceUnreachable(
                    "the source redirected to an unusable URL", metadata={"cause": "bad_redirect"}
                ) from None
            except aiohttp.ClientPayloadError:
                raise SourceUnreachable(
                    "the source's body ended early or was malformed",
                    metadata={"cause": "truncated"},
                    retry_after_s=RETRY_AFTER_S,
                ) from None
            except UrlProblem:
                raise
            except (aiohttp.ClientError, ValueError):  # ValueError: e.g. an undecodable header
                raise SourceUnreachable(
                    "the source's answer could not be read",
                    metadata={"cause": "bad_response"},
                    retry_after_s=RETRY_AFTER_S,
                ) from None

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self._settings.max_source_bytes
        declared = response.content_length
        if declared is not None and declared > limit:
            raise SourceTooLarge(
                f"the source declares {declared} bytes, more than {limit} "
                "(IMAGESVC_MAX_SOURCE_BYTES)",
                metadata={"declared_bytes": str(declared), "max_bytes": str(limit)},
            )
        body = bytearray()
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            body += chunk
            if len(body) > limit:
                raise SourceTooLarge(
                    f"the source is larger than {limit} bytes (IMAGESVC_MAX_SOURCE_BYTES)",
                    metadata={"max_bytes": str(limit)},
                )
        if not body:
            raise SourceUnreachable("the source's body is empty", metadata={"cause": "empty"})
        return bytes(body)


def _redirect_target(base: URL, location: str) -> URL:
    try:
        joined = base.join(URL(location))
    except (ValueError, TypeError):
        raise UrlProblem("not a valid URL") from None
    return normalize_url(str(joined))


def literal_address(host: str) -> IPAddress | None:
    """The address an IP-literal host names, legacy IPv4 forms included (decimal 2130706433,
    hex 0x7f.1, octal 0177.0.0.1, short 127.1, as inet_aton reads them); None for a name."""
    try:
        return parse_address(host)
    except ValueError:
        pass
    bare = host.rstrip(".")
    if bare and ":" not in bare and set(bare.lower()) <= set("0123456789abcdefx."):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def _forbidden(refused: AddressRefused) -> SourceForbidden:
    # The category, never the address: it may be an internal one.
    return SourceForbidden(
        f"the source URL is not allowed: it resolves to a {refused.category.replace('_', '-')} "
        "address",
        metadata={"cause": "address_refused", "address_category": refused.category},
    )


def _check_status(status: int, retry_after: str | None) -> None:
    if 200 <= status < 300:
        return
    if status in (404, 410):
        raise SourceNotFound(
            f"the source answered HTTP {status}", metadata={"http_status": str(status)}
        )
    if status in (401, 403):
        raise SourceForbidden(
            f"the source answered HTTP {status}",
            metadata={"cause": "origin_refused", "http_status": str(status)},
        )
    transient = status >= 500 or status in (408, 429)
    raise SourceUnreachable(
        f"the source answered HTTP {status}",
        metadata={"cause": "http_status", "http_status": str(status)},
        retry_after_s=_retry_after(retry_after) if transient else None,
    )


def _retry_after(header: str | None) -> float:
    if header is not None and header.strip().isdigit():
        return min(float(header.strip()), 3600.0)
    return RETRY_AFTER_S
