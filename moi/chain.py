"""Job chaining: a running job asks for the next jobs, which run after it.

A job asks in the way of its kind:

- a Python function calls the ``moi_chain`` keyword argument it receives:
  ``moi_chain(func, *args, env=None, name=None)`` for a function job,
  ``moi_chain("TYPE", environ={...}, name=None)`` for a typed job;
- a typed job returns ``chain: [{"type": ..., "environ": {...}, "name": ...}]``
  in its environ;
- a shell command (``system_call``, the ``system`` type) prints one line per
  next job on stdout: ``MOI-CHAIN {"type": ..., "environ": {...}}`` or
  ``MOI-CHAIN {"cmd": ..., "env": {...}}`` (a next command, run with these
  environment variables added).

A ``chain`` entry may be either shape too.  When the asking job succeeds,
its final status, the next jobs' ``Queued`` info objects (same parent,
``chained_from`` and ``chain: {root, index}``), ``chained_to`` on the asking
job and the watchdog's bookkeeping are one atomic Redis step
(:data:`moi.lua.CHAIN`); then the engine itself hands the next jobs to the
cluster, so a chain runs to its end when its submitter has exited.  An engine
that dies in between leaves bookkeeping without a task: the watchdog fails
those jobs as lost after its grace period.

Limits, read where the first job is submitted: ``MOI_CHAIN_TIMEOUT`` (seconds
since the chain's first job started, default 3600) and ``MOI_CHAIN_MAX``
(most jobs in one chain, counted along it, default 1000).  A request past a
limit, or a malformed one, fails the asking job with the reason.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ipyparallel as ipp

from moi import config, runtime
from moi.engine import ChainState, JobSpec, run_job, run_typed
from moi.errors import ChainError, MoiError
from moi.group import create_info
from moi.job import system_call
from moi.status import Status
from moi.store import Store, now

__all__ = ["LINE_PREFIX", "Request", "limits", "parse_entry", "from_stdout", "jobs", "hand_on"]

#: What starts a chain request printed by a shell command.
LINE_PREFIX = "MOI-CHAIN "
DEFAULT_TIMEOUT = 3600.0
DEFAULT_MAX = 1000


@dataclass
class Request:
    """One next job a running job asked for."""

    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = "chained"
    fields: dict[str, Any] = field(default_factory=dict)


def limits() -> ChainState:
    """A new chain's state with its limits from ``MOI_CHAIN_TIMEOUT`` and ``MOI_CHAIN_MAX``.

    Raises
    ------
    MoiError
        When a variable is not a positive number.
    """
    timeout = float(config.positive(os.environ, "MOI_CHAIN_TIMEOUT", DEFAULT_TIMEOUT, float))
    most = int(config.positive(os.environ, "MOI_CHAIN_MAX", DEFAULT_MAX))
    return ChainState(root=None, index=0, started=None, timeout=timeout, max=most)


def _typed(job_type: Any, environ: Any, name: Any) -> Request:
    from moi import types

    if not isinstance(job_type, str):
        raise ChainError(f"a chained job's type must be a string, not {job_type!r}")
    try:
        checked = types.check({} if environ is None else environ, job_type)
    except MoiError as exc:
        raise ChainError(f"chained job of type {job_type!r}: {exc}") from None
    # partials travel by reference: a smaller task than the functions canned by their code
    typed = functools.partial(run_typed)
    return Request(typed, (checked,), {}, _name(name, job_type), {"job_type": job_type})


def _system(cmd: Any, env: Any, name: Any) -> Request:
    if not isinstance(cmd, str) or not cmd.strip():
        raise ChainError(f"a chained command's cmd must be a non-empty string, not {cmd!r}")
    env = _env(env)
    call = functools.partial(system_call)
    return Request(call, (cmd,), {"env": env} if env else {}, _name(name, cmd[:40]))


def _env(env: Any) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ChainError(f"a chained job's env must map names to strings, not {env!r}")
    return env


def _name(name: Any, default: str) -> str:
    if name is None:
        return default
    if not isinstance(name, str):
        raise ChainError(f"a chained job's name must be a string, not {name!r}")
    return name


def parse_entry(entry: Any) -> Request:
    """The request in one JSON entry: ``{type, environ, name}`` or ``{cmd, env, name}``.

    Raises
    ------
    ChainError
        For anything else, saying what was expected.
    """
    if not isinstance(entry, dict):
        raise ChainError(f"a chain request must be a JSON object, not {entry!r}")
    unknown = set(entry) - {"type", "environ", "cmd", "env", "name"}
    if unknown:
        raise ChainError(f"a chain request has unknown fields {sorted(unknown)}")
    if ("type" in entry) == ("cmd" in entry):
        raise ChainError(
            'a chain request needs "type" (with "environ") or "cmd" (with "env"), '
            f"exactly one: {json.dumps(entry)[:200]}"
        )
    if "type" in entry:
        if "env" in entry:
            raise ChainError('"env" goes with "cmd"; a typed job gets "environ"')
        return _typed(entry["type"], entry.get("environ"), entry.get("name"))
    if "environ" in entry:
        raise ChainError('"environ" goes with "type"; a command gets "env"')
    return _system(entry["cmd"], entry.get("env"), entry.get("name"))


def from_environ(chain: Any) -> list[Request]:
    """The requests in a typed job's ``chain`` (a list of entries)."""
    if not isinstance(chain, list):
        raise ChainError(f"the environ's chain must be a list of requests, not {chain!r}")
    return [parse_entry(entry) for entry in chain]


