"""What runs on the engine around a job: status, result, lease, cancel.

Engines need no moi configuration: the job carries the Redis URL, key
timeout and result size limit (``JobSpec``).  While a job runs, one heartbeat
thread per engine renews the job's lease (so a watchdog can fail the job if
this engine dies) and interrupts the job with SIGINT when a cancel is asked
for.  The writes that start and end a job are retried while Redis is
unreachable (up to ``WRITE_PATIENCE`` seconds), so a Redis outage does not
lose a job's true outcome.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FunctionType
from typing import Any, NotRequired, TypedDict, TypeVar

import redis

from moi import connection
from moi.errors import ChainError, JobCancelled
from moi.status import Status, is_terminal
from moi.store import Store, now, text, update_call

#: Seconds between lease renewals; a lease lasts LEASE_TTL seconds.
HEARTBEAT_INTERVAL = 1.0
LEASE_TTL = 10.0

#: Seconds the engine keeps retrying a job's Running or final write while Redis is
#: unreachable, and the longest pause between two tries.
WRITE_PATIENCE = 600.0
RETRY_CAP = 1.0

#: Largest result, as JSON text, stored in the info object (``MOI_MAX_RESULT_BYTES``).
DEFAULT_MAX_RESULT_BYTES = 1 << 20

#: Redis errors that mean "not now" rather than "never": worth retrying.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)

T = TypeVar("T")


class UnstorableResult(Exception):
    """Raised on the engine for a result moi cannot record: neither JSON nor ``repr()`` holds it."""


class CommandFailed(ValueError):
    """A shell command exited non-zero; its exit code and output are kept.

    The message is ``Failed to execute: CMD`` followed by the exit code,
    stdout and stderr; a job failing with it keeps them in its result.
    """

    def __init__(self, cmd: str, returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(
            f"Failed to execute: {cmd}\nexit code: {returncode}\n"
            f"stdout: {_tail(stdout)}\nstderr: {_tail(stderr)}"
        )
        self.cmd, self.returncode, self.stdout, self.stderr = cmd, returncode, stdout, stderr

    def __reduce__(self) -> tuple[Any, ...]:
        return (CommandFailed, (self.cmd, self.returncode, self.stdout, self.stderr))


#: moi's own modules whose frames a job's traceback leaves out unless they matter.
_MOI_DIR = os.path.dirname(os.path.abspath(__file__))
_WRAPPERS = frozenset(os.path.join(_MOI_DIR, name) for name in ("engine.py", "job.py", "types.py"))
#: Most characters of a failed command's stdout and stderr kept (the end of each).
MAX_OUTPUT_CHARS = 100_000


def _tail(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    left_out = len(text) - MAX_OUTPUT_CHARS
    return f"[... first {left_out} characters left out]\n" + text[-MAX_OUTPUT_CHARS:]


def format_failure(exc: BaseException) -> list[str]:
    """The traceback of a failed job, with the user's frames and without moi's wrappers.

    moi's own frames (``engine.py``, ``job.py``, ``types.py``) are left out
    where they only lead to the user's code; those the user's code called
    into stay (they say what moi refused).  A traceback with no frame of the
    user's is kept whole, except for a failed command (:class:`CommandFailed`),
    whose message says everything.
    """
    summary = traceback.extract_tb(exc.__traceback__)
    first_user = next(
        (n for n, frame in enumerate(summary) if os.path.abspath(frame.filename) not in _WRAPPERS),
        None,
    )
    if first_user is None and not isinstance(exc, CommandFailed):
        return traceback.format_exception(exc)
    kept = [] if first_user is None else summary[first_user:]
    shown = traceback.TracebackException.from_exception(exc)
    shown.stack = traceback.StackSummary.from_list(kept)
    return list(shown.format())


def failure_result(exc: BaseException) -> Any:
    """What a job that raised ``exc`` keeps as its result.

    A failed command keeps ``exit_code``, ``stdout``, ``stderr`` and
    ``traceback``; any other error its traceback (:func:`format_failure`).
    """
    lines = format_failure(exc)
    if isinstance(exc, CommandFailed):
        return {
            "exit_code": exc.returncode,
            "stdout": _tail(exc.stdout),
            "stderr": _tail(exc.stderr),
            "traceback": lines,
        }
    return lines


class ChainState(TypedDict):
    """Where a job stands in its chain (:mod:`moi.chain`), and the chain's limits."""

    #: The chain's first job (``None`` in the first job itself).
    root: str | None
    #: Position in the chain: 0 for the first job.
    index: int
    #: When the first job started (epoch seconds), ``None`` until it has.
    started: float | None
    #: Most seconds since ``started`` at which a job may still ask for a next one.
    timeout: float
    #: Most jobs along one chain.
    max: float


