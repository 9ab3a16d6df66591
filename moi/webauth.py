"""The dashboard's defences against other local users and other sites or ports.

``moi serve`` runs on shared lab machines: other users can read ``ps``, open
ports on the same loopback address, and serve pages the dashboard's user may
visit.  Here: the login token (length, token files), sessions bound to one
server (token and port) with a lifetime and revocation, the login rate limit,
the ``Host`` check against DNS rebinding, the ``Origin``/``Sec-Fetch-Site``
check against cross-site and cross-port requests, the security headers, and
the login's ``next`` check.  :mod:`moi.web` wires them into its handlers.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import tornado.web
from tornado.httputil import HTTPServerRequest

from moi.connection import read_private_text
from moi.errors import MoiError

#: Shortest login token accepted: shorter ones are too easy to guess.
MIN_TOKEN_LENGTH = 16
#: Default lifetime of a dashboard session.
SESSION_HOURS = 12.0
#: Host names always accepted on a loopback address (IPv6 without brackets).
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
#: What ``moi serve`` says when the token came on its command line.
TOKEN_IN_PS_WARNING = (
    "moi serve: warning: a token given with --token is visible to other users of this "
    "machine (ps, /proc); pass it in $MOI_TOKEN or --token-file instead"
)
#: A Host header fit to be quoted in a Content-Security-Policy.
_PLAIN_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
#: What a ``next`` path may not contain: backslashes, whitespace, control characters.
_UNSAFE_IN_NEXT = re.compile(r"[\\\s\x00-\x1f\x7f-\x9f]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class TokenError(MoiError, ValueError):
    """A login token that cannot protect the dashboard (too short, badly stored)."""


def check_token(token: str) -> str:
    """Return ``token``, or raise :class:`TokenError` if it is too short to resist guessing.

    Parameters
    ----------
    token : str
        The dashboard's login token.

    Returns
    -------
    str
    """
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(
            f"the login token has {len(token)} characters; use at least {MIN_TOKEN_LENGTH} "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    return token


def read_token_file(path: Path) -> str:
    """The login token stored in ``path``: a regular file of yours that only you can read.

    Parameters
    ----------
    path : Path
        The token file (its content, stripped of surrounding whitespace, is the token).

    Returns
    -------
    str

    Raises
    ------
    TokenError
        If the file is missing, not a regular file, not yours, open to group or
        others, or empty.
    """
    try:
        token = read_private_text(path).strip()
    except FileNotFoundError:
        raise TokenError(f"--token-file {path}: No such file") from None
    except MoiError as exc:
        raise TokenError(f"--token-file: {exc}") from None
    if not token:
        raise TokenError(f"--token-file {path}: the file is empty")
    return token


@dataclass
class Sessions:
    """The login sessions of one dashboard: issued, checked, revoked.

    A session is the payload ``{"user", "sid", "iat", "fp"}`` of a signed
    cookie: ``fp`` binds it to this server's token and listening port,
    ``iat`` (issue time) to ``lifetime``, and a revoked ``sid`` (logout) is
    refused from then on.  On a multi-user server (``multi_user``) the
    payload also names the API key it was opened with (``key``, the key's
    public prefix), and ``user`` is that key's user.
    """

    user: str
    token: str
    secret: str
    lifetime: float = SESSION_HOURS * 3600
    multi_user: bool = False
    revoked: dict[str, float] = field(default_factory=dict)
    _on_revoke: dict[str, set[Callable[[], None]]] = field(default_factory=dict)

    def fingerprint(self, port: int) -> str:
        """What ties a session to this server: an HMAC of its port keyed by its token."""
        message = f"moi-dashboard-session:{port}".encode()
        return hmac.new(self.token.encode(), message, hashlib.sha256).hexdigest()

    def issue(self, port: int, principal: Principal | None = None) -> dict[str, Any]:
        """A new session on ``port``: of the dashboard's user, or of ``principal``'s key."""
        sid, fp = secrets.token_urlsafe(18), self.fingerprint(port)
        session = {"user": self.user, "sid": sid, "iat": int(time.time()), "fp": fp}
        if self.multi_user and principal is not None:
            session.update(user=principal.user, key=principal.key_prefix)
        return session

    def valid(self, session: Any, port: int) -> bool:
        """Whether ``session`` (a decoded cookie payload) is a live session of this server."""
        fields = {"user", "sid", "iat", "fp"} | ({"key"} if self.multi_user else set())
        if not isinstance(session, dict) or set(session) != fields:
            return False
        if self.multi_user:
            return (
                isinstance(session["user"], str)
                and isinstance(session["key"], str)
                and self._live(session, port)
            )
        return session["user"] == self.user and self._live(session, port)

    def _live(self, session: dict[str, Any], port: int) -> bool:
        """Signed for this server and port, not expired, not from the future, not revoked."""
        sid, iat, fp = session["sid"], session["iat"], session["fp"]
        if not (isinstance(sid, str) and isinstance(fp, str) and type(iat) is int):
            return False
        return (
            hmac.compare_digest(fp, self.fingerprint(port))
            and self.remaining(session) > 0
            and iat <= time.time() + 60  # a little clock skew, no sessions from the future
            and sid not in self.revoked
        )

    def remaining(self, session: dict[str, Any]) -> float:
        """Seconds ``session`` has left to live."""
        return float(session["iat"]) + self.lifetime - time.time()

    def xsrf_token(self, session: dict[str, Any]) -> str:
        """The XSRF token of ``session``: forms must send it back."""
        message = f"moi-xsrf:{session['sid']}".encode()
        return hmac.new(self.secret.encode(), message, hashlib.sha256).hexdigest()

    def revoke(self, session: dict[str, Any]) -> None:
        """End ``session`` now (logout) and close what watched it."""
        now = time.time()
        self.revoked = {s: t for s, t in self.revoked.items() if t + self.lifetime > now}
        self.revoked[session["sid"]] = session["iat"]
        for callback in self._on_revoke.pop(session["sid"], set()):
            callback()

    def on_revoke(
        self, session: dict[str, Any], callback: Callable[[], None]
    ) -> Callable[[], None]:
        """Call ``callback`` when ``session`` is revoked; return what cancels that."""
        callbacks = self._on_revoke.setdefault(session["sid"], set())
        callbacks.add(callback)
        return lambda: callbacks.discard(callback)


@dataclass
class LoginLimiter:
    """Failed logins per client address: after ``limit`` in ``window`` seconds, a lock-out.

    While locked out, a client is refused even the right token, until its
    oldest counted failure is ``window`` seconds old.
    """

    limit: int = 10
    window: float = 60.0
    clock: Callable[[], float] = time.monotonic
    failures: dict[str, deque[float]] = field(default_factory=dict)

    def retry_after(self, client: str) -> int:
        """Whole seconds until ``client`` may try again (0: it may try now)."""
        recent = self._recent(client)
        if len(recent) < self.limit:
            return 0
        return max(1, math.ceil(recent[0] + self.window - self.clock()))

    def failed(self, client: str) -> None:
        """Count one failed login of ``client``."""
        if len(self.failures) > 10_000:  # many addresses: forget the quiet ones
            for other in list(self.failures):
                self._recent(other)
        self.failures.setdefault(client, deque(maxlen=self.limit)).append(self.clock())

    def _recent(self, client: str) -> deque[float]:
        recent = self.failures.get(client, deque(maxlen=self.limit))
        while recent and recent[0] <= self.clock() - self.window:
            recent.popleft()
        if not recent:
            self.failures.pop(client, None)
        return recent


class TooManyLogins(tornado.web.HTTPError):
    """429: this client failed to log in too often; ``retry_after`` seconds to wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(429, "too many failed logins; locked out for %d s", retry_after)
        self.retry_after = retry_after


