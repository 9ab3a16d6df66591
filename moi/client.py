"""A small Python client of ``moi serve``'s JSON API (the standard library only).

>>> from moi.client import Client
>>> moi = Client("http://127.0.0.1:8886", key)          # doctest: +SKIP
>>> info = moi.submit(type="ping", environ={"ping": 1})  # doctest: +SKIP
>>> moi.wait(info["id"])["result"]["pong"]               # doctest: +SKIP
1

Errors come back as moi's own: :class:`~moi.errors.UnknownIdError` (404),
:class:`AuthError` (401/403), :class:`JobFinishedError` (409),
:class:`~moi.errors.MoiError` for the rest, each with the server's message.
"""

from __future__ import annotations

import builtins
import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from moi.errors import MoiError, UnknownIdError
from moi.status import is_terminal

__all__ = ["Client", "AuthError", "JobFinishedError", "TooManyRequestsError"]


class AuthError(MoiError):
    """401 (no or unknown key) or 403 (read-only, not allowed)."""


class JobFinishedError(MoiError):
    """409: the job has already finished (or is not Pending)."""


class TooManyRequestsError(MoiError):
    """429: this address failed to log in too often; wait ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


_ERRORS: dict[int, type[MoiError]] = {
    401: AuthError,
    403: AuthError,
    404: UnknownIdError,
    409: JobFinishedError,
}


class Client:
    """The JSON API of a ``moi serve`` at ``url``, as the user of API key ``key``.

    Parameters
    ----------
    url : str
        Where the server listens, e.g. ``http://127.0.0.1:8886`` (or
        ``https://...`` behind a TLS proxy).
    key : str
        An API key (``moi keys create``).
    timeout : float
        Seconds each request may take (``wait`` adds its own).
    """

    def __init__(self, url: str, key: str, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise MoiError(f"the server URL must be http(s)://host:port, not {url!r}")
        self.url = url.rstrip("/")
        self._key = key
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Client({self.url!r})"  # never the key

    # -- the verbs ------------------------------------------------------------------------
    def submit(
        self,
        type: str | None = None,
        environ: dict[str, Any] | None = None,
        *,
        template: str | None = None,
        params: dict[str, Any] | None = None,
        cmd: str | None = None,
        cmd_type: str = "python",
        name: str | None = None,
        parent: str | None = None,
        context: str | None = None,
        pending: bool = False,
        wait: float | None = None,
    ) -> dict[str, Any]:
        """Submit a typed job, a template's job or a command; return its info object.

        With ``wait`` (seconds) the answer comes when the job ends, or after
        ``wait`` seconds with the job as it is then.
        """
        body: dict[str, Any] = {}
        if type is not None:
            body.update(type=type, environ=environ or {})
        if template is not None:
            body.update(template=template, params=params or {})
            if pending:
                body["pending"] = True
        if cmd is not None:
            body.update(cmd=cmd, cmd_type=cmd_type)
        for field, value in (("name", name), ("parent", parent), ("context", context)):
            if value is not None:
                body[field] = value
        query = {"wait": wait} if wait is not None else {}
        return self._call("POST", "/jobs", body, query, extra=wait or 0)

    def get(self, job_id: str) -> dict[str, Any]:
        """A job's info object."""
        return self._call("GET", f"/jobs/{quote(job_id, safe='')}")

    def list(
        self,
        status: str | None = None,
        name: str | None = None,
        type: str | None = None,
        since: float | str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """A page of your jobs, newest first: ``{"jobs": [...], "next": cursor or None}``."""
        query = {"status": status, "name": name, "type": type, "since": since, "limit": limit}
        query.update(cursor=cursor, user=user)
        return self._call("GET", "/jobs", query={k: v for k, v in query.items() if v is not None})

    def log(self, job_id: str, start: int = 0, limit: int | None = None) -> dict[str, Any]:
        """A job's kept output lines from line ``start`` on.

        Returns ``{"id", "start", "lines", "next", "total"}``; ask again from
        ``next`` for the lines written since.
        """
        query = {"from": start} | ({"limit": limit} if limit is not None else {})
        return self._call("GET", f"/jobs/{quote(job_id, safe='')}/log", query=query)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job: ``{"outcome": "cancelled" | "requested", "job": info}``."""
        return self._call("POST", f"/jobs/{quote(job_id, safe='')}/cancel", {})

    def retry(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        """Run a job again with the same input; the new job's info (``retry_of`` names the old)."""
        query = {"wait": wait} if wait is not None else {}
        return self._call("POST", f"/jobs/{quote(job_id, safe='')}/retry", {}, query, wait or 0)

    def run(self, job_id: str) -> dict[str, Any]:
        """Run a ``Pending`` job."""
        return self._call("POST", f"/jobs/{quote(job_id, safe='')}/run", {})

    def remove(self, job_id: str) -> dict[str, Any]:
        """Detach a job from its tree."""
        return self._call("DELETE", f"/jobs/{quote(job_id, safe='')}")

    def group(self, group_id: str) -> builtins.list[dict[str, Any]]:
        """A group and every node under it."""
        return self._call("GET", f"/groups/{quote(group_id, safe='')}")["nodes"]

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job ends; its final info object.

        Raises
        ------
        TimeoutError
            When ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        path = f"/jobs/{quote(job_id, safe='')}"
        while True:
            left = 30.0 if deadline is None else max(0.0, min(30.0, deadline - time.monotonic()))
            info = self._call("GET", path, query={"wait": left}, extra=left)
            if is_terminal(info.get("status")):
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {info.get('status')} after {timeout} s")

    def nodes(self) -> builtins.list[dict[str, Any]]:
        """Per context: the controller and its engines (host, pid, running job, queue, done)."""
        return self._call("GET", "/nodes")["contexts"]

    def types(self) -> builtins.list[dict[str, Any]]:
        """The job types the server knows."""
        return self._call("GET", "/types")

    def templates(self) -> builtins.list[dict[str, Any]]:
        """The job templates the server knows."""
        return self._call("GET", "/templates")

    def health(self) -> dict[str, Any]:
        """Whether the server's Redis and contexts answer (no key needed)."""
        try:
            return self._call("GET", "/health")
        except MoiError as exc:
            if isinstance(exc.args[-1], dict):
                return exc.args[-1]
            raise

    # -- plumbing -------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
        extra: float = 0,
    ) -> Any:
        url = f"{self.url}/api/v1{path}" + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout + extra) as response:  # noqa: S310 -- http(s) checked in __init__
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise _error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MoiError(f"cannot reach the moi server at {self.url}: {reason}") from None


def _error(exc: urllib.error.HTTPError) -> MoiError:
    """moi's error for an HTTP error answer, with the server's message."""
    raw = exc.read()
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if exc.code == 503 and isinstance(answer, dict) and "ok" in answer:
        return MoiError("the server is not healthy", answer)
    message = (
        answer["error"]["message"]
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict)
        else f"HTTP {exc.code} {exc.reason}"
    )
    if exc.code == 429:
        retry = exc.headers.get("Retry-After")
        return TooManyRequestsError(message, int(retry) if retry and retry.isdigit() else None)
    return _ERRORS.get(exc.code, MoiError)(message)
