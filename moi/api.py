"""The JSON API of ``moi serve``, under ``/api/v1/`` (Flower's REST API, roJob's endpoint).

Handlers are thin: parse, check whose node it is, call one function of the
core or the service, write JSON.  Every request but ``health``,
``openapi.json`` and the status callback is authenticated by
:func:`moi.webauth.authenticate` (``Authorization: Bearer KEY``, or the
dashboard's cookie plus its XSRF token).  Errors are ``{"error": {"message":
...}}`` with 400 (bad input), 401 (no or unknown key), 403 (read-only), 404
(unknown id, and another user's id alike), 409 (already finished), 413 (body
over :data:`MAX_BODY` bytes) and 429 (too many failed logins).

A user's jobs are listed newest first a page at a time (:mod:`moi.listing`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado import httputil

from moi import connection, job, keys, listing, logs, nodes, runtime, webauth
from moi.astore import AsyncStore
from moi.errors import ClusterUnavailableError, InvalidIdError, MoiError, UnknownIdError
from moi.status import Status, is_terminal
from moi.store import decode, text

if TYPE_CHECKING:
    from moi.webauth import Principal, ServerConfig

#: Where the API lives.
PREFIX = "/api/v1"
#: Largest request body accepted (bytes).
MAX_BODY = 1 << 20
#: Longest ``?wait=`` (seconds).
MAX_WAIT = 3600.0
#: Fields a ``POST /jobs`` body may hold.
SUBMIT_FIELDS = frozenset(
    {"type", "environ", "template", "params", "cmd", "cmd_type", "name", "parent", "context"}
    | {"pending", "inputs"}
)
#: Most ``inputs`` of one bulk submission (a sweep of ``cmd`` over them).
MAX_INPUTS = 10_000
_ID = r"([A-Za-z0-9_.-]{1,128})"
#: What ``/nodes`` shows for a job of another user.
OTHERS_JOB = "another user's job"

_stores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncStore] = (
    weakref.WeakKeyDictionary()
)


def astore() -> AsyncStore:
    """The job store of the running event loop, on ``redis.asyncio``."""
    loop = asyncio.get_running_loop()
    found = _stores.get(loop)
    if found is None:
        client = connection.async_client(runtime.redis_url())
        found = _stores[loop] = AsyncStore(client, runtime.settings().key_timeout)
    return found


#: Group id of each user seen (a user's group never changes), at most :data:`MAX_USERS`.
_groups: dict[str, str] = {}
MAX_USERS = 100_000


async def user_group(user: str) -> str:
    """The group id of ``user``, made on first use (remembered: it never changes)."""
    group = _groups.get(user)
    if group is None:
        group = await astore().user_group(user)
        if len(_groups) >= MAX_USERS:
            _groups.clear()
        _groups[user] = group
    return group


class _Batches:
    """Submissions waiting for :data:`moi.job.submitter`, handed over a batch at a time.

    Many requests submitting at once cost one thread hand-over per batch
    instead of one per job.
    """

    def __init__(self) -> None:
        self.waiting: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self.draining = False

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)`` on the submitting thread, with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self.waiting.append((func, args, done))
        if not self.draining:
            self.draining = True
            task = loop.create_task(self._drain())
            _draining.add(task)
            task.add_done_callback(_draining.discard)
        return await done

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                try:
                    outcomes = await loop.run_in_executor(job.submitter, _run_all, batch)
                except Exception as exc:  # noqa: BLE001 -- no thread to run on: each request hears
                    outcomes = [(False, exc)] * len(batch)
                for (_, _, done), (ok, value) in zip(batch, outcomes, strict=True):
                    if done.done():
                        continue
                    if ok:
                        done.set_result(value)
                    else:
                        done.set_exception(value)
        finally:
            self.draining = False


def _run_all(
    batch: list[tuple[Callable[..., Any], tuple[Any, ...], Any]],
) -> list[tuple[bool, Any]]:
    """Run each call of ``batch``; ``(True, result)`` or ``(False, exception)`` each."""
    outcomes: list[tuple[bool, Any]] = []
    for func, args, _ in batch:
        try:
            outcomes.append((True, func(*args)))
        except Exception as exc:  # noqa: BLE001 -- handed back to its own request
            outcomes.append((False, exc))
    return outcomes


_batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batches] = (
    weakref.WeakKeyDictionary()
)
#: Drain tasks running (kept referenced until they end).
_draining: set[asyncio.Task[None]] = set()


class ApiError(tornado.web.HTTPError):
    """An API error: ``status`` and the message the client reads."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, "%s", message)
        self.message = message


