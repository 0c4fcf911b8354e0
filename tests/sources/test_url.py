"""UrlFetcher against a real local origin: statuses, sizes, lying Content-Length, slow bodies,
redirects, the allow-list, and the SSRF guard with connections counted on the listeners."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import time

import grpc
import pytest

from imagesvc.errors import (
    DeadlineExceeded,
    SourceForbidden,
    SourceNotFound,
    SourceTooLarge,
    SourceUnreachable,
)
from imagesvc.settings import Settings
from imagesvc.sources.guard import AddressPolicy
from imagesvc.sources.url import UrlFetcher, UrlProblem, canonical, normalize_url
from tests.sources.conftest import MapResolver
from tests.sources.origin import Origin, Request, redirect, respond, sample_jpeg, static
from tests.tls_certs import CertificateAuthority

JPEG = sample_jpeg()
LOOPBACK_OK = {"allow_loopback_source_addresses": True}


@pytest.fixture
async def make_fetcher():
    made: list[UrlFetcher] = []

    def make(resolver=None, **overrides) -> UrlFetcher:
        fetcher = UrlFetcher(Settings(**overrides), resolver=resolver)
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        await fetcher.close()


def soon(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


async def test_fetches_an_image_and_reuses_the_connection(origin, make_fetcher):
    origin.routes["/a.jpg"] = static(200, JPEG, {"Content-Type": "image/jpeg"})
    fetcher = make_fetcher(**LOOPBACK_OK)
    for _ in range(3):
        assert await fetcher.fetch(origin.url("/a.jpg"), soon()) == JPEG
    assert origin.accepted == 1  # one pooled keep-alive connection
    assert origin.requests[0].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    ("status", "error", "code", "retry"),
    [
        (404, SourceNotFound, grpc.StatusCode.NOT_FOUND, False),
        (410, SourceNotFound, grpc.StatusCode.NOT_FOUND, False),
        (401, SourceForbidden, grpc.StatusCode.PERMISSION_DENIED, False),
        (403, SourceForbidden, grpc.StatusCode.PERMISSION_DENIED, False),
        (500, SourceUnreachable, grpc.StatusCode.UNAVAILABLE, True),
        (503, SourceUnreachable, grpc.StatusCode.UNAVAILABLE, True),
        (429, SourceUnreachable, grpc.StatusCode.UNAVAILABLE, True),
        (400, SourceUnreachable, grpc.StatusCode.UNAVAILABLE, False),
    ],
)
async def test_origin_statuses(origin, make_fetcher, status, error, code, retry):
    origin.routes["/x"] = static(status, b"nope")
    with pytest.raises(error) as raised:
        await make_fetcher(**LOOPBACK_OK).fetch(origin.url("/x"), soon())
    assert raised.value.code == code
    assert (raised.value.retry_after_s is not None) == retry
    assert raised.value.metadata["http_status"] == str(status)


async def test_retry_after_is_passed_on(origin, make_fetcher):
    origin.routes["/x"] = static(503, b"", {"Retry-After": "7"})
    with pytest.raises(SourceUnreachable) as raised:
        await make_fetcher(**LOOPBACK_OK).fetch(origin.url("/x"), soon())
    assert raised.value.retry_after_s == 7.0


async def test_connection_refused_is_unreachable_with_retry(origin, make_fetcher):
    url = origin.url("/a.jpg")
    await origin.close()
    with pytest.raises(SourceUnreachable) as raised:
        await make_fetcher(**LOOPBACK_OK).fetch(url, soon())
    assert raised.value.metadata["cause"] == "connect_failed"
    assert raised.value.retry_after_s is not None


# --- Sizes ---------------------------------------------------------------------------------


async def test_declared_length_over_the_limit_is_refused_before_the_body(origin, make_fetcher):
    sent = asyncio.Event()

    async def huge(request: Request, writer: asyncio.StreamWriter) -> None:
        respond(writer, 200, b"", content_length=10_000_000)  # headers only; body never comes
        sent.set()
        await asyncio.sleep(30)

    origin.routes["/huge"] = huge
    started = time.monotonic()
    with pytest.raises(SourceTooLarge) as raised:
        await make_fetcher(max_source_bytes=1000, **LOOPBACK_OK).fetch(origin.url("/huge"), soon())
    assert time.monotonic() - started < 5  # did not wait for (or read) the body
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.metadata["declared_bytes"] == "10000000"


async def test_body_without_length_is_cut_off_while_streaming(origin, make_fetcher):
    async def endless(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")  # close-delimited body
        for _ in range(10_000):  # up to 640 MB, far more than the limit; stops when cut off
            writer.write(b"x" * 65536)
            await writer.drain()

    origin.routes["/endless"] = endless
    with pytest.raises(SourceTooLarge):
        await make_fetcher(max_source_bytes=100_000, **LOOPBACK_OK).fetch(
            origin.url("/endless"), soon()
        )


async def test_chunked_body_over_the_limit_is_refused(origin, make_fetcher):
    async def chunked(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(100):
            writer.write(b"4000\r\n" + b"y" * 0x4000 + b"\r\n")
        writer.write(b"0\r\n\r\n")

    origin.routes["/chunked"] = chunked
    with pytest.raises(SourceTooLarge):
        await make_fetcher(max_source_bytes=100_000, **LOOPBACK_OK).fetch(
            origin.url("/chunked"), soon()
        )


@pytest.mark.parametrize("pause", [0.0, 0.2])
async def test_length_declaring_less_than_sent_never_yields_more(origin, make_fetcher, pause):
    """The extra bytes are never taken as body: read as the declared body when they come
    later, refused as a malformed answer when they come with it (aiohttp's parser)."""

    async def liar(request: Request, writer: asyncio.StreamWriter) -> None:
        respond(writer, 200, JPEG, content_length=len(JPEG))
        if pause:
            await writer.drain()
            await asyncio.sleep(pause)
        writer.write(b"z" * 500_000)
        writer.close()

    origin.routes["/liar"] = liar
    fetcher = make_fetcher(max_source_bytes=len(JPEG) + 10, **LOOPBACK_OK)
    try:
        data = await fetcher.fetch(origin.url("/liar"), soon())
    except SourceUnreachable as error:
        assert error.metadata["cause"] == "bad_response"
    else:
        assert data == JPEG


async def test_length_declaring_more_than_sent_is_a_truncated_body(origin, make_fetcher):
    async def short(request: Request, writer: asyncio.StreamWriter) -> None:
        respond(writer, 200, JPEG[:100], content_length=len(JPEG))
        await writer.drain()
        writer.close()

    origin.routes["/short"] = short
    with pytest.raises(SourceUnreachable) as raised:
        await make_fetcher(**LOOPBACK_OK).fetch(origin.url("/short"), soon())
    assert raised.value.metadata["cause"] == "truncated"


# --- Time ----------------------------------------------------------------------------------


async def stall(request: Request, writer: asyncio.StreamWriter) -> None:
    respond(writer, 200, JPEG[:10], content_length=len(JPEG))
    await writer.drain()
    await asyncio.sleep(30)


async def test_slow_body_hits_the_download_timeout(origin, make_fetcher):
    origin.routes["/slow"] = stall
    started = time.monotonic()
    with pytest.raises(SourceUnreachable) as raised:
        await make_fetcher(source_download_timeout_s=0.5, **LOOPBACK_OK).fetch(
            origin.url("/slow"), soon()
        )
    assert 0.4 < time.monotonic() - started < 3
    assert raised.value.metadata["cause"] == "timeout"
    assert raised.value.retry_after_s is not None


async def test_slow_body_hits_the_rpc_deadline_first(origin, make_fetcher):
    origin.routes["/slow"] = stall
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await make_fetcher(source_download_timeout_s=20, **LOOPBACK_OK).fetch(
            origin.url("/slow"), soon(0.5)
        )
    assert time.monotonic() - started < 3


# --- Redirects -----------------------------------------------------------------------------


async def test_redirects_are_followed_relative_and_absolute(origin, make_fetcher):
    origin.routes["/a.jpg"] = static(200, JPEG)
    origin.routes["/relative"] = redirect("/a.jpg", 301)
    origin.routes["/absolute"] = redirect(origin.url("/relative"), 307)
    assert await make_fetcher(**LOOPBACK_OK).fetch(origin.url("/absolute"), soon()) == JPEG
    assert [r.path for r in origin.requests] == ["/absolute", "/relative", "/a.jpg"]


async def test_redirect_chain_is_limited(origin, make_fetcher):
    origin.routes["/a.jpg"] = static(200, JPEG)
    for hop in range(1, 5):
        origin.routes[f"/hop{hop}"] = redirect("/a.jpg" if hop == 1 else f"/hop{hop - 1}")
    fetcher = make_fetcher(max_redirects=4, **LOOPBACK_OK)
    assert await fetcher.fetch(origin.url("/hop4"), soon()) == JPEG
    with pytest.raises(SourceUnreachable) as raised:
        await make_fetcher(max_redirects=3, **LOOPBACK_OK).fetch(origin.url("/hop4"), soon())
    assert raised.value.metadata["cause"] == "too_many_redirects"


async def test_redirect_loop_stops(origin, make_fetcher):
    origin.routes["/loop"] = redirect("/loop")
    with pytest.raises(SourceUnreachable) as raised:
        await make_fetcher(**LOOPBACK_OK).fetch(origin.url("/loop"), soon())
    assert raised.value.metadata["cause"] == "too_many_redirects"
    assert len(origin.requests) == 6  # the first request and IMAGESVC_MAX_REDIRECTS (5) hops


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://10.0.0.1/",
        "http://192.168.0.1/",
        "http://metadata.test/",
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "http://[::1",
        "http://user:pw@example.com/",
    ],
)
async def test_redirect_to_a_refused_target_is_refused(origin, make_fetcher, connects, target):
    origin.routes["/r"] = redirect(target)
    resolver = MapResolver({"metadata.test": ["169.254.169.254"]})
    with pytest.raises((SourceForbidden, SourceUnreachable)) as raised:
        await make_fetcher(resolver, **LOOPBACK_OK).fetch(origin.url("/r"), soon())
    if target.startswith("http") and "[::1" not in target and "@" not in target:
        assert isinstance(raised.value, SourceForbidden)
        assert "169.254" not in raised.value.message and "10.0" not in raised.value.message
    else:
        assert raised.value.metadata["cause"] == "bad_redirect"
    assert set(connects) == {"127.0.0.1"}  # only the origin was ever connected to


