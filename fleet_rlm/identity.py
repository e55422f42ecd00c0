"""The identity tuple that addresses a session, and the checks on its parts.

``workspace_id`` and ``user_id`` come from authentication only; ``session_id``
comes from the client and must match ``SESSION_ID_PATTERN``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleet_rlm.errors import InvalidSessionIdError

SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # always used with fullmatch
IDENTITY_FIELDS = frozenset({"workspace_id", "user_id"})


def check_session_id(value: object) -> str:
    """Return ``value`` if it is a valid session id, else raise ``InvalidSessionIdError``."""
    if not isinstance(value, str) or not SESSION_ID_PATTERN.fullmatch(value):
        raise InvalidSessionIdError(
            f"session_id must be 1 to 128 characters of letters, digits and . _ : - ; got {value!r}"
        )
    return value


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the part of the identity that authentication decides."""

    workspace_id: str
    user_id: str

    def session(self, session_id: str) -> SessionKey:
        return SessionKey(self.workspace_id, self.user_id, check_session_id(session_id))


@dataclass(frozen=True, slots=True)
class SessionKey:
    """The full identity tuple of one session."""

    workspace_id: str
    user_id: str
    session_id: str

    def __str__(self) -> str:
        """``workspace/user/session``: how logs name a session (ids alone can repeat)."""
        return f"{self.workspace_id}/{self.user_id}/{self.session_id}"

    @property
    def actor_name(self) -> str:
        """Ray actor name; ``/`` cannot occur in any part, so it cannot be forged."""
        return f"session/{self.workspace_id}/{self.user_id}/{self.session_id}"

    def run_id(self, turn_index: int) -> str:
        return f"{self.workspace_id}:{self.user_id}:{self.session_id}:{turn_index}"