def _status_of(exc: MoiError) -> int:
    """The HTTP status of a moi error."""
    from moi import manager

    if isinstance(exc, UnknownIdError | InvalidIdError):
        return 404
    if isinstance(exc, ClusterUnavailableError):
        return 503
    if isinstance(exc, manager.JobFinishedError):
        return 409
    if isinstance(exc, manager.CallbackSecretError):
        return 403
    return 400


@tornado.web.stream_request_body
class ApiHandler(tornado.web.RequestHandler):
    """JSON answers and errors, body limit, Host check and authentication for every route.

    The body is streamed in: one announced over :data:`MAX_BODY` is refused
    (413) before any of it is read, one sent in chunks is cut off at it.
    """

    #: Whether the route needs credentials.
    authenticated = True

    def initialize(self, server: ServerConfig) -> None:
        self.server = server
        self.principal: Principal | None = None
        self._body = bytearray()

    def data_received(self, chunk: bytes) -> None:
        self._body += chunk

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def check_xsrf_cookie(self) -> None:
        """Checked in :meth:`prepare` by ``authenticate`` (cookie requests only)."""

    async def prepare(self) -> None:
        webauth.check_host(self.request, self.server.hosts)
        length = self.request.headers.get("Content-Length", "0")
        if not length.isdigit():
            raise ApiError(400, "Content-Length must be a number of bytes")
        if int(length) > MAX_BODY:
            raise ApiError(413, f"the body is over {MAX_BODY} bytes")
        self.request.connection.set_max_body_size(MAX_BODY)  # type: ignore[union-attr]
        if self.authenticated:
            write = self.request.method not in ("GET", "HEAD")
            self.principal = await webauth.authenticate(self, self.server, write=write)
            if self.principal is None:
                raise ApiError(401, "no or unknown API key: send Authorization: Bearer KEY")
            if write and self.principal.read_only:
                raise ApiError(403, "read-only: this key or server may not change anything")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ApiError):
            message = error.message
        elif isinstance(error, tornado.web.HTTPError) and error.log_message:
            message = error.log_message % error.args if error.args else error.log_message
        else:
            message = self._reason
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="moi"')
        if isinstance(error, webauth.TooManyLogins):
            self.set_header("Retry-After", str(error.retry_after))
        self.finish({"error": {"message": message}})

    def send(self, data: Any, status: int = 200) -> None:
        """Answer ``data`` as JSON."""
        self.set_status(status)
        self.finish(json.dumps(data))

    async def call(self, func: Callable[..., Any], *args: Any, submit: bool = False) -> Any:
        """``func(*args)`` off the loop (on the submit thread with ``submit``), errors mapped."""
        try:
            if submit:
                batches = _batches.setdefault(asyncio.get_running_loop(), _Batches())
                return await batches.run(func, *args)
            return await asyncio.to_thread(func, *args)
        except MoiError as exc:
            raise ApiError(_status_of(exc), str(exc)) from None

    def body(self) -> dict[str, Any]:
        """The request's JSON object (400 when it is not one)."""
        try:
            value = json.loads(bytes(self._body) or b"{}")
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ApiError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ApiError(400, "the body must be a JSON object")
        return value

    # -- whose node ----------------------------------------------------------------------
    async def user(self) -> str:
        """Whose jobs: the key's user, or ``?user=`` for an admin."""
        assert self.principal is not None
        other = self.get_query_argument("user", None)
        if other is None or other == self.principal.user:
            return self.principal.user
        if not self.principal.admin:
            raise ApiError(403, "only an admin key may name another user")
        # user-id-map also maps group ids back to names: a uuid names no user
        if keys.is_uuid(other) or await astore().r.hget(keys.USER_ID_MAP, other) is None:
            raise ApiError(404, f"no user {other!r}")  # (and none is made by a look)
        return other

    async def node(self, node_id: str, kind: str = "job") -> dict[str, Any]:
        """The info of ``node_id`` if the caller may see it; 404 otherwise (whoever owns it)."""
        assert self.principal is not None
        store = astore()
        info = decode(await store.r.get(keys.info(node_id))) if _is_id(node_id) else None
        if info is None or info.get("type") != kind:
            raise ApiError(404, f"no {kind} {node_id}")
        if self.principal.admin:
            return info
        group = await user_group(self.principal.user)
        if node_id != group and not await store.in_tree(info, group):
            raise ApiError(404, f"no {kind} {node_id}")
        return info