class Switch:
    """An address policy the test flips: loopback allowed until the origin's redirect is sent."""

    def __init__(self) -> None:
        self.loopback = True

    def allows(self, category: str | None) -> bool:
        return category is None or (category == "loopback" and self.loopback)


async def test_redirect_to_loopback_refused_once_loopback_is_refused(
    origin, second_origin, make_fetcher, monkeypatch
):
    """Every hop is checked when it connects: the second origin (another loopback listener) is
    refused once the policy refuses loopback, and never sees a connection."""
    switch = Switch()
    monkeypatch.setattr(AddressPolicy, "from_settings", classmethod(lambda cls, s: switch))
    second_origin.routes["/a.jpg"] = static(200, JPEG)

    async def hop(request: Request, writer: asyncio.StreamWriter) -> None:
        switch.loopback = False
        respond(writer, 302, b"", {"Location": second_origin.url("/a.jpg", host="localhost")})

    origin.routes["/hop"] = hop
    resolver = MapResolver({"localhost": ["127.0.0.1"]})
    with pytest.raises(SourceForbidden) as raised:
        await make_fetcher(resolver).fetch(origin.url("/hop"), soon())
    assert raised.value.metadata["address_category"] == "loopback"
    assert origin.accepted == 1 and second_origin.accepted == 0


