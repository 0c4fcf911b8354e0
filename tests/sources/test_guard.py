"""The SSRF guard's verdict on addresses, IPv6 forms that embed IPv4 included."""

from __future__ import annotations

import pytest

from imagesvc.sources.guard import (
    LINK_LOCAL,
    LOOPBACK,
    MULTICAST,
    PRIVATE,
    RESERVED,
    AddressPolicy,
    AddressRefused,
    category,
    check,
    parse_address,
)

CASES = [
    ("127.0.0.1", LOOPBACK),
    ("127.255.255.254", LOOPBACK),
    ("0.0.0.0", LOOPBACK),
    ("0.1.2.3", LOOPBACK),
    ("::1", LOOPBACK),
    ("::", LOOPBACK),
    ("10.0.0.1", PRIVATE),
    ("10.255.255.255", PRIVATE),
    ("172.16.0.1", PRIVATE),
    ("172.31.255.255", PRIVATE),
    ("192.168.1.1", PRIVATE),
    ("100.64.0.1", PRIVATE),
    ("100.127.255.255", PRIVATE),
    ("fc00::1", PRIVATE),
    ("fd12:3456:789a::1", PRIVATE),
    ("fec0::1", PRIVATE),
    ("64:ff9b:1::a00:1", PRIVATE),
    ("169.254.169.254", LINK_LOCAL),
    ("169.254.0.1", LINK_LOCAL),
    ("fe80::1", LINK_LOCAL),
    ("fe80::1%eth0", LINK_LOCAL),
    ("224.0.0.1", MULTICAST),
    ("239.255.255.250", MULTICAST),
    ("ff02::1", MULTICAST),
    ("255.255.255.255", RESERVED),
    ("240.0.0.1", RESERVED),
    ("192.0.2.1", RESERVED),
    ("198.18.0.1", RESERVED),
    ("2001:db8::1", RESERVED),
    ("100::1", RESERVED),
    # IPv6 forms embedding a refused IPv4 address: judged by it.
    ("::ffff:127.0.0.1", LOOPBACK),
    ("::ffff:7f00:1", LOOPBACK),
    ("::127.0.0.1", LOOPBACK),
    ("::ffff:0:127.0.0.1", LOOPBACK),
    ("64:ff9b::7f00:1", LOOPBACK),
    ("2002:7f00:1::", LOOPBACK),
    ("::ffff:169.254.169.254", LINK_LOCAL),
    ("64:ff9b::a9fe:a9fe", LINK_LOCAL),
    ("2002:a9fe:a9fe::1", LINK_LOCAL),
    ("::ffff:10.0.0.1", PRIVATE),
    ("2002:c0a8:101::", PRIVATE),
    ("2a00:1450::5efe:10.0.0.1", PRIVATE),  # ISATAP
    ("2a00:1450::200:5efe:10.0.0.1", PRIVATE),  # ISATAP, u/l bit set
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", PRIVATE),  # Teredo client 10.0.0.1
    ("::ffff:224.0.0.1", MULTICAST),
    # Public: allowed.
    ("8.8.8.8", None),
    ("93.184.216.34", None),
    ("2606:4700::1111", None),
    ("::ffff:8.8.8.8", None),
    ("2002:808:808::", None),
    ("64:ff9b::808:808", None),
]


@pytest.mark.parametrize(("address", "expected"), CASES, ids=[c[0] for c in CASES])
def test_category(address, expected):
    assert category(parse_address(address)) == expected


@pytest.mark.parametrize(("address", "expected"), CASES, ids=[c[0] for c in CASES])
def test_default_policy_refuses_every_non_public_address(address, expected):
    if expected is None:
        check(address, AddressPolicy())
    else:
        with pytest.raises(AddressRefused) as refused:
            check(address, AddressPolicy())
        assert refused.value.category == expected
        assert parse_address(address).compressed not in str(refused.value)


def test_settings_allow_only_their_own_category():
    loopback = AddressPolicy(allow_loopback=True)
    check("127.0.0.1", loopback)
    check("::ffff:127.0.0.1", loopback)
    for address in ("10.0.0.1", "169.254.169.254", "224.0.0.1", "240.0.0.1"):
        with pytest.raises(AddressRefused):
            check(address, loopback)
    check("10.0.0.1", AddressPolicy(allow_private=True))
    check("100.64.0.1", AddressPolicy(allow_private=True))
    check("169.254.169.254", AddressPolicy(allow_link_local=True))
    everything = AddressPolicy(allow_loopback=True, allow_private=True, allow_link_local=True)
    for address in ("224.0.0.1", "255.255.255.255", "2001:db8::1", "ff02::1"):
        with pytest.raises(AddressRefused):
            check(address, everything)  # no setting allows multicast or reserved ranges


def test_not_an_address_is_refused():
    with pytest.raises(AddressRefused):
        check("not-an-address", AddressPolicy(allow_loopback=True))