# -- checks of every request ------------------------------------------------------------
def local_address(request: HTTPServerRequest) -> tuple[str, int]:
    """The local address and port a request arrived on.

    Parameters
    ----------
    request : HTTPServerRequest

    Returns
    -------
    tuple of (str, int)
        ``("", 0)`` when unknown (a Unix socket, a closed connection).
    """
    stream = getattr(request.connection, "stream", None)
    sock = getattr(stream, "socket", None)
    name = sock.getsockname() if sock is not None else None
    return (str(name[0]), int(name[1])) if isinstance(name, tuple) else ("", 0)


def is_loopback(address: str) -> bool:
    """Whether ``address`` is a loopback IP address (IPv4-mapped IPv6 included)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def host_name(host: str) -> str:
    """The lower-case name in a ``Host`` header, without port or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.split(":", 1)[0] if host.count(":") == 1 else host


def check_host(request: HTTPServerRequest, hosts: frozenset[str]) -> None:
    """Refuse (403) a request reaching a loopback address under a name not in ``hosts``.

    A page of ``evil.example`` whose name a DNS rebinding points at
    127.0.0.1 reaches the dashboard with ``Host: evil.example``.

    Parameters
    ----------
    request : HTTPServerRequest
    hosts : frozenset of str
        Accepted names, lower case, IPv6 addresses without brackets.

    Raises
    ------
    tornado.web.HTTPError
        403, saying to add the name with ``--allow-host`` if it is a right one.
    """
    if is_loopback(local_address(request)[0]) and host_name(request.host) not in hosts:
        raise tornado.web.HTTPError(
            403,
            "Host %r is not a name of this server; add it with --allow-host if it is",
            request.host,
        )


