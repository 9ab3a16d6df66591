"""The Redis job tree: atomic merges, exact JSON, one-round-trip reads, TTLs, publishes."""

from __future__ import annotations

import json
import math
import random
import threading
from typing import Any

import pytest
import redis
from support import subscribed, wait_for_message

from moi import keys, runtime, watchdog
from moi.errors import MoiError, UnknownIdError
from moi.group import create_info, find_user_group, get_user_from_id
from moi.job import submit, wait
from moi.store import Store

TTL = 1000


@pytest.fixture
def scratch_url(moi_env: dict[str, str]) -> str:
    """A database of its own (15), flushed around each test, that no watchdog sweeps."""
    url = moi_env["MOI_REDIS_URL"].rsplit("/", 1)[0] + "/15"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def store(scratch_url: str) -> Store:
    return Store(redis.Redis.from_url(scratch_url), TTL)


def new_job(store: Store, parent: str | None = "group", **fields: Any) -> dict[str, Any]:
    info = create_info("job", "job", parent=parent, context="default") | fields
    store.create(info, parent_if_missing=create_info("group", "group", id=parent))
    return info


# -- atomic merges ---------------------------------------------------------------
def test_fifty_concurrent_writers_lose_nothing(store, scratch_url):
    info = new_job(store)
    barrier = threading.Barrier(50)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        own = Store(redis.Redis.from_url(scratch_url), TTL)
        try:
            barrier.wait(timeout=30)
            for step in range(5):
                own.update(info["id"], {f"field_{n}": [n, step], "status": f"writer {n}"})
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            own.r.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    stored = store.require(info["id"])
    assert {k: stored[k] for k in stored if k.startswith("field_")} == {
        f"field_{n}": [n, 4] for n in range(50)
    }
    assert stored["status"] in {f"writer {n}" for n in range(50)}
    assert {k: stored[k] for k in info if k != "status"} == {
        k: info[k] for k in info if k != "status"
    }


TRICKY: dict[str, Any] = {
    "float": 0.30000000000000004,
    "empty_list": [],
    "empty_object": {},
    "big_int": 12345678901234567,
    "tiny": -1e-300,
    "huge": 1.7976931348623157e308,
    "quotes": 'he said "}{,[]:" and left',
    "backslash_end": "ends with a backslash \\",
    "escaped_quote_end": 'quote then backslash \\"',
    "unicode": "snowman \u2603, nul \u0000, emoji \U0001f600, slash /",
    "nested": {"a": [1, {"b": "]}", "c": None}], "d": {"e": [[], {}]}},
    "bools": [True, False, None],
    'braces in key {},:"': "ok",
}


def test_merges_keep_every_value_exactly(store):
    info = new_job(store, result=TRICKY)
    store.update(info["id"], TRICKY)
    store.update(info["id"], {"status": "Running", "float": 0.1 + 0.2})
    stored = store.require(info["id"])
    for name, value in TRICKY.items():
        assert stored[name] == value, name
        assert type(stored[name]) is type(value), name
    assert stored["result"] == TRICKY
    assert stored["float"] == 0.30000000000000004
    assert stored["empty_list"] == [] and isinstance(stored["result"]["empty_list"], list)
    assert stored["big_int"] == 12345678901234567


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.randint(-(2**62), 2**62)
    if kind == 1:
        return rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-30, 30)
    if kind == 2:
        return "".join(
            rng.choice('ab"\\{}[],: \u00e9\u2603\n\t/') for _ in range(rng.randrange(12))
        )
    if kind == 3:
        return rng.choice([None, True, False])
    if kind in (4, 5):
        return rng.choice([[], {}, "", 0, -0.0])
    if kind in (6, 7):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f'k{n}"{{': _value(rng, depth + 1) for n in range(rng.randrange(4))}


