"""Contexts: named ipyparallel clusters jobs run on.

A context ``name`` is the IPython profile ``name`` (as in the original moi),
or the file named by ``MOI_CLUSTER_FILE_<NAME>``; with no contexts
configured, the default context is moi's own local cluster.  Connecting is
lazy: building a :class:`Context` does no I/O.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import ipyparallel as ipp

from moi import embedded, runtime
from moi.errors import ClusterUnavailableError, UnknownContextError

_clients: dict[str, ipp.Client] = {}


class Context:
    """A named cluster: ``client`` and the load-balanced view ``bv``.

    Parameters
    ----------
    name : str
        Context name, as configured.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._bv: ipp.LoadBalancedView | None = None

    def __repr__(self) -> str:
        return f"Context({self.name!r})"

    @property
    def client(self) -> ipp.Client:
        """The ipyparallel client, connected (and the cluster started) on first use."""
        if self.name not in _clients:
            _clients[self.name] = _connect(self.name)
        return _clients[self.name]

    @property
    def bv(self) -> ipp.LoadBalancedView:
        """Load-balanced view of the cluster (``temp_flags(after=...)`` builds DAGs)."""
        if self._bv is None or self._bv.client is not self.client:
            self._bv = self.client.load_balanced_view()
        return self._bv


def _connection_file(name: str) -> Path:
    cfg = runtime.settings()
    if name in cfg.cluster_files:
        return Path(cfg.cluster_files[name])
    if cfg.embedded_cluster and name == cfg.default_context:
        return embedded.ensure_cluster(cfg.state_dir, runtime.redis_url())
    ipython_dir = cfg.ipython_dir or os.environ.get("IPYTHONDIR") or Path.home() / ".ipython"
    return Path(ipython_dir) / f"profile_{name}" / "security" / "ipcontroller-client.json"


def _connect(name: str) -> ipp.Client:
    path = _connection_file(name)
    hint = (
        f"start one with `ipcluster start --profile={name}` or set MOI_CLUSTER_FILE_{name.upper()}"
    )
    if not path.exists():
        raise ClusterUnavailableError(
            f"no cluster reachable for context {name!r}: no connection file {path}; {hint}"
        )
    try:
        client = ipp.Client(str(path), timeout=5)
    except (OSError, TimeoutError) as exc:
        raise ClusterUnavailableError(
            f"no cluster reachable for context {name!r} ({exc}); {hint}"
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:  # unreadable connection file
        raise ClusterUnavailableError(
            f"no cluster reachable for context {name!r}: {path} is not an ipyparallel "
            f"connection file ({type(exc).__name__}: {exc}); {hint}"
        ) from exc
    if not client.ids:
        embedded.say(f"waiting for the engines of context {name!r} to register...")
        try:
            client.wait_for_engines(1, timeout=120)
        except TimeoutError as exc:
            client.close()
            raise ClusterUnavailableError(
                f"context {name!r} has no engines after 120 s; start some with ipcluster"
            ) from exc
    return client


def forget_clients(linger_ms: int | None = None) -> None:
    """Close every connected client, first sending what is queued for up to ``linger_ms``."""
    for client in _clients.values():
        client.close(linger=linger_ms)
    _clients.clear()


class Contexts(Mapping[str, Context]):
    """The configured contexts by name; ``ctxs[name]`` of an unknown name says which exist."""

    def __init__(self) -> None:
        self._made: dict[str, Context] = {}

    def _names(self) -> tuple[str, ...]:
        return runtime.settings().contexts

    def __getitem__(self, name: str) -> Context:
        if name not in self._names():
            known = ", ".join(self._names())
            raise UnknownContextError(f"unknown context {name!r}; configured: {known}")
        return self._made.setdefault(name, Context(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


def resolve(ctx: Context | str | None) -> Context:
    """Return the :class:`Context` for a context or its name (``None``: the default)."""
    if isinstance(ctx, Context):
        return ctx
    from moi import ctxs

    return ctxs[ctx or runtime.settings().default_context]