def _origin(url: str) -> str | None:
    """``scheme://host:port`` of an origin (default port made explicit), or None if malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path or parts.query:
        return None
    if parts.username is not None or parts.fragment:
        return None
    return f"{parts.scheme}://{parts.hostname}:{port}"


def same_origin(origin: str, request: HTTPServerRequest) -> bool:
    """Whether ``origin`` is the server's own: same scheme, host and port as ``request``.

    Parameters
    ----------
    origin : str
        An ``Origin`` header (``http://127.0.0.1:8886``).
    request : HTTPServerRequest
        The request, whose ``Host`` (checked by :func:`check_host`) names the server.

    Returns
    -------
    bool
    """
    own = _origin(f"{request.protocol}://{request.host}")
    return own is not None and _origin(origin.strip().lower()) == own


def check_same_origin(request: HTTPServerRequest) -> None:
    """Refuse (403) a state-changing request that did not come from this server's pages.

    ``Origin`` must be this server's (another port of the same host is another
    origin; cookies, ``SameSite`` included, do not tell ports apart) and
    ``Sec-Fetch-Site``, when the browser sends it, ``same-origin`` or ``none``.

    Parameters
    ----------
    request : HTTPServerRequest

    Raises
    ------
    tornado.web.HTTPError
        403.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise tornado.web.HTTPError(403, "refused a %s request (Sec-Fetch-Site)", site)
    origin = request.headers.get("Origin")
    if origin is None:
        raise tornado.web.HTTPError(403, "no Origin header: send it from the dashboard's pages")
    if not same_origin(origin, request):
        raise tornado.web.HTTPError(403, "Origin %r is not this server's", origin)


def session_cookie(port: int) -> str:
    """Name of the session cookie of the dashboard listening on ``port``."""
    return f"moi-session-{port}"


def read_session(handler: tornado.web.RequestHandler, sessions: Sessions) -> dict[str, Any] | None:
    """The live session in a request's session cookie.

    Parameters
    ----------
    handler : tornado.web.RequestHandler
        The handler of the request (it reads and verifies the signed cookie).
    sessions : Sessions
        The dashboard's sessions.

    Returns
    -------
    dict or None
        The session payload, or None if there is none or it is not valid here
        (another server, another token, expired, revoked, tampered with).
    """
    port = local_address(handler.request)[1]
    max_age_days = sessions.lifetime / 86400
    raw = handler.get_secure_cookie(session_cookie(port), max_age_days=max_age_days)
    try:
        session = json.loads(raw) if raw else None
    except ValueError:
        return None
    return session if sessions.valid(session, port) else None


def set_security_headers(handler: tornado.web.RequestHandler, nonce: str | None = None) -> None:
    """Set Content-Security-Policy, X-Frame-Options, Referrer-Policy and nosniff.

    Parameters
    ----------
    handler : tornado.web.RequestHandler
    nonce : str, optional
        Inline scripts carrying ``nonce="..."`` may run; no other inline script does.
    """
    host = handler.request.host
    sockets = f" ws://{host} wss://{host}" if _PLAIN_HOST.fullmatch(host) else ""
    scripts = f"script-src 'self' 'nonce-{nonce}'; " if nonce else ""
    handler.set_header(
        "Content-Security-Policy",
        f"default-src 'self'; {scripts}connect-src 'self'{sockets}; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'; object-src 'none'",
    )
    handler.set_header("X-Frame-Options", "DENY")
    # not no-referrer: under it browsers send "Origin: null" with our own forms
    handler.set_header("Referrer-Policy", "same-origin")
    handler.set_header("X-Content-Type-Options", "nosniff")


def safe_next(url: str) -> str:
    """Where the login may send the browser: ``url`` if it is a path on this site, else ``/``.

    A single leading ``/``, no backslash, whitespace or control character, in
    ``url`` as given and percent-decoded: browsers read ``/\\evil`` and
    ``/<tab>/evil`` as ``//evil`` (another site), and ``/%5Cevil``,
    ``/%2F%2Fevil`` or ``/%09/evil`` become those wherever a proxy or
    framework decodes them once more.

    Parameters
    ----------
    url : str
        The ``next`` argument of the login.

    Returns
    -------
    str
    """
    for form in (url, unquote(url)):
        if not form.startswith("/") or form.startswith("//") or _UNSAFE_IN_NEXT.search(form):
            return "/"
    return url


