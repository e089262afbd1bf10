"""Configuration: one dataclass read from the environment, flags over it.

The environment follows Kubernetes conventions (``POD_NAME``, ``POD_NAMESPACE``,
``KV_*``). Every bad value raises :class:`ConfigError` with one line that names
the variable and what it accepts; ``kvstore serve`` prints it and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from kvstore.cmdline import float_range, int_range
from kvstore.identity import parse_ordinal, role_of

WRITE_CONCERNS = ("1", "majority", "all")


class ConfigError(ValueError):
    """A configuration value is unusable; the message names it and what it accepts."""


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("expected a non-empty value")
    return text.strip()


def _dns_label(text: str) -> str:
    text = text.strip()
    if not text or len(text) > 63 or not all(c.isalnum() or c == "-" for c in text):
        raise ValueError("expected a DNS label (letters, digits, '-')")
    return text.lower()


def _domain(text: str) -> str:
    text = text.strip().strip(".")
    labels = text.split(".")
    try:
        for label in labels:
            _dns_label(label)
    except ValueError:
        raise ValueError("expected a DNS domain like cluster.local") from None
    return text.lower()


def _ip_port(text: str) -> str:
    host, _, port = text.strip().rpartition(":")
    expected = "expected an IP address and port, like 10.96.0.10:53"
    try:
        ipaddress.ip_address(host.strip("[]"))  # the resolver asks an address, it looks no name up
        int_range(1, 65535)(port)
    except ValueError:
        raise ValueError(expected) from None
    return f"{host.strip('[]')}:{int(port)}"


def _write_concern(text: str) -> str:
    text = text.strip().lower()
    if text not in WRITE_CONCERNS:
        raise ValueError("expected one of 1, majority, all")
    return text


def _replicate_from(text: str) -> str:
    text = text.strip().lower()
    if text not in ("primary", "previous"):
        raise ValueError("expected primary or previous")
    return text


def _lsn_at_epoch(text: str) -> tuple[int, int] | None:
    if not text.strip():
        return None
    lsn, sep, epoch = text.strip().partition("@")
    if not sep:
        raise ValueError("expected LSN@EPOCH, like 12@1")
    return int_range(1, 2**63 - 1)(lsn), int_range(1, 2**31 - 1)(epoch)


def _versions(text: str) -> tuple[int, int] | None:
    if not text.strip():
        return None
    from kvstore.replication.versions import parse_range  # here: that package imports this module
    return parse_range(text)


@dataclass(frozen=True)
class Setting:
    """How one field is read: its environment variable, flag and parser."""

    env: str
    flag: str
    parse: Callable[[str], Any]
    help: str


def _setting(env: str, flag: str, parse: Callable[[str], Any], help: str, default: Any) -> Any:
    return field(default=default, metadata={"setting": Setting(env, flag, parse, help)})


@dataclass(frozen=True)
class Config:
    """Everything a replica needs to know, validated."""

    pod_name: str = _setting("POD_NAME", "--pod-name", _nonempty,
                             "pod name kv-N (default: the hostname)", "")
    namespace: str = _setting("POD_NAMESPACE", "--namespace", _dns_label,
                              "Kubernetes namespace", "default")
    service: str = _setting("KV_SERVICE", "--service", _dns_label,
                            "headless Service name", "kv")
    cluster_domain: str = _setting("KV_CLUSTER_DOMAIN", "--cluster-domain", _domain,
                                   "cluster DNS domain", "cluster.local")
    data_dir: str = _setting("KV_DATA_DIR", "--data-dir", _nonempty,
                             "directory holding this replica's LevelDB", "/data")
    bind_address: str = _setting("KV_BIND_ADDRESS", "--bind-address", _nonempty,
                                 "address both ports listen on", "0.0.0.0")
    http_port: int = _setting("KV_HTTP_PORT", "--http-port", int_range(1, 65535),
                              "client port", 8080)
    peer_port: int = _setting("KV_PEER_PORT", "--peer-port", int_range(1, 65535),
                              "peer (replication) port", 8081)
    dns_server: str = _setting("KV_DNS_SERVER", "--dns-server", _ip_port,
                               "DNS server address:port (default: the system resolver)", "")
    cluster_token: str = _setting("KV_CLUSTER_TOKEN", "--cluster-token", _nonempty,
                                  "shared secret for the peer port", "")
    cluster_token_file: str = _setting("KV_CLUSTER_TOKEN_FILE", "--cluster-token-file",
                                       _nonempty, "file holding the cluster token", "")
    write_concern: str = _setting("KV_WRITE_CONCERN", "--write-concern", _write_concern,
                                  "default write concern: 1, majority or all", "majority")
    replicas: int = _setting("KV_REPLICAS", "--replicas", int_range(1, 1000),
                             "replicas the StatefulSet is configured with", 3)
    max_key_bytes: int = _setting("KV_MAX_KEY_BYTES", "--max-key-bytes",
                                  int_range(1, 65536), "largest key in bytes", 1024)
    max_value_bytes: int = _setting("KV_MAX_VALUE_BYTES", "--max-value-bytes",
                                    int_range(0, 64 * 1024 * 1024),
                                    "largest value in bytes", 1024 * 1024)
    log_retention: int = _setting("KV_LOG_RETENTION", "--log-retention",
                                  int_range(1, 1_000_000_000),
                                  "replication log entries kept for followers", 100_000)
    refresh_interval: float = _setting("KV_REFRESH_INTERVAL", "--refresh-interval",
                                       float_range(0.1, 3600),
                                       "seconds between peer discovery refreshes", 2.0)
    read_wait: float = _setting("KV_READ_WAIT", "--read-wait", float_range(0, 300),
                                "seconds a min_lsn read waits before answering 504", 5.0)
    write_timeout: float = _setting("KV_WRITE_TIMEOUT", "--write-timeout", float_range(0.1, 300),
                                    "seconds a write waits for its write concern before 504", 5.0)
    recovery_wait: float = _setting("KV_RECOVERY_WAIT", "--recovery-wait", float_range(0, 3600),
                                    "seconds a starting kv-0 waits for every follower before deciding "
                                    "with a quorum of them", 10.0)
    failover_after: float = _setting("KV_FAILOVER_AFTER", "--failover-after", float_range(0, 3600),
                                     "seconds the followers must have lost the primary before the most "
                                     "up-to-date one takes over (0: never)", 3.0)
    switchover_on_stop: bool = _setting("KV_SWITCHOVER_ON_STOP", "--switchover-on-stop", _bool,
                                        "a stopping primary (SIGTERM) first hands its role to the most "
                                        "up-to-date follower", True)
    failback: bool = _setting("KV_FAILBACK", "--failback", _bool,
                              "another pod that leads hands the role back to kv-0 once kv-0 is current", True)
    replicate_from: str = _setting("KV_REPLICATE_FROM", "--replicate-from", _replicate_from,
                                   "pull from the primary, or from the pod before this one in a chain "
                                   "that starts at the primary (cascade)",
                                   "primary")
    fsync: bool = _setting("KV_FSYNC", "--fsync", _bool,
                           "fsync before acknowledging (false is for benchmarks only)", True)
    pipeline: bool = _setting("KV_PIPELINE", "--pipeline", _bool,
                              "kv-0 sends a batch to its followers while it fsyncs it (false: after)", True)
    watch_keepalive: float = _setting("KV_WATCH_KEEPALIVE", "--watch-keepalive", float_range(0.1, 3600),
                                      "seconds an idle watch waits before it sends a keepalive line", 10.0)
    watch_send_timeout: float = _setting("KV_WATCH_SEND_TIMEOUT", "--watch-send-timeout", float_range(0.1, 3600),
                                         "seconds a watcher may take to accept more of its stream before it is "
                                         "cut off as too slow", 10.0)
    max_watchers: int = _setting("KV_MAX_WATCHERS", "--max-watchers", int_range(0, 100_000),
                                 "open watches this pod serves at once (more answer 503)", 1000)
    test_hold_commit: tuple[int, int] | None = _setting(
        "KV_TEST_HOLD_COMMIT", "--test-hold-commit", _lsn_at_epoch,
        "tests only: kv-0 sends the batch holding LSN@EPOCH but never writes it (a crash before its fsync)",
        None)
    pod_revision: str = _setting("KV_POD_REVISION", "--pod-revision", _nonempty,
                                 "the pod's controller-revision-hash (the dashboard shows it; set by the "
                                 "StatefulSet)", "")
    test_peer_protocol: tuple[int, int] | None = _setting(
        "KV_TEST_PEER_PROTOCOL", "--test-peer-protocol", _versions,
        "tests only: the peer protocol versions this pod claims to speak (N or N-M)", None)
    test_max_epochs: int = _setting(
        "KV_TEST_MAX_EPOCHS", "--test-max-epochs", int_range(1, 1000),
        "tests only: the newest epochs a lineage kv-0 begins keeps (1000), lowered to reach the cap quickly",
        1000)

    # Cached: read on every request, and a frozen Config's pod name never changes.
    @functools.cached_property
    def ordinal(self) -> int:
        """The StatefulSet ordinal of this pod."""
        return parse_ordinal(self.pod_name)

    @functools.cached_property
    def role(self) -> str:
        """``primary`` for ordinal 0, else ``secondary``."""
        return role_of(self.ordinal)

    def token(self) -> str:
        """The cluster token, from the variable or the file (Kubernetes Secret)."""
        if self.cluster_token:
            return self.cluster_token
        if self.cluster_token_file:
            try:
                with open(self.cluster_token_file, encoding="utf-8") as handle:
                    token = handle.read().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"KV_CLUSTER_TOKEN_FILE: cannot read {self.cluster_token_file}: "
                    f"{getattr(exc, 'strerror', None) or exc}"
                ) from None
            if not token:
                raise ConfigError(f"KV_CLUSTER_TOKEN_FILE: {self.cluster_token_file} is empty")
            return token
        return ""


def _settings() -> list[tuple[str, Setting]]:
    return [(f.name, f.metadata["setting"]) for f in dataclasses.fields(Config)]


def _shown(value: Any) -> str:
    """A default as its variable would spell it (``true``, ``2``, ``majority``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting, its help naming the variable and the default.

    Each flag defaults to None so the environment shows through.
    """
    for field_ in dataclasses.fields(Config):
        setting = field_.metadata["setting"]
        default = "" if field_.default in ("", None) else f", default {_shown(field_.default)}"
        parser.add_argument(setting.flag, dest=field_.name, default=None, metavar="VALUE",
                            help=f"{setting.help} [env {setting.env}{default}]")


def load(env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None) -> Config:
    """Build a Config from the environment with flags over it; raise ConfigError if bad."""
    env = os.environ if env is None else env
    flags = flags or {}
    values: dict[str, Any] = {}
    for name, setting in _settings():
        raw = flags.get(name)
        source = setting.flag
        if raw is None:
            raw = env.get(setting.env)
            source = setting.env
        if raw is None or (raw == "" and source == setting.env):
            continue  # unset or empty variable: keep the default
        try:
            values[name] = setting.parse(str(raw))
        except ValueError as exc:
            raise ConfigError(f"{source}={raw!r}: {exc}") from None
    if not values.get("pod_name"):
        values["pod_name"] = socket.gethostname()
    config = Config(**values)
    try:
        config.ordinal
    except ValueError as exc:
        raise ConfigError(f"POD_NAME: {exc}") from None
    if config.http_port == config.peer_port:
        raise ConfigError("KV_HTTP_PORT and KV_PEER_PORT must differ")
    config.token()  # a named but unreadable token file is a start-up error
    return config
