"""The admin console's SCRAM-SHA-256 server side now lives in :mod:`proxy.auth.scram_server`
(service accounts use it too); these names stay importable from here."""

from proxy.auth.scram_server import MECHANISM, ScramExchange, ScramFailed, mock_secret

__all__ = ["MECHANISM", "ScramExchange", "ScramFailed", "mock_secret"]