class JobSpec(TypedDict):
    """What the engine-side wrapper needs to know about a job."""

    id: str
    redis_url: str
    key_timeout: int
    context: str
    parent: str | None
    #: The job's Queued info object, written by the engine if the submitter's write is late.
    info: dict[str, Any]
    #: Largest result (bytes of JSON) stored in the info object; larger ones get a note.
    max_result_bytes: int
    #: The cluster's client connection file: the engine hands chained jobs to it.
    connection_file: NotRequired[str]
    #: The job's place in its chain.
    chain: NotRequired[ChainState]


@functools.cache
def _store(redis_url: str, key_timeout: int) -> Store:
    return Store(connection.client(redis_url), key_timeout)


class Heartbeat(threading.Thread):
    """Renews the lease of the job this engine runs and delivers cancels."""

    def __init__(self) -> None:
        super().__init__(name="moi-heartbeat", daemon=True)
        self._lock = threading.Lock()
        self._job: tuple[Store, str] | None = None
        self._quiet = False
        self.interrupted = False

    def watch(self, store: Store, job_id: str) -> None:
        """Start renewing ``job_id``'s lease."""
        with self._lock:  # the lease was set with Running: renewing can wait for the next beat
            self._job, self.interrupted, self._quiet = (store, job_id), False, False

    def quiet(self) -> bool:
        """Send no interrupt from now on, but keep renewing.  Return whether one was sent."""
        with self._lock:
            self._quiet = True
            return self.interrupted

    def stop(self) -> bool:
        """Stop watching; no interrupt is sent after this returns.  Return whether one was."""
        with self._lock:
            self._job = None
            return self.interrupted

    def run(self) -> None:
        while True:
            time.sleep(HEARTBEAT_INTERVAL)
            with self._lock:
                if self._job is None:
                    continue
                store, job_id = self._job
                try:  # renew even after the interrupt: a job may swallow it and go on
                    cancel_asked = store.heartbeat(job_id, LEASE_TTL)
                except redis.RedisError:
                    continue
                if cancel_asked and not self.interrupted and not self._quiet:
                    self.interrupted = True
                    os.kill(os.getpid(), signal.SIGINT)


_heartbeat: Heartbeat | None = None


def _get_heartbeat() -> Heartbeat:
    global _heartbeat
    if _heartbeat is None or not _heartbeat.is_alive():
        _heartbeat = Heartbeat()
        _heartbeat.start()
    return _heartbeat


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, even one whose ``str()`` raises."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 -- an error about an error must not escape
        text = "(its message cannot be shown)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def jsonable(result: Any) -> tuple[Any, str | None, int]:
    """``result`` if JSON can hold it, else its ``repr``; a note saying so; the JSON's bytes.

    Raises
    ------
    UnstorableResult
        When neither JSON nor ``repr()`` can hold it (a raising ``__repr__``,
        nesting deeper than Python recurses, an int past the int-to-str limit).
    """
    try:
        return result, None, len(json.dumps(result, allow_nan=False))
    except Exception as exc:  # noqa: BLE001 -- TypeError, ValueError, RecursionError, anything
        reason = describe(exc)
    try:
        text = repr(result)
    except Exception as exc:  # noqa: BLE001 -- whatever a __repr__ raises
        raise UnstorableResult(
            f"the job returned a result moi cannot store: JSON cannot hold it ({reason}) "
            f"and repr() failed ({describe(exc)})"
        ) from None
    note = f"result was not JSON-serialisable ({reason}); stored as its repr()"
    return text, note, len(json.dumps(text))


