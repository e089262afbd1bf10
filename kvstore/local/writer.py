"""A steady writer for measuring and testing updates of a running cluster.

One ``w=majority`` PUT at a time, each to a new key; when a pod refuses the
connection (it is being replaced) the writer moves to the next pod and sends
the same write again; any other failure (503 while kv-0 is away, 504, a cut
connection) is retried on the same pod after a short pause. Every
acknowledged write is kept with its time, so a run can say what the longest
gap between acknowledged writes was and check afterwards that each one is
still there.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Ack:
    """One acknowledged write."""

    key: str
    value: str
    at: float  # time.monotonic() when the answer came
    pod: str


@dataclass
class SteadyWriter:
    """Writes ``<prefix>-<n>`` keys to the pods at ``urls`` (name -> base URL) until stopped."""

    urls: dict[str, str]
    prefix: str = "steady"
    retry_pause: float = 0.01
    timeout: float = 5.0
    acks: list[Ack] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # kind of failure -> count
    moves: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "SteadyWriter":
        """Begin writing in a thread."""
        self._thread = threading.Thread(target=self._run, name="steady-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the write in flight (bounded by its timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)

    def longest_gap(self, since: float | None = None, until: float | None = None) -> float:
        """The longest time between consecutive acknowledged writes (within [since, until] if given)."""
        times = [a.at for a in self.acks if (since is None or a.at >= since) and (until is None or a.at <= until)]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)

    def _run(self) -> None:
        names = sorted(self.urls)
        at = 0
        n = 0
        while not self._stop.is_set():
            key, value = f"{self.prefix}-{n}", f"v{n}-{time.time_ns()}"
            name = names[at % len(names)]
            outcome = self._put(self.urls[name], key, value)
            if outcome == "ok":
                self.acks.append(Ack(key, value, time.monotonic(), name))
                n += 1
                continue
            self.errors[outcome] = self.errors.get(outcome, 0) + 1
            if outcome == "refused":
                at += 1  # the pod is gone or not listening yet: the next one
                self.moves += 1
            else:
                self._stop.wait(self.retry_pause)

    def _put(self, url: str, key: str, value: str) -> str:
        host = url.split("://", 1)[-1]
        connection = http.client.HTTPConnection(host, timeout=self.timeout)
        try:
            connection.request("PUT", f"/v1/kv/{key}?w=majority", body=value.encode())
            response = connection.getresponse()
            response.read()
            return "ok" if response.status == 200 else f"http {response.status}"
        except ConnectionRefusedError:
            return "refused"
        except (OSError, http.client.HTTPException) as exc:
            return type(exc).__name__
        finally:
            connection.close()
