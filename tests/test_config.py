"""Settings: environment variables, the original ini file, and embedded defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from moi import config, embedded
from moi.errors import MoiError

INI = """
[redis]
host = redis.example.org
port = 7000
password = p@ss/word
db = 3

[ipython]
context = qiita-general, qiita-demo ,reserved
default = qiita-demo
"""


@pytest.fixture
def ini(tmp_path: Path) -> str:
    path = tmp_path / "moi.cfg"
    path.write_text(INI)
    return str(path)


def test_ini_file_is_honoured(ini, tmp_path):
    cfg = config.load({"MOI_CONFIG_FP": ini, "MOI_STATE_DIR": str(tmp_path)})
    assert cfg.redis_url == "redis://:p%40ss%2Fword@redis.example.org:7000/3"
    assert cfg.contexts == ("qiita-general", "qiita-demo", "reserved")
    assert cfg.default_context == "qiita-demo"
    assert cfg.embedded_cluster is False
    assert cfg.state_dir == tmp_path
    assert cfg.key_timeout == config.DEFAULT_KEY_TIMEOUT == 14 * 86400


def test_ini_without_password(tmp_path):
    path = tmp_path / "moi.cfg"
    path.write_text("[redis]\nhost = localhost\nport = 6379\ndb = 0\n")
    cfg = config.load({"MOI_CONFIG_FP": str(path)})
    assert cfg.redis_url == "redis://localhost:6379/0"
    assert cfg.contexts == ("default",) and cfg.embedded_cluster is True


def test_environment_overrides_ini(ini):
    cfg = config.load(
        {
            "MOI_CONFIG_FP": ini,
            "MOI_REDIS_URL": "redis://10.0.0.1:6380/2",
            "MOI_CONTEXTS": "a,b",
            "MOI_DEFAULT_CONTEXT": "b",
            "MOI_KEY_TIMEOUT": "60",
            "MOI_CLUSTER_FILE_A": "/tmp/a.json",
        }
    )
    assert cfg.redis_url == "redis://10.0.0.1:6380/2"
    assert cfg.contexts == ("a", "b")
    assert cfg.default_context == "b"
    assert cfg.key_timeout == 60
    assert cfg.cluster_files == {"a": "/tmp/a.json"}


def test_default_context_outside_the_list_is_added(ini):
    cfg = config.load({"MOI_CONFIG_FP": ini, "MOI_DEFAULT_CONTEXT": "extra"})
    assert cfg.default_context == "extra"
    assert cfg.contexts == ("qiita-general", "qiita-demo", "reserved", "extra")


def test_missing_ini_file_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "absent.cfg")
    with pytest.raises(MoiError, match=f"MOI_CONFIG_FP names '{missing}', which does not exist"):
        config.load({"MOI_CONFIG_FP": missing})


def test_nothing_configured_means_embedded(tmp_path):
    cfg = config.load({"XDG_STATE_HOME": str(tmp_path)})
    assert cfg.redis_url is None
    assert cfg.embedded_cluster is True
    assert cfg.contexts == ("default",) and cfg.default_context == "default"
    assert cfg.state_dir == tmp_path / "moi"


def test_malformed_ini_file_is_a_clear_error(tmp_path):
    path = tmp_path / "moi.cfg"
    path.write_text("host = nowhere\n")
    with pytest.raises(MoiError, match="not a valid ini file"):
        config.load({"MOI_CONFIG_FP": str(path)})


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"MOI_KEY_TIMEOUT": "soon"}, "MOI_KEY_TIMEOUT must be a positive number"),
        ({"MOI_KEY_TIMEOUT": "0"}, "MOI_KEY_TIMEOUT must be a positive number"),
        ({"MOI_CONTEXTS": " , "}, "no context names"),
    ],
)
def test_bad_values_are_clear_errors(environ, message):
    with pytest.raises(MoiError, match=message):
        config.load(environ)


@pytest.mark.parametrize("value", ["many", "0", "-1"])
def test_bad_engine_count_is_a_clear_error(value, monkeypatch):
    monkeypatch.setenv("MOI_ENGINES", value)
    with pytest.raises(MoiError, match="MOI_ENGINES must be a positive number"):
        embedded.engine_count()
    monkeypatch.setenv("MOI_ENGINES", "3")
    assert embedded.engine_count() == 3