def storable(result: Any, limit: int) -> tuple[Any, str | None]:
    """What the info object's ``result`` field gets for ``result``, and a note.

    A result over ``limit`` bytes of JSON is replaced by a note saying where it is.
    """
    value, note, size = jsonable(result)
    if size <= limit:
        return value, note
    text = (
        f"result of {size} bytes is larger than the limit of {limit} bytes; "
        "it is kept by ipyparallel: use the AsyncResult"
    )
    return text, "result not stored: larger than MOI_MAX_RESULT_BYTES"


def persist(write: Callable[[], T], patience: float = WRITE_PATIENCE) -> tuple[T, bool]:
    """Run the Redis ``write`` until it goes through; return its value and whether it was retried.

    Retries while Redis is unreachable, with back-off capped at ``RETRY_CAP``
    seconds, for at most ``patience`` seconds; then the last error is raised.
    """
    deadline, delay, retried = time.monotonic() + patience, 0.05, False
    while True:
        try:
            return write(), retried
        except TRANSIENT:
            if time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay, retried = min(delay * 2, RETRY_CAP), True


def update_status(store: Store, job_id: str, new_status: str) -> str:
    """Set a running job's status text (the ``moi_update_status`` callback); return the old one.

    The final statuses are moi's to set when the job returns or raises: a job
    that set one itself would look finished while running, and lose its result.
    """
    if is_terminal(str(new_status)):
        raise ValueError(
            f"moi_update_status({str(new_status)!r}): moi sets the final status itself "
            "when the job returns (Success) or raises (Failed); use other text"
        )
    _, before = store.update(job_id, {"status": str(new_status)}, guard="live")
    return before


#: The next jobs the running job asked for (:mod:`moi.chain`); ``None`` between jobs.
_asked: list[Any] | None = None


def ask_next(requests: list[Any]) -> None:
    """Queue the running job's requests for next jobs; they start once it succeeds.

    Raises
    ------
    ChainError
        Outside a moi job.
    """
    if _asked is None:
        raise ChainError("only a running moi job can ask for the next jobs of its chain")
    _asked.extend(requests)


def in_job() -> bool:
    """Whether a moi job runs in this process now."""
    return _asked is not None


def _moi_chain(*args: Any, **kwargs: Any) -> None:
    """The ``moi_chain`` keyword a job function gets; see :func:`moi.chain.request`."""
    from moi import chain  # the service layer, loaded only when a job chains

    ask_next([chain.request(*args, **kwargs)])


