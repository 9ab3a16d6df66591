"""Submit functions and commands as moi jobs, and cancel them.

``submit`` writes the job's info object (``Queued``) under its parent group
and, while that write is in flight, hands the function to the context's
load-balanced view wrapped by :func:`moi.engine.run_job`, which records
everything else; it returns once Redis confirmed the write.
"""

from __future__ import annotations

import ast
import functools
import json
import linecache
import math
import os
import reprlib
import shlex
import signal
import subprocess
import time
import traceback
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ipyparallel as ipp

from moi import ctxs, engine, keys, runtime
from moi.context import Context, _connection_file, resolve
from moi.engine import (
    DEFAULT_MAX_RESULT_BYTES,
    CommandFailed,
    JobSpec,
    run_chunk,
    run_job,
    run_typed,
)
from moi.errors import MoiError, UnknownIdError
from moi.group import create_info, get_id_from_user
from moi.status import Status, is_terminal
from moi.store import decode, now, update_call

__all__ = [
    "submit",
    "submit_type",
    "submit_many",
    "ManyJobs",
    "submit_nouser",
    "system_call",
    "python_call",
    "cancel",
    "wait",
    "ctxs",
    "CommandFailed",
]


#: The one thread a server submits on: the ipyparallel client is not thread-safe.
submitter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moi-submit")


def __getattr__(name: str) -> Any:
    if name == "ctx_default":
        return runtime.settings().default_context
    raise AttributeError(name)


def submit(
    ctx: Context | str | None,
    parent_id: str,
    name: str,
    url: str | None,
    func: Callable[..., Any],
    *args: Any,
    **kwargs: Any,
) -> tuple[str, str, ipp.AsyncResult]:
    """Run ``func(*args, **kwargs)`` on the cluster as a job under ``parent_id``.

    Parameters
    ----------
    ctx : Context or str
        Context (or its name) to run on; ``None`` for the default.
    parent_id : str
        Group the job belongs to (a user's group id, say); created as an
        ``unnamed`` group if it does not exist.  Any node id
        :func:`moi.keys.check_node_id` accepts: not one of moi's own keys
        (``user-id-map``, ``moi:...``), no ``:``, spaces or control
        characters, at most 128 characters.
    name : str
        Human readable job name.
    url : str or None
        Where the job's result can be seen, shown as a link by the panel.
    func : callable
        The work.  It must accept ``**kwargs``: moi passes
        ``moi_update_status`` (call it with a status text),
        ``moi_context`` and ``moi_parent_id``.
    *args, **kwargs
        Passed on to ``func``.  The info object's ``call`` describes the
        call (:func:`describe_call`).

    Returns
    -------
    (job_id, parent_id, AsyncResult)
        ``AsyncResult`` is ipyparallel's; its value is ``func``'s return value.

    Raises
    ------
    InvalidIdError, UnknownContextError, ClusterUnavailableError
        Before anything is written.
    """
    fields = {"call": describe_call(func, args, kwargs)}
    return _submit(ctx, parent_id, name, url, fields, func, args, kwargs)


#: Longest ``call`` description kept in an info object.
MAX_CALL_CHARS = 200
_reprs = reprlib.Repr()
_reprs.maxlevel, _reprs.maxstring, _reprs.maxother = 2, 60, 60
_reprs.maxlist = _reprs.maxtuple = _reprs.maxdict = _reprs.maxset = 4


