"""The served OpenAPI document matches the repo's, and a live replica conforms to it.

schemathesis generates requests from the document (valid and invalid) and
fails on any 5xx or any answer the document does not describe.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from replica_process import ReplicaProcess, running

REPO_DOC = Path(__file__).resolve().parents[2] / "kvstore" / "openapi.json"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProcess]:
    with running(tmp_path_factory.mktemp("openapi"),
                 env={"KV_MAX_KEY_BYTES": "256", "KV_MAX_VALUE_BYTES": "65536"}) as proc:
        yield proc


def test_document_is_served_unchanged(live: ReplicaProcess) -> None:
    import urllib.request

    with urllib.request.urlopen(live.url + "/openapi.json", timeout=10) as response:
        assert json.loads(response.read()) == json.loads(REPO_DOC.read_text())


# 304 and 412 are the documented answers to conditions the generator makes up,
# 413 to keys over the configured byte limit (not expressible in the schema)
# (a random ETag rarely matches), so schema-valid requests may get them; so
# may 409 and 410, a watch's answers to a made-up history or a from_lsn past
# what it may show.
CONFIG = schemathesis.config.SchemathesisConfig.from_dict({
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "304", "404", "409", "410", "412",
                                                                  "413"]}},
})
schema = schemathesis.openapi.from_path(str(REPO_DOC), config=CONFIG)
EXAMPLES = int(os.environ.get("KV_SCHEMATHESIS_EXAMPLES", "25"))


@schema.exclude(path="/v1/watch").parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_live_replica_conforms(case: schemathesis.Case, live: ReplicaProcess) -> None:
    case.call_and_validate(base_url=live.url)


@schema.include(path="/v1/watch").parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_live_watch_conforms(case: schemathesis.Case, live: ReplicaProcess) -> None:
    """A watch never ends by itself: its answer is judged by its head and first line (an error: whole)."""
    with requests.request(**case.as_transport_kwargs(base_url=live.url), stream=True, timeout=10) as response:
        body = response.raw.readline() if response.status_code == 200 else response.raw.read()
    judged = requests.Response()
    judged.status_code, judged.headers, judged.url = response.status_code, response.headers, response.url
    judged.request, judged.reason, judged._content = response.request, response.reason, body
    judged.raw, judged.elapsed = response.raw, response.elapsed  # schemathesis reads the headers from raw
    case.validate_response(judged)
    if response.status_code == 200:
        assert json.loads(body)["type"] == "start"
