"""The session runtime: one detached Ray actor per session and the replica-side fan-out.

- ``frames``        builders for the chat and execution frames of PROTOCOL.md, and redaction
- ``event_log``     a session's seq-numbered log: bounded in memory, durable in the store
- ``turn``          one turn's state and the emitter its worker thread reports through
- ``session_actor`` the ``SessionActor`` that owns turns, the log and subscriptions
- ``actors``        finding or creating a session's actor by name, with retry after a death
- ``hub``           one subscription per replica per session, fanned out to local sockets
"""