def _cut(text: str, limit: int = MAX_CALL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short_repr(value: Any) -> str:
    try:
        return _reprs.repr(value)
    except Exception:  # noqa: BLE001 -- a raising __repr__ must not stop a submit
        return f"<{type(value).__name__}>"


def describe_call(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A short description of a job's call: the command text, or ``func(args)``.

    A command (:func:`python_call`, :func:`system_call` with one string) is
    its own text; any other call is ``name(arg, key=value)`` with each value's
    repr shortened.  At most :data:`MAX_CALL_CHARS` characters.
    """
    if func in (python_call, system_call) and args and isinstance(args[0], str):
        return _cut(args[0].strip())
    if isinstance(func, functools.partial) and func.func in (python_each, system_each):
        cmd = func.keywords.get("cmd", "")  # a --many line: the command, and its input
        return _cut(f"{cmd.strip()}  <- {_short_repr(args[0]) if args else ''}")
    target = func.func if isinstance(func, functools.partial) else func
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    shown = [_short_repr(a) for a in args] + [f"{k}={_short_repr(v)}" for k, v in kwargs.items()]
    return _cut(f"{name or type(target).__name__}({', '.join(shown)})")


def _submit(
    ctx: Context | str | None,
    parent_id: str,
    name: str,
    url: str | None,
    fields: dict[str, Any] | None,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[str, str, ipp.AsyncResult]:
    """:func:`submit`, with extra ``fields`` in the job's info object from its Queued write on."""
    keys.check_node_id(parent_id, "parent id")
    context = resolve(ctx)
    bv = context.bv  # connect before writing anything
    store = runtime.store()
    info = create_info(name, "job", url=url, parent=parent_id, context=context.name)
    info.update(fields or {})
    parent = create_info("unnamed", "group", id=parent_id)
    from moi import chain  # the service layer: a chain's limits are read here

    spec = JobSpec(
        id=info["id"],
        redis_url=runtime.redis_url(),
        key_timeout=store.key_timeout,
        context=context.name,
        parent=parent_id,
        info=info,
        max_result_bytes=max_result_bytes(),
        connection_file=_connection_file_of(context),
        chain=chain.limits(),
    )
    # the Queued write's round trip overlaps handing the task over; an engine
    # that starts the job before the write lands writes the info itself
    submit_error: Exception | None = None
    since = time.time()
    with store.creating(info, parent_if_missing=parent) as also:
        try:
            ar = bv.apply_async(functools.partial(run_job, spec), func, *args, **kwargs)
        except Exception as exc:
            submit_error = exc
        else:  # the watchdog's record of the task, sent after the Queued write
            also += store.queued_task_commands(info["id"], _task(context, ar), since)
            also.append(("HINCRBY", keys.STATS, keys.stat_field("submitted", context.name), 1))
    if submit_error is not None:
        _fail(info["id"], submit_error)
        raise submit_error
    ar.add_done_callback(lambda done: _settle(info["id"], done))
    return info["id"], parent_id, ar


def submit_type(
    ctx: Context | str | None,
    parent_id: str,
    name: str,
    job_type: str,
    environ: dict[str, Any],
    url: str | None = None,
) -> tuple[str, str, ipp.AsyncResult]:
    """Run job type ``job_type`` on the cluster with ``environ`` as a job under ``parent_id``.

    The engine looks the type (and the environ's ``prefilters`` /
    ``postfilters``) up among the plug-ins installed where it runs, and runs
    it in a temporary working directory.  The job's info object carries
    ``job_type``; its ``result`` is the final environ, with ``result``
    ``SUCCESS`` (status ``Success``) or ``FAILURE``, ``exception`` and
    ``traceback`` (status ``Failed``).  See :mod:`moi.types`.

    Parameters
    ----------
    ctx, parent_id, name, url
        As for :func:`submit`.
    job_type : str
        The type's name: a built-in, an entry point of ``moi.jobs``, or one
        registered with :func:`moi.types.register` (on the engines too).
    environ : dict
        The job's input, JSON values only; its ``job_type`` is set to ``job_type``.

    Returns
    -------
    (job_id, parent_id, AsyncResult)
        The AsyncResult's value is the final environ; a ``FAILURE`` raises.

    Raises
    ------
    MoiError
        Before anything is written: an unknown type or filter (the message
        lists the known ones), a broken plug-in, an environ that is not a
        JSON object; and what :func:`submit` raises.
    """
    from moi import types  # the service layer, imported only when used

    environ = types.check(environ, job_type)
    shown = {k: v for k, v in environ.items() if k != "job_type"}
    fields = {"job_type": job_type, "call": _cut(f"{job_type} {json.dumps(shown)}")}
    limit = {"max_result_bytes": max_result_bytes()}
    # a partial is pickled by reference: a smaller task than the function canned by its code
    typed = functools.partial(run_typed)
    return _submit(ctx, parent_id, name, url, fields, typed, (environ,), limit)


def _task(context: Context, ar: ipp.AsyncResult) -> dict[str, str]:
    """What the watchdog needs to ask the controller about a Queued job's task."""
    return {
        "msg_id": ar.msg_ids[0],
        "context": context.name,
        "connection_file": _connection_file_of(context),
    }


#: Connection file of each connected client (looked up once: the embedded case costs I/O).
_connection_files: weakref.WeakKeyDictionary[ipp.Client, str] = weakref.WeakKeyDictionary()


def _connection_file_of(context: Context) -> str:
    """Absolute path of the connection file ``context``'s client was made from."""
    client = context.client
    path = _connection_files.get(client)
    if path is None:
        path = _connection_files[client] = os.path.abspath(_connection_file(context.name))
    return path


def max_result_bytes() -> int:
    """The largest result stored in an info object: ``MOI_MAX_RESULT_BYTES`` or 1 MiB.

    Raises
    ------
    MoiError
        When the variable is not a positive whole number of bytes.
    """
    raw = os.environ.get("MOI_MAX_RESULT_BYTES")
    if raw is None:
        return DEFAULT_MAX_RESULT_BYTES
    if not raw.strip().isdigit() or int(raw) < 1:
        raise MoiError(f"MOI_MAX_RESULT_BYTES must be a positive number of bytes, not {raw!r}")
    return int(raw)


def _fail(job_id: str, exc: BaseException, lines: list[str] | None = None) -> None:
    fields = {
        "status": Status.FAILED.value,
        "date_end": now(),
        "result": lines or traceback.format_exception(exc),
    }
    runtime.store().update(job_id, fields, guard="live", lease=("remove", 0))


#: Why ipyparallel gave up on a task, for the errors whose own text is empty.
_REASONS = {
    "ImpossibleDependency": "a job it depends on did not succeed, so it never ran",
    "DependencyTimeout": "its dependencies did not finish in time, so it never ran",
    "InvalidDependency": "its dependencies can never be met, so it never ran",
    "TaskTimeout": "it did not finish within its timeout",
    "TaskAborted": "it was aborted before it ran",
    "EngineError": "the engine running it died",
}


def settle_reason(exc: BaseException) -> str:
    """One line saying why ipyparallel failed a task (``name: text``)."""
    if isinstance(exc, ipp.error.RemoteError):
        return reason_line(str(exc.ename), str(exc.evalue or ""))
    return reason_line(type(exc).__name__, str(exc))


def reason_line(name: str, text: str) -> str:
    """One line for the error ``name`` with message ``text``, explained when ipyparallel's."""
    reason = _REASONS.get(name)
    if reason and text:
        return f"{name}: {reason} ({text})\n"
    return f"{name}: {reason or text}\n"


def _settle(job_id: str, ar: ipp.AsyncResult) -> None:
    """Fail a job the engine could not record: engine died, dependency failed, aborted."""
    exc = ar.exception()
    if exc is None:
        return
    try:
        _fail(job_id, exc, [settle_reason(exc)])
    except Exception:  # the submitter is shutting down; the watchdog will settle it
        pass


def submit_nouser(
    func: Callable[..., Any], *args: Any, **kwargs: Any
) -> tuple[str, str, ipp.AsyncResult]:
    """Submit ``func`` in the default context under the group whose id is ``no-user``.

    The parent id is the literal ``no-user``, as in the original moi; that
    group hangs under the ``no-user`` user's group, so the jobs show where
    that user's jobs do (``moi serve``, ``moi userjobs --key no-user``).

    Returns
    -------
    (job_id, parent_id, AsyncResult)
    """
    _attach_nouser_group()
    return submit(None, NOUSER_GROUP, "unnamed", None, func, *args, **kwargs)


#: Parent id of :func:`submit_nouser`'s jobs (the original moi's).
NOUSER_GROUP = "no-user"


def _attach_nouser_group() -> None:
    """Hang the ``no-user`` group under the ``no-user`` user's group, unless it already is."""
    user_group = get_id_from_user(NOUSER_GROUP)
    if not runtime.redis_client().sismember(keys.children(user_group), NOUSER_GROUP):
        group = create_info(NOUSER_GROUP, "group", parent=user_group, id=NOUSER_GROUP)
        runtime.store().create(group)


def system_call(cmd: str, env: dict[str, str] | None = None, **kwargs: Any) -> tuple[str, str, int]:
    """Run shell command ``cmd``; return ``(stdout, stderr, returncode)``.

    ``env`` adds environment variables.  In a moi job, the lines the command
    prints that start with ``MOI-CHAIN `` ask for the next jobs (:mod:`moi.chain`).

    Raises
    ------
    CommandFailed
        A ``ValueError``: when the command exits non-zero, with its exit code
        and output in the message and as attributes (a failed job keeps them
        in its result).
    """
    stdout, stderr, returncode = run_command(cmd, env)
    if returncode != 0:
        raise CommandFailed(cmd, returncode, stdout, stderr)
    if "MOI-CHAIN " in stdout and engine.in_job():
        from moi import chain

        engine.ask_next(chain.from_stdout(stdout))
    return stdout, stderr, returncode


def run_command(cmd: str, env: dict[str, str] | None = None) -> tuple[str, str, int]:
    """Run ``cmd`` in the shell (its own process group, ``env`` added to the environment).

    Returns ``(stdout, stderr, returncode)``.  An interrupt (a cancel) kills
    the whole process group before it is raised again.
    """
    proc = subprocess.Popen(
        cmd,
        shell=True,
        env={**os.environ, **env} if env else None,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    from moi import logs  # the service layer: lines go to the job's live output as they come

    try:
        stdout, stderr = logs.communicate(proc)
    except BaseException:  # a cancel interrupts us: take the command down too
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return stdout, stderr, proc.returncode


def python_code(cmd: str) -> Any:
    """``cmd`` compiled as the body of a function ``_moi_cmd`` (so ``return`` sets the result).

    Line numbers, in a syntax error and in tracebacks, are those of ``cmd`` itself.

    Raises
    ------
    SyntaxError
    """
    body = ast.parse(cmd, "<moi-cmd>").body
    module = ast.parse("def _moi_cmd():\n    pass\n", "<moi-cmd>")
    if body:
        module.body[0].body = body  # type: ignore[attr-defined]
    return compile(module, "<moi-cmd>", "exec")


def check_python(cmd: str) -> None:
    """Raise :class:`MoiError` when ``cmd`` does not compile as a function body."""
    try:
        python_code(cmd)
    except SyntaxError as exc:
        raise MoiError(
            f"the Python command does not compile: {exc.msg} (line {exc.lineno})"
        ) from None


def python_call(cmd: str, **kwargs: Any) -> Any:
    """Run Python source ``cmd`` as a function body; return what it returns.

    ``moi_update_status`` and ``moi_chain`` are available to the code as names.
    """
    namespace: dict[str, Any] = {
        "moi_update_status": kwargs.get("moi_update_status"),
        "moi_chain": kwargs.get("moi_chain"),
    }
    return run_python(cmd, namespace)


def run_python(cmd: str, namespace: dict[str, Any]) -> Any:
    """Run ``cmd`` as a function body with the globals ``namespace``; return what it returns.

    Tracebacks and syntax errors give the command's own line numbers.
    """
    code = python_code(cmd)
    # a traceback shows the command's own lines (one job at a time runs on an engine)
    linecache.cache["<moi-cmd>"] = (len(cmd), None, cmd.splitlines(True), "<moi-cmd>")
    exec(code, namespace)
    return namespace["_moi_cmd"]()


#: The environment variable that holds a ``--many`` job's input line for a shell command.
INPUT_VARIABLE = "MOI_INPUT"


def python_each(x: str, cmd: str, **kwargs: Any) -> Any:
    """:func:`python_call` for one input of ``moi submit --many``: the code sees it as ``x``."""
    return run_python(cmd, {"x": x, "moi_update_status": kwargs.get("moi_update_status")})


def system_each(x: str, cmd: str, **kwargs: Any) -> tuple[str, str, int]:
    """:func:`system_call` for one input of ``moi submit --many``.

    The input is in the environment variable ``MOI_INPUT``, and every ``{}``
    of ``cmd`` is replaced by it, quoted for the shell.
    """
    return system_call(cmd.replace("{}", shlex.quote(x)), env={INPUT_VARIABLE: x})


def cancel(job_id: str) -> str:
    """Cancel a job: a queued one never runs, a running one is interrupted.

    Returns
    -------
    str
        ``'cancelled'`` (it was queued and is now ``Cancelled``) or
        ``'requested'`` (its engine is interrupting it; it ends ``Cancelled``).

    Raises
    ------
    UnknownIdError
        When ``job_id`` names no job.
    MoiError
        When the job has already finished, or the id is a group's.
    InvalidIdError
        When ``job_id`` cannot name a node at all.
    """
    keys.check_node_id(job_id, "job id")
    store = runtime.store()
    info = store.require(job_id)
    if info.get("type") != "job":
        raise MoiError(f"{job_id} is a group, not a job; cancel its jobs one by one")
    outcome = store.cancel(job_id, "Cancelled before it started")
    if outcome.startswith("finished:"):
        raise MoiError(f"job {job_id} has already finished ({outcome.split(':', 1)[1]})")
    return outcome


def result_text(info: dict[str, Any]) -> str:
    """The ``result`` field as the CLI prints it (a traceback list is joined).

    A failed command's result (``exit_code``, ``stdout``, ``stderr``,
    ``traceback``) shows as its traceback, whose last line holds all of them.
    """
    result = info.get("result")
    if info.get("status") in (Status.FAILED, Status.CANCELLED):
        if isinstance(result, dict) and "exit_code" in result and "traceback" in result:
            result = result["traceback"]
        if isinstance(result, list):
            return "".join(str(line) for line in result)
    return str(result)


def is_done(info: dict[str, Any]) -> bool:
    """Whether a job's info says it has ended."""
    return is_terminal(info.get("status"))


def wait(
    job_id: str,
    timeout: float | None = None,
    on_change: Callable[[dict[str, Any]], None] | None = None,
    chain: bool = False,
) -> dict[str, Any]:
    """Block until job ``job_id`` ends; return its final info object.

    Parameters
    ----------
    job_id : str
    timeout : float, optional
        Seconds to wait at most (forever when omitted), in all.
    on_change : callable, optional
        Called with the info object each time its status changes.
    chain : bool
        Wait for the chain's last job (:mod:`moi.chain`): follow each ended
        job's ``chained_to`` (its last id when it asked for several) and
        return the info of the job that asked for no next one.

    Raises
    ------
    UnknownIdError
        When the job does not exist.
    TimeoutError
        When ``timeout`` passes first.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        info = _wait_one(job_id, deadline, timeout, on_change)
        following = info.get("chained_to") if chain else None
        if not following or not isinstance(following, list):
            return info
        job_id = str(following[-1])


def _wait_one(
    job_id: str,
    deadline: float | None,
    timeout: float | None,
    on_change: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    """:func:`wait` for one job, until ``deadline`` (monotonic)."""
    store = runtime.store()
    with runtime.redis_client().pubsub(ignore_subscribe_messages=True) as sub:
        sub.subscribe(keys.pubsub(job_id))
        last = None
        while True:
            info = store.require(job_id)
            if on_change is not None and info.get("status") != last:
                on_change(info)
            last = info.get("status")
            if is_done(info):
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {last} after {timeout} s")
            sub.get_message(timeout=1.0)


def wait_until_received(ar: ipp.AsyncResult, client: ipp.Client, timeout: float = 30.0) -> None:
    """Block until the controller has recorded the job's task, so this process may exit.

    A process that submits and exits at once (``moi submit --no-block``)
    could otherwise exit with the task still in its own send queue.
    """
    ar.wait_for_send(timeout)
    deadline, delay = time.monotonic() + timeout, 0.005
    while True:
        try:
            client.result_status(ar.msg_ids, status_only=True)
            return
        except ipp.error.RemoteError:
            if time.monotonic() > deadline:
                raise MoiError(
                    f"the controller did not record the job within {timeout} s"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


#: Why a job ended when ``moi down`` stopped the cluster it ran on.
STOPPED_BY_DOWN = "stopped by moi down (the cluster it ran on was shut down)"


def unfinished_jobs(context: str) -> list[dict[str, Any]]:
    """Info objects of the jobs running or queued in ``context``.

    Running jobs are found by their leases, queued ones by the record
    ``submit`` keeps of their task.
    """
    store = runtime.store()
    found: list[Any] = [*store.r.zrange(keys.LEASES, 0, -1), *store.r.zrange(keys.QUEUED, 0, -1)]
    ids = {raw.decode() if isinstance(raw, bytes) else str(raw) for raw in found}
    return [
        info
        for info in store.get_many(sorted(ids))
        if info.get("context") == context and not is_terminal(info.get("status"))
    ]


def end_jobs(job_ids: list[str], reason: str) -> None:
    """End the unfinished jobs among ``job_ids`` as ``Failed`` with ``reason``."""
    fields = {"status": Status.FAILED.value, "date_end": now(), "result": [reason + "\n"]}
    store = runtime.store()
    for job_id in job_ids:
        store.update(job_id, fields, guard="live", lease=("remove", 0))


# -- many jobs at once ------------------------------------------------------------
#: Chunks per engine when ``submit_many`` picks the chunk size: enough to even out
#: uneven elements, few enough that handing them over costs little.
CHUNKS_PER_ENGINE = 4
#: Largest chunk ``submit_many`` picks itself (a chunk is one ipyparallel task).
MAX_CHUNKSIZE = 250


class ManyJobs:
    """The jobs of one :func:`submit_many` call: their ids, and waiting on all of them.

    Attributes
    ----------
    ids : list of str
        The job ids, in input order.
    parent_id : str
        The group they belong to.
    async_results : list of ipyparallel.AsyncResult
        One per chunk; each one's value is a list of ``(ok, value)`` pairs.
    chunks : list of range
        Which input positions each chunk holds.
    """

    def __init__(
        self,
        ids: list[str],
        parent_id: str,
        async_results: list[ipp.AsyncResult],
        chunks: list[range],
    ) -> None:
        self.ids, self.parent_id = ids, parent_id
        self.async_results, self.chunks = async_results, chunks

    def __len__(self) -> int:
        return len(self.ids)

    def counts(self) -> dict[str, int]:
        """How many of the jobs are in each status now (one Redis read)."""
        return status_counts(self._infos())

    def wait(
        self,
        timeout: float | None = None,
        progress: Callable[[dict[str, int]], None] | None = None,
        interval: float = 0.2,
    ) -> list[dict[str, Any]]:
        """Block until every job has ended; return their final info objects in input order.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait at most, in all (forever when omitted).
        progress : callable, optional
            Called with the counts by status (``{'Queued': 3, 'Success': 7, ...}``)
            about every ``interval`` seconds, and once at the end.
        interval : float
            Seconds between two looks while jobs run.

        Raises
        ------
        TimeoutError
            When ``timeout`` passes first.
        UnknownIdError
            When a job's info object is gone (expired).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._wait_chunks(deadline, interval if progress else None)
            infos = self._infos()
            counts = status_counts(infos)
            if progress is not None:
                progress(counts)
            if all(is_done(info) for info in infos):
                return infos
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(self.ids)} jobs not all ended after {timeout} s: {counts}"
                )
            if all(ar.ready() for ar in self.async_results):  # a failed chunk being settled
                time.sleep(interval)

    def get(self, timeout: float | None = None) -> list[Any]:
        """The functions' return values in input order, once every job has ended.

        Raises
        ------
        MoiError
            When a job did not succeed (failed, cancelled): the message names
            how many and the first one's id and reason.
        TimeoutError
            When ``timeout`` passes first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        infos = self.wait(timeout)
        values: list[Any] = [None] * len(self.ids)
        for chunk, ar in zip(self.chunks, self.async_results, strict=True):
            # the final statuses are stored before a chunk's result comes back
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not ar.wait(left):
                raise TimeoutError(f"the results of {len(self.ids)} jobs did not all come back")
            try:
                outcomes = ar.get(0) if ar.successful() else None
            except Exception:  # noqa: BLE001 -- a failed chunk: its jobs' infos say why
                outcomes = None
            for position, outcome in zip(chunk, outcomes or [], strict=False):
                values[position] = outcome[1]
        bad = [info for info in infos if info.get("status") != Status.SUCCESS]
        if bad:
            reason = result_text(bad[0]).strip().splitlines()[-1:] or [""]
            raise MoiError(
                f"{len(bad)} of {len(infos)} jobs did not succeed; the first, "
                f"{bad[0]['id']}, is {bad[0].get('status')}: {reason[0]}"
            )
        return values

    def _wait_chunks(self, deadline: float | None, at_most: float | None) -> None:
        """Wait for the chunks' tasks until ``deadline``, or ``at_most`` seconds from now."""
        if at_most is not None:
            soon = time.monotonic() + at_most
            deadline = soon if deadline is None else min(deadline, soon)
        for ar in self.async_results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not ar.wait(left):
                return

    def _infos(self) -> list[dict[str, Any]]:
        raws = runtime.store().r.mget([keys.info(i) for i in self.ids])
        infos = []
        for job_id, raw in zip(self.ids, raws, strict=True):
            info = decode(raw)
            if info is None:
                raise UnknownIdError(f"job {job_id} of this submission is gone (expired?)")
            infos.append(info)
        return infos


def status_counts(infos: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many of ``infos`` are in each status: every moi status, in order, then any other."""
    found = Counter(str(info.get("status")) for info in infos)
    counts = {status.value: found.pop(status.value, 0) for status in Status}
    return {**counts, **found}


def submit_many(
    ctx: Context | str | None,
    parent_id: str,
    name: str,
    func: Callable[..., Any],
    iterable_of_args: Iterable[Any],
    chunksize: int | None = None,
    url: str | None = None,
) -> tuple[list[str], ManyJobs]:
    """Run ``func(x)`` for every ``x`` of ``iterable_of_args``, each as a job of its own.

    Every element is a job under ``parent_id`` like one of :func:`submit`
    (its own info object, status, result, cancel, live updates), named
    ``name [i]``.  The Queued info objects go to Redis in one atomic write, and
    the work goes to the cluster in chunks: one task per chunk runs its
    elements in order on an engine (:func:`moi.engine.run_chunk`), each one's
    ``Running`` confirmed before it runs and its final status stored before
    the chunk's result returns.  A cancelled element not yet started is
    skipped; a running one is interrupted.  An engine that dies fails every
    unfinished element of its chunk.  Elements cannot chain next jobs.

    Parameters
    ----------
    ctx, parent_id, url
        As for :func:`submit`.
    name : str
        Base name of the jobs; element ``i`` is named ``name [i]``.
    func : callable
        Called as ``func(x, moi_update_status=..., moi_context=...,
        moi_parent_id=...)``: it must accept ``**kwargs``.  Several arguments
        per element: pass tuples and unpack them in ``func``.
    iterable_of_args : iterable
        The inputs, one per job; read once, before anything is written.
    chunksize : int, optional
        Elements per task.  By default the elements are spread over about
        four chunks per engine (at most 250 elements each).

    Returns
    -------
    (job_ids, ManyJobs)
        The ids in input order, and a handle whose ``wait()`` returns the
        final info objects and ``get()`` the return values, both in input order.

    Raises
    ------
    MoiError
        Before anything is written: ``func`` not callable, ``iterable_of_args``
        not iterable or empty, a ``chunksize`` that is not a positive whole
        number; and what :func:`submit` raises.
    """
    keys.check_node_id(parent_id, "parent id")
    if not callable(func):
        raise MoiError(f"submit_many: func must be callable, not {type(func).__name__}")
    if isinstance(iterable_of_args, (str, bytes)) or not isinstance(iterable_of_args, Iterable):
        kind = type(iterable_of_args).__name__
        raise MoiError(
            f"submit_many: the inputs must be an iterable (a list, a range...), not {kind}"
        )
    items = list(iterable_of_args)
    if not items:
        raise MoiError("submit_many: no inputs (the iterable is empty): nothing to submit")
    if chunksize is not None and (
        isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1
    ):
        raise MoiError(f"submit_many: chunksize must be a positive whole number, not {chunksize!r}")
    context = resolve(ctx)
    bv = context.bv  # connect before writing anything
    size = chunksize or _chunksize(len(items), len(context.client.ids))
    store = runtime.store()
    infos = [
        create_info(f"{name} [{i}]", "job", url=url, parent=parent_id, context=context.name)
        | {"call": describe_call(func, (item,), {})}
        for i, item in enumerate(items)
    ]
    parent = create_info("unnamed", "group", id=parent_id)
    common = {
        "redis_url": runtime.redis_url(),
        "key_timeout": store.key_timeout,
        "context": context.name,
        "parent": parent_id,
        "max_result_bytes": max_result_bytes(),
    }
    specs: list[JobSpec] = [JobSpec(id=info["id"], info=info, **common) for info in infos]  # type: ignore[typeddict-item]
    chunks = [range(start, min(start + size, len(items))) for start in range(0, len(items), size)]
    ars: list[ipp.AsyncResult] = []
    submit_error: Exception | None = None
    since = time.time()
    with store.creating_many(infos, parent_if_missing=parent) as also:
        try:
            for chunk in chunks:
                task = functools.partial(run_chunk, specs[chunk.start : chunk.stop])
                ars.append(bv.apply_async(task, func, items[chunk.start : chunk.stop]))
        except Exception as exc:
            submit_error = exc
        for chunk, ar in zip(chunks, ars, strict=False):  # the watchdog's record of each task
            entry = _task(context, ar)
            for position in chunk:
                also += store.queued_task_commands(infos[position]["id"], entry, since)
    ids = [info["id"] for info in infos]
    if submit_error is not None:
        handed = sum(len(chunk) for chunk in chunks[: len(ars)])
        for job_id in ids[handed:]:
            _fail(job_id, submit_error)
        raise submit_error
    for chunk, ar in zip(chunks, ars, strict=True):
        ar.add_done_callback(functools.partial(_settle_chunk, ids[chunk.start : chunk.stop]))
    return ids, ManyJobs(ids, parent_id, ars, chunks)


def _chunksize(count: int, engines: int) -> int:
    """Elements per chunk: about :data:`CHUNKS_PER_ENGINE` chunks per engine."""
    return max(1, min(MAX_CHUNKSIZE, math.ceil(count / (max(1, engines) * CHUNKS_PER_ENGINE))))


def _settle_chunk(job_ids: list[str], ar: ipp.AsyncResult) -> None:
    """Fail the unfinished jobs of a chunk the cluster failed (its engine died, say)."""
    exc = ar.exception()
    if exc is None:
        return
    fields = {"status": Status.FAILED.value, "date_end": now(), "result": [settle_reason(exc)]}
    store = runtime.store()
    try:
        with store.r.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                call = update_call(job_id, fields, store.key_timeout, "live", ("remove", 0))
                store._update(keys=call["keys"], args=call["args"], client=pipe)
            pipe.execute(raise_on_error=False)
    except Exception:  # noqa: BLE001 -- the submitter is shutting down; the watchdog settles them
        pass
