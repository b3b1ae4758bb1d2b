"""parse_ha: the etcd URL of standby coordinators, "etcd://H1:2379,H2:2379", checked with a
one-line reason for whatever it is not."""
from __future__ import annotations

import pytest

from watchdog_d.coordinator.etcd import Etcd, parse_ha


@pytest.mark.parametrize("url, endpoints", [
    ("etcd://H1:2379,H2:2379", ["H1:2379", "H2:2379"]),
    ("etcd://127.0.0.1:2379", ["127.0.0.1:2379"]),
    ("etcd://a.example:2379, b.example:12379", ["a.example:2379", "b.example:12379"]),
    ("etcd://[::1]:2379", ["[::1]:2379"]),
])
def test_parse_ha_accepts(url, endpoints):
    assert parse_ha(url) == endpoints


@pytest.mark.parametrize("url, why", [
    ("http://H1:2379", "must start with etcd://"),
    ("H1:2379", "must start with etcd://"),
    ("", "must start with etcd://"),
    ("etcd://", "names no endpoint"),
    ("etcd://H1:2379,", "empty endpoint"),
    ("etcd://H1", "is not host:port"),
    ("etcd://:2379", "is not host:port"),
    ("etcd://H1:", "no valid port"),
    ("etcd://H1:port", "no valid port"),
    ("etcd://H1:0", "no valid port"),
    ("etcd://H1:70000", "no valid port"),
    ("etcd://H1:2379/", "no valid port"),
    ("etcd://user:pw@H1:2379", "user info"),
    ("etcd://H1:2379,user:pw@H2:2379", "user info"),
    ("https://user:pw@H1:2379", "not https://"),
    ("etcd://H1:2379,H1:2379", "twice"),
])
def test_parse_ha_refuses(url, why):
    with pytest.raises(ValueError, match=why) as e:
        parse_ha(url)
    assert "\n" not in str(e.value) and "pw" not in str(e.value)


def test_client_checks_its_endpoints():
    with pytest.raises(ValueError, match="no etcd endpoint"):
        Etcd([])
    with pytest.raises(ValueError, match="no valid port"):
        Etcd(["H1:x"])
