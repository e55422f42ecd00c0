"""Feedback: one row per vote on a trace."""

from __future__ import annotations

from datetime import UTC

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_rlm.store import Store
from fleet_rlm.store.schema import FeedbackRow


def test_add_feedback_stores_a_row(store: Store) -> None:
    first = store.add_feedback(workspace_id="ws", user_id="u", trace_id="tr-1", value=True)
    second = store.add_feedback(
        workspace_id="ws",
        user_id="u",
        trace_id="tr-1",
        value=False,
        session_id="s-1",
        comment="wrong total",
        expected_response="42",
    )

    assert second > first
    with Session(store.engine) as db:
        rows = db.scalars(select(FeedbackRow).order_by(FeedbackRow.id)).all()
        assert [(r.value, r.session_id, r.comment, r.expected_response) for r in rows] == [
            (True, None, None, None),
            (False, "s-1", "wrong total", "42"),
        ]
        assert all(r.created_at.tzinfo is UTC for r in rows)
