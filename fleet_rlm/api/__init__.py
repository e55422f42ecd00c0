"""The Starlette app behind Ray Serve.

- ``auth``       who is calling: JWT or the local default identity
- ``errors``     the error body of PROTOCOL.md and the exception handlers
- ``client_frames`` validation of the chat socket's client frames
- ``http_routes`` health, readiness, status, sessions and documents
- ``ws_chat``    ``/api/v1/ws/execution``
- ``ws_events``  ``/api/v1/ws/execution/events``
- ``app``        assembles the routes around one ``Runtime``
- ``runtime``    what a replica holds: settings, store, session actors, hub
"""
