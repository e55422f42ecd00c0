"""The error tree. Every error a user can see derives from ``FleetError``.

FleetError                      root; ``code`` is the wire code, ``message`` says what to do
├── ConfigError                 a setting is missing or unsafe; the server refuses to start
├── StoreError                  the database cannot be used
│   └── SchemaTooNewError       the database was migrated by a newer fleet-rlm
├── IdentityError               a request names a session it may not touch
│   ├── InvalidSessionIdError   ``session_id`` is not 1-128 chars of [A-Za-z0-9._:-]
│   └── UnsupportedIdentityFieldsError
├── AuthError                   missing, expired or forged credentials (401)
│   └── ForbiddenError          valid credentials for another identity (403)
├── TurnError                   a turn could not start or ended badly
│   ├── TurnInProgressError
│   ├── NoTurnRunningError
│   └── TurnCancelled           raised inside a turn's thread once the turn is cancelled
└── ModelError                  the language model failed, timed out or gave unparseable output
"""

from __future__ import annotations


class FleetError(Exception):
    """Root of every error fleet-rlm reports to a user."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class ConfigError(FleetError):
    code = "config_error"


class StoreError(FleetError):
    code = "database_unavailable"
    status = 503


class SchemaTooNewError(StoreError):
    code = "database_schema_too_new"


class IdentityError(FleetError):
    code = "identity_error"
    status = 400


class InvalidSessionIdError(IdentityError):
    code = "invalid_session_id"
    status = 422


class UnsupportedIdentityFieldsError(IdentityError):
    code = "unsupported_identity_fields"
    status = 422


class AuthError(FleetError):
    code = "unauthorized"
    status = 401


class ForbiddenError(AuthError):
    code = "forbidden"
    status = 403


class TurnError(FleetError):
    code = "turn_error"
    status = 409


class TurnInProgressError(TurnError):
    code = "turn_in_progress"


class NoTurnRunningError(TurnError):
    code = "no_turn_running"


class TurnCancelled(TurnError):
    code = "cancelled"


class ModelError(FleetError):
    code = "model_error"
    status = 502


class NotFoundError(FleetError):
    """What was asked for is not there, or is not the caller's (a 404 either way)."""

    code = "not_found"
    status = 404
