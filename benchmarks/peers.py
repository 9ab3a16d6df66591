"""peers: moi beside the tools a user would pick instead, on the same workloads, in one run.

Two workloads: 1,000 trivial jobs submitted and every result awaited, and
200 jobs of 50 ms each.  Systems, each on two workers and (except Dask,
which has its own scheduler) the benchmark's one Redis server:

- ``moi_single``: ``moi.job.submit`` in a loop, then every ``AsyncResult``;
- ``moi_bulk``: one ``moi.job.submit_many``, then ``get()``;
- ``ipyparallel``: ``ctx.bv.apply_async`` in a loop on the same cluster as moi;
- ``celery_events``: Celery (prefork, ``--concurrency 2``, Redis broker and
  backend) with ``worker_send_task_events``, ``task_send_sent_event`` and
  ``task_track_started`` on (what Flower needs to show anything);
- ``celery``: the same without events;
- ``dask``: ``LocalCluster(n_workers=2, threads_per_worker=1)``, ``submit`` in a loop, ``gather``;
- ``rq``: two ``rq worker`` processes (RQ's default forking worker), ``enqueue``
  in a loop, then ``latest_result`` of each.

Each system runs in a process of its own (``python peers.py --child SYSTEM``)
that starts its workers, runs a warm-up, then the rounds, and stops its
workers.  The child leads a process session: whatever it leaves behind is
killed with it, and a child that passes its deadline is killed and reported
(its figures are NaN).  Each figure is the median of the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from results import Result

HERE = os.path.dirname(os.path.abspath(__file__))
MOI = ("moi_single", "moi_bulk")
PEERS = ("ipyparallel", "celery_events", "celery", "dask", "rq")
SYSTEMS = (*MOI, *PEERS)
#: Seconds one system (workers' start, warm-up, all rounds, stop) may take.
DEADLINE = 900.0
#: Seconds a worker pool may take to answer before the child gives up.
START_TIMEOUT = 120.0
RESULT_MARK = "PEERS-RESULT "

Runner = Callable[[str, int], list[Any]]


# -- the driver ----------------------------------------------------------------------
def run(quick: bool) -> list[Result]:
    jobs, naps, rounds = (200, 40, 1) if quick else (1000, 200, 3)
    times: dict[str, dict[str, float]] = {}
    failed: dict[str, str] = {}
    for system in SYSTEMS:
        print(f"    {system}...", flush=True)
        try:
            measured = _child(system, jobs, naps, rounds)
        except RuntimeError as exc:
            failed[system] = str(exc)
            print(f"    {system} FAILED: {exc}", flush=True)
            continue
        times[system] = {kind: statistics.median(values) for kind, values in measured.items()}
        print(f"    {system}: {times[system]}", flush=True)
    return results(times, failed, {"trivial": jobs, "nap": naps}, rounds)


def _child(system: str, jobs: int, naps: int, rounds: int) -> dict[str, list[float]]:
    """Run ``system`` in a process session of its own; kill the whole session at the end."""
    args = [sys.executable, __file__, "--child", system, str(jobs), str(naps), str(rounds)]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        _kill_session(proc.pid)
        proc.communicate()
        raise RuntimeError(f"did not finish within {DEADLINE:.0f} s; killed") from None
    finally:
        _kill_session(proc.pid)  # workers a crashed child left behind
    marked = [line for line in out.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not marked:
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise RuntimeError(f"exit code {proc.returncode}: {tail}")
    return json.loads(marked[-1][len(RESULT_MARK) :])


def _kill_session(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def results(
    times: dict[str, dict[str, float]], failed: dict[str, str], counts: dict[str, int], rounds: int
) -> list[Result]:
    """Seconds and jobs/s of every system beside the fastest peer's, and the issue's targets."""
    out: list[Result] = []
    what = {"trivial": "trivial jobs", "nap": "jobs of 50 ms"}
    for kind, count in counts.items():
        peers = {s: times[s][kind] for s in PEERS if s in times}
        fastest = min(peers, key=peers.__getitem__) if peers else None
        best = peers[fastest] if fastest else math.nan
        for system in SYSTEMS:
            seconds = times[system][kind] if system in times else math.nan
            note = f"{count} {what[kind]}, 2 workers, median of {rounds}; baseline: fastest peer"
            note += f" ({fastest})" if fastest else " (none finished)"
            if system in failed:
                note += f"; FAILED: {failed[system]}"
            out.append(Result(f"peers_{kind}_{system}", seconds, best, "s", note=note))
            out.append(
                Result(
                    f"peers_{kind}_{system}_jobs_per_s",
                    count / seconds,
                    count / best,
                    "jobs/s",
                    ratio_of="baseline/value",
                    note=f"{count} {what[kind]}; baseline: fastest peer",
                )
            )

    def pair(name: str, kind: str, a: str, b: str | None, target: str, note: str) -> None:
        value = times.get(a, {}).get(kind, math.nan)
        base = times.get(b, {}).get(kind, math.nan) if b else math.nan
        out.append(Result(name, value, base, "s", target=target, note=note))

    trivial_fastest = _fastest(times, "trivial")
    nap_fastest = _fastest(times, "nap")
    pair(
        "peers_bulk_vs_fastest_peer",
        "trivial",
        "moi_bulk",
        trivial_fastest,
        "ratio <= 1.0",
        f"{counts['trivial']} trivial jobs: submit_many vs the fastest peer ({trivial_fastest})",
    )
    pair(
        "peers_bulk_vs_single",
        "trivial",
        "moi_bulk",
        "moi_single",
        "ratio <= 0.5",
        f"{counts['trivial']} trivial jobs: submit_many vs moi's own submit loop",
    )
    pair(
        "peers_single_vs_celery_events",
        "trivial",
        "moi_single",
        "celery_events",
        "ratio <= 1.0",
        f"{counts['trivial']} trivial jobs: the submit loop vs Celery with task events on",
    )
    for system in MOI:
        pair(
            f"peers_nap_{system.removeprefix('moi_')}_vs_fastest_peer",
            "nap",
            system,
            nap_fastest,
            "ratio <= 1.05",
            f"{counts['nap']} jobs of 50 ms: {system} vs the fastest peer ({nap_fastest})",
        )
    return out


def _fastest(times: dict[str, dict[str, float]], kind: str) -> str | None:
    peers = [s for s in PEERS if s in times]
    return min(peers, key=lambda s: times[s][kind]) if peers else None


# -- the child: one system --------------------------------------------------------------
def child(system: str, jobs: int, naps: int, rounds: int) -> dict[str, list[float]]:
    """Start ``system``'s workers, warm up, time the rounds, stop the workers."""
    with RUNNERS[system]() as submit_all:
        _checked(submit_all, "trivial", 50)  # workers up, imports done, connections made
        _checked(submit_all, "nap", 4)
        measured: dict[str, list[float]] = {"trivial": [], "nap": []}
        for _ in range(rounds):
            for kind, count in (("trivial", jobs), ("nap", naps)):
                start = time.perf_counter()
                _checked(submit_all, kind, count)
                measured[kind].append(time.perf_counter() - start)
    return measured


