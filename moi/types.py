"""Job types and filters: named functions from one environ to the next.

A *job type* is a function ``environ -> environ``; the *environ* is a dict
of JSON values, the job's only input and only output.  Types come from
three places, and a later one wins on a name clash:

1. the built-ins ``ping``, ``echo``, ``python`` and ``system``;
2. the entry-point group ``moi.jobs`` of installed packages
   (``name = "pkg.mod:func"``);
3. :func:`register`, at run time (in this process only).

*Filters* are functions ``environ -> environ`` too, from the group
``moi.filters`` or :func:`register_filter`.  An environ's ``prefilters``
and ``postfilters`` (lists of names) are applied, in that order, before and
after the type.

:func:`run` runs one typed job here; :func:`moi.job.submit_type` runs one on
the cluster, where the engine looks the type up in its own environment.
Either way the job runs in a fresh temporary working directory, removed
afterwards, and its final environ carries ``result``: ``SUCCESS``, or
``FAILURE`` with ``exception`` and ``traceback`` when it raised.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Literal, overload

from moi.errors import MoiError

__all__ = [
    "Environ",
    "Failure",
    "Plugin",
    "register",
    "register_filter",
    "unregister",
    "job_types",
    "filters",
    "check",
    "run",
    "execute",
    "refresh",
]

#: The dict a job type takes and returns (JSON values only).
Environ = dict[str, Any]
#: A job type or a filter.
EnvironFunc = Callable[[Environ], Environ]
Kind = Literal["type", "filter"]

#: Entry-point groups that job types and filters come from.
GROUPS: dict[Kind, str] = {"type": "moi.jobs", "filter": "moi.filters"}
#: What ``moi types`` says of a function given to :func:`register`.
AT_RUN_TIME = "registered at run time"
BUILT_IN = "built-in"


class Failure(Exception):  # noqa: N818 -- it is what a type raises: "the job failed"
    """Raised by a job type to fail its job while keeping what it found.

    Parameters
    ----------
    message : str
        Why the job failed; becomes the environ's ``exception``.
    environ : dict, optional
        The environ to fail with (``stdout`` of a command, say); the input
        environ when omitted.
    """

    def __init__(self, message: str, environ: Environ | None = None) -> None:
        super().__init__(message)
        self.environ = environ


@dataclass(frozen=True)
class Plugin:
    """A job type or filter as moi knows it.

    Attributes
    ----------
    name : str
    kind : {'type', 'filter'}
    func : callable or None
        ``None`` for a broken plug-in.
    source : str
        ``built-in``, ``entry point pkg.mod:func`` or ``registered at run time``.
    description : str
        One line: the one given, else the first line of the docstring.
    error : str or None
        Why a broken plug-in could not be loaded.
    """

    name: str
    kind: Kind
    func: EnvironFunc | None
    source: str
    description: str
    error: str | None = None


def _first_line(func: Any) -> str:
    doc = getattr(func, "__doc__", None) or ""
    lines = [line.strip() for line in doc.strip().splitlines()]
    return lines[0] if lines else ""


# -- built-in types --------------------------------------------------------------
def ping(environ: Environ) -> Environ:
    """Answer: set pong to the value of ping."""
    environ["pong"] = environ.get("ping")
    return environ


def echo(environ: Environ) -> Environ:
    """Return the environ it got."""
    return environ


def python(environ: Environ) -> Environ:
    """Run cmd as a Python function body; what it returns goes to output.

    The code sees the environ as the name ``environ`` and may change it.
    """
    from moi.job import run_python

    environ["output"] = run_python(_cmd(environ), {"environ": environ})
    return environ


def system(environ: Environ) -> Environ:
    """Run cmd in the shell; set stdout, stderr, returncode; a non-zero exit fails.

    Lines it prints starting with ``MOI-CHAIN `` are added to the environ's
    ``chain`` (see :mod:`moi.chain`).
    """
    from moi.job import run_command

    stdout, stderr, returncode = run_command(_cmd(environ))
    environ.update(stdout=stdout, stderr=stderr, returncode=returncode)
    if returncode != 0:
        raise Failure(f"the command exited with status {returncode}", environ)
    if "MOI-CHAIN " in stdout:  # the command asks for next jobs (moi.chain)
        from moi import chain

        environ["chain"] = [*environ.get("chain", []), *chain.entries_from_stdout(stdout)]
    return environ


def _cmd(environ: Environ) -> str:
    cmd = environ.get("cmd")
    if not isinstance(cmd, str):
        raise Failure("the environ needs `cmd`, a string")
    return cmd


_BUILT_INS: dict[str, EnvironFunc] = {
    "ping": ping,
    "echo": echo,
    "python": python,
    "system": system,
}


# -- the registry ------------------------------------------------------------------
_registered: dict[Kind, dict[str, Plugin]] = {"type": {}, "filter": {}}


@functools.cache
def _entry_point_plugins(kind: Kind) -> dict[str, Plugin]:
    """Load every entry point of ``kind``'s group once; a broken one is kept with its error."""
    found: dict[str, Plugin] = {}
    for ep in entry_points(group=GROUPS[kind]):
        source = f"entry point {ep.value}"
        try:
            func = ep.load()
        except Exception as exc:  # noqa: BLE001 -- any import error is the plug-in's, not ours
            error = f"cannot load {ep.value}: {type(exc).__name__}: {exc}"
            found[ep.name] = Plugin(ep.name, kind, None, source, "", error)
            continue
        if not callable(func):
            error = f"{ep.value} is a {type(func).__name__}, not a function"
            found[ep.name] = Plugin(ep.name, kind, None, source, "", error)
            continue
        found[ep.name] = Plugin(ep.name, kind, func, source, _first_line(func))
    return found