def _is_id(node_id: str) -> bool:
    try:
        keys.check_node_id(node_id)
    except InvalidIdError:
        return False
    return True


# -- submitting ---------------------------------------------------------------------------
def _string(body: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{name} must be a non-empty string")
    return value


def _object(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name, {})
    if not isinstance(value, dict):
        raise ApiError(400, f"{name} must be a JSON object")
    return value


def submission(body: dict[str, Any]) -> dict[str, Any]:
    """A ``POST /jobs`` body checked: its kind (``type``, ``template`` or ``cmd``) and fields.

    Raises :class:`ApiError` (400) for unknown fields, wrong types, none or
    several kinds, an unknown job type or template, a Python command that
    does not compile.
    """
    unknown = sorted(set(body) - SUBMIT_FIELDS)
    if unknown:
        raise ApiError(
            400, f"unknown field(s) {', '.join(unknown)}; known: {sorted(SUBMIT_FIELDS)}"
        )
    kinds = [k for k in ("type", "template", "cmd") if k in body]
    if len(kinds) != 1:
        raise ApiError(400, "give exactly one of type (with environ), template (with params), cmd")
    if "inputs" in body and kinds[0] != "cmd":
        raise ApiError(400, "inputs go with cmd: a sweep runs one command over each input")
    spec: dict[str, Any] = {"kind": kinds[0]}
    for name in ("name", "parent", "context"):
        spec[name] = _string(body, name)
    if not isinstance(body.get("pending", False), bool):
        raise ApiError(400, "pending must be true or false")
    spec["pending"] = body.get("pending", False)
    if spec["pending"] and kinds[0] != "template":
        raise ApiError(400, "pending goes with template: only a template job can wait to be run")
    try:
        if kinds[0] == "type":
            from moi import types

            spec["type"] = _string(body, "type", required=True)
            spec["environ"] = types.check(_object(body, "environ"), spec["type"])
        elif kinds[0] == "template":
            from moi import manager

            spec["template"] = _string(body, "template", required=True)
            spec["params"] = _object(body, "params")
            if spec["template"] not in manager.templates():
                known = ", ".join(manager.templates()) or "none"
                raise ApiError(400, f"unknown template {spec['template']!r}; known: {known}")
        else:
            spec["cmd"] = _string(body, "cmd", required=True)
            spec["cmd_type"] = body.get("cmd_type", "python")
            if spec["cmd_type"] not in ("python", "system"):
                raise ApiError(400, f"cmd_type must be python or system, not {spec['cmd_type']!r}")
            if spec["cmd_type"] == "python":
                job.check_python(spec["cmd"])
            if "inputs" in body:
                spec["inputs"] = _inputs(body["inputs"])
    except MoiError as exc:
        raise ApiError(400, str(exc)) from None
    return spec


def _inputs(value: Any) -> list[str]:
    """A bulk submission's ``inputs``: a non-empty list of strings, at most :data:`MAX_INPUTS`."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ApiError(400, "inputs must be a list of strings (one job each)")
    if not value:
        raise ApiError(400, "inputs is empty: nothing to submit")
    if len(value) > MAX_INPUTS:
        raise ApiError(400, f"at most {MAX_INPUTS:,} inputs in one request, not {len(value):,}")
    return value


def run_sweep(spec: dict[str, Any], user: str, parent: str) -> list[str]:
    """Submit ``spec["cmd"]`` once per input with :func:`moi.job.submit_many`; the job ids.

    As ``moi submit --many``: Python sees the input as ``x``; a shell command
    gets it in place of ``{}`` and as ``$MOI_INPUT``.  Runs on :data:`moi.job.submitter`.
    """
    each = job.python_each if spec["cmd_type"] == "python" else job.system_each
    name = spec["name"] or f"{user}-cmd-api"
    func = functools.partial(each, cmd=spec["cmd"])
    return job.submit_many(spec["context"], parent, name, func, spec["inputs"])[0]


def run_submission(spec: dict[str, Any], user: str, parent: str, retry_of: str | None) -> str:
    """Submit a checked :func:`submission` for ``user`` under ``parent``; the new job's id.

    Runs on :data:`moi.job.submitter`.
    """
    name = spec["name"] or f"{user}-{spec.get('type') or spec.get('template') or 'cmd'}-api"
    if spec["kind"] == "template":
        from moi import manager

        params = dict(spec["params"])
        made = manager.JobManager().create_job(
            name, user, spec["template"], context=spec["context"], **params
        )
        if not spec["pending"]:
            made.execute()
        job_id = made.id
    elif spec["kind"] == "type":
        job_id = job.submit_type(spec["context"], parent, name, spec["type"], spec["environ"])[0]
    else:
        func = job.python_call if spec["cmd_type"] == "python" else job.system_call
        job_id = job.submit(spec["context"], parent, name, None, func, spec["cmd"])[0]
    if retry_of is not None:
        runtime.store().update(job_id, {"retry_of": retry_of})
    return job_id


def stored_input(spec: dict[str, Any]) -> str:
    """What a retry needs of a submission, as JSON."""
    names = ("kind", "type", "environ", "cmd", "cmd_type", "context")
    kept: dict[str, Any] = {k: spec[k] for k in names if k in spec}
    if spec["kind"] == "template":
        kept.update(template=spec["template"], params=spec["params"])
    return json.dumps(kept)


async def wait_for_end(job_id: str, seconds: float) -> dict[str, Any]:
    """The job's info once it has ended, or as it is after ``seconds``."""
    store = astore()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    async with store.r.pubsub() as sub:
        await sub.subscribe(keys.pubsub(job_id))
        while True:
            info = decode(await store.r.get(keys.info(job_id)))
            if info is None:
                raise ApiError(404, f"no job {job_id}")
            left = deadline - loop.time()
            if is_terminal(info.get("status")) or left <= 0:
                return info
            await sub.get_message(ignore_subscribe_messages=True, timeout=min(left, 1.0))


class SubmittingHandler(ApiHandler):
    """What submitting routes share: keeping a job's input, answering with its info."""

    async def answer_submitted(self, job_id: str, spec: dict[str, Any], wait: float | None) -> None:
        """Keep what a retry needs; answer 201 with the new job's info.

        With ``wait``: 200 with its final info once it ended, or 202 with it as
        it is after ``wait`` seconds.
        """
        store = astore()
        async with store.r.pipeline(transaction=False) as pipe:
            pipe.set(keys.job_input(job_id), stored_input(spec), ex=store.key_timeout)
            pipe.get(keys.info(job_id))
            _, raw = await pipe.execute()
        if wait is None:
            self.send(decode(raw), 201)
            return
        info = await wait_for_end(job_id, wait)
        self.send(info, 200 if is_terminal(info.get("status")) else 202)


class JobsHandler(SubmittingHandler):
    """``/jobs``: submit (POST) and list (GET) the user's jobs."""

    async def post(self) -> None:
        spec = submission(self.body())
        wait = _number(self.get_query_argument("wait", None), "wait", 0, MAX_WAIT)
        user = await self.user()
        parent = spec["parent"]
        if parent is not None:
            await self.node(parent, "group")
        else:
            parent = await user_group(user)
        if "inputs" in spec:
            if wait is not None:
                raise ApiError(400, "wait does not go with inputs: wait on each job (GET ?wait=)")
            ids = await self.call(run_sweep, spec, user, parent, submit=True)
            self.send({"jobs": await astore().get_many(ids)}, 201)
            return
        job_id = await self.call(run_submission, spec, user, parent, None, submit=True)
        await self.answer_submitted(job_id, spec, wait)

    async def get(self) -> None:
        raw_limit = self.get_query_argument("limit", "100")
        limit = int(_number(raw_limit, "limit", 1, listing.MAX_LIMIT) or 1)
        since = _since(self.get_query_argument("since", None))
        cursor = _cursor(self.get_query_argument("cursor", None))
        wanted = {
            "status": self.get_query_argument("status", None),
            "name": self.get_query_argument("name", None),
            "type": self.get_query_argument("type", None),
        }
        store = astore()
        group = await user_group(await self.user())
        jobs, after = await listing.page(store, group, limit, cursor, since, wanted)
        self.send({"jobs": jobs, "next": after})


class JobHandler(ApiHandler):
    """``/jobs/{id}``: one job (GET), detach it from its tree (DELETE)."""

    async def get(self, job_id: str) -> None:
        info = await self.node(job_id)
        wait = _number(self.get_query_argument("wait", None), "wait", 0, MAX_WAIT)
        self.send(info if wait is None else await wait_for_end(job_id, wait))

    async def delete(self, job_id: str) -> None:
        info = await self.node(job_id)
        store = astore()
        parent = info.get("parent")
        if isinstance(parent, str):
            await store.detach(parent, job_id)
        self.send({"removed": job_id})


class LogHandler(ApiHandler):
    """``/jobs/{id}/log``: the job's kept output lines from line ``from`` on (:mod:`moi.logs`)."""

    async def get(self, job_id: str) -> None:
        await self.node(job_id)
        start = _number(self.get_query_argument("from", None), "from", 0, 2**53) or 0
        limit = _number(self.get_query_argument("limit", None), "limit", 1, logs.MAX_LINES)
        page = await logs.read_lines(
            astore().r, job_id, int(start), None if limit is None else int(limit)
        )
        self.send(dict(page))


class CancelHandler(ApiHandler):
    """``/jobs/{id}/cancel``: a queued job never runs, a running one is interrupted."""

    async def post(self, job_id: str) -> None:
        await self.node(job_id)
        outcome = await astore().cancel(job_id)
        if outcome.startswith("finished:"):
            raise ApiError(409, f"job {job_id} has already finished ({outcome.split(':', 1)[1]})")
        info = decode(await astore().r.get(keys.info(job_id)))
        self.send({"outcome": outcome, "job": info})


class RetryHandler(SubmittingHandler):
    """``/jobs/{id}/retry``: a new job with the same type (or command) and input."""

    async def post(self, job_id: str) -> None:
        info = await self.node(job_id)
        store = astore()
        raw = await store.r.get(keys.job_input(job_id))
        spec = json.loads(raw) if raw else _input_of(info)
        if spec is None:
            raise ApiError(
                400,
                f"job {job_id}'s input is not known (it was not submitted through the API); "
                "submit it again",
            )
        spec.update(name=info.get("name"), parent=None, pending=False)
        spec.setdefault("context", info.get("context"))
        parent = info.get("parent")
        if not isinstance(parent, str):
            raise ApiError(400, f"job {job_id} has no parent group to retry it in")
        owner = await self.owner_of(info)
        wait = _number(self.get_query_argument("wait", None), "wait", 0, MAX_WAIT)
        new_id = await self.call(run_submission, spec, owner, parent, job_id, submit=True)
        await self.answer_submitted(new_id, spec, wait)

    async def owner_of(self, info: dict[str, Any]) -> str:
        """The user whose tree ``info`` is in (the key's user unless an admin acts)."""
        assert self.principal is not None
        if not self.principal.admin:
            return self.principal.user
        node = info
        store = astore()
        for _ in range(1000):
            parent = node.get("parent")
            found = decode(await store.r.get(keys.info(parent))) if parent else None
            if found is None:
                break
            node = found
        user = await store.r.hget(keys.USER_ID_MAP, node["id"])
        return text(user) if user is not None else self.principal.user


def _input_of(info: dict[str, Any]) -> dict[str, Any] | None:
    """A retry's input from the info object itself (a template job keeps its environ)."""
    if info.get("job_type") and isinstance(info.get("environ"), dict):
        return {"kind": "type", "type": info["job_type"], "environ": info["environ"]}
    return None


class RunHandler(ApiHandler):
    """``/jobs/{id}/run``: run a ``Pending`` job (made from a template)."""

    async def post(self, job_id: str) -> None:
        info = await self.node(job_id)
        if info.get("status") != Status.PENDING:
            raise ApiError(409, f"job {job_id} is {info.get('status')}, not Pending: it runs once")
        from moi import manager

        def run() -> None:
            manager.JobManager().get_job(job_id).execute()

        await self.call(run, submit=True)
        self.send(decode(await astore().r.get(keys.info(job_id))))


class GroupHandler(ApiHandler):
    """``/groups/{id}``: a group and every node under it."""

    async def get(self, group_id: str) -> None:
        await self.node(group_id, "group")
        self.send({"nodes": await astore().tree(group_id)})


class TypesHandler(ApiHandler):
    """``/types``: the job types known to the server."""

    async def get(self) -> None:
        from moi import types

        plugins = await self.call(types.job_types)
        self.send(
            [
                {"name": p.name, "source": p.source, "description": p.description, "error": p.error}
                for p in plugins.values()
            ]
        )


class TemplatesHandler(ApiHandler):
    """``/templates``: the job templates."""

    async def get(self) -> None:
        from moi import manager

        found = await self.call(manager.templates)
        self.send(
            [
                {
                    "name": t.name,
                    "job_type": t.job_type,
                    "params": t.params,
                    "description": t.description,
                }
                for t in found.values()
            ]
        )


class NodesHandler(ApiHandler):
    """``/nodes``: per context, the controller and each engine's host, pid, job and queue."""

    async def get(self) -> None:
        found = await self.call(nodes.listing)
        assert self.principal is not None
        if not self.principal.admin:  # another user's job is shown, never named
            store = astore()
            group = await user_group(self.principal.user)
            for engine in (e for context in found for e in context["engines"]):
                running = engine["running"]
                info = decode(await store.r.get(keys.info(running["id"]))) if running else None
                if running and (info is None or not await store.in_tree(info, group)):
                    engine["running"] = {"id": None, "name": OTHERS_JOB}
        self.send({"contexts": found})


class HealthHandler(ApiHandler):
    """``/health``: whether Redis and each context answer (no credentials, no details)."""

    authenticated = False

    async def get(self) -> None:
        found = await self.call(nodes.health)
        shown = {
            "ok": found["ok"],
            "redis": "ok" if found["redis"] else "not ok",
            "contexts": {n: "ok" if ok else "not ok" for n, ok in found["contexts"].items()},
        }
        self.send(shown, 200 if found["ok"] else 503)


class OpenApiHandler(ApiHandler):
    """``/openapi.json``: the OpenAPI 3 document of this API."""

    authenticated = False

    def get(self) -> None:
        self.send(openapi())


class CallbackHandler(ApiHandler):
    """``/callback/{id}``: an outside process reports a job's status with its secret."""

    authenticated = False

    def _request_summary(self) -> str:
        """What the access log shows: never the query, which holds the job's secret."""
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"

    async def get(self, job_id: str) -> None:
        await self.report(job_id)

    async def post(self, job_id: str) -> None:
        await self.report(job_id)

    def field(self, name: str) -> str | None:
        """A field of a JSON body, the form or the query."""
        kind = self.request.headers.get("Content-Type", "")
        if kind.startswith("application/json"):
            value = self.body().get(name)
            if value is not None:
                return value if isinstance(value, str) else json.dumps(value)
        form: dict[str, list[bytes]] = {}
        httputil.parse_body_arguments(kind, bytes(self._body), form, {})
        if form.get(name):
            return form[name][-1].decode("utf-8", "replace")
        return self.get_query_argument(name, None)

    async def report(self, job_id: str) -> None:
        from moi import manager

        secret, status = self.field("secret"), self.field("status")
        if not secret or not status:
            raise ApiError(400, "give secret and status")
        raw = self.field("result")
        result: Any = raw
        if raw is not None:
            try:
                result = json.loads(raw)
            except ValueError:
                result = raw
        try:
            await asyncio.to_thread(
                manager.JobManager().apply_callback, job_id, secret, status, result
            )
        except UnknownIdError:  # as for a wrong secret: no id is confirmed to exist
            raise ApiError(403, "wrong secret for this job") from None
        except MoiError as exc:
            raise ApiError(_status_of(exc), str(exc)) from None
        self.send({"success": True})


# -- query arguments ----------------------------------------------------------------------
def _number(raw: str | None, name: str, low: float, high: float) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a number, not {raw!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise ApiError(400, f"{name} must be between {low:g} and {high:g}")
    return value


def _since(raw: str | None) -> float | None:
    """``since``: epoch seconds, or an ISO date (local time when it has no zone)."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            value = datetime.fromisoformat(raw).timestamp()
        except (ValueError, OverflowError, OSError):
            value = math.nan
    if not math.isfinite(value):
        raise ApiError(400, f"since must be epoch seconds or an ISO date, not {raw!r}")
    return value


def _cursor(raw: str | None) -> listing.Entry | None:
    """A ``next`` cursor: ``<creation epoch>~<job id>`` of the last job returned."""
    if raw is None:
        return None
    score, _, node_id = raw.partition("~")
    try:
        value = float(score)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not _is_id(node_id):
        raise ApiError(400, f"malformed cursor {raw!r}: pass on the next of a previous page")
    return value, node_id


# -- routes and their document ----------------------------------------------------------
#: Every route: (path as OpenAPI writes it, handler).
ROUTES: list[tuple[str, type[ApiHandler]]] = [
    ("/jobs", JobsHandler),
    ("/jobs/{job_id}", JobHandler),
    ("/jobs/{job_id}/log", LogHandler),
    ("/jobs/{job_id}/cancel", CancelHandler),
    ("/jobs/{job_id}/retry", RetryHandler),
    ("/jobs/{job_id}/run", RunHandler),
    ("/groups/{group_id}", GroupHandler),
    ("/types", TypesHandler),
    ("/templates", TemplatesHandler),
    ("/nodes", NodesHandler),
    ("/health", HealthHandler),
    ("/openapi.json", OpenApiHandler),
    ("/callback/{job_id}", CallbackHandler),
]


def route_pattern(path: str) -> str:
    """The Tornado pattern of an OpenAPI path (each ``{param}`` an id)."""
    return PREFIX + re.sub(r"\{\w+\}", _ID, re.escape(path).replace(r"\{", "{").replace(r"\}", "}"))


def handlers(server: ServerConfig) -> list[tornado.web.URLSpec]:
    """The API's routes, to add to :func:`moi.web.make_app`'s.

    Parameters
    ----------
    server : ServerConfig
        The server's configuration (hosts, sessions, read-only, keys).

    Returns
    -------
    list of tornado.web.URLSpec
    """
    return [
        tornado.web.url(route_pattern(path), handler, {"server": server})
        for path, handler in ROUTES
    ]


def _op(
    summary: str,
    responses: str,
    body: str | None = None,
    query: tuple[str, ...] = (),
    key: bool = True,
    answer: str | None = None,
) -> dict[str, Any]:
    """One OpenAPI operation: its answers (``"200 404"``; 401 and 429 added with ``key``).

    ``answer`` names the schema of the 200/201/202 answers (a job's ``Info``, say).
    """
    codes = [int(code) for code in responses.split()] + ([401, 429] if key else [])
    good = {"$ref": f"#/components/schemas/{answer}"} if answer else None
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            str(code): {
                "description": _DESCRIPTIONS[code],
                "content": _json(good if code < 300 else _SCHEMA_OF.get(code)),
            }
            for code in codes
        },
        "parameters": [
            {"name": q, "in": "query", "required": False, "schema": _QUERY[q]} for q in query
        ],
    }
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": _json({"$ref": f"#/components/schemas/{body}"}),
        }
    if key:
        op["security"] = [{"bearer": []}]
    return op


def _json(schema: dict[str, Any] | None) -> dict[str, Any]:
    return {"application/json": {"schema": schema or {"type": "object"}}}


_DESCRIPTIONS = {
    200: "OK",
    201: "Created (the job's info object)",
    202: "Still running after wait seconds (the job's current info object)",
    400: "Bad input",
    401: "No or unknown API key",
    403: "Read-only key or server; wrong callback secret",
    404: "No such id (or not yours)",
    409: "Already finished / not Pending",
    413: "Body too large",
    429: "Too many failed logins from this address",
    503: "Not ok (health); no cluster reachable for the context (submit)",
}
_ERROR = {"$ref": "#/components/schemas/Error"}
_SCHEMA_OF: dict[int, dict[str, Any]] = {
    code: _ERROR for code in (400, 401, 403, 404, 409, 413, 429)
}
_QUERY: dict[str, dict[str, Any]] = {
    "wait": {"type": "number", "minimum": 0, "maximum": MAX_WAIT},
    "limit": {"type": "integer", "minimum": 1, "maximum": listing.MAX_LIMIT, "default": 100},
    "cursor": {"type": "string"},
    "status": {"type": "string"},
    "name": {"type": "string"},
    "type": {"type": "string"},
    "since": {"type": "string", "description": "epoch seconds or an ISO date"},
    "user": {"type": "string", "description": "another user's jobs (admin keys only)"},
    "secret": {"type": "string"},
    "from": {"type": "integer", "minimum": 0, "default": 0, "description": "first line number"},
    "result": {"type": "string", "description": "JSON or text"},
}

#: Each route's operations: method -> operation.
_OPERATIONS: dict[str, dict[str, Any]] = {
    "/jobs": {
        "get": _op(
            "List your jobs, newest first",
            "200 400 403",
            query=("limit", "cursor", "status", "name", "type", "since", "user"),
            answer="Page",
        ),
        "post": _op(
            "Submit a job (type + environ, template + params, or cmd; cmd + inputs: a sweep)",
            "201 200 202 400 403 404 413 503",
            body="Submission",
            query=("wait", "user"),
            answer="Info",
        ),
    },
    "/jobs/{job_id}": {
        "get": _op(
            "A job's info object (with wait: once it ends)",
            "200 404",
            query=("wait",),
            answer="Info",
        ),
        "delete": _op("Detach a job from its tree", "200 403 404"),
    },
    "/jobs/{job_id}/log": {
        "get": _op(
            "A job's kept output lines from line `from` on; ask for `next` to go on",
            "200 400 404",
            query=("from", "limit"),
            answer="Log",
        )
    },
    "/jobs/{job_id}/cancel": {"post": _op("Cancel a job", "200 403 404 409")},
    "/jobs/{job_id}/retry": {
        "post": _op(
            "Run a job again with its input",
            "201 200 202 400 403 404",
            query=("wait",),
            answer="Info",
        )
    },
    "/jobs/{job_id}/run": {"post": _op("Run a Pending job", "200 403 404 409", answer="Info")},
    "/groups/{group_id}": {"get": _op("A group and every node under it", "200 404")},
    "/types": {"get": _op("The job types", "200")},
    "/templates": {"get": _op("The job templates", "200")},
    "/nodes": {"get": _op("Engines per context", "200")},
    "/health": {"get": _op("Whether Redis and each context answer", "200 503", key=False)},
    "/openapi.json": {"get": _op("This document", "200", key=False)},
    "/callback/{job_id}": {
        method: _op(
            "Report a job's status (with its secret)",
            "200 400 403 409",
            query=("secret", "status", "result"),
            key=False,
        )
        for method in ("get", "post")
    },
}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 document of the routes of :func:`handlers`."""
    paths: dict[str, Any] = {}
    for path, ops in _OPERATIONS.items():
        params = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in re.findall(r"\{(\w+)\}", path)
        ]
        paths[PREFIX + path] = {
            method: {**op, "parameters": [*params, *op["parameters"]]} for method, op in ops.items()
        }
    return {
        "openapi": "3.0.3",
        "info": {"title": "moi job service", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {"type": "object", "properties": {"message": {"type": "string"}}}
                    },
                },
                "Info": {
                    "type": "object",
                    "description": "A job's info object (the Redis protocol's), plus any "
                    "optional fields (job_type, template, retry_of, engine, ...)",
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "type": {"type": "string", "enum": ["job", "group"]},
                        "status": {"type": "string", "nullable": True},
                        "parent": {"type": "string", "nullable": True},
                        "context": {"type": "string"},
                        "result": {"nullable": True},
                        "date_created": {"type": "string"},
                        "date_start": {"type": "string", "nullable": True},
                        "date_end": {"type": "string", "nullable": True},
                        "job_type": {"type": "string"},
                        "retry_of": {"type": "string"},
                    },
                    "required": ["id", "name", "type", "status"],
                },
                "Page": {
                    "type": "object",
                    "properties": {
                        "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Info"}},
                        "next": {"type": "string", "nullable": True},
                    },
                },
                "Log": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "start": {"type": "integer", "description": "first line returned"},
                        "lines": {"type": "array", "items": {"type": "string"}},
                        "next": {"type": "integer", "description": "the line to ask for next"},
                        "total": {"type": "integer", "description": "lines the job wrote"},
                    },
                    "required": ["id", "start", "lines", "next", "total"],
                },
                "Submission": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"},
                        "environ": {"type": "object"},
                        "template": {"type": "string"},
                        "params": {"type": "object"},
                        "pending": {"type": "boolean"},
                        "cmd": {"type": "string"},
                        "cmd_type": {"type": "string", "enum": ["python", "system"]},
                        "inputs": {
                            "type": "array",
                            "items": {"type": "string"},
                            "maxItems": MAX_INPUTS,
                            "description": "run cmd once per input (x / {} / $MOI_INPUT); "
                            "the answer is {jobs: [Info]}",
                        },
                        "name": {"type": "string"},
                        "parent": {"type": "string"},
                        "context": {"type": "string"},
                    },
                },
            },
        },
    }