def entries_from_stdout(stdout: str) -> list[Any]:
    """The JSON entries of the chain request lines (:data:`LINE_PREFIX`) a command printed."""
    found = []
    for line in stdout.splitlines():
        if line.startswith(LINE_PREFIX):
            try:
                found.append(json.loads(line[len(LINE_PREFIX) :]))
            except ValueError as exc:
                raise ChainError(f"malformed chain request line {line[:200]!r}: {exc}") from None
    return found


def from_stdout(stdout: str) -> list[Request]:
    """The requests a command printed (lines starting with :data:`LINE_PREFIX`)."""
    return [parse_entry(entry) for entry in entries_from_stdout(stdout)]


def request(
    func_or_type: Callable[..., Any] | str,
    *args: Any,
    environ: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    name: str | None = None,
) -> Request:
    """The request of one ``moi_chain(...)`` call (see the module's text)."""
    if isinstance(func_or_type, str):
        if args or env is not None:
            raise ChainError("moi_chain(TYPE, ...) takes the environ only (environ=...)")
        return _typed(func_or_type, environ, name)
    if not callable(func_or_type):
        raise ChainError(f"moi_chain wants a function or a job type's name, not {func_or_type!r}")
    if environ is not None:
        raise ChainError("environ= goes with a job type's name; pass a function its arguments")
    env = _env(env)
    default = getattr(func_or_type, "__name__", "chained")
    return Request(func_or_type, args, {"env": env} if env else {}, _name(name, default))


# -- on the engine: ending the asking job and handing the next ones over ------------------
@functools.cache
def _view(connection_file: str) -> ipp.LoadBalancedView:
    """This engine's own client of its cluster (one per process), and its view."""
    return ipp.Client(connection_file).load_balanced_view()


def _check_limits(job_id: str, state: ChainState, count: int) -> None:
    index = state["index"]
    if index + 1 >= state["max"]:
        raise ChainError(
            f"job {job_id} asked for {count} next job(s) but its chain already has "
            f"{index + 1} jobs, the most MOI_CHAIN_MAX allows ({state['max']:.0f})"
        )
    ran = time.time() - (state["started"] or time.time())
    if ran > state["timeout"]:
        raise ChainError(
            f"job {job_id} asked for a next job after its chain ran {ran:.1f} s, "
            f"past MOI_CHAIN_TIMEOUT ({state['timeout']:g} s)"
        )


def _next_spec(spec: JobSpec, req: Request) -> tuple[JobSpec, dict[str, Any]]:
    state = spec["chain"]
    info = create_info(req.name, "job", parent=spec["parent"], context=spec["context"])
    root = state["root"] or spec["id"]
    info.update(
        req.fields, chained_from=spec["id"], chain={"root": root, "index": state["index"] + 1}
    )
    next_state = ChainState(
        root=root,
        index=state["index"] + 1,
        started=state["started"],
        timeout=state["timeout"],
        max=state["max"],
    )
    next_spec = JobSpec(**{**spec, "id": info["id"], "info": info, "chain": next_state})
    return next_spec, info


def hand_on(
    store: Store, spec: JobSpec, result: Any, note: str | None, requests: list[Any]
) -> list[str]:
    """End job ``spec`` ``Success`` with ``result`` and start the ``requests`` after it.

    Returns the next jobs' ids (empty when the final write did not apply).

    Raises
    ------
    ChainError
        Past a limit, or without a cluster to hand over to; nothing is written.
    """
    from moi.engine import persist

    job_id = spec["id"]
    if not spec.get("connection_file") or not spec.get("parent") or "chain" not in spec:
        raise ChainError(f"job {job_id} cannot chain: it was not submitted by moi.job.submit")
    _check_limits(job_id, spec["chain"], len(requests))
    planned = [(req, *_next_spec(spec, req)) for req in requests]
    task = {"context": spec["context"], "connection_file": spec["connection_file"]}
    created = [(info, {**task, "chained_from": job_id}) for _, _, info in planned]
    fields: dict[str, Any] = {
        "status": Status.SUCCESS.value,
        "result": result,
        "date_end": now(),
        "chained_to": [info["id"] for _, _, info in planned],
    }
    if note:
        fields["note"] = note
    since = time.time()
    (applied, _), _ = persist(
        lambda: store.update_and_create(
            job_id, fields, created, since, guard="final", lease=("remove", 0)
        )
    )
    if not applied:
        return []
    view = _view(spec["connection_file"])
    for req, next_spec, info in planned:
        ar = view.apply_async(
            functools.partial(run_job, next_spec), req.func, *req.args, **req.kwargs
        )
        store.record_task(info["id"], {**task, "msg_id": ar.msg_ids[0]}, since)
    return [info["id"] for _, _, info in planned]


# -- reading a chain ----------------------------------------------------------------------
def jobs(job_id: str) -> list[dict[str, Any]]:
    """The info objects of the chain ``job_id`` belongs to, from its first job, in order.

    Follows ``chain.root`` back to the first job, then ``chained_to`` forward
    (depth first when a job asked for several).
    """
    store = runtime.store()
    start = store.require(job_id)
    root = (start.get("chain") or {}).get("root") or job_id
    found, todo, seen = [], [root], set()
    while todo:
        current = todo.pop(0)
        if current in seen:
            continue
        seen.add(current)
        info = store.get(current)
        if info is None:
            continue
        found.append(info)
        todo[:0] = [str(i) for i in info.get("chained_to") or []]
    return found


def duration(info: dict[str, Any]) -> str:
    """Seconds from a job's start to its end (or to now while it runs), or ``-``."""
    from datetime import datetime

    start, end = info.get("date_start"), info.get("date_end")
    if not start:
        return "-"
    try:
        stop = datetime.fromisoformat(end) if end else datetime.now()
        return f"{(stop - datetime.fromisoformat(start)).total_seconds():.3f} s"
    except (TypeError, ValueError):
        return "-"
