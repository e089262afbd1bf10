"""How long writes pause when kv-0 is killed with its volume intact and every follower up.

    ./kv bench primary_restart [--rounds 5]

Starts a local 3-replica cluster, writes a little, then per round: SIGKILL kv-0
through the controller (like ``kubectl delete pod --grace-period=0``) and send
``w=majority`` PUTs to kv-0's address every 10 ms until one is accepted. Prints
the time from the kill to the first accepted write for each round, and the
median. Figures go to bench/results/primary_restart.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from clusters import kv_cluster, machine, run_main, stop_on_sigterm  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BASE, DNS = "127.0.76.10", "127.0.76.2"


def put(url: str, key: str, timeout: float = 2.0) -> int:
    """One PUT; the status code, or 0 when no answer came."""
    request = urllib.request.Request(f"{url}/v1/kv/{key}?w=majority", data=b"x", method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's flags (exit 2 with a usage line when bad)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, choices=range(1, 51), metavar="1..50")
    return parser.parse_args(argv)


def main() -> int:
    """Run the rounds and print the pause per round."""
    args = parse_args()
    stop_on_sigterm()
    pauses = []
    with kv_cluster(3, base=BASE, dns=DNS) as cluster:
        url = cluster.url("kv-0")
        for i in range(100):
            put(url, f"seed-{i}")
        for round_ in range(args.rounds):
            time.sleep(1.0)  # let the followers settle on their streams
            killed = time.monotonic()
            cluster.kill("kv-0")  # kvstore cluster kill: SIGKILL through the controller
            deadline = killed + 60
            attempt = 0
            while time.monotonic() < deadline:
                attempt += 1
                if put(url, f"after-kill-{round_}-{attempt}") == 200:
                    break
                time.sleep(0.01)
            else:
                raise RuntimeError("kv-0 took no write within 60 s of the kill")
            pauses.append(time.monotonic() - killed)
            print(f"round {round_ + 1}: first accepted write {pauses[-1]:.2f} s after the kill", flush=True)
    median = statistics.median(pauses)
    print(f"median {median:.2f} s, min {min(pauses):.2f} s, max {max(pauses):.2f} s over {len(pauses)} rounds")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "primary_restart.json").write_text(json.dumps(
        {"pauses_s": pauses, "median_s": median, "machine": machine()}, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