# --- Allow-list ----------------------------------------------------------------------------


async def test_allow_list(origin, make_fetcher):
    origin.routes["/images/a.jpg"] = static(200, JPEG)
    origin.routes["/other/a.jpg"] = static(200, JPEG)
    origin.routes["/images/out"] = redirect("/other/a.jpg")
    fetcher = make_fetcher(allowed_sources=(origin.url("/images/"),), **LOOPBACK_OK)
    assert await fetcher.fetch(origin.url("/images/a.jpg"), soon()) == JPEG
    with pytest.raises(SourceForbidden) as raised:
        await fetcher.fetch(origin.url("/other/a.jpg"), soon())
    assert raised.value.metadata["cause"] == "not_allowed"
    with pytest.raises(SourceForbidden):
        await fetcher.fetch(origin.url("/images/out"), soon())  # a redirect out of the list
    assert [r.path for r in origin.requests] == ["/images/a.jpg", "/images/out"]


def test_allowed_sources_must_have_a_path():
    with pytest.raises(ValueError):
        Settings(allowed_sources=("https://example.com",))
    with pytest.raises(ValueError):
        Settings(allowed_sources=("ftp://example.com/",))
    settings = Settings(allowed_sources="https://a.example/, http://b.example/img/")
    assert settings.allowed_sources == ("https://a.example/", "http://b.example/img/")


