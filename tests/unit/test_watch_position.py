"""WatchPosition: where a resumed watch starts again, and which lines it has shown already."""

from __future__ import annotations

from kvstore.client import WatchPosition


def put(lsn: int, key: str) -> dict[str, object]:
    return {"type": "put", "key": key, "version": lsn}


def keepalive(lsn: int, history: str | None = None) -> dict[str, object]:
    return {"type": "keepalive", "lsn": lsn, "history": history}


def test_a_new_watch_starts_from_now_or_from_the_asked_lsn() -> None:
    assert WatchPosition().resume_from() is None
    assert WatchPosition(from_lsn=7).resume_from() == 7


def test_a_cut_inside_a_transaction_resumes_at_its_lsn_and_skips_only_the_keys_read() -> None:
    position = WatchPosition()
    assert position.take({"type": "start", "lsn": 4, "history": "h1"})
    assert position.take(put(5, "a"))
    assert position.take(put(6, "x"))  # a transaction at 6: x, then the cut before y
    assert position.resume_from() == 6
    # The resumed stream shows the whole transaction again, then what came after.
    assert not position.take(put(6, "x"))
    assert position.take(put(6, "y"))
    assert position.take(put(7, "a"))
    assert position.resume_from() == 7
    assert position.history == "h1"


def test_a_keepalive_past_the_last_event_means_every_line_of_it_was_read() -> None:
    position = WatchPosition()
    position.take(put(6, "x"))
    position.take(keepalive(6, "h2"))
    assert position.resume_from() == 7
    assert position.history == "h2"
    # Once past it, a line at an LSN already read is shown again only if the server sends it.
    assert position.take(put(8, "x"))


def test_a_keepalive_below_the_last_event_does_not_move_the_resume_point() -> None:
    position = WatchPosition(from_lsn=3)
    position.take(put(9, "x"))
    position.take(keepalive(8))
    assert position.resume_from() == 9


def test_a_restart_after_a_re_read_forgets_the_open_transaction() -> None:
    position = WatchPosition()
    position.take(put(6, "x"))
    position.restart(20, "h3")
    assert position.resume_from() == 21
    assert position.history == "h3"
    assert position.take(put(6, "x"))
