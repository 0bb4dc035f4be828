"""Who a request speaks for, and the defence against cross-site requests.

The gateway holds no tokens of its own: it forwards the caller's bearer
token to the server, which decides (the same tokens, roles and ownership as
on gRPC). A script sends ``Authorization: Bearer …``. A browser signs in
once: the token goes into an HttpOnly, SameSite=Strict cookie (Secure over
HTTPS), so it is never in a URL, a page or a script's reach.

Cross-site request forgery: the cookie is SameSite=Strict, so a browser
never attaches it to a request another site starts; and every
state-changing request (anything but GET/HEAD/OPTIONS) that carries no
``Authorization`` header must come from this origin: its ``Origin`` (or,
lacking that, ``Referer``) must name the host it was sent to, and a
``Sec-Fetch-Site`` header, where the browser sends one, must say
``same-origin``. That also protects a server without tokens on loopback
from pages on other sites posting to it. A request with ``Authorization``
cannot be forged by a page (a browser adds that header to a cross-site
request only after a CORS preflight, which the gateway never grants).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

COOKIE = "jobstream_token"
"""The cookie holding a signed-in browser's bearer token."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing, exempt from the origin check."""


def metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    """gRPC metadata for the call made on behalf of ``request``: its
    ``Authorization`` header, else the signed-in cookie's token, and its
    ``X-Request-Id`` (the server logs it with every line of the call)."""
    pairs: list[tuple[str, str]] = []
    header = request.headers.get("Authorization")
    token = request.cookies.get(COOKIE)
    if header:
        pairs.append(("authorization", header))
    elif token:
        pairs.append(("authorization", f"Bearer {token}"))
    request_id = request.headers.get("X-Request-Id")
    if request_id:
        pairs.append(("x-request-id", request_id))
    return tuple(pairs)


def cross_site_refusal(request: web.Request) -> str | None:
    """Why ``request`` is refused as a possible cross-site forgery, or None."""
    if request.method in SAFE_METHODS or request.headers.get("Authorization"):
        return None
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {fetch_site})"
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if origin is None:
        if request.cookies.get(COOKIE):
            # A browser sends Origin with every such request; a cookie
            # without one is not a request this gateway's pages made.
            return "cross-site request refused: a signed-in request without an Origin header"
        return None  # a script (curl) with no cookie: it speaks for no one but itself
    if origin == "null":
        return "cross-site request refused (Origin: null)"
    parts = urlsplit(origin)
    host = request.headers.get("Host", "")
    # Host and port, not the scheme: behind a proxy that ends TLS the
    # gateway itself is reached over plain HTTP.
    if parts.netloc.lower() != host.lower():
        return f"cross-site request refused: Origin {origin!r} is not this host ({host})"
    return None


def set_token(response: web.StreamResponse, token: str, *, secure: bool) -> None:
    """Signs a browser in: the token in an HttpOnly, SameSite=Strict cookie."""
    response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=secure, path="/")


def clear_token(response: web.StreamResponse, *, secure: bool) -> None:
    """Signs a browser out."""
    response.del_cookie(COOKIE, path="/", secure=secure, httponly=True, samesite="Strict")
