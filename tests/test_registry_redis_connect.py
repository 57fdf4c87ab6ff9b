"""registry/redis/connect.py and the redirections of link.py: cluster URLs, the cluster
client's settings and the MOVED/ASK answers the channel links follow. No sockets."""

from __future__ import annotations

import ssl

import hiredis
import pytest

from wsgateway.config import RegistryConfig
from wsgateway.errors import ConfigError
from wsgateway.registry.redis.connect import cluster_client, cluster_seeds, is_cluster_url, split_cluster_url
from wsgateway.registry.redis.link import moved_to


def test_cluster_urls_are_split_into_a_node_url_and_hosts() -> None:
    url = "rediss+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/?ssl_cert_reqs=none"
    single, hosts = split_cluster_url(url)
    assert single == "rediss://app:s3cret@10.0.0.1:7000?ssl_cert_reqs=none"
    assert hosts == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)]
    assert split_cluster_url("redis+cluster://h:1/0") == ("redis://h:1", [("h", 1)])
    assert is_cluster_url("REDIS+CLUSTER://h:1/") and not is_cluster_url("redis://h:1/0")


@pytest.mark.parametrize("url", [
    "redis://h:1/0", "redis+cluster:///", "redis+cluster://h/", "redis+cluster://h:x/", "redis+cluster://h:1/3",
])
def test_bad_cluster_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        split_cluster_url(url)


def test_cluster_urls_pass_the_config_check() -> None:
    RegistryConfig(backend="redis", redis_url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001/")
    RegistryConfig(backend="redis", redis_url="rediss+cluster://127.0.0.1:7000/")
    with pytest.raises(ConfigError):
        RegistryConfig(backend="redis", redis_url="redis+cluster//127.0.0.1:7000/")


def test_cluster_client_takes_the_credentials_and_every_host() -> None:
    config = RegistryConfig(backend="redis", redis_url="redis+cluster://app:from-url@127.0.0.1:7000,127.0.0.2:7001/",
                            password="configured")
    client = cluster_client(config, 2.0)  # connects lazily: nothing is opened here
    seeds = cluster_seeds(client, 2.0)
    assert sorted((s.host, s.port) for s in seeds) == [("127.0.0.1", 7000), ("127.0.0.2", 7001)]
    assert {(s.username, s.password, s.tls) for s in seeds} == {("app", "configured", None)}


def test_moved_and_ask_name_where_to_go() -> None:
    assert moved_to(hiredis.ReplyError("MOVED 3999 127.0.0.1:6381")) == ("127.0.0.1", 6381)
    assert moved_to(hiredis.ReplyError("ASK 3999 10.0.0.2:7000")) == ("10.0.0.2", 7000)
    assert moved_to(hiredis.ReplyError("MOVED 3999 :7000")) == ("", 7000)  # the host it asked
    for other in (hiredis.ReplyError("NOAUTH Authentication required."), hiredis.ReplyError("MOVED x"), 3, b"MOVED"):
        assert moved_to(other) is None


def test_rediss_cluster_urls_give_the_links_tls() -> None:
    config = RegistryConfig(backend="redis", redis_url="rediss+cluster://127.0.0.1:7000,127.0.0.2:7001/?ssl_cert_reqs=none")
    seeds = cluster_seeds(cluster_client(config, 2.0), 2.0)
    assert len(seeds) == 2 and all(isinstance(s.tls, ssl.SSLContext) for s in seeds)