def test_canonical_form_is_what_prefixes_match():
    assert canonical(normalize_url("HTTPS://Images.Example.COM:443/A?b=1")) == (
        "https://images.example.com/A?b=1"
    )
    assert canonical(normalize_url("http://[::1]:8080/x")) == "http://[::1]:8080/x"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "example.com/a.jpg",
        "/a.jpg",
        "ftp://example.com/a.jpg",
        "file:///etc/passwd",
        "gopher://127.0.0.1:25/",
        "http:///a.jpg",
        "http://user:pass@example.com/a.jpg",
        "http://ok@127.0.0.1/",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "http://example.com/\r\nHost: evil",
        "http://" + "a" * 9000 + ".com/",
    ],
)
def test_malformed_urls(url):
    with pytest.raises(UrlProblem):
        normalize_url(url)


# --- SSRF ----------------------------------------------------------------------------------

NAMES = {
    "loopback.test": ["127.0.0.1"],
    "loopback6.test": ["::1"],
    "metadata.test": ["169.254.169.254"],
    "private.test": ["192.168.1.10"],
    "ten.test": ["10.1.2.3"],
    "cgnat.test": ["100.64.1.1"],
    "ula.test": ["fd00::1"],
    "mapped.test": ["::ffff:10.0.0.1"],
    "mixed.test": ["93.184.216.34", "10.0.0.1"],
    "multicast.test": ["224.0.0.251"],
}

SSRF_URLS = [
    "http://127.0.0.1:{port}/a.jpg",
    "http://127.1:{port}/a.jpg",
    "http://127.0.0.1.:{port}/a.jpg",
    "http://2130706433:{port}/a.jpg",
    "http://0x7f.1:{port}/a.jpg",
    "http://0x7f000001:{port}/a.jpg",
    "http://017700000001:{port}/a.jpg",
    "http://0177.0.0.1:{port}/a.jpg",
    "http://[::1]:{port}/a.jpg",
    "http://[::ffff:127.0.0.1]:{port}/a.jpg",
    "http://[::ffff:7f00:1]:{port}/a.jpg",
    "http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/a.jpg",
    "http://[::127.0.0.1]:{port}/a.jpg",
    "http://[64:ff9b::7f00:1]:{port}/a.jpg",
    "http://[2002:7f00:1::]:{port}/a.jpg",
    "http://localhost:{port}/a.jpg",
    "http://loopback.test:{port}/a.jpg",
    "http://loopback6.test:{port}/a.jpg",
    "http://0.0.0.0:{port}/a.jpg",
    "http://0:{port}/a.jpg",
    "http://[::]:{port}/a.jpg",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://2852039166/latest/meta-data/",
    "http://metadata.test/latest/meta-data/",
    "http://[fe80::1]/",
    "http://10.0.0.1/",
    "http://10.255.255.255/",
    "http://172.16.0.1/",
    "http://172.31.255.255/",
    "http://192.168.0.1/",
    "http://100.64.0.1/",
    "http://100.127.255.255/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://private.test/",
    "http://ten.test/",
    "http://cgnat.test/",
    "http://ula.test/",
    "http://mapped.test/",
    "http://mixed.test/",
    "http://224.0.0.1/",
    "http://multicast.test/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://[ff02::1]/",
    "http://[2a00:1450::5efe:10.0.0.1]/",
    "https://127.0.0.1:{port}/a.jpg",
    "https://metadata.test/",
]


