"""The configured secret values of this process, so redaction can find them in any text.

Pattern-based redaction (``runtime.frames.redact``) catches keys that look like keys
(``sk-...``, bearer tokens, JWTs); a provider's error that quotes a plain key does not
look like one. ``Settings`` registers its secret values here when it is built, and
``redact`` replaces each of them wherever it appears.
"""

from __future__ import annotations

import threading

MIN_LENGTH = 8  # shorter values would redact ordinary words

_lock = threading.Lock()
_values: frozenset[str] = frozenset()


def register(*values: str | None) -> None:
    global _values
    found = {v for v in values if v and len(v) >= MIN_LENGTH}
    if found - _values:
        with _lock:
            _values = _values | found


def scrub(text: str, replacement: str) -> str:
    for value in _values:
        if value in text:
            text = text.replace(value, replacement)
    return text
