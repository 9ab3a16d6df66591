"""Templates, the job manager and status callbacks (the Tethys-style job service).

A *template* names a job type and static parameters.  Templates come from
a TOML file (``MOI_TEMPLATES``, default ``templates.toml`` in moi's config
directory, ``$XDG_CONFIG_HOME/moi``) and from entry points in the group
``moi.templates``; a later source wins on a name clash::

    [square-of-seven]               # the template's name
    job_type = "square"
    description = "7 * 7, the hard way"
    params = { n = 7 }

:class:`JobManager` makes jobs from templates.  :meth:`JobManager.create_job`
saves one in the user's tree with status ``Pending`` (shown live like any
node, nothing runs); :meth:`Job.execute` submits it, with the same id, as a
typed job.  ``list_jobs`` and ``get_job`` given a ``user`` never return
another user's job: a job outside the user's tree is reported as unknown.

A job can be given *status callback* URLs
(:meth:`JobManager.get_job_status_callback_url`) carrying a per-job secret:
an outside process calls them to report its status, and
:meth:`JobManager.apply_callback` applies the report through the same
atomic, guarded update as the engines.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import tomllib

from moi import connection, keys, runtime, types
from moi.context import Context, resolve
from moi.errors import MoiError, UnknownIdError
from moi.status import Status, is_terminal
from moi.store import Guard, Store, now, text

__all__ = [
    "Template",
    "Job",
    "JobManager",
    "CallbackError",
    "CallbackSecretError",
    "JobFinishedError",
    "templates",
    "templates_file",
]

#: Entry-point group of templates: each names a dict (one template) or a callable returning a list.
GROUP = "moi.templates"
#: Longest status text a callback may set.
MAX_STATUS = 200
#: Statuses only moi itself sets: a callback may not set them.
_NOT_FROM_CALLBACKS = frozenset({Status.PENDING.value, Status.QUEUED.value})


class CallbackError(MoiError, ValueError):
    """A status callback with bad input (status missing or malformed); nothing changed."""


class CallbackSecretError(MoiError):
    """A status callback without this job's secret (HTTP 403); nothing changed."""


class JobFinishedError(MoiError):
    """The job has finished (for ``execute``: is not Pending): it is not reopened (409)."""


@dataclass(frozen=True)
class Template:
    """A named job type with static parameters.

    Attributes
    ----------
    name : str
    job_type : str
        The type the job runs (see :mod:`moi.types`).
    params : dict
        Static parameters, the start of the job's environ (the job's own win).
    description : str
    source : str
        Where it came from: the TOML file's path or ``entry point pkg.mod:obj``.
    """

    name: str
    job_type: str
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = ""


def _template(name: Any, spec: Any, source: str) -> Template:
    """A :class:`Template` from a TOML table or an entry point's dict; :class:`MoiError` if bad."""
    if isinstance(spec, Template):
        return spec
    where = f"template {name!r} ({source})"
    if not isinstance(name, str) or not name:
        raise MoiError(f"{where}: a template needs a name")
    if not isinstance(spec, Mapping):
        raise MoiError(f"{where}: expected a table, not {type(spec).__name__}")
    unknown = set(spec) - {"name", "job_type", "params", "description"}
    if unknown:
        raise MoiError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    job_type, params = spec.get("job_type"), spec.get("params", {})
    description = spec.get("description", "")
    if not isinstance(job_type, str) or not job_type:
        raise MoiError(f"{where}: job_type must be a type's name")
    if not isinstance(params, Mapping):
        raise MoiError(f"{where}: params must be a table")
    if not isinstance(description, str):
        raise MoiError(f"{where}: description must be text")
    try:
        params = json.loads(json.dumps(dict(params), allow_nan=False, default=str))
    except ValueError as exc:
        raise MoiError(f"{where}: params must be JSON values: {exc}") from None
    return Template(name, job_type, params, description, source)


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """moi's config directory: ``$XDG_CONFIG_HOME/moi`` (``~/.config/moi`` by default)."""
    env = os.environ if environ is None else environ
    return Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "moi"


def templates_file(environ: Mapping[str, str] | None = None) -> Path:
    """The TOML file templates are read from: ``MOI_TEMPLATES`` or ``templates.toml`` there."""
    env = os.environ if environ is None else environ
    given = env.get("MOI_TEMPLATES")
    return Path(given) if given else config_dir(env) / "templates.toml"