def test_random_merges_match_a_python_dict(store):
    rng = random.Random(20150601)
    info = new_job(store)
    expected = dict(info)
    for _ in range(150):
        fields = {rng.choice(["status", "result", "a", "b", "c", 'd"}']): _value(rng)}
        store.update(info["id"], fields)
        expected.update(fields)
    stored = store.require(info["id"])
    assert json.dumps(stored, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_guards(store):
    info = new_job(store)
    applied, before = store.update(info["id"], {"status": "Running"}, guard="queued")
    assert (applied, before) == (True, "Queued")
    applied, before = store.update(info["id"], {"status": "Running"}, guard="queued")
    assert (applied, before) == (False, "Running")
    assert store.update(info["id"], {"status": "Success", "result": 1}, guard="live")[0]
    applied, before = store.update(info["id"], {"status": "Failed", "result": 2}, guard="live")
    assert (applied, before) == (False, "Success")
    assert store.require(info["id"])["result"] == 1


def test_merges_objects_other_programs_formatted(store):
    info = create_info("job", "job", context="default") | {"result": TRICKY}
    store.r.set(info["id"], json.dumps(info, indent=2, separators=(" ,", " :  ")))
    store.update(info["id"], {"status": "Running", "new": [1, 2.5]})
    stored = store.require(info["id"])
    assert stored == info | {"status": "Running", "new": [1, 2.5]}


def test_creating_survives_a_dropped_connection(store):
    first = create_info("first", "job", parent="group", context="default")
    with store.creating(first):
        pass
    killed = store.r.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1  # the creating connection among them
    second = create_info("second", "job", parent="group", context="default")
    with store.creating(second):
        pass
    assert store.get_many([first["id"], second["id"]]) == [first, second]


def test_creating_sends_bookkeeping_after_the_write_without_waiting_for_it(store):
    task = {"msg_id": "m", "context": "default", "connection_file": "/nowhere"}
    first, second, third = (create_info(n, "job", parent="group") for n in "abc")
    with store.creating(first) as also:
        also += store.queued_task_commands(first["id"], task, 1.0)
    with store.creating(second) as also:  # reads the replies the first one left
        also += store.queued_task_commands(second["id"], task, 2.0)
    assert store.r.zscore(keys.QUEUED, first["id"]) == 1.0
    assert json.loads(store.r.hget(keys.QUEUED_TASKS, first["id"]))["since"] == 1.0
    # replies owed on a connection that drops: the next write neither waits for them nor fails
    assert store.r.client_kill_filter(_type="normal", skipme=True) >= 1
    with store.creating(third):
        pass
    assert store.get_many([first["id"], second["id"], third["id"]]) == [first, second, third]


def test_values_beyond_fast_json_are_still_read(store):
    info = create_info("big", "job", context="default")
    store.r.set(info["id"], json.dumps(info | {"result": [2**80, math.nan]}))
    stored = store.require(info["id"])
    assert stored["result"][0] == 2**80 and math.isnan(stored["result"][1])


def test_info_nested_too_deeply_to_read_is_skipped_not_raised(store):
    parent = create_info("deep tree", "group")
    store.create(parent)
    child = new_job(store, parent=parent["id"])
    deep = '{"id": "deep", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    store.r.set("deep", deep)
    store.r.sadd(keys.children(parent["id"]), "deep")
    assert store.get("deep") is None
    assert [n["id"] for n in store.tree(parent["id"])] == [parent["id"], child["id"]]


def test_an_engine_first_to_a_job_writes_its_info(store):
    """The engine may start a job before the submitter's Queued write lands."""
    info = create_info("early", "job", parent="group", context="default")
    applied, before = store.update(
        info["id"], {"status": "Running"}, guard="queued", if_missing=info
    )
    assert (applied, before) == (True, "Queued")
    pubsub = subscribed(store.r, keys.pubsub("group"))
    with store.creating(info, parent_if_missing=create_info("g", "group", id="group")):
        pass
    assert json.loads(wait_for_message(pubsub)["data"]) == {"add": [info["id"]]}
    pubsub.close()
    assert store.require(info["id"]) == info | {"status": "Running"}  # not set back to Queued
    assert store.children("group") == {info["id"]}
    with pytest.raises(UnknownIdError):
        store.update("no-such-job", {"status": "Running"})


def test_creating_confirms_its_write_even_when_the_body_fails(store):
    first = create_info("first", "job", parent="group", context="default")
    with pytest.raises(RuntimeError, match="submit failed"):
        with store.creating(first):
            raise RuntimeError("submit failed")
    second = create_info("second", "job", parent="group", context="default")
    with store.creating(second):  # the connection is still in step
        pass
    assert store.get_many([first["id"], second["id"]]) == [first, second]
    assert store.children("group") == {first["id"], second["id"]}


# -- one round trip ------------------------------------------------------------
def test_tree_is_read_in_one_round_trip(store, scratch_url):
    root = create_info("root", "group", id="root")
    store.create(root)
    expected = {"root"}
    for g in range(4):
        group = create_info(f"g{g}", "group", parent="root")
        store.create(group)
        expected.add(group["id"])
        for _ in range(30):
            expected.add(new_job(store, parent=group["id"])["id"])
    assert len(expected) == 125

    measured = redis.Redis.from_url(scratch_url, single_connection_client=True)
    reader = Store(measured, TTL)
    reader.tree("root")  # loads the script
    addr = measured.client_info()["addr"]
    monitor_client = redis.Redis.from_url(scratch_url, socket_timeout=10)
    with monitor_client.monitor() as monitor:
        nodes = reader.tree("root")
        measured.echo("end-of-measure")
        commands = []
        while True:
            seen = monitor.next_command()
            if f"{seen['client_address']}:{seen['client_port']}" != addr:
                continue
            if "end-of-measure" in seen["command"]:
                break
            commands.append(seen["command"])
    monitor_client.close()
    assert {n["id"] for n in nodes} == expected
    assert nodes[0]["id"] == "root"
    assert len(commands) == 1 and commands[0].startswith("EVALSHA"), commands


def test_tree_reads_wide_levels_and_groups_without_info(store):
    store.create(create_info("root", "group", id="root"))
    store.r.sadd(keys.children("root"), "lost-group")  # its info expired, its children did not
    wide = [create_info(f"j{n}", "job", parent="root", context="default") for n in range(4500)]
    deep = create_info("deep", "job", parent="lost-group", context="default")
    with store.r.pipeline(transaction=False) as pipe:
        for info in [*wide, deep]:
            pipe.set(info["id"], json.dumps(info))
            pipe.sadd(keys.children(info["parent"]), info["id"])
        pipe.execute()
    nodes = store.tree("root")
    assert {n["id"] for n in nodes} == {"root", deep["id"]} | {i["id"] for i in wide}
    assert nodes[0]["id"] == "root" and nodes[-1]["id"] == deep["id"]  # breadth first


def test_tree_read_prunes_children_whose_info_expired(store):
    store.create(create_info("root", "group", id="root"))
    kept, expired = new_job(store, parent="root"), new_job(store, parent="root")
    deep = new_job(store, parent="lost-group")
    store.r.delete(keys.info("lost-group"))  # its info expired, its children did not
    store.r.sadd(keys.children("root"), "lost-group")
    store.r.delete(keys.info(expired["id"]))
    assert {n["id"] for n in store.tree("root")} == {"root", kept["id"], deep["id"]}
    assert store.children("root") == {kept["id"], "lost-group"}  # pruned in the same read
    store.r.delete(keys.info(deep["id"]))
    assert {n["id"] for n in store.tree("root")} == {"root", kept["id"]}
    assert store.children("lost-group") == set()
    assert {n["id"] for n in store.tree("root")} == {"root", kept["id"]}
    assert store.children("root") == {kept["id"]}  # once its own children went, so did it


def test_get_many_is_one_mget(store):
    ids = [new_job(store)["id"] for _ in range(5)]
    assert [i["id"] for i in store.get_many([*ids, "missing"])] == ids
    assert store.get_many([]) == []


# -- expiry --------------------------------------------------------------------
def test_keys_expire_after_key_timeout(store):
    info = new_job(store, parent="g1")
    r = store.r
    for key in (keys.info(info["id"]), keys.children("g1"), keys.info("g1")):
        assert TTL - 5 <= r.ttl(key) <= TTL, key
    r.expire(keys.info(info["id"]), 50)
    store.update(info["id"], {"status": "Running"})
    assert TTL - 5 <= r.ttl(keys.info(info["id"])) <= TTL
    assert store.cancel(info["id"], "stop") == "requested"
    assert TTL - 5 <= r.ttl(keys.cancel(info["id"])) <= TTL


def test_submitted_job_keys_use_the_configured_timeout(moi_env, user):
    job_id, parent, ar = submit("default", user, "ttl", None, _identity, 1)
    assert ar.get(timeout=30) == 1
    wait(job_id, timeout=30)
    r, timeout = runtime.redis_client(), runtime.settings().key_timeout
    for key in (keys.info(job_id), keys.info(parent), keys.children(parent)):
        assert timeout - 30 <= r.ttl(key) <= timeout, key


def _identity(value: Any, **kwargs: Any) -> Any:
    return value


# -- publishes -----------------------------------------------------------------
def test_every_write_publishes(store):
    r = store.r
    parent_sub = subscribed(r, keys.pubsub("group"))
    info = new_job(store)
    job_sub = subscribed(r, keys.pubsub(info["id"]))
    try:
        assert json.loads(wait_for_message(parent_sub)["data"]) == {"add": [info["id"]]}
        store.update(info["id"], {"status": "step 1"})
        assert json.loads(wait_for_message(job_sub)["data"]) == {"update": [info["id"]]}
        assert store.cancel(info["id"], "asked") == "requested"  # not queued: a flag only
        assert store.update(info["id"], {"status": "Queued"})[0]
        wait_for_message(job_sub)
        assert store.cancel(info["id"], "asked") == "cancelled"
        assert json.loads(wait_for_message(job_sub)["data"]) == {"update": [info["id"]]}
        assert store.require(info["id"])["status"] == "Cancelled"
        assert store.detach("group", info["id"])
        assert json.loads(wait_for_message(parent_sub)["data"]) == {"remove": [info["id"]]}
        assert not store.detach("group", info["id"])
        assert job_sub.get_message(timeout=0.2) is None
    finally:
        parent_sub.close()
        job_sub.close()


def test_expired_lease_is_reaped_and_published(store):
    dead, alive = new_job(store), new_job(store)
    store.update(dead["id"], {"status": "Running"}, lease=("add", -1))
    store.update(alive["id"], {"status": "Running"}, lease=("add", 600))
    sub = subscribed(store.r, keys.pubsub(dead["id"]))
    try:
        assert watchdog.sweep(store) == [dead["id"]]
        assert json.loads(wait_for_message(sub)["data"]) == {"update": [dead["id"]]}
    finally:
        sub.close()
    failed = store.require(dead["id"])
    assert failed["status"] == "Failed" and failed["result"] == watchdog.REASON
    assert failed["date_end"] is not None
    assert store.require(alive["id"])["status"] == "Running"
    assert watchdog.sweep(store) == []
    assert store.r.zscore(keys.LEASES, alive["id"]) is not None
    store.update(alive["id"], {"status": "Success"}, lease=("remove", 0))
    assert store.r.zscore(keys.LEASES, alive["id"]) is None


def test_the_engine_final_write_wins_over_a_reaped_failure(store):
    late, finished = new_job(store), new_job(store)
    for info in (late, finished):
        store.update(info["id"], {"status": "Running"}, lease=("add", -1))
    assert sorted(watchdog.sweep(store)) == sorted([late["id"], finished["id"]])
    assert store.r.zscore(keys.REAPED, late["id"]) is not None
    # the engine was only cut off from Redis: its outcome lands, once
    assert store.update(late["id"], {"status": "Failed"}, guard="live") == (False, "Failed")
    assert store.update(late["id"], {"status": "Success", "result": 1}, guard="final") == (
        True,
        "Failed",
    )
    assert store.require(late["id"])["status"] == "Success"
    assert store.r.zscore(keys.REAPED, late["id"]) is None
    assert store.update(late["id"], {"status": "Failed"}, guard="final") == (False, "Success")
    # a job that ended by itself keeps its end
    store.update(finished["id"], {"status": "Cancelled"}, guard="final")
    store.r.zrem(keys.REAPED, finished["id"])
    assert store.update(finished["id"], {"status": "Success"}, guard="final")[0] is False


def test_leaving_queued_drops_the_task_bookkeeping(store):
    started, cancelled, running = new_job(store), new_job(store), new_job(store)
    store.update(running["id"], {"status": "Running"})
    task = {"msg_id": "m", "context": "default", "connection_file": "/nowhere"}
    with store.r.pipeline(transaction=True) as pipe:
        for info in (started, cancelled, running):
            for command in store.queued_task_commands(info["id"], task, 1000.0):
                pipe.execute_command(*command)
        pipe.execute()
    due = store.queued_due(2000.0, 10)
    assert {job_id for job_id, _, _ in due} == {started["id"], cancelled["id"], running["id"]}
    assert all(entry == {**task, "since": 1000.0} for _, entry, _ in due)
    store.update(started["id"], {"status": "Running"}, guard="queued")
    assert store.cancel(cancelled["id"], "stop") == "cancelled"
    store.update(running["id"], {"status": "Success"})  # not Queued before: left to the watchdog
    assert store.r.zrange(keys.QUEUED, 0, -1) == [running["id"].encode()]
    assert store.r.hkeys(keys.QUEUED_TASKS) == [running["id"].encode()]
    store.forget_queued([running["id"]])
    assert not store.r.exists(keys.QUEUED, keys.QUEUED_TASKS)


def test_heartbeat_reports_a_cancel_request(store):
    info = new_job(store)
    store.update(info["id"], {"status": "Running"}, lease=("add", 5))
    assert store.heartbeat(info["id"], 600) is False
    assert store.r.zscore(keys.LEASES, info["id"]) > store.r.time()[0] + 500
    assert store.cancel(info["id"], "stop") == "requested"
    assert store.heartbeat(info["id"], 600) is True
    store.clear_cancel(info["id"])
    assert store.heartbeat(info["id"], 600) is False


# -- unknown ids ---------------------------------------------------------------
def test_unknown_ids_raise(store, moi_env):
    with pytest.raises(UnknownIdError):
        store.update("nope", {"status": "Running"})
    with pytest.raises(UnknownIdError):
        store.cancel("nope", "why")
    with pytest.raises(UnknownIdError):
        store.require("nope")
    assert store.get("nope") is None
    assert store.tree("nope") == []
    assert not store.r.exists("nope")
    with pytest.raises(UnknownIdError):
        wait("3f1c2b6e-0000-4000-8000-000000000000", timeout=5)
    with pytest.raises(UnknownIdError):
        get_user_from_id("3f1c2b6e-0000-4000-8000-000000000000")
    with pytest.raises(UnknownIdError, match="Unknown key: nobody-at-all"):
        find_user_group("nobody-at-all")
    with pytest.raises(MoiError, match="info_type"):
        create_info("x", "gruop")
    assert issubclass(UnknownIdError, MoiError)


# -- results JSON cannot hold --------------------------------------------------
def returns(kind: str, **kwargs: Any) -> Any:
    """Job: a result JSON cannot hold."""
    return {
        "set": {1, 2, 3},
        "object": object(),
        "nan": float("nan"),
        "nested-inf": {"x": [1.0, float("inf")]},
        "bytes": b"\x00\xff",
    }[kind]


@pytest.mark.parametrize("kind", ["set", "object", "nan", "nested-inf", "bytes"])
def test_unserialisable_result_is_stored_as_text_with_a_note(moi_env, user, kind):
    job_id, _, ar = submit("default", user, kind, None, returns, kind)
    value = ar.get(timeout=30)
    info = wait(job_id, timeout=30)
    assert info["status"] == "Success"
    assert isinstance(info["result"], str)
    if kind == "nan":
        assert math.isnan(value) and info["result"] == "nan"
    elif kind == "object":
        assert info["result"].startswith("<object object at 0x")
    else:
        assert info["result"] == repr(value)
    assert "not JSON-serialisable" in info["note"]
    raw = runtime.redis_client().get(job_id).decode()
    assert "NaN" not in raw and "Infinity" not in raw  # strict JSON for other readers
    json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
