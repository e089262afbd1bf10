"""Configuration: environment, flags over it, and one-line errors for bad values."""

from __future__ import annotations

import argparse

import pytest

from kvstore import config
from kvstore.config import ConfigError
from kvstore.identity import parse_ordinal, role_of, statefulset_name


def test_defaults_follow_kubernetes_conventions() -> None:
    cfg = config.load(env={"POD_NAME": "kv-0"})
    assert (cfg.namespace, cfg.service, cfg.cluster_domain) == ("default", "kv", "cluster.local")
    assert (cfg.data_dir, cfg.bind_address, cfg.http_port, cfg.peer_port) == ("/data", "0.0.0.0", 8080, 8081)
    assert cfg.write_concern == "majority" and cfg.fsync is True
    assert (cfg.max_key_bytes, cfg.max_value_bytes) == (1024, 1024 * 1024)
    assert cfg.ordinal == 0 and cfg.role == "primary"


def test_flags_override_environment() -> None:
    cfg = config.load(env={"POD_NAME": "kv-0", "KV_HTTP_PORT": "9000"},
                      flags={"http_port": "9100", "pod_name": "kv-2"})
    assert cfg.http_port == 9100
    assert cfg.ordinal == 2 and cfg.role == "secondary"


def test_dns_server_takes_an_address_and_port() -> None:
    assert config.load(env={"POD_NAME": "kv-0", "KV_DNS_SERVER": "127.0.0.2:5353"}).dns_server == "127.0.0.2:5353"
    assert config.load(env={"POD_NAME": "kv-0", "KV_DNS_SERVER": "[::1]:53"}).dns_server == "::1:53"


def test_empty_variable_keeps_the_default() -> None:
    assert config.load(env={"POD_NAME": "kv-1", "KV_DNS_SERVER": ""}).dns_server == ""


@pytest.mark.parametrize("env, names", [
    ({"KV_HTTP_PORT": "http"}, "KV_HTTP_PORT"),
    ({"KV_HTTP_PORT": "70000"}, "KV_HTTP_PORT"),
    ({"KV_PEER_PORT": "-1"}, "KV_PEER_PORT"),
    ({"KV_MAX_VALUE_BYTES": "1MB"}, "KV_MAX_VALUE_BYTES"),
    ({"KV_MAX_KEY_BYTES": "0"}, "KV_MAX_KEY_BYTES"),
    ({"KV_WRITE_CONCERN": "two"}, "KV_WRITE_CONCERN"),
    ({"KV_DNS_SERVER": "10.0.0.1"}, "KV_DNS_SERVER"),
    ({"KV_DNS_SERVER": "host:port"}, "KV_DNS_SERVER"),
    ({"KV_DNS_SERVER": "dns.example:53"}, "KV_DNS_SERVER"),  # a name: the resolver needs an address
    ({"KV_DNS_SERVER": "10.0.0.1:0"}, "KV_DNS_SERVER"),
    ({"KV_FSYNC": "maybe"}, "KV_FSYNC"),
    ({"KV_REFRESH_INTERVAL": "nan"}, "KV_REFRESH_INTERVAL"),
    ({"POD_NAMESPACE": "bad_ns!"}, "POD_NAMESPACE"),
    ({"KV_CLUSTER_DOMAIN": "a..b"}, "KV_CLUSTER_DOMAIN"),
    ({"KV_REPLICATE_FROM": "anyone"}, "KV_REPLICATE_FROM"),
    ({"KV_TEST_MAX_EPOCHS": "0"}, "KV_TEST_MAX_EPOCHS"),
    ({"KV_TEST_MAX_EPOCHS": "1001"}, "KV_TEST_MAX_EPOCHS"),
    ({"KV_TEST_MAX_EPOCHS": "five"}, "KV_TEST_MAX_EPOCHS"),
    ({"KV_WATCH_KEEPALIVE": "0"}, "KV_WATCH_KEEPALIVE"),
    ({"KV_WATCH_SEND_TIMEOUT": "soon"}, "KV_WATCH_SEND_TIMEOUT"),
    ({"KV_MAX_WATCHERS": "-1"}, "KV_MAX_WATCHERS"),
])
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config.load(env={"POD_NAME": "kv-0", **env})
    message = str(exc.value)
    assert message.startswith(names) and "expected" in message and "\n" not in message


def test_pod_name_without_ordinal_is_refused() -> None:
    with pytest.raises(ConfigError, match="POD_NAME.*no ordinal"):
        config.load(env={"POD_NAME": "kv"})


def test_same_client_and_peer_port_is_refused() -> None:
    with pytest.raises(ConfigError, match="must differ"):
        config.load(env={"POD_NAME": "kv-0", "KV_HTTP_PORT": "9000", "KV_PEER_PORT": "9000"})


def test_token_from_file(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    assert config.load(env={"POD_NAME": "kv-0", "KV_CLUSTER_TOKEN_FILE": str(token)}).token() == "s3cret"
    with pytest.raises(ConfigError, match="KV_CLUSTER_TOKEN_FILE: cannot read"):
        config.load(env={"POD_NAME": "kv-0", "KV_CLUSTER_TOKEN_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        config.load(env={"POD_NAME": "kv-0", "KV_CLUSTER_TOKEN_FILE": str(tmp_path / "empty")})


@pytest.mark.parametrize("name, ordinal, base", [
    ("kv-0", 0, "kv"), ("kv-12", 12, "kv"), ("my-store-3", 3, "my-store")])
def test_ordinal_is_the_number_after_the_last_dash(name: str, ordinal: int, base: str) -> None:
    assert parse_ordinal(name) == ordinal
    assert statefulset_name(name) == base


@pytest.mark.parametrize("name", ["kv", "kv-", "kv-01", "kv-a", "-3x", "kv-1-x", "3"])
def test_names_without_ordinal(name: str) -> None:
    with pytest.raises(ValueError):
        parse_ordinal(name)


def test_roles() -> None:
    assert role_of(0) == "primary" and role_of(1) == "secondary"


def test_serve_help_shows_each_variable_and_its_default() -> None:
    parser = argparse.ArgumentParser()
    config.add_flags(parser)
    text = " ".join(parser.format_help().split())  # argparse wraps lines at the terminal's width
    for shown in ("[env KV_HTTP_PORT, default 8080]", "[env KV_WRITE_CONCERN, default majority]",
                  "[env KV_FSYNC, default true]", "[env KV_WRITE_TIMEOUT, default 5]",
                  "[env KV_MAX_VALUE_BYTES, default 1048576]", "(default: the hostname) [env POD_NAME]"):
        assert shown in text, shown
    assert "default None" not in text and "default ]" not in text
