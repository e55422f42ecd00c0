"""Documents: one per name and session, replaced by name, listed without their text."""

from __future__ import annotations

import pytest

from fleet_rlm.identity import SessionKey
from fleet_rlm.store import Store


def test_put_and_get_document(store: Store, key: SessionKey) -> None:
    stored = store.put_document(key, "notes.md", "# hello\nwörld")

    assert (stored.name, stored.text, stored.chars) == ("notes.md", "# hello\nwörld", 13)
    assert len(stored.document_id) == 32
    assert store.get_document(key, "notes.md") == stored
    assert store.get_document(key, "missing.md") is None


def test_same_name_replaces_with_a_new_document_id(store: Store, key: SessionKey) -> None:
    first = store.put_document(key, "a.txt", "one")
    second = store.put_document(key, "a.txt", "two, longer")

    assert second.document_id != first.document_id
    assert (second.text, second.chars) == ("two, longer", 11)
    assert store.get_document(key, "a.txt") == second
    assert store.document_names(key) == ["a.txt"]


def test_list_documents_pages_by_id_without_text(store: Store, key: SessionKey) -> None:
    names = ["c.txt", "a.txt", "b.txt", "d.txt", "e.txt"]
    stored = [store.put_document(key, name, name * 3) for name in names]

    first = store.list_documents(key, limit=2)
    second = store.list_documents(key, limit=2, after_id=first[-1].id)
    third = store.list_documents(key, limit=2, after_id=second[-1].id)

    listed = first + second + third
    assert [doc.name for doc in listed] == names
    assert [doc.document_id for doc in listed] == [doc.document_id for doc in stored]
    assert all(doc.text is None for doc in listed)
    assert [doc.chars for doc in listed] == [15] * 5
    assert store.list_documents(key, limit=2, after_id=third[-1].id) == []
    assert store.document_names(key) == sorted(names)


def test_document_names_are_bounded(store: Store, key: SessionKey) -> None:
    store.put_document(key, "n" * 200, "ok")

    with pytest.raises(ValueError, match="200"):
        store.put_document(key, "n" * 201, "too long")
    with pytest.raises(ValueError):
        store.put_document(key, "", "empty")


def test_limits_must_be_positive(store: Store, key: SessionKey) -> None:
    with pytest.raises(ValueError, match="limit"):
        store.list_documents(key, limit=0)
    with pytest.raises(ValueError, match="limit"):
        store.list_sessions(key.workspace_id, key.user_id, limit=0)
