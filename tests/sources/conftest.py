"""Fixtures for url-source tests: a real local origin, and a resolver with made-up names."""

from __future__ import annotations

import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.sources.origin import Origin


class MapResolver(AbstractResolver):
    """Names to fixed addresses (like /etc/hosts, without touching it); counts its lookups.
    ``answers`` may map a name to a list of answers, one per lookup (DNS rebinding)."""

    def __init__(self, names: dict[str, list[str] | list[list[str]]]) -> None:
        self.names = names
        self.lookups: dict[str, int] = {}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.names:
            raise OSError(f"unknown host {host}")
        count = self.lookups.get(host, 0)
        self.lookups[host] = count + 1
        answer = self.names[host]
        if answer and isinstance(answer[0], list):
            answer = answer[min(count, len(answer) - 1)]
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in answer
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
async def origin():
    server = Origin()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def second_origin():
    server = Origin()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def connects(monkeypatch):
    """Every socket connect() in the test, recorded; any to a non-loopback address is refused
    here too, so no test ever sends traffic off the machine."""
    seen: list[str] = []
    original = socket.socket.connect
    original_ex = socket.socket.connect_ex

    def guard(address) -> str:
        host = str(address[0])
        seen.append(host)
        return host

    def connect(self, address):
        host = guard(address)
        if host not in ("127.0.0.1", "::1"):
            raise ConnectionRefusedError(f"test refuses off-box connect to {host}")
        return original(self, address)

    def connect_ex(self, address):
        host = guard(address)
        if host not in ("127.0.0.1", "::1"):
            return 111
        return original_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return seen