def _accepts(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` takes the keyword argument ``name`` (or ``**kwargs``)."""
    code = getattr(func, "__code__", None)
    if (
        isinstance(func, FunctionType)
        and code is not None
        and not hasattr(func, "__wrapped__")
    ):
        # a plain function: its code says it, at a tenth of inspect.signature's cost
        named = code.co_varnames[
            code.co_posonlyargcount : code.co_argcount + code.co_kwonlyargcount
        ]
        return bool(code.co_flags & inspect.CO_VARKEYWORDS) or name in named
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or p.name == name for p in params)


def run_job(spec: JobSpec, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``func`` as moi job ``spec['id']`` on this engine; return its result.

    The job goes ``Running`` only if it is still ``Queued`` (a job cancelled
    while queued raises :class:`JobCancelled` without running), then ends
    ``Success``, ``Failed`` (the formatted traceback as result) or
    ``Cancelled``; an exception is raised again so dependent jobs see it.
    A job that asked for next jobs (:mod:`moi.chain`) and succeeded starts them.
    """
    global _asked
    store, job_id = _store(spec["redis_url"], spec["key_timeout"]), spec["id"]
    _start(store, spec)
    kwargs.update(
        moi_update_status=functools.partial(update_status, store, job_id),
        moi_context=spec["context"],
        moi_parent_id=spec["parent"],
    )
    if _accepts(func, "moi_chain"):
        kwargs["moi_chain"] = _moi_chain
    _asked = []
    heartbeat = _get_heartbeat()
    heartbeat.watch(store, job_id)
    from moi import logs  # the service layer: live output (moi.logs)

    capture = logs.start(spec["redis_url"], job_id, spec["key_timeout"], spec["context"])
    try:  # the lease is renewed until the final write lands, however long Redis takes
        try:
            try:
                result = func(*args, **kwargs)
            finally:
                capture.stop()  # the last lines land before the final status
                interrupted = heartbeat.quiet()
                asked, _asked = _asked, None
        except BaseException as exc:
            _fail_or_cancel(store, job_id, exc, interrupted_by_cancel(exc, heartbeat))
            raise
        limit = spec.get("max_result_bytes", DEFAULT_MAX_RESULT_BYTES)
        if asked:
            _succeed_and_chain(store, spec, result, limit, asked)
        else:
            _succeed(store, job_id, result, limit)
    finally:
        _asked = None
        heartbeat.stop()
        capture.finished(sys.exc_info()[1])
    if interrupted:
        _forget_cancel(store, job_id)
    return result


class TypedJobFailed(Exception):
    """A typed job ended ``FAILURE``: its final environ (``environ``) is the job's result."""

    def __init__(self, environ: dict[str, Any]) -> None:
        super().__init__(f"job type {environ.get('job_type')!r} failed: {environ.get('exception')}")
        self.environ = environ

    def __reduce__(self) -> tuple[Any, ...]:
        return (TypedJobFailed, (self.environ,))


def engine_name() -> str:
    """This engine as messages name it: ``engine 3 (host:pid)``, or ``host:pid`` outside one."""
    import socket

    where = f"{socket.gethostname()}:{os.getpid()}"
    try:
        from IPython import get_ipython

        engine_id = getattr(getattr(get_ipython(), "kernel", None), "engine_id", None)
    except Exception:  # noqa: BLE001 -- no IPython here: the host and pid say enough
        engine_id = None
    if isinstance(engine_id, int) and engine_id >= 0:
        return f"engine {engine_id} ({where})"
    return where


def run_typed(
    environ: dict[str, Any], max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES, **kwargs: Any
) -> dict[str, Any]:
    """Run the typed job ``environ`` names on this engine (the function :func:`run_job` wraps).

    The type is looked up here, among the plug-ins installed where this
    engine runs; see :func:`moi.types.execute`.

    Returns
    -------
    dict
        The final environ, ``result: SUCCESS``.

    Raises
    ------
    TypedJobFailed
        When it ended ``FAILURE``; :func:`run_job` stores its environ as the
        result (past ``max_result_bytes``, only its :data:`FAILURE_KEYS` and a note).
    """
    from moi import types  # the service layer, loaded only where typed jobs run

    final = types.execute(environ, where=engine_name())
    final.pop("callback_url", None)  # its secret writes the job's status: not in the result
    if final.get("result") != "SUCCESS":
        raise TypedJobFailed(_within(final, max_result_bytes))
    if "chain" in final and in_job():
        from moi import chain

        ask_next(chain.from_environ(final["chain"]))
    return final


#: What a failed typed job's environ keeps when it is too large to store whole.
FAILURE_KEYS = ("job_type", "result", "exception", "traceback")


def _within(environ: dict[str, Any], limit: int) -> dict[str, Any]:
    """``environ``, or only its :data:`FAILURE_KEYS` and a ``note`` when over ``limit`` bytes."""
    size = len(json.dumps(environ))
    if size <= limit:
        return environ
    kept = {key: environ[key] for key in FAILURE_KEYS if key in environ}
    kept["note"] = (
        f"environ of {size} bytes is larger than the limit of {limit} bytes "
        "(MOI_MAX_RESULT_BYTES): only " + ", ".join(FAILURE_KEYS) + " kept"
    )
    return kept


def _start(store: Store, spec: JobSpec) -> None:
    """Write ``Running``, retried while Redis is away; :class:`JobCancelled` if not Queued."""
    state = spec.get("chain")
    if state is not None and state["started"] is None:  # the first job of a chain
        state["started"] = time.time()
    # ``engine``: where it runs (``moi nodes`` shows each engine's current job from it)
    fields = {"status": Status.RUNNING.value, "date_start": now(), "engine": engine_name()}
    (started, before), retried = persist(
        lambda: store.update(
            spec["id"],
            fields,
            guard="queued",
            lease=("add", LEASE_TTL),
            if_missing=spec.get("info"),
        )
    )
    # a retry may find the first try's write, whose reply was lost: Running is this engine's
    if not started and not (retried and before == Status.RUNNING):
        raise JobCancelled(f"job {spec['id']} did not run: it was {before} before it started")


def _fail_or_cancel(store: Store, job_id: str, exc: BaseException, cancelled: bool) -> None:
    """Record a job that raised; raise :class:`JobCancelled` instead when a cancel stopped it."""
    status = Status.CANCELLED if cancelled else Status.FAILED
    # a typed job that failed keeps its final environ as its result
    if isinstance(exc, TypedJobFailed):
        result: Any = exc.environ
    elif isinstance(exc, ChainError):  # a bad chain request: its reason says it all
        result = [describe(exc) + "\n"]
    else:
        result = failure_result(exc)
    _finish(store, job_id, status, result)
    if cancelled:
        raise JobCancelled(f"job {job_id} was cancelled while running") from None


def _succeed(store: Store, job_id: str, result: Any, limit: int) -> None:
    """Record a job that returned; a result moi cannot store fails it with the reason."""
    try:
        value, note = storable(result, limit)
    except UnstorableResult as exc:
        _finish(store, job_id, Status.FAILED, [f"{exc}\n"])
        raise
    _finish(store, job_id, Status.SUCCESS, value, note)


def _succeed_and_chain(
    store: Store, spec: JobSpec, result: Any, limit: int, asked: list[Any]
) -> None:
    """Record a job that returned and asked for next jobs; start them (:func:`moi.chain.hand_on`).

    A request past a limit fails the job with the reason, and raises.
    """
    from moi import chain  # the service layer, loaded only when a job chains

    try:
        value, note = storable(result, limit)
    except UnstorableResult as exc:
        _finish(store, spec["id"], Status.FAILED, [f"{exc}\n"])
        raise
    try:
        chain.hand_on(store, spec, value, note, asked)
    except ChainError as exc:  # past a limit: nothing was written yet
        _finish(store, spec["id"], Status.FAILED, [describe(exc) + "\n"])
        raise


def interrupted_by_cancel(exc: BaseException, heartbeat: Heartbeat) -> bool:
    """Whether ``exc`` is the interrupt the heartbeat sent for a cancel."""
    return heartbeat.interrupted and isinstance(exc, KeyboardInterrupt)


def _finish(
    store: Store, job_id: str, status: Status, result: Any, note: str | None = None
) -> None:
    """Write the job's final status, retried while Redis is away.

    It lands even over a ``Failed`` the watchdog wrote meanwhile for an
    expired lease (guard ``final``): the engine knows the outcome.
    """
    fields: dict[str, Any] = {"status": status.value, "result": result, "date_end": now()}
    if note:
        fields["note"] = note
    persist(lambda: store.update(job_id, fields, guard="final", lease=("remove", 0)))
    if status is Status.CANCELLED:
        _forget_cancel(store, job_id)


def _forget_cancel(store: Store, job_id: str) -> None:
    """Drop a cancel request once the job has ended (best effort: the flag expires anyway)."""
    try:
        store.clear_cancel(job_id)
    except redis.RedisError:
        pass


# -- chunks of jobs (moi.job.submit_many) ---------------------------------------------
#: Why an element of a chunk did not run because the chunk was stopped under it.
CHUNK_STOPPED = "the chunk of jobs it belonged to was stopped before it ran ({})"


def run_chunk(specs: list[JobSpec], func: Callable[..., Any], items: list[Any]) -> list[Any]:
    """Run ``func(item)`` for each job of a chunk, in order, as moi jobs; return the outcomes.

    Each element is a job of its own, with the guarantees of :func:`run_job`:
    its ``Running`` write is confirmed before ``func`` runs (it is skipped when
    no longer ``Queued``: cancelled while waiting), and its final status is
    stored before the chunk's result goes back.  The final write of one element
    and the ``Running`` write of the next travel in one round trip.  A cancel
    interrupts only the element it names; a failing element fails alone.

    Returns
    -------
    list
        One ``(ok, value)`` per element: ``(True, result)`` for one that
        succeeded, ``(False, reason line)`` for one that failed, was
        cancelled or skipped.

    Raises
    ------
    BaseException
        An interrupt or exit that is not a cancel (``KeyboardInterrupt``,
        ``SystemExit``): the running element fails, the ones not started fail
        with :data:`CHUNK_STOPPED`, and the exception goes on.
    """
    store = _store(specs[0]["redis_url"], specs[0]["key_timeout"])
    heartbeat = _get_heartbeat()
    outcomes: list[Any] = []
    owed: list[dict[str, Any]] = []  # the last element's final write, sent with the next start
    for position, (spec, item) in enumerate(zip(specs, items, strict=True)):
        if not _start_after(store, spec, owed):
            outcomes.append((False, f"JobCancelled: job {spec['id']} was cancelled before it ran"))
            continue
        try:
            outcome, owed = _run_element(store, heartbeat, spec, func, item)
        except BaseException as exc:  # not a cancel: the chunk stops here
            _stop_chunk(store, specs[position + 1 :], exc)
            raise
        outcomes.append(outcome)
    if owed:
        persist(lambda: store.update_calls(owed))
    return outcomes


def _run_element(
    store: Store, heartbeat: Heartbeat, spec: JobSpec, func: Callable[..., Any], item: Any
) -> tuple[tuple[bool, Any], list[dict[str, Any]]]:
    """Run one element of a chunk, already ``Running``; its outcome and its final write.

    The final write is returned, not sent: it goes with the next element's
    start.  An interrupt that is not a cancel is written at once and raised.
    """
    job_id = spec["id"]
    kwargs = {
        "moi_update_status": functools.partial(update_status, store, job_id),
        "moi_context": spec["context"],
        "moi_parent_id": spec["parent"],
    }
    heartbeat.watch(store, job_id)
    try:
        try:
            try:
                result = func(item, **kwargs)
            finally:
                heartbeat.quiet()
        except BaseException as exc:
            cancelled = interrupted_by_cancel(exc, heartbeat)
            if not cancelled and not isinstance(exc, Exception):
                _finish(store, job_id, Status.FAILED, traceback.format_exception(exc))
                raise
            status = Status.CANCELLED if cancelled else Status.FAILED
            final = _final_call(store, job_id, status, traceback.format_exception(exc))
            return (False, describe(exc)), final
        try:
            value, note = storable(result, spec.get("max_result_bytes", DEFAULT_MAX_RESULT_BYTES))
        except UnstorableResult as exc:
            return (False, describe(exc)), _final_call(store, job_id, Status.FAILED, [f"{exc}\n"])
        return (True, result), _final_call(store, job_id, Status.SUCCESS, value, note)
    finally:
        if heartbeat.stop():
            _forget_cancel(store, job_id)


def _final_call(
    store: Store, job_id: str, status: Status, result: Any, note: str | None = None
) -> list[dict[str, Any]]:
    """The final write of :func:`_finish` as a pipelined call."""
    fields: dict[str, Any] = {"status": status.value, "result": result, "date_end": now()}
    if note:
        fields["note"] = note
    return [update_call(job_id, fields, store.key_timeout, "final", ("remove", 0))]


def _start_after(store: Store, spec: JobSpec, owed: list[dict[str, Any]]) -> bool:
    """Send ``owed`` (the last element's final write) with this element's ``Running`` write.

    Returns whether the element is now ``Running`` (``False``: it was no
    longer ``Queued``, a cancel got there first).  Retried while Redis is away.
    """
    fields = {"status": Status.RUNNING.value, "date_start": now()}
    call = update_call(
        spec["id"], fields, store.key_timeout, "queued", ("add", LEASE_TTL), spec.get("info")
    )
    replies, retried = persist(lambda: store.update_calls([*owed, call]))
    owed.clear()
    applied, before = replies[-1]
    return applied == 1 or (retried and text(before) == Status.RUNNING)


def _stop_chunk(store: Store, rest: list[JobSpec], exc: BaseException) -> None:
    """Fail the elements of a stopped chunk that had not started (best effort)."""
    fields = {
        "status": Status.FAILED.value,
        "date_end": now(),
        "result": [CHUNK_STOPPED.format(describe(exc)) + "\n"],
    }
    calls = [update_call(s["id"], fields, store.key_timeout, "queued") for s in rest]
    try:
        if calls:
            store.update_calls(calls)
    except redis.RedisError:  # the watchdog fails them once the chunk's task ended
        pass