def _checked(submit_all: Runner, kind: str, count: int) -> None:
    values = submit_all(kind, count)
    if list(values) != list(range(count)):
        raise RuntimeError(f"{kind}: wrong results {list(values)[:5]}...")


def _redis_url(db: int) -> str:
    """The benchmark's Redis server (moi's), database ``db``."""
    base = os.environ["MOI_REDIS_URL"].rsplit("/", 1)[0]
    return f"{base}/{db}"


def _workers(args: list[str], count: int, env: dict[str, str]) -> list[subprocess.Popen]:
    """Start ``count`` worker processes (quiet: their output goes nowhere)."""
    return [
        subprocess.Popen(
            args,
            env={**os.environ, **env},
            cwd=HERE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _moi(bulk: bool) -> Iterator[Runner]:
    import workload

    from moi import job
    from moi.context import resolve
    from moi.group import get_id_from_user

    ctx = resolve(None)
    ctx.client.wait_for_engines(2, timeout=START_TIMEOUT)
    parent = get_id_from_user("bench-peers")
    funcs = {"trivial": workload.trivial, "nap": workload.nap}

    def single(kind: str, count: int) -> list[Any]:
        func = funcs[kind]
        ars = [job.submit(ctx, parent, f"{kind} {i}", None, func, i)[2] for i in range(count)]
        return [ar.get(timeout=DEADLINE) for ar in ars]

    def many(kind: str, count: int) -> list[Any]:
        _, handle = job.submit_many(ctx, parent, kind, funcs[kind], range(count))
        return handle.get(timeout=DEADLINE)

    yield many if bulk else single


@contextlib.contextmanager
def _ipyparallel() -> Iterator[Runner]:
    import workload

    from moi.context import resolve

    ctx = resolve(None)
    ctx.client.wait_for_engines(2, timeout=START_TIMEOUT)
    bv, funcs = ctx.bv, {"trivial": workload.trivial, "nap": workload.nap}

    def submit_all(kind: str, count: int) -> list[Any]:
        ars = [bv.apply_async(funcs[kind], i) for i in range(count)]
        return [ar.get(timeout=DEADLINE) for ar in ars]

    yield submit_all


def _celery(events: bool) -> Callable[[], contextlib.AbstractContextManager[Runner]]:
    @contextlib.contextmanager
    def start() -> Iterator[Runner]:
        env = {"PEERS_BROKER": _redis_url(1), "PEERS_CELERY_EVENTS": "1" if events else "0"}
        os.environ.update(env)  # for the app this process imports
        import peer_tasks

        app = peer_tasks.app
        app.control.purge()
        args = [sys.executable, "-m", "celery", "-A", "peer_tasks", "worker"]
        args += ["--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING"]
        procs = _workers(args + (["-E"] if events else []), 1, env)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not app.control.inspect(timeout=1.0).ping():
                if time.monotonic() > deadline or procs[0].poll() is not None:
                    raise RuntimeError("the Celery worker did not answer")
            tasks = {"trivial": peer_tasks.trivial, "nap": peer_tasks.nap}

            def submit_all(kind: str, count: int) -> list[Any]:
                pending = [tasks[kind].delay(i) for i in range(count)]
                return [r.get(timeout=DEADLINE) for r in pending]

            yield submit_all
        finally:
            _stop(procs)

    return start


@contextlib.contextmanager
def _dask() -> Iterator[Runner]:
    import workload
    from dask.distributed import Client, LocalCluster

    funcs = {"trivial": workload.trivial, "nap": workload.nap}
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):

        def submit_all(kind: str, count: int) -> list[Any]:
            futures = [client.submit(funcs[kind], i, pure=False) for i in range(count)]
            return list(client.gather(futures))

        yield submit_all


@contextlib.contextmanager
def _rq() -> Iterator[Runner]:
    import workload
    from redis import Redis
    from rq import Queue
    from rq.results import Result as RqResult

    url = _redis_url(2)
    connection = Redis.from_url(url)
    connection.flushdb()
    queue = Queue("peers", connection=connection)
    args = [sys.executable, "-m", "rq.cli", "worker", "--url", url, "--quiet", "peers"]
    procs = _workers(args, 2, {})
    try:
        funcs = {"trivial": workload.trivial, "nap": workload.nap}

        def submit_all(kind: str, count: int) -> list[Any]:
            jobs = [queue.enqueue(funcs[kind], i) for i in range(count)]
            values = []
            for rq_job in jobs:
                result = rq_job.latest_result(timeout=int(DEADLINE))
                if result is None or result.type != RqResult.Type.SUCCESSFUL:
                    raise RuntimeError(f"RQ job {rq_job.id} did not succeed: {result}")
                values.append(result.return_value)
            return values

        yield submit_all
    finally:
        _stop(procs)


RUNNERS: dict[str, Callable[[], contextlib.AbstractContextManager[Runner]]] = {
    "moi_single": lambda: _moi(bulk=False),
    "moi_bulk": lambda: _moi(bulk=True),
    "ipyparallel": _ipyparallel,
    "celery_events": _celery(events=True),
    "celery": _celery(events=False),
    "dask": _dask,
    "rq": _rq,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, metavar=("SYSTEM", "JOBS", "NAPS", "ROUNDS"))
    args = parser.parse_args(argv)
    if args.child:  # one system, inside the environment run.py set up
        system, jobs, naps, rounds = args.child
        measured = child(system, int(jobs), int(naps), int(rounds))
        print(RESULT_MARK + json.dumps(measured), flush=True)
        return 0
    import run as run_all  # the whole benchmark, this suite only

    return run_all.main(["--only", "peers"])


if __name__ == "__main__":
    sys.exit(main())
