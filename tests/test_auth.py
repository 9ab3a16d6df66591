"""API keys (issue 11, item 1): ``moi keys create/list/revoke``, ``moi templates``, and a real
``moi serve`` that becomes multi-user once keys exist (real processes, real Redis)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
from support import moi_cli, wait_until_listening

from moi import auth, keys, redis_server, runtime
from moi.errors import InvalidUserError, MoiError


@pytest.fixture
def made(moi_env: dict[str, str]) -> Iterator[list[str]]:
    """Prefixes of the keys a test makes; revoked afterwards (keys make moi serve multi-user)."""
    prefixes: list[str] = []
    yield prefixes
    for prefix in prefixes:
        try:
            auth.revoke(prefix)
        except MoiError:
            pass


def create(made: list[str], *args: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    done = moi_cli("keys", "create", *args)
    assert done.returncode == 0, done.stderr
    key = done.stdout.splitlines()[-1]
    made.append(auth.prefix_of(key) or "")
    return key, done


def test_create_prints_the_key_once_as_the_last_line_and_stores_its_hash(
    made: list[str], user: str
) -> None:
    key, done = create(made, "--user", user, "--note", "for the lab's robot")
    prefix = auth.prefix_of(key)
    assert prefix is not None and prefix in done.stdout.splitlines()[0]
    stored = runtime.redis_client().hget(keys.API_KEYS, prefix)
    assert stored is not None and key.encode() not in stored
    record = json.loads(stored)
    assert record["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert record["user"] == user and record["note"] == "for the lab's robot"
    assert record["admin"] is False and record["read_only"] is False
    everything = b"".join(
        runtime.redis_client().dump(k) or b"" for k in runtime.redis_client().keys("moi:apikeys*")
    )
    assert key.encode() not in everything
    info = auth.lookup(key)
    assert info is not None and info.user == user and info.prefix == prefix


def test_the_first_key_says_a_running_server_needs_a_restart(made: list[str], user: str) -> None:
    r = runtime.redis_client()
    saved = r.hgetall(keys.API_KEYS)  # other tests' keys, put back afterwards
    r.delete(keys.API_KEYS)
    try:
        _, first = create(made, "--user", user)
        _, second = create(made, "--user", user)
    finally:
        if saved:
            r.hset(keys.API_KEYS, mapping=saved)
    assert "restart it to log people in with their keys" in first.stderr
    assert "restart" not in second.stderr and len(first.stdout.splitlines()) == 2


def test_list_shows_every_field_but_never_the_key(made: list[str], user: str) -> None:
    key, _ = create(made, "--user", user, "--admin", "--note", "boss")
    ro, _ = create(made, "--user", user, "--read-only")
    auth.lookup(key)  # a use: "last used" is set
    listed = moi_cli("keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert key not in listed.stdout and ro not in listed.stdout
    assert key.split("_")[2][:10] not in listed.stdout
    line = next(row for row in listed.stdout.splitlines() if row.startswith(made[0]))
    assert user in line and "admin" in line and "boss" in line and "never" not in line
    line = next(row for row in listed.stdout.splitlines() if row.startswith(made[1]))
    assert "user,read-only" in line and "never" in line


def test_revoke_by_prefix_and_clear_errors(made: list[str], user: str) -> None:
    key, _ = create(made, "--user", user)
    missing = moi_cli("keys", "revoke", "zzzzzzzz")
    assert missing.returncode != 0 and "no key has the prefix 'zzzzzzzz'" in missing.stderr
    # two keys sharing a prefix's start: an ambiguous prefix revokes nothing
    others = [auth.create(user)[1].prefix for _ in range(40)]
    made.extend(others)
    starts = [p[0] for p in [made[0], *others]]
    shared = max(set(starts), key=starts.count)
    assert starts.count(shared) > 1  # 41 prefixes, 16 first characters
    ambiguous = moi_cli("keys", "revoke", shared)
    assert ambiguous.returncode != 0 and "give more of it" in ambiguous.stderr
    assert len(auth.list_keys()) >= 41
    done = moi_cli("keys", "revoke", made[0][:6])
    assert done.returncode == 0 and f"revoked key {made[0]}" in done.stdout
    assert auth.lookup(key) is None
    assert runtime.redis_client().hget(keys.API_KEYS, made[0]) is None


def test_bad_users_notes_and_keys_are_refused(made: list[str]) -> None:
    before = runtime.redis_client().hlen(keys.API_KEYS)
    done = moi_cli("keys", "create", "--user", str(uuid.uuid4()))
    assert done.returncode != 0 and "cannot be UUIDs" in done.stderr
    with pytest.raises(InvalidUserError):
        auth.create("")
    with pytest.raises(MoiError, match="note"):
        auth.create("someone", note="\x1b[2J")
    assert runtime.redis_client().hlen(keys.API_KEYS) == before
    key, info = auth.create("someone")
    made.append(info.prefix)
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
    for wrong in (tampered, "", "moi_", key + "x", key.replace(info.prefix, "00000000")):
        assert auth.lookup(wrong) is None


def test_templates_lists_the_toml_templates(moi_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        '[nightly]\njob_type = "ping"\ndescription = "the nightly ping"\nparams = { ping = 3 }\n'
    )
    done = moi_cli("templates", env={**os.environ, "MOI_TEMPLATES": str(path)})
    assert done.returncode == 0, done.stderr
    assert "nightly" in done.stdout and "the nightly ping" in done.stdout
    assert '"ping": 3' in done.stdout and str(path) in done.stdout
    path.write_text("[broken\n")
    done = moi_cli("templates", env={**os.environ, "MOI_TEMPLATES": str(path)})
    assert done.returncode != 0 and "not valid TOML" in done.stderr


@contextmanager
def serving(tmp_path: Path, *args: str) -> Iterator[tuple[int, Path]]:
    port = redis_server.free_port()
    out = tmp_path / f"serve-{port}.out"
    environ = {k: v for k, v in os.environ.items() if k != "MOI_TOKEN"}
    with out.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moi.cli", "serve", "--port", str(port), *args],
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env=environ,
            cwd="/",
        )
    try:
        wait_until_listening(port, proc, out.read_text)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


def fetch(port: int, path: str, cookie: str | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    response = conn.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    conn.close()
    return response


def test_moi_serve_without_a_token_serves_every_key_holder(
    made: list[str], user: str, tmp_path: Path
) -> None:
    key, _ = create(made, "--user", user)
    with serving(tmp_path) as (port, out):
        deadline = time.monotonic() + 10
        while "every user with an API key" not in out.read_text():
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        assert "?token=" not in out.read_text()
        login = fetch(port, f"/?token={quote(key)}")
        assert login.status == 302
        cookie = login.getheader("Set-Cookie", "").split(";", 1)[0]
        page = fetch(port, "/", cookie)
        assert page.status == 200 and f"user: {user}".encode() in page.body  # type: ignore[attr-defined]
        moi_cli("keys", "revoke", made[0])
        assert fetch(port, "/", cookie).status == 302


def test_moi_serve_with_a_token_stays_single_user(
    made: list[str], user: str, tmp_path: Path
) -> None:
    key, _ = create(made, "--user", user)
    token = "a-long-enough-token-0123456789"
    with serving(tmp_path, "--user", "solo", "--token-file", str(_private(tmp_path, token))) as (
        port,
        out,
    ):
        assert fetch(port, f"/?token={quote(key)}").status == 302
        assert fetch(port, f"/?token={quote(key)}").getheader("Set-Cookie") is None
        login = fetch(port, f"/?token={token}")
        cookie = login.getheader("Set-Cookie", "").split(";", 1)[0]
        assert b"user: solo" in fetch(port, "/", cookie).body  # type: ignore[attr-defined]


def _private(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(0o600)
    return path