# -- who is asking: API keys, the token, sessions ------------------------------------------
@dataclass(frozen=True)
class Principal:
    """Who a request acts for.

    Attributes
    ----------
    user : str
        Whose tree it reads and changes.
    admin : bool
        May read and change every user's tree.
    read_only : bool
        Every write must be refused (403): a read-only key, or a ``--read-only`` server.
    key_prefix : str or None
        Public prefix of the API key used; ``None`` on a single-user (``--token``) server.
    """

    user: str
    admin: bool = False
    read_only: bool = False
    key_prefix: str | None = None


@dataclass(frozen=True)
class ServerConfig:
    """What a dashboard serves: whose jobs, behind which token and sessions, writable or not.

    ``multi_user``: people log in with their API keys (:mod:`moi.auth`) and
    each sees their own tree; ``user`` and ``token`` then only serve the
    sessions' signatures.  ``key_check_seconds``: how often an open websocket
    checks that its key was not revoked.
    """

    user: str
    token: str
    sessions: Sessions
    read_only: bool = False
    hosts: frozenset[str] = LOOPBACK_HOSTS
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    multi_user: bool = False
    key_check_seconds: float = 30.0


def _async_redis() -> Any:
    from moi.relay import get_relay

    return get_relay().store.r


async def principal_for_key(server: ServerConfig, key: str) -> Principal | None:
    """Who ``key`` (an API key, or a single-user server's token) logs in as; None if no one."""
    if not server.multi_user:
        if hmac.compare_digest(key.encode(), server.token.encode()):
            return Principal(server.user, read_only=server.read_only)
        return None
    from moi import auth

    info = await auth.alookup(key, _async_redis())
    if info is None:
        return None
    return Principal(info.user, info.admin, info.read_only or server.read_only, info.prefix)


async def principal_for_session(
    server: ServerConfig, session: dict[str, Any] | None
) -> Principal | None:
    """Who a live session acts for; None when there is none or its API key was revoked."""
    if session is None:
        return None
    if not server.multi_user:
        return Principal(server.user, read_only=server.read_only)
    from moi import auth

    info = await auth.arecord(session["key"], _async_redis())
    if info is None or info.user != session["user"]:
        return None
    return Principal(info.user, info.admin, info.read_only or server.read_only, info.prefix)


async def log_in_with(
    handler: tornado.web.RequestHandler, server: ServerConfig, key: str
) -> Principal | None:
    """:func:`principal_for_key`, counting failures per client address.

    Raises
    ------
    TooManyLogins
        429 while this client is locked out (even with the right key).
    """
    client = handler.request.remote_ip or ""
    wait = server.limiter.retry_after(client)
    if wait:
        raise TooManyLogins(wait)
    principal = await principal_for_key(server, key)
    if principal is None:
        server.limiter.failed(client)
    return principal


def check_xsrf(handler: tornado.web.RequestHandler, server: ServerConfig, session: Any) -> None:
    """Refuse (403) a write of a session from another origin or without its XSRF token."""
    check_host(handler.request, server.hosts)
    check_same_origin(handler.request)
    given = (
        handler.get_argument("_xsrf", None)
        or handler.request.headers.get("X-Xsrftoken")
        or handler.request.headers.get("X-Csrftoken")
        or ""
    )
    expected = server.sessions.xsrf_token(session)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise tornado.web.HTTPError(403, "XSRF token missing or not this session's")


async def authenticate(
    handler: tornado.web.RequestHandler, server: ServerConfig, write: bool = False
) -> Principal | None:
    """Who a request (of the JSON API, say) acts for: its bearer key or its session.

    ``Authorization: Bearer KEY`` is checked first (an API key, or the token
    of a single-user server; a wrong one counts as a failed login of the
    client's address); else the dashboard's session cookie, whose writes
    (``write=True``) must come from this server's origin with the session's
    XSRF token (``X-Xsrftoken`` header or ``_xsrf`` argument).

    Parameters
    ----------
    handler : tornado.web.RequestHandler
    server : ServerConfig
    write : bool
        The request changes something.

    Returns
    -------
    Principal or None
        ``None``: no credentials, or wrong, revoked or expired ones (answer 401).
        A read-only principal is returned as such: refuse its writes (403).

    Raises
    ------
    TooManyLogins
        429: this address failed to log in too often.
    tornado.web.HTTPError
        403 for a session's write without its origin or XSRF token.
    """
    check_host(handler.request, server.hosts)
    header = handler.request.headers.get("Authorization")
    if header is not None:
        scheme, _, key = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        return await log_in_with(handler, server, key.strip())
    session = read_session(handler, server.sessions)
    if session is None:
        return None
    if write:
        check_xsrf(handler, server, session)
    return await principal_for_session(server, session)
