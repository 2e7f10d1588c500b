"""Who is asking, as far as the network says: the client's address behind trusted proxies,
and whether it is an operator (internal network or the operators' token)."""

from __future__ import annotations

import hmac
import ipaddress
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs if cidr)


def _within(address: str, cidrs: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _networks(tuple(cidrs)))


def client_address(request: HttpRequest) -> str:
    """REMOTE_ADDR, or, when that is one of TRUSTED_PROXIES, the nearest address in
    X-Forwarded-For that is not a trusted proxy (a client can write anything further left)."""
    address = str(request.META.get("REMOTE_ADDR") or "")
    if not _within(address, settings.TRUSTED_PROXIES):
        return address
    forwarded = str(request.META.get("HTTP_X_FORWARDED_FOR") or "")
    for hop in reversed([part.strip() for part in forwarded.split(",") if part.strip()]):
        if not _within(hop, settings.TRUSTED_PROXIES):
            return hop
    return address


def is_operator(request: HttpRequest) -> bool:
    """From the operators' networks (OPS_NETWORKS), or with ``Authorization: Bearer
    <OPS_TOKEN>`` when a token is configured."""
    token: str = settings.OPS_TOKEN
    if token:
        sent = str(request.META.get("HTTP_AUTHORIZATION") or "")
        if hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return True
    return _within(client_address(request), settings.OPS_NETWORKS)