def _from_file(path: Path, required: bool) -> dict[str, Template]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise MoiError(f"MOI_TEMPLATES names {str(path)!r}, which does not exist") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise MoiError(f"cannot read the templates file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise MoiError(f"the templates file {path} is not valid TOML: {exc}") from None
    return {name: _template(name, spec, str(path)) for name, spec in data.items()}


@functools.cache
def _from_entry_points() -> dict[str, Template]:
    found: dict[str, Template] = {}
    for ep in entry_points(group=GROUP):
        source = f"entry point {ep.value}"
        try:
            obj = ep.load()
            specs = obj() if callable(obj) else obj
        except Exception as exc:  # noqa: BLE001 -- a plug-in's error is reported as its own
            raise MoiError(
                f"templates {source}: cannot load it: {type(exc).__name__}: {exc}"
            ) from None
        if isinstance(specs, Mapping):  # one template, named after the entry point
            found[ep.name] = _template(specs.get("name", ep.name), specs, source)
            continue
        if not isinstance(specs, list):
            raise MoiError(
                f"templates {source}: expected a dict or a list, not {type(specs).__name__}"
            )
        for spec in specs:
            name = spec.name if isinstance(spec, Template) else (spec or {}).get("name")
            template = _template(name, spec, source)
            found[template.name] = template
    return found


def templates(environ: Mapping[str, str] | None = None) -> dict[str, Template]:
    """Every template by name: entry points of ``moi.templates``, then the TOML file's.

    Raises
    ------
    MoiError
        A malformed file or template, a plug-in that does not load, or a
        ``MOI_TEMPLATES`` naming a missing file.
    """
    env = os.environ if environ is None else environ
    found = dict(_from_entry_points())
    found.update(_from_file(templates_file(env), required="MOI_TEMPLATES" in env))
    return dict(sorted(found.items()))


def refresh() -> None:
    """Read the entry points again on the next :func:`templates` (after installing a plug-in)."""
    _from_entry_points.cache_clear()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Job:
    """A job of a :class:`JobManager`: a handle on an info object in a user's tree.

    Attributes
    ----------
    id : str
    manager : JobManager
    info : dict
        The info object as last read (:meth:`refresh` reads it again).
    """

    def __init__(self, manager: JobManager, info: dict[str, Any]) -> None:
        self.manager = manager
        self.id: str = info["id"]
        self.info = info

    def __repr__(self) -> str:
        return f"<moi Job {self.id} {self.info.get('name')!r} {self.info.get('status')}>"

    def refresh(self) -> dict[str, Any]:
        """Read the info object again; return it."""
        self.info = self.manager.store.require(self.id)
        return self.info

    @property
    def name(self) -> str:
        return str(self.info.get("name"))

    @property
    def status(self) -> str:
        """The job's current status (read from Redis)."""
        return str(self.refresh().get("status"))

    @property
    def result(self) -> Any:
        """The job's current result: the final environ of a finished typed job."""
        return self.refresh().get("result")

    @property
    def environ(self) -> dict[str, Any]:
        """The environ the job runs with: its template's params merged with its own."""
        return dict(self.info.get("environ") or {})

    def save(self, **params: Any) -> None:
        """Merge ``params`` into a Pending job's environ (and write it, with ``name`` if given).

        Raises
        ------
        JobFinishedError
            When the job is no longer Pending (it has been run or cancelled).
        """
        fields: dict[str, Any] = {}
        if "name" in params:
            fields["name"] = str(params.pop("name"))
        fields["environ"] = types.check({**self.environ, **params}, self.info["job_type"])
        applied, before = self.manager.store.update(self.id, fields, guard=_PENDING)
        if not applied:
            raise JobFinishedError(f"job {self.id} is {before}, not Pending: it cannot be changed")
        self.refresh()

    def execute(self, ctx: Context | str | None = None) -> None:
        """Submit this Pending job, with the same id, as a typed job (it becomes ``Queued``).

        Only one call succeeds: the move from ``Pending`` to ``Queued`` is one
        atomic, guarded write.

        Parameters
        ----------
        ctx : Context or str, optional
            Where to run; the context saved with the job by default.

        Raises
        ------
        JobFinishedError
            When the job is not Pending any more (run or cancelled before).
        MoiError
            An unknown type, an unreachable cluster: the job stays Pending.
        """
        self.manager._execute(self, ctx)

    def cancel(self) -> str:
        """Cancel it: a Pending or Queued job ends ``Cancelled`` without running.

        Returns
        -------
        str
            ``'cancelled'`` or ``'requested'`` (running: its engine interrupts it).

        Raises
        ------
        JobFinishedError
            When it has already finished.
        """
        outcome = self.manager.store.cancel(self.id, "Cancelled before it started")
        if outcome.startswith("finished:"):
            raise JobFinishedError(f"job {self.id} has already finished ({outcome[9:]})")
        self.refresh()
        return outcome

    def delete(self) -> None:
        """Detach the job from its group: it leaves the tree (and the panel) and ``list_jobs``."""
        parent = self.info.get("parent")
        if isinstance(parent, str):
            self.manager.store.detach(parent, self.id)

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job ends; return its final info object (see :func:`moi.job.wait`)."""
        from moi.job import wait

        self.info = wait(self.id, timeout)
        return self.info


_PENDING = cast(Guard, "pending")  # lua.UPDATE's guard for a job not submitted yet


class JobManager:
    """Make, find, run and report on template jobs of every user.

    Parameters
    ----------
    store_or_url : Store or str, optional
        The job store, or a Redis URL; the process's own store by default.
    public_url : str, optional
        Where ``moi serve`` is reached (``https://moi.example.org``); with it
        each new job gets its callback URL in its environ as ``callback_url``
        when it runs (made then, with a new secret, and kept out of the info
        object and the result: a read-only key must not learn it).
        ``MOI_PUBLIC_URL`` by default.
    """

    def __init__(
        self, store_or_url: Store | str | None = None, public_url: str | None = None
    ) -> None:
        if isinstance(store_or_url, Store):
            self.store = store_or_url
        elif isinstance(store_or_url, str):
            self.store = Store(connection.client(store_or_url), runtime.settings().key_timeout)
        else:
            self.store = runtime.store()
        self.public_url = public_url if public_url is not None else os.environ.get("MOI_PUBLIC_URL")

    # -- users ----------------------------------------------------------------------
    def user_group(self, user: str, create: bool = True) -> str | None:
        """Group id of ``user`` (made on first use when ``create``; else ``None`` if none)."""
        keys.check_user_name(user)
        found = self.store.r.hget(keys.USER_ID_MAP, user)
        if not create:
            return None if found is None else keys.check_node_id(text(found), "group id")
        if found is None or self.store.get(text(found)) is None:
            from moi.group import get_id_from_user

            return (
                get_id_from_user(user) if self.store is runtime.store() else self._make_user(user)
            )
        return keys.check_node_id(text(found), "group id")

    def _make_user(self, user: str) -> str:
        from moi.group import create_info

        r = self.store.r
        candidate = create_info(user, "group")["id"]
        if r.hsetnx(keys.USER_ID_MAP, user, candidate):
            r.hset(keys.USER_ID_MAP, candidate, user)
        group_id = text(r.hget(keys.USER_ID_MAP, user) or candidate)
        if self.store.get(group_id) is None:
            info = create_info(user, "group", id=group_id)
            r.set(keys.info(group_id), json.dumps(info), ex=self.store.key_timeout, nx=True)
        return group_id

    def users(self) -> list[str]:
        """Every user name in ``user-id-map``."""
        names = [text(k) for k in self.store.r.hkeys(keys.USER_ID_MAP)]
        return sorted(n for n in names if not keys.is_uuid(n))

    # -- jobs ------------------------------------------------------------------------
    def create_job(
        self,
        name: str,
        user: str,
        template_name: str,
        context: str | None = None,
        **params: Any,
    ) -> Job:
        """Save a new ``Pending`` job of template ``template_name`` in ``user``'s tree.

        Parameters
        ----------
        name : str
            The job's name.
        user : str
            Whose tree it goes in.
        template_name : str
            A name :func:`templates` knows.
        context : str, optional
            Context it will run in; the default one when omitted.
        **params
            The job's own parameters: merged over the template's (they win).

        Returns
        -------
        Job

        Raises
        ------
        MoiError
            An unknown template (the known ones listed), an unknown job type,
            parameters JSON cannot hold; nothing is written.
        """
        from moi.group import create_info

        known = templates()
        template = known.get(template_name) if isinstance(template_name, str) else None
        if template is None:
            names = ", ".join(known) or "none"
            raise MoiError(f"unknown template {template_name!r}; known: {names}")
        environ = types.check({**template.params, **params}, template.job_type)
        group_id = self.user_group(user)
        assert group_id is not None
        info = create_info(str(name), "job", parent=group_id, context=context)
        info.update(
            status=Status.PENDING.value,
            template=template.name,
            job_type=template.job_type,
            environ=environ,
        )
        if self.public_url:  # the secret URL is made when it runs, and never stored
            info["callback_base"] = self.public_url
        self.store.create(info)
        return Job(self, info)

    def _owned(self, info: dict[str, Any], user: str) -> bool:
        """Whether ``info`` is in ``user``'s tree (each parent lists it as a child)."""
        root = self.user_group(user, create=False)
        node, steps = info, 0
        while root is not None and steps < 1000:
            parent = node.get("parent")
            if not isinstance(parent, str) or not self.store.r.sismember(
                keys.children(parent), node["id"]
            ):
                return False
            if parent == root:
                return True
            found = self.store.get(parent)
            if found is None:
                return False
            node, steps = found, steps + 1
        return False

    def get_job(self, job_id: str, user: str | None = None) -> Job:
        """The manager's job ``job_id`` (in ``user``'s tree, when given).

        Raises
        ------
        UnknownIdError
            When there is no such job, it is not a template job, or it is not
            ``user``'s (the same message: a user never learns another's ids).
        """
        unknown = UnknownIdError(f"unknown job id: {job_id}")
        try:
            keys.check_node_id(job_id, "job id")
        except MoiError:
            raise unknown from None
        info = self.store.get(job_id)
        if info is None or info.get("type") != "job" or "template" not in info:
            raise unknown
        if user is not None and not self._owned(info, user):
            raise unknown
        return Job(self, info)

    def list_jobs(self, user: str | None = None, status: str | None = None) -> list[Job]:
        """The manager's jobs of ``user`` (every user's when omitted), oldest first.

        Parameters
        ----------
        user : str, optional
        status : str, optional
            Only jobs in this status.
        """
        users = [user] if user is not None else self.users()
        found: list[dict[str, Any]] = []
        for name in users:
            root = self.user_group(name, create=False)
            if root is None:
                continue
            found += [
                info
                for info in self.store.tree(root)
                if info.get("type") == "job"
                and "template" in info
                and (status is None or info.get("status") == status)
            ]
        found.sort(key=lambda i: str(i.get("date_created") or ""))
        return [Job(self, info) for info in found]

    def _execute(self, job: Job, ctx: Context | str | None) -> None:
        from moi import chain
        from moi import job as jobs
        from moi.engine import JobSpec, run_job, run_typed

        info = job.refresh()
        if info.get("status") != Status.PENDING:
            raise JobFinishedError(
                f"job {job.id} is {info.get('status')}, not Pending: it runs once"
            )
        environ = types.check(info.get("environ") or {}, info.get("job_type"))
        context = resolve(ctx if ctx is not None else info.get("context"))
        bv = context.bv  # reach the cluster before changing anything
        queued = {"status": Status.QUEUED.value, "context": context.name}
        spec = JobSpec(
            id=job.id,
            redis_url=runtime.redis_url(),
            key_timeout=self.store.key_timeout,
            context=context.name,
            parent=info.get("parent"),
            info={**info, **queued},
            max_result_bytes=jobs.max_result_bytes(),
            connection_file=jobs._connection_file_of(context),
            chain=chain.limits(),
        )
        applied, before = self.store.update(job.id, queued, guard=_PENDING)
        if not applied:  # another execute or a cancel came first
            raise JobFinishedError(f"job {job.id} is {before}, not Pending: it runs once")
        since = time.time()
        try:
            base = info.get("callback_base")
            if isinstance(base, str) and base:
                # only the engine sees it: the info object (readable by read-only keys)
                # and the result (the engine drops it from the final environ) never do
                environ["callback_url"] = self._new_callback_url(base, job.id)
            ar = bv.apply_async(
                functools.partial(run_job, spec),
                functools.partial(run_typed),
                environ,
                max_result_bytes=jobs.max_result_bytes(),
            )
        except Exception as exc:
            jobs._fail(job.id, exc)
            raise
        with self.store.r.pipeline(transaction=True) as pipe:
            for command in self.store.queued_task_commands(job.id, jobs._task(context, ar), since):
                pipe.execute_command(*command)
            pipe.execute()
        ar.add_done_callback(lambda done: jobs._settle(job.id, done))
        job.refresh()

    # -- status callbacks ---------------------------------------------------------------
    def get_job_status_callback_url(self, base_url: str, job_id: str) -> str:
        """A URL an outside process calls to report job ``job_id``'s status.

        ``{base_url}/api/v1/callback/{job_id}?secret=...``: each call makes a
        new secret (the earlier URLs keep working); only its SHA-256 is stored.

        Raises
        ------
        UnknownIdError
            When ``job_id`` names no job.
        """
        info = self.store.get(keys.check_node_id(job_id, "job id"))
        if info is None or info.get("type") != "job":
            raise UnknownIdError(f"unknown job id: {job_id}")
        return self._new_callback_url(base_url, job_id)

    def _new_callback_url(self, base_url: str, job_id: str) -> str:
        """A callback URL with a new secret for a job known to exist (its hash stored)."""
        secret = secrets.token_urlsafe(32)
        key = keys.callback_secrets(job_id)
        with self.store.r.pipeline(transaction=True) as pipe:
            pipe.sadd(key, _digest(secret))
            pipe.expire(key, self.store.key_timeout)
            pipe.execute()
        return f"{base_url.rstrip('/')}/api/v1/callback/{quote(job_id, safe='')}?secret={secret}"

    def check_secret(self, job_id: str, secret: str) -> bool:
        """Whether ``secret`` is one of ``job_id``'s callback secrets (constant-time compare)."""
        if not isinstance(secret, str) or not secret:
            return False
        try:
            keys.check_node_id(job_id, "job id")
        except MoiError:
            return False
        given = _digest(secret).encode()
        stored = self.store.r.smembers(keys.callback_secrets(job_id))
        matches = [hmac.compare_digest(given, text(s).encode()) for s in stored]
        return any(matches)

    def apply_callback(
        self, job_id: str, secret: str, status: str, result: Any = None
    ) -> dict[str, Any]:
        """Apply an outside process's report on job ``job_id``; return the updated info.

        A finished status (``Success``, ``Failed``, ``Cancelled``) ends the job
        (``date_end`` set, ``result`` stored when given); any other text is
        the job's status from now on.  The write is :data:`moi.lua.UPDATE`'s,
        guarded: a finished job is never reopened.

        Raises
        ------
        CallbackSecretError
            ``secret`` is not the job's (or the job does not exist): nothing changed.
        CallbackError
            ``status`` missing, too long, with control characters, or one only
            moi sets (``Pending``, ``Queued``).
        JobFinishedError
            The job has already finished: nothing changed.
        """
        if not self.check_secret(job_id, secret):
            raise CallbackSecretError("wrong or missing secret for this job's status callback")
        if not isinstance(status, str) or not status.strip() or len(status) > MAX_STATUS:
            raise CallbackError(f"status must be text of 1 to {MAX_STATUS} characters")
        if not status.isprintable():
            raise CallbackError("status cannot hold control characters")
        if status in _NOT_FROM_CALLBACKS:
            raise CallbackError(f"a callback cannot set {status}: moi sets it itself")
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CallbackError(f"result must be a JSON value: {exc}") from None
        fields: dict[str, Any] = {"status": status}
        terminal = is_terminal(status)
        if terminal:
            fields.update(date_end=now(), result=result)
        elif result is not None:
            fields["result"] = result
        try:
            applied, before = self.store.update(
                job_id,
                fields,
                guard="final" if terminal else "live",
                lease=("remove", 0) if terminal else None,
            )
        except UnknownIdError:
            raise CallbackSecretError(
                "wrong or missing secret for this job's status callback"
            ) from None
        if not applied:
            raise JobFinishedError(
                f"job {job_id} has already finished ({before}); it is not reopened"
            )
        return self.store.require(job_id)
