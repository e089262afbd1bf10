"""The write answer kvstore formats by hand is exactly what json.dumps of the same dict gives."""

from __future__ import annotations

import json

import pytest

from kvstore.api import write_answer


@pytest.mark.parametrize("key", ["a", "dir/sub key", 'quote " and \\ backslash', "ключ", "tab\tnul\x00", "😀"])
@pytest.mark.parametrize("deleted", [False, True])
def test_write_answer_is_the_json_of_the_dict(key: str, deleted: bool) -> None:
    text = write_answer(key.encode(), 2**63 - 1, deleted)
    assert text == json.dumps({"key": key, "version": 2**63 - 1, "deleted": deleted})
    assert json.loads(text) == {"key": key, "version": 2**63 - 1, "deleted": deleted}