@pytest.mark.parametrize("template", SSRF_URLS)
async def test_ssrf_refused_without_any_connection(origin, make_fetcher, connects, template):
    origin.routes["/a.jpg"] = static(200, JPEG)
    fetcher = make_fetcher(MapResolver(NAMES) if "localhost" not in template else None)
    with pytest.raises(SourceForbidden) as raised:
        await fetcher.fetch(template.format(port=origin.port), soon())
    error = raised.value
    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.metadata["cause"] == "address_refused"
    for revealing in ("127.0", "::1", "169.254", "10.", "192.168", "100.64", "fd00", "224."):
        assert revealing not in error.message
    assert connects == []  # not one connect() was attempted, to any address
    assert origin.accepted == 0


async def test_dns_rebinding_cannot_slip_between_check_and_connect(origin, make_fetcher, connects):
    """A name that resolves to a public address when first asked, then to loopback: the fetch
    connects to what its own lookup returned, and refuses it."""
    origin.routes["/a.jpg"] = static(200, JPEG)
    resolver = MapResolver({"rebind.test": [["93.184.216.34"], ["127.0.0.1"]]})
    fetcher = make_fetcher(resolver)
    # Someone checks the name first (the check-then-connect pattern this design avoids)...
    first = await resolver.resolve("rebind.test", origin.port)
    assert first[0]["host"] == "93.184.216.34"
    # ...and the fetch's own lookup, the one it connects with, is guarded.
    with pytest.raises(SourceForbidden):
        await fetcher.fetch(f"http://rebind.test:{origin.port}/a.jpg", soon())
    assert resolver.lookups["rebind.test"] == 2
    assert connects == [] and origin.accepted == 0


async def test_loopback_allowed_reaches_the_origin_by_name_and_literal(origin, make_fetcher):
    origin.routes["/a.jpg"] = static(200, JPEG)
    fetcher = make_fetcher(MapResolver(NAMES), **LOOPBACK_OK)
    for url in (
        origin.url("/a.jpg"),
        origin.url("/a.jpg", host="loopback.test"),
        origin.url("/a.jpg", host="2130706433"),
    ):
        assert await fetcher.fetch(url, soon()) == JPEG
    assert origin.accepted >= 1


async def test_close_then_fetch_again_opens_a_new_pool(origin, make_fetcher):
    origin.routes["/a.jpg"] = static(200, JPEG)
    fetcher = make_fetcher(**LOOPBACK_OK)
    assert await fetcher.fetch(origin.url("/a.jpg"), soon()) == JPEG
    await fetcher.close()
    assert await fetcher.fetch(origin.url("/a.jpg"), soon()) == JPEG
    assert origin.accepted == 2


