"""The ``"host:port"`` listen addresses of ``server.listen`` and ``server.metrics_listen``."""

from __future__ import annotations

import ipaddress
import re

_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")
_PORT = re.compile(r"[0-9]{1,5}")


def parse_listen(s: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[::1]:6432"`` for IPv6) into ``(host, port)``.

    Port 0 asks the operating system for a free port (the log names the one it got).
    Raises :class:`ValueError` with a message fit for a config error.
    """
    if s.startswith("["):
        close = s.find("]")
        if close < 0 or s[close + 1 : close + 2] != ":":
            raise ValueError('expected "[ipv6]:port"')
        host, port_text = s[1:close], s[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = s.rpartition(":")
        if not sep:
            raise ValueError('expected "host:port"')
        if ":" in host:
            raise ValueError('an IPv6 address goes in brackets: "[::1]:6432"')
        if not _HOSTNAME.fullmatch(host):
            raise ValueError('expected "host:port" with a host name or IPv4 address')
    if not _PORT.fullmatch(port_text) or not 0 <= int(port_text) <= 65535:
        raise ValueError("expected a port number between 0 and 65535")
    return host, int(port_text)
