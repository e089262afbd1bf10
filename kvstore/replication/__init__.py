"""Replication: followers stream their upstream's log over the peer port.

One concept per module:

- ``protocol``: the wire (stream messages, acks, snapshot frames, refusals,
  close codes, the sizes a receiver accepts);
- ``acks``: the primary's table of follower positions write concerns wait on;
- ``log_server``: the upstream side (serve the stream and snapshots);
- ``peer_client``: HTTP to other replicas' peer ports;
- ``versions``: the peer protocol versions every peer call names, and the peers met that speak none;
- ``follower``: the follower side (compare lineages, stream, snapshot, divergence);
- ``recovery``: asking for an epoch (kv-0's start-up check, a failover, a takeover) before serving it;
- ``election``: who may begin an epoch (the promise rule) and when a follower that lost the primary stands;
- ``handover``: the switchover (SIGTERM, ``kvstore switchover``, failback);
- ``coordinator``: :class:`Replication`, which wires them for one replica and switches its role.
"""

from kvstore.replication.coordinator import Replication

__all__ = ["Replication"]
