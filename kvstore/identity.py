"""Who this replica is: the StatefulSet ordinal from the pod name, and its role."""

from __future__ import annotations

import functools
import re
import secrets

PRIMARY = "primary"
SECONDARY = "secondary"

# This process, as opposed to another one started with the same pod name (a force-deleted pod's
# process that lives on, a copy of a volume started by hand): peers tell the two apart by it.
INCARNATION = secrets.token_hex(8)

_ORDINAL = re.compile(r"^(?P<base>.+)-(?P<ordinal>0|[1-9][0-9]{0,8})$")


@functools.lru_cache(maxsize=1024)  # on every write's replica count: the same few names
def parse_ordinal(pod_name: str) -> int:
    """Return the number after the last ``-`` of a pod name (``kv-2`` -> 2).

    Raises ValueError when the name has no such number, so a misnamed pod
    stops at start instead of guessing a role.
    """
    match = _ORDINAL.match(pod_name)
    if not match:
        raise ValueError(
            f"pod name {pod_name!r} has no ordinal: expected <statefulset>-<N>, like kv-0"
        )
    return int(match.group("ordinal"))


def statefulset_name(pod_name: str) -> str:
    """Return the StatefulSet part of a pod name (``kv-2`` -> ``kv``)."""
    match = _ORDINAL.match(pod_name)
    if not match:
        raise ValueError(f"pod name {pod_name!r} has no ordinal")
    return match.group("base")


def role_of(ordinal: int) -> str:
    """Ordinal 0 is the primary; there is no other election."""
    return PRIMARY if ordinal == 0 else SECONDARY
