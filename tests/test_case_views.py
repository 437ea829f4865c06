"""Which view of a field stands for it in a case: the rule both assays' cases share."""

from __future__ import annotations

from typing import Any

from appliance.assays.case_views import (
    StoredView,
    standing_rows,
    standing_views,
    stored_views,
    superseded_by,
)


def view(number: int, scored: bool = True, duplicate_of: int | None = None,
         superseded: int | None = None) -> StoredView:
    return StoredView(number, scored, duplicate_of, superseded)


def stored(file: str, seq: int, status: str = "scored",
           supersedes: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"file": file, "seq": seq, "status": status, "supersedes": supersedes}


def test_each_field_stands_by_its_first_scored_view() -> None:
    assert standing_views([view(1), view(2), view(3, duplicate_of=1)]) == {1, 2}
    # A return to a return belongs to the first view's group.
    assert standing_views([view(1, False), view(2, False, 1), view(3, True, 2)]) == {3}


def test_a_field_never_scored_stands_by_its_latest_view() -> None:
    """Its refusal reason is the field's: the latest view says what is wrong now."""
    assert standing_views([view(1, False), view(2, False, 1), view(3)]) == {2, 3}


def test_a_superseded_view_never_stands() -> None:
    assert standing_views([view(1, superseded=3), view(2), view(3, duplicate_of=1)]) == {2, 3}
    # Not a duplicate by fingerprint (a blank one, say): it still replaces field 1.
    assert standing_views([view(1, superseded=2), view(2)]) == {2}
    # The new reading refused: the field stands by it, and is not counted as scored.
    assert standing_views([view(1, superseded=2), view(2, False, 1)]) == {2}


def test_a_report_names_the_one_it_replaces_by_file_and_frame() -> None:
    fields = [(1, stored("cam", 10)), (2, stored("cam", 30)),
              (3, stored("cam", 31, supersedes={"file": "cam", "seq": 10,
                                                "reason": "settings_changed"}))]
    assert superseded_by(fields) == {1: 3}
    # Frame numbers restart with the service: the latest earlier field of that name.
    restarted = [(1, stored("cam", 10)), (2, stored("cam", 10)),
                 (3, stored("cam", 11, supersedes={"file": "cam", "seq": 10,
                                                   "reason": "settings_changed"}))]
    assert superseded_by(restarted) == {2: 3}


def test_a_report_replacing_one_outside_the_case_or_malformed_replaces_nothing() -> None:
    fields = [(1, stored("cam", 10)),
              (2, stored("cam", 12, supersedes={"file": "cam", "seq": 4,
                                                "reason": "now_scorable"})),
              (3, stored("cam", 13, supersedes={"file": "cam", "seq": "10"})),
              (4, {"file": "cam", "status": "scored"})]  # stored before the key existed
    assert superseded_by(fields) == {}
    assert standing_rows((n, None, r) for n, r in fields) == {1, 2, 3, 4}


def test_stored_rows_give_their_views() -> None:
    rows = [(1, None, stored("cam", 10, "not_scorable")),
            (2, 1, stored("cam", 20, supersedes={"file": "cam", "seq": 10,
                                                 "reason": "now_scorable"}))]
    assert stored_views(rows) == [view(1, False, None, 2), view(2, True, 1)]
    assert standing_rows(rows) == {2}
