"""Settings from environment variables and the original ini file.

Environment variables win over the ini file named by ``MOI_CONFIG_FP``
(the original moi's ``[redis]`` and ``[ipython]`` sections); with nothing
set, moi runs its own embedded Redis and cluster (see :mod:`moi.embedded`).
Nothing here opens a connection.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from moi.errors import MoiError

#: Default life of every key moi writes: fourteen days, in seconds.
DEFAULT_KEY_TIMEOUT = 86400 * 14
DEFAULT_CONTEXT = "default"


@dataclass(frozen=True)
class Settings:
    """Resolved moi settings.

    Attributes
    ----------
    redis_url : str or None
        URL of the Redis server; ``None`` means the embedded one.
    state_dir : Path
        Where the embedded Redis and cluster keep their files.
    contexts : tuple of str
        Context names; each is an ipyparallel profile unless embedded.
    default_context : str
        Context used when none is named.
    embedded_cluster : bool
        Whether the default context runs on moi's own local cluster.
    ipython_dir : str or None
        IPython directory holding the profiles of configured contexts.
    key_timeout : int
        Seconds before a key written by moi expires.
    """

    redis_url: str | None
    state_dir: Path
    contexts: tuple[str, ...]
    default_context: str
    embedded_cluster: bool
    ipython_dir: str | None = None
    key_timeout: int = DEFAULT_KEY_TIMEOUT
    cluster_files: dict[str, str] = field(default_factory=dict)


def _ini(path: str | None) -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    if path:
        if not os.path.exists(path):
            raise MoiError(f"MOI_CONFIG_FP names {path!r}, which does not exist")
        try:
            parser.read(path)
        except configparser.Error as exc:
            raise MoiError(
                f"MOI_CONFIG_FP names {path!r}, which is not a valid ini file: {exc}"
            ) from None
    return parser


def _redis_url_from_ini(ini: configparser.ConfigParser) -> str | None:
    if not ini.has_section("redis"):
        return None
    sec = ini["redis"]
    host, port, db = sec.get("host", "localhost"), sec.get("port", "6379"), sec.get("db", "0")
    password = sec.get("password", "")
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"


def _default_state_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "moi"


def positive(env: Mapping[str, str], name: str, default: float, kind: type = int) -> float:
    """The positive number (``int`` or ``float``) variable ``name`` holds, or ``default``.

    Raises
    ------
    MoiError
        When the variable is set to anything but a positive number.
    """
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise MoiError(f"{name} must be a positive number, not {raw!r}")
    return value


def _key_timeout(env: Mapping[str, str]) -> int:
    return int(positive(env, "MOI_KEY_TIMEOUT", DEFAULT_KEY_TIMEOUT))


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``environ`` (default ``os.environ``) and the ini file.

    Parameters
    ----------
    environ : dict, optional
        Environment to read; ``os.environ`` when omitted.

    Returns
    -------
    Settings
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    ini = _ini(env.get("MOI_CONFIG_FP"))
    redis_url = env.get("MOI_REDIS_URL") or _redis_url_from_ini(ini)
    ini_contexts = ini.get("ipython", "context", fallback=None)
    names = env.get("MOI_CONTEXTS") or ini_contexts
    contexts = tuple(n.strip() for n in (names or DEFAULT_CONTEXT).split(",") if n.strip())
    if not contexts:
        raise MoiError(f"no context names in {names!r}: list them separated by commas")
    default = (
        env.get("MOI_DEFAULT_CONTEXT")
        or ini.get("ipython", "default", fallback=None)
        or contexts[0]
    )
    if default not in contexts:
        contexts = (*contexts, default)
    cluster_files = {
        name: env[f"MOI_CLUSTER_FILE_{name.upper()}"]
        for name in contexts
        if f"MOI_CLUSTER_FILE_{name.upper()}" in env
    }
    return Settings(
        redis_url=redis_url,
        state_dir=Path(env.get("MOI_STATE_DIR") or _default_state_dir(env)),
        contexts=contexts,
        default_context=default,
        embedded_cluster=names is None,
        ipython_dir=env.get("MOI_IPYTHON_DIR"),
        key_timeout=_key_timeout(env),
        cluster_files=cluster_files,
    )
