"""The pod template of the local StatefulSet, its revisions, and the rolling update's rules.

As in Kubernetes, the *template* is what every pod is made from: here the
user's environment (``--env`` of ``cluster up``, ``cluster set env``), the
runtime's image (the Docker runtime's tag) and the ``restartedAt``
annotation ``rollout restart`` sets. The replica count is not part of it, so
scaling never starts a rollout. Each distinct template is a revision named
by its hash (``kv-<hash>``, like ``controller-revision-hash``) and numbered
like a ControllerRevision: going back to an earlier template reuses its
revision and gives it the next number (``rollout undo``).

:func:`next_step` holds the update rules, as the StatefulSet controller
applies them after creating missing pods and deleting condemned ones:

- ``RollingUpdate``: from the highest ordinal down to ``partition``, the
  first pod not at the update revision is deleted (SIGTERM, grace period)
  and recreated from the new template on the same volume; the next waits
  until that one is Running and Ready. The pod management policy does not
  change this order (Kubernetes changes it only with ``maxUnavailable``,
  which is not offered here: one pod at a time).
- ``OnDelete``: nothing is replaced; a pod takes the update revision when
  it is deleted (``cluster kill``).
- A pod that is not Ready at a revision that is neither the current nor the
  update one (what a broken rollout left behind, after ``rollout undo``) is
  replaced at once. Kubernetes asks the operator to delete such a pod by
  hand ("forced rollback"); here the controller does it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from kvstore.cmdline import hint
from kvstore.config import Config, Setting

ROLLING_UPDATE = "RollingUpdate"
ON_DELETE = "OnDelete"
STRATEGIES = (ROLLING_UPDATE, ON_DELETE)
HISTORY_LIMIT = 10  # revisionHistoryLimit's default
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
# A pod that crashed after it was created, or is not Ready this long after (and not copying data), halts
# the rollout.
PROGRESS_SECONDS = 60.0
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_VALUE_MAX = 4096


@dataclass(frozen=True)
class Template:
    """What pods are made from: the user's environment, the image, the template's annotations."""

    env: tuple[tuple[str, str], ...] = ()
    image: str = ""
    annotations: tuple[tuple[str, str], ...] = ()

    @classmethod
    def make(cls, env: dict[str, str], image: str, annotations: dict[str, str] | None = None) -> "Template":
        """A template from plain dicts (kept sorted, so equal content hashes equal)."""
        return cls(tuple(sorted(env.items())), image, tuple(sorted((annotations or {}).items())))

    @property
    def env_dict(self) -> dict[str, str]:
        """The environment as a dict."""
        return dict(self.env)

    def with_env(self, changes: dict[str, str], remove: list[str]) -> "Template":
        """This template with ``changes`` set and ``remove`` unset."""
        env = {k: v for k, v in self.env if k not in remove}
        env.update(changes)
        return Template.make(env, self.image, dict(self.annotations))

    def restarted(self, when: float) -> "Template":
        """This template with a new ``restartedAt`` annotation (``kubectl rollout restart``)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
        return Template.make(self.env_dict, self.image, {**dict(self.annotations), RESTARTED_AT: stamp})

    def hash(self) -> str:
        """A short hash of the content, the ``controller-revision-hash`` of pods made from it."""
        text = json.dumps({"env": self.env, "image": self.image, "annotations": self.annotations},
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def to_dict(self) -> dict[str, Any]:
        """For the state file and ``rollout history --revision``."""
        return {"env": dict(self.env), "image": self.image, "annotations": dict(self.annotations)}


@dataclass
class Revision:
    """One template as the StatefulSet kept it (a ControllerRevision)."""

    name: str  # <set>-<hash>
    number: int
    template: Template
    cause: str
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """For the state file."""
        return {"name": self.name, "number": self.number, "cause": self.cause, "created": self.created,
                **self.template.to_dict()}


class History:
    """The revisions of one StatefulSet, newest number last; at most :data:`HISTORY_LIMIT` kept."""

    def __init__(self, statefulset: str) -> None:
        self.statefulset = statefulset
        self.revisions: list[Revision] = []

    def record(self, template: Template, cause: str, keep: set[str]) -> Revision:
        """The revision of ``template``: an existing one renumbered as the newest, or a new one.

        ``keep``: revision names still in use (by pods, or as current), never dropped.
        """
        name = f"{self.statefulset}-{template.hash()}"
        number = (self.revisions[-1].number + 1) if self.revisions else 1
        found = self.by_name(name)
        if found is not None:
            if found is self.revisions[-1]:
                return found
            self.revisions.remove(found)
            found.number, found.cause = number, cause
            revision = found
        else:
            revision = Revision(name, number, template, cause)
        self.revisions.append(revision)
        while len(self.revisions) > HISTORY_LIMIT:
            drop = next((r for r in self.revisions if r.name not in keep and r is not revision), None)
            if drop is None:
                break
            self.revisions.remove(drop)
        return revision

    def by_name(self, name: str) -> Revision | None:
        """The revision called ``name``."""
        return next((r for r in self.revisions if r.name == name), None)

    def by_number(self, number: int) -> Revision | None:
        """The revision numbered ``number``."""
        return next((r for r in self.revisions if r.number == number), None)

    def to_list(self) -> list[dict[str, Any]]:
        """For the state file."""
        return [r.to_dict() for r in self.revisions]


def undo_target(history: History, update: Revision, to_revision: int | None) -> Revision:
    """The revision ``rollout undo`` goes to: ``to_revision``, or the one before the update revision.

    ValueError with a one-line reason when there is none.
    """
    if to_revision is not None:
        found = history.by_number(to_revision)
        if found is None:
            numbers = ", ".join(str(r.number) for r in history.revisions)
            raise ValueError(f"unable to find revision {to_revision} (revisions: {numbers})")
        return found
    older = [r for r in history.revisions if r.number < update.number]
    if not older:
        raise ValueError(f"no revision before {update.number} to go back to (see `rollout history`)")
    return older[-1]


@dataclass(frozen=True)
class PodView:
    """What the update rules (and the rollout's status) need to know of one pod."""

    ordinal: int
    revision: str
    healthy: bool  # Running and Ready
    terminating: bool
    name: str = ""
    crashed: bool = False  # its container exited since the pod was created
    age: float = 0.0  # seconds since the pod was created
    why: str = ""  # why it is not Ready: its status, last exit, log line or readiness reason
    copying: bool = False  # its /readyz says it is catching up or installing a snapshot: slow, not stuck


def created_revision(ordinal: int, strategy: str, partition: int, current: str, update: str) -> str:
    """The revision a pod created now gets (Kubernetes' ``newVersionedStatefulSetPod``).

    Below the partition of a RollingUpdate: the current revision; otherwise the update revision.
    """
    if strategy == ROLLING_UPDATE and ordinal < partition:
        return current
    return update


def stale(pod: PodView, current: str, update: str) -> bool:
    """A pod a broken rollout left behind: not Ready, at neither the current nor the update revision."""
    return not pod.healthy and not pod.terminating and pod.revision not in (current, update)


def next_step(pods: list[PodView], strategy: str, partition: int, update: str) -> tuple[str, int | None]:
    """What the rolling update does next: ``("delete", ordinal)``, ``("wait", ordinal)`` or ``("done", None)``.

    ``pods`` are those with ordinals below the replica count, after missing ones were created.
    """
    if strategy != ROLLING_UPDATE:
        return "done", None
    for pod in sorted(pods, key=lambda p: p.ordinal, reverse=True):
        if pod.ordinal < partition:
            break
        if pod.revision != update and not pod.terminating:
            return "delete", pod.ordinal
        if not pod.healthy:
            return "wait", pod.ordinal
    return "done", None


# Set by the controller per pod (identity, addresses): not part of the template the user edits.
CONTROLLER_ENV = frozenset({"POD_NAME", "POD_NAMESPACE", "KV_POD_REVISION", "KV_SERVICE", "KV_CLUSTER_DOMAIN",
                            "KV_DATA_DIR",
                            "KV_BIND_ADDRESS", "KV_HTTP_PORT", "KV_PEER_PORT", "KV_DNS_SERVER", "KV_REPLICAS",
                            "KV_CLUSTER_TOKEN", "KV_CLUSTER_TOKEN_FILE"})


def settings() -> dict[str, Setting]:
    """The KV_* settings a pod reads, by variable name."""
    return {f.metadata["setting"].env: f.metadata["setting"] for f in dataclasses.fields(Config)}


def check_env_name(name: str) -> None:
    """ValueError unless ``name`` is a KV_* setting the template may set."""
    if name not in settings():
        raise ValueError(f"{name[:60]!r} is not one of the KV_* settings (see {hint('serve --help')})")
    if name in CONTROLLER_ENV:
        raise ValueError(f"{name} is set by the controller for each pod")


def check_env_value(value: str) -> None:
    """ValueError when ``value`` cannot be an environment variable's value at all."""
    if "\0" in value or len(value) > ENV_VALUE_MAX:
        raise ValueError(f"a value must have no NUL byte and at most {ENV_VALUE_MAX} characters")


def value_problem(name: str, value: str) -> str | None:
    """Why a pod would refuse ``name=value`` at start (None: it would take it)."""
    try:
        settings()[name].parse(value)
    except ValueError as exc:
        return f"{name}={value!r}: {exc}"
    return None


def parse_env_changes(items: list[str]) -> tuple[dict[str, str], list[str]]:
    """``NAME=VALUE`` and ``NAME-`` arguments of ``set env`` -> (to set, to remove); ValueError if malformed.

    A value a pod would refuse is not an error here (``kubectl set env`` does not
    know either): the rollout halts at the first pod given it.
    """
    changes: dict[str, str] = {}
    remove: list[str] = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            if not (item.endswith("-") and ENV_NAME.match(item[:-1])):
                raise ValueError(f"{item[:80]!r}: expected NAME=VALUE to set or NAME- to remove")
            name = item[:-1]
        try:
            check_env_name(name)
            check_env_value(value)
        except ValueError as exc:
            raise ValueError(f"{item[:80]!r}: {exc}") from None
        if sep:
            changes[name] = value
        else:
            remove.append(name)
    both = sorted(set(changes) & set(remove))
    if both:
        raise ValueError(f"{both[0]} is both set and removed")
    if not changes and not remove:
        raise ValueError("expected at least one NAME=VALUE or NAME-")
    return changes, remove


class Rollout:
    """The update strategy, the partition, the revisions, and which are current and update."""

    def __init__(self, statefulset: str, template: Template, strategy: str = ROLLING_UPDATE,
                 partition: int = 0) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"update strategy must be {' or '.join(STRATEGIES)}, not {strategy!r}")
        self.strategy = strategy
        self.partition = partition
        self.history = History(statefulset)
        self.current = self.update = self.history.record(template, "cluster up", set())

    def change(self, template: Template, cause: str, in_use: set[str]) -> Revision:
        """Make ``template`` the update revision (the pods follow under the strategy)."""
        self.update = self.history.record(template, cause, in_use | {self.current.name})
        return self.update

    def undo(self, to_revision: int | None, in_use: set[str]) -> tuple[Revision, bool]:
        """Go back to an earlier template; (the revision, False when it already was the update one)."""
        target = undo_target(self.history, self.update, to_revision)
        if target is self.update:
            return target, False
        number = target.number
        return self.change(target.template, f"rollout undo to revision {number}", in_use), True

    def set_partition(self, partition: int, replicas: int) -> None:
        """Only ordinals >= ``partition`` are updated; ValueError outside 0..replicas."""
        if not 0 <= partition <= replicas:
            raise ValueError(f"partition must be from 0 to {replicas} (the replica count), not {partition}")
        self.partition = partition

    def created_revision(self, ordinal: int) -> Revision:
        """The revision a pod created now at ``ordinal`` gets."""
        name = created_revision(ordinal, self.strategy, self.partition, self.current.name, self.update.name)
        return self.current if name == self.current.name else self.update

    def status(self, pods: list[PodView], replicas: int) -> dict[str, Any]:
        """Where the rollout stands; marks the update revision current once every pod has it and is Ready.

        ``state``: ``complete``, ``partitioned`` (every pod from the partition up is updated),
        ``progressing``, ``halted`` (the pod waited on crashed or was not Ready within
        :data:`PROGRESS_SECONDS` while not copying data), or ``waiting`` (OnDelete: pods to be deleted).
        """
        update = self.update.name
        updated = [p for p in pods if p.revision == update]
        ready = [p for p in pods if p.healthy]
        out: dict[str, Any] = {
            "strategy": self.strategy, "partition": self.partition, "replicas": replicas,
            "updated": len(updated), "ready": len(ready),
            "current_revision": self.current.name, "current_number": self.current.number,
            "update_revision": update, "update_number": self.update.number, "pod": None, "reason": None,
        }
        if len(pods) == replicas and len(updated) == replicas and len(ready) == replicas:
            self.current = self.update
            out.update(current_revision=update, current_number=self.update.number, state="complete",
                       message=f"statefulset rolling update complete {replicas} pods at revision {update}")
            return out
        if self.strategy == ON_DELETE:
            old = sorted(p.name for p in pods if p.revision != update)
            out.update(state="waiting", message=f"OnDelete: {len(updated)} of {replicas} pods at revision "
                       f"{update}; pods take it when deleted ({hint('cluster kill POD')}): {', '.join(old) or 'none left'}")
            return out
        action, ordinal = next_step(pods, self.strategy, self.partition, update)
        above = [p for p in pods if p.ordinal >= self.partition]
        if action == "done" and len(above) == replicas - min(self.partition, replicas):
            if self.partition > 0:
                out.update(state="partitioned", message=f"partitioned roll out complete: {len(updated)} new pods "
                           f"have been updated (ordinals {self.partition} and up; lower ones wait for the "
                           "partition to go down)")
                return out
        pod = next((p for p in pods if p.ordinal == ordinal), None)
        if pod is None:  # being created, or a lower pod the ordered start waits for
            waiting = next((p for p in sorted(pods, key=lambda p: p.ordinal) if not p.healthy), None)
            pod = waiting
        if pod is None:
            out.update(state="progressing", message=f"Waiting for {replicas - len(ready)} pods to be ready...")
            return out
        halted = pod.revision == update and not pod.healthy and not pod.terminating and (
            pod.crashed or (pod.age > PROGRESS_SECONDS and not pod.copying))
        out.update(pod=pod.name, reason=pod.why or None)
        if halted:
            out.update(state="halted", message=f"rollout halted at {pod.name}: {pod.why or 'not Ready'}; fix the "
                       "template or go back with `rollout undo`")
        elif action == "delete" or pod.terminating:
            out.update(state="progressing", message=f"replacing {pod.name} ({len(updated)} of {replicas} "
                       f"pods at revision {update})")
        else:
            out.update(state="progressing", message=f"Waiting for {pod.name} to be Ready "
                       f"({len(updated)} of {replicas} pods at revision {update}): {pod.why or 'starting'}")
        return out
