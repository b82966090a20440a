"""Sans-I/O PostgreSQL frontend/backend protocol v3.

Nothing here touches a socket or imports asyncio: callers feed bytes in and get
messages (or offsets into the bytes they fed) back, and ask the encoders for bytes to
send. Modules:

- ``tags``: message tag enums (one per direction), ``TxStatus``, ``AuthCode``.
- ``errors``: ``ProtocolViolation``, the only exception raised for bad input.
- ``startup``: the untagged startup-phase packets (StartupMessage, SSLRequest,
  GSSENCRequest, CancelRequest) and their framer.
- ``framing``: ``FrontendFramer`` (whole client messages) and ``BackendScanner``
  (header-only scanning of the server stream, which is forwarded as received).
- ``messages``: the few encoders and decoders the proxy needs for a session.
- ``authentication``: the authentication exchange (Authentication*, password, SASL).

Import the submodules directly; this package re-exports nothing.
"""