def refresh() -> None:
    """Forget the loaded entry points: the next look-up reads the installed packages again."""
    _entry_point_plugins.cache_clear()
    importlib.invalidate_caches()


def _all(kind: Kind) -> dict[str, Plugin]:
    plugins: dict[str, Plugin] = {}
    if kind == "type":
        for name, func in _BUILT_INS.items():
            plugins[name] = Plugin(name, "type", func, BUILT_IN, _first_line(func))
    plugins.update(_entry_point_plugins(kind))
    plugins.update(_registered[kind])
    return dict(sorted(plugins.items()))


def job_types() -> dict[str, Plugin]:
    """Every job type known here, by name (broken plug-ins included, with their error)."""
    return _all("type")


def filters() -> dict[str, Plugin]:
    """Every filter known here, by name (broken plug-ins included, with their error)."""
    return _all("filter")


@overload
def register(
    name: str, func: None = None, description: str | None = None
) -> Callable[[EnvironFunc], EnvironFunc]: ...
@overload
def register(name: str, func: EnvironFunc, description: str | None = None) -> EnvironFunc: ...
def register(
    name: str, func: EnvironFunc | None = None, description: str | None = None
) -> EnvironFunc | Callable[[EnvironFunc], EnvironFunc]:
    """Register job type ``name`` in this process; without ``func``, a decorator.

    Parameters
    ----------
    name : str
        The type's name; it replaces a built-in or entry-point type of that name.
    func : callable, optional
        ``environ -> environ``.
    description : str, optional
        One line for ``moi types``; the first line of the docstring by default.

    Returns
    -------
    callable
        ``func`` (or the decorator, which returns the function it gets).

    Notes
    -----
    A type registered this way is known to this process only: :func:`run`
    finds it, an engine does not (install an entry point where the engines
    run, or register it there).
    """
    return _register("type", name, func, description)


@overload
def register_filter(
    name: str, func: None = None, description: str | None = None
) -> Callable[[EnvironFunc], EnvironFunc]: ...
@overload
def register_filter(
    name: str, func: EnvironFunc, description: str | None = None
) -> EnvironFunc: ...
def register_filter(
    name: str, func: EnvironFunc | None = None, description: str | None = None
) -> EnvironFunc | Callable[[EnvironFunc], EnvironFunc]:
    """Register filter ``name`` in this process; without ``func``, a decorator.

    See :func:`register`.
    """
    return _register("filter", name, func, description)


def _register(
    kind: Kind, name: str, func: EnvironFunc | None, description: str | None
) -> EnvironFunc | Callable[[EnvironFunc], EnvironFunc]:
    if not isinstance(name, str) or not name:
        raise MoiError(f"a {kind} name must be a non-empty string, not {name!r}")

    def add(f: EnvironFunc) -> EnvironFunc:
        if not callable(f):
            raise MoiError(f"{kind} {name!r}: {f!r} is not callable")
        text = description if description is not None else _first_line(f)
        _registered[kind][name] = Plugin(name, kind, f, AT_RUN_TIME, text)
        return f

    return add if func is None else add(func)


def unregister(name: str, kind: Kind = "type") -> None:
    """Forget a type (or filter) given to :func:`register`; nothing if there was none."""
    _registered[kind].pop(name, None)


def _label(kind: Kind) -> str:
    return "job type" if kind == "type" else "filter"


def lookup(name: str, kind: Kind = "type", where: str | None = None) -> EnvironFunc:
    """The function of type (or filter) ``name``.

    Parameters
    ----------
    name : str
    kind : {'type', 'filter'}
    where : str, optional
        Where the look-up runs (``engine 3 (host:pid)``): a missing name is
        then reported as not installed there.

    Raises
    ------
    MoiError
        For an unknown name (listing the known ones) or a broken plug-in.
    """
    plugins = _all(kind)
    if name not in plugins and where is not None:
        refresh()  # installed since this process first looked
        plugins = _all(kind)
    plugin = plugins.get(name) if isinstance(name, str) else None
    if plugin is None:
        if where is not None:
            raise MoiError(f"{_label(kind)} {name} is not installed on {where}")
        known = ", ".join(plugins) or "none"
        raise MoiError(f"unknown {_label(kind)} {name!r}; known: {known}")
    if plugin.func is None:
        raise MoiError(f"{_label(kind)} {name!r} is broken ({plugin.source}): {plugin.error}")
    return plugin.func