async def test_fetch_source_returns_the_validators_and_a_conditional_304(origin, make_fetcher):
    validators = {"ETag": '"v1"', "Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"}
    origin.routes["/a.jpg"] = static(200, JPEG, validators)
    origin.routes["/same.jpg"] = static(304, b"", validators)
    fetcher = make_fetcher(**LOOPBACK_OK)
    fetched = await fetcher.fetch_source(origin.url("/a.jpg"), soon())
    assert (fetched.data, fetched.etag, fetched.last_modified) == (JPEG, *validators.values())
    assert not fetched.not_modified
    conditional = {"If-None-Match": '"v1"'}
    same = await fetcher.fetch_source(origin.url("/same.jpg"), soon(), conditional)
    assert same.not_modified and same.data is None and same.etag == '"v1"'
    assert origin.requests[-1].headers["if-none-match"] == '"v1"'
    # A 304 nobody asked for is no answer.
    with pytest.raises(SourceUnreachable):
        await fetcher.fetch_source(origin.url("/same.jpg"), soon())


# --- https origins and compressed bodies -------------------------------------------------------


@pytest.fixture
async def https_origin(tmp_path):
    authority = CertificateAuthority(tmp_path, "origin CA")
    issued = authority.issue("localhost", names=("localhost", "127.0.0.1"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert_path, issued.key_path)
    server = Origin(tls=context)
    await server.start()
    server.routes["/a.jpg"] = static(200, JPEG, {"Content-Type": "image/jpeg", "ETag": '"v1"'})
    yield server, authority
    await server.close()


async def test_https_origin_trusted_through_the_ca_setting(https_origin, make_fetcher):
    origin, authority = https_origin
    fetcher = make_fetcher(source_ca_path=str(authority.cert_path), **LOOPBACK_OK)
    fetched = await fetcher.fetch_source(origin.url("/a.jpg"), soon())
    assert fetched.data == JPEG and fetched.etag == '"v1"'
    # By name too: the certificate names localhost, and the name is what is verified.
    assert await fetcher.fetch(origin.url("/a.jpg", host="localhost"), soon()) == JPEG


async def test_https_origin_with_an_untrusted_certificate_is_refused(https_origin, make_fetcher):
    origin, _ = https_origin
    fetcher = make_fetcher(**LOOPBACK_OK)  # the system CAs only: the test CA is unknown
    with pytest.raises(SourceUnreachable) as raised:
        await fetcher.fetch(origin.url("/a.jpg"), soon())
    assert raised.value.metadata["cause"] == "tls_certificate"
    assert raised.value.retry_after_s is None  # the same certificate would come back
    assert origin.requests == []  # no request was sent over the unverified connection


async def test_https_certificate_for_another_name_is_refused(tmp_path, make_fetcher):
    authority = CertificateAuthority(tmp_path, "origin CA")
    issued = authority.issue("images.example.com")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert_path, issued.key_path)
    origin = Origin(tls=context)
    await origin.start()
    origin.routes["/a.jpg"] = static(200, JPEG)
    try:
        fetcher = make_fetcher(source_ca_path=str(authority.cert_path), **LOOPBACK_OK)
        with pytest.raises(SourceUnreachable) as raised:
            await fetcher.fetch(origin.url("/a.jpg"), soon())
        assert raised.value.metadata["cause"] == "tls_certificate"
    finally:
        await origin.close()


def test_an_unloadable_ca_bundle_fails_the_settings(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    for path in (bad, tmp_path / "missing.pem"):
        with pytest.raises(ValueError, match="cannot load the CA bundle"):
            Settings(source_ca_path=str(path))


async def test_a_gzip_bomb_is_read_as_sent_never_inflated(origin, make_fetcher):
    """A body sent with Content-Encoding: gzip that would inflate to 64 MiB: the fetch returns
    the compressed bytes as they came (a few tens of KiB), within a 1 MiB limit it would blow
    through if it were inflated."""
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    assert len(bomb) < 256 << 10
    origin.routes["/bomb.jpg"] = static(
        200, bomb, {"Content-Type": "image/jpeg", "Content-Encoding": "gzip"}
    )
    fetcher = make_fetcher(max_source_bytes=1 << 20, **LOOPBACK_OK)
    assert await fetcher.fetch(origin.url("/bomb.jpg"), soon()) == bomb
    assert origin.requests[-1].headers["accept-encoding"] == "identity"
