"""The fetcher refuses non-public addresses unless allow-listed, and malformed or non-http URLs."""

from __future__ import annotations

import ipaddress

import pytest

from taxonstream.core.errors import Failed
from taxonstream.fetching.safety import check_host, check_url, refusal


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.1.1",
        "fe80::1",
        "224.0.0.1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "240.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address):
    assert refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "8.8.8.8"])
def test_public_addresses_pass(address):
    assert refusal(ipaddress.ip_address(address)) is None


def test_loopback_needs_the_allow_list():
    with pytest.raises(Failed) as caught:
        check_host("127.0.0.1", 80, [])
    assert caught.value.reason == "blocked_address"
    assert check_host("127.0.0.1", 80, [ipaddress.ip_network("127.0.0.0/8")])


def test_metadata_address_stays_refused_under_an_unrelated_allow_list():
    with pytest.raises(Failed):
        check_host("169.254.169.254", 80, [ipaddress.ip_network("127.0.0.0/8")])


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.org/a.jpg",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://",
        "not a url",
        "http://[::1",
        "http://example.org:99999/a.jpg",
        "",
    ],
)
def test_bad_urls_fail_with_bad_url(url):
    with pytest.raises(Failed) as caught:
        check_url(url)
    assert caught.value.reason == "bad_url"


def test_a_good_url_gives_host_and_default_port():
    assert check_url("https://images.example.org/a.jpg") == ("images.example.org", 443)