# -- checking and running -----------------------------------------------------------
def _filter_names(environ: Environ, key: str) -> list[str]:
    names = environ.get(key, [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise MoiError(f"the environ's {key} must be a list of filter names, not {names!r}")
    return names


def check(environ: Any, job_type: str | None = None) -> Environ:
    """Refuse a typed job that cannot run here; return its environ, ``job_type`` set.

    Parameters
    ----------
    environ : dict
        The job's environ (JSON values only).
    job_type : str, optional
        The type; ``environ['job_type']`` when omitted.

    Returns
    -------
    dict
        A copy of ``environ`` with ``job_type`` set.

    Raises
    ------
    MoiError
        A non-object environ, no or an unknown type, an unknown filter, a
        broken plug-in, values JSON cannot hold.
    """
    if not isinstance(environ, dict):
        raise MoiError(f"the environ must be a JSON object, not {_json_kind(environ)}")
    if job_type is None:
        job_type = environ.get("job_type")
        if job_type is None:
            raise MoiError("the environ has no job_type: name the job type to run")
    if not isinstance(job_type, str):
        raise MoiError(f"job_type must be a string, not {job_type!r}")
    lookup(job_type)
    for key in ("prefilters", "postfilters"):
        for name in _filter_names(environ, key):
            lookup(name, "filter")
    try:
        copy = json.loads(json.dumps(environ, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise MoiError(f"the environ must hold JSON values only: {exc}") from None
    copy["job_type"] = job_type
    return copy


def _json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else "a value")


def parse(text: str, what: str = "the environ") -> Environ:
    """Parse JSON ``text`` into an environ; :class:`MoiError` for malformed JSON or no object."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise MoiError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MoiError(f"{what} must be a JSON object, not {_json_kind(value)}")
    return value


@contextlib.contextmanager
def _scratch_dir() -> Iterator[str]:
    """A fresh temporary directory as the working directory; removed afterwards."""
    before = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="moi-job-", ignore_cleanup_errors=True) as path:
        os.chdir(path)
        try:
            yield path
        finally:
            os.chdir(before)


def _apply(name: str, kind: Kind, func: EnvironFunc, environ: Environ) -> Environ:
    out = func(environ)
    if not isinstance(out, dict):
        raise Failure(
            f"{_label(kind)} {name!r} returned {type(out).__name__}, not a dict (the environ)",
            environ,
        )
    return out


def execute(environ: Environ, where: str | None = None) -> Environ:
    """Run the typed job ``environ`` names, in a temporary directory; return the final environ.

    Unlike :func:`run` it does not check the environ first: an unknown type
    or filter fails the job like any exception.  ``KeyboardInterrupt`` (a
    cancel) is not caught.

    Parameters
    ----------
    environ : dict
        With ``job_type``; ``prefilters``, ``postfilters`` optional.
    where : str, optional
        Where it runs, for the "is not installed on ..." message.

    Returns
    -------
    dict
        With ``result`` ``SUCCESS``; or ``FAILURE``, ``exception`` and ``traceback``.
    """
    current = dict(environ)
    try:
        job_type = current.get("job_type")
        func = lookup(job_type, "type", where)  # type: ignore[arg-type]
        pre = [(n, lookup(n, "filter", where)) for n in _filter_names(current, "prefilters")]
        post = [(n, lookup(n, "filter", where)) for n in _filter_names(current, "postfilters")]
        with _scratch_dir():
            for name, f in pre:
                current = _apply(name, "filter", f, current)
            current = _apply(str(job_type), "type", func, current)
            for name, f in post:
                current = _apply(name, "filter", f, current)
        try:
            json.dumps(current, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise Failure(f"the final environ holds a value JSON cannot: {exc}") from None
    except Exception as exc:  # noqa: BLE001 -- the job's failure is recorded, not raised
        if isinstance(exc, Failure) and exc.environ is not None:
            current = dict(exc.environ)
        current = {k: v for k, v in current.items() if _is_json(v)}
        current.update(
            result="FAILURE",
            exception=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc)),
        )
        return current
    current["result"] = "SUCCESS"
    return current


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def run(environ: Environ) -> Environ:
    """Run one typed job here (``environ['job_type']`` names it); return the final environ.

    Raises
    ------
    MoiError
        Before running, for an environ :func:`check` refuses.
    """
    return execute(check(environ))
