"""Prometheus metrics of one replica (prometheus-client, one registry per replica)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """All metrics a replica exports; ``render()`` gives the text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("kv_http_requests", "Client HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram("kv_http_request_duration_seconds",
                                         "Client HTTP request latency", ["route", "method"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.lsn = Gauge("kv_lsn", "Last log sequence number written or applied here", registry=r)
        self.log_start = Gauge("kv_log_start_lsn", "First LSN still in the retained log", registry=r)
        self.commit_batch = Histogram("kv_commit_batch_size", "Writes per group commit",
                                      buckets=_BATCH_BUCKETS, registry=r)
        self.fsync_seconds = Histogram("kv_commit_fsync_seconds",
                                       "Time to write and fsync one group commit",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.follower_lag = Gauge("kv_follower_lag_entries",
                                  "Entries a follower is behind this primary", ["follower"], registry=r)
        self.fetch_batch = Histogram("kv_replication_fetch_batch_size",
                                     "Log entries per replication fetch", buckets=_BATCH_BUCKETS,
                                     registry=r)
        self.snapshots = Counter("kv_snapshot_transfers", "Snapshot transfers by direction",
                                 ["direction"], registry=r)
        self.replication_lag = Gauge("kv_replication_lag_entries",
                                     "Entries this secondary is behind the primary's LSN as last heard",
                                     registry=r)
        self.diverged = Gauge("kv_diverged", "1 while this replica holds entries its upstream's history "
                              "does not, and waits for an operator (kvstore recover)", registry=r)
        self.recovering = Gauge("kv_recovering", "1 while this primary proves it holds every acknowledged "
                                "write before serving", registry=r)
        self.epoch = Gauge("kv_epoch", "The newest epoch this replica's log knows", registry=r)
        self.fenced = Counter("kv_fenced", "Times this kv-0 found a follower promised a newer epoch to "
                              "another kv-0 (it was replaced) and stopped serving", registry=r)
        self.elections = Counter("kv_elections", "Times this follower stood for election after it lost "
                                 "the primary for KV_FAILOVER_AFTER", registry=r)
        self.switchovers = Counter("kv_switchovers", "Times this primary handed its role to another pod "
                                   "(switchover, shutdown, failback)", registry=r)
        self.confirm_rounds = Counter("kv_confirm_rounds", "kv-0's confirmation rounds (strong reads, "
                                      "refusals) by result", ["result"], registry=r)
        self.confirm_seconds = Histogram("kv_confirm_round_seconds", "How long a strong read waited for "
                                         "a majority to confirm kv-0", registry=r,
                                         buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.2, 1.0))
        self.peer_auth_failures = Counter("kv_peer_auth_failures",
                                          "Peer-port calls refused for a missing or wrong token",
                                          registry=r)

    def observe_commit(self, batch_size: int, seconds: float) -> None:
        """Record one group commit (called by the storage committer)."""
        self.commit_batch.observe(batch_size)
        self.fsync_seconds.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
