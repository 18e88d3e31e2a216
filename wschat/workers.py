"""``wschat serve --workers N``: N processes serving one port (SO_REUSEPORT).

The parent starts the workers (``spawn``: a fresh interpreter each, no state
inherited from the parent's imports) and waits until every one reports that
it listens. A worker that cannot start (the port is taken, the hub is
unreachable) sends the one line that explains it instead of printing it, so
the operator reads it once, not N times; the parent then stops the others
and exits 1. Once serving, the parent forwards SIGTERM/SIGINT and waits.

The workers' metrics are combined through prometheus-client's multiprocess
mode (see :mod:`wschat.server.metrics`): the parent makes a fresh directory
for it and removes it on exit.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from .app import AppRecipe
from .cli import fail, prepare, run, setup_logging
from .server import ServerConfig
from .startup import StartupError

logger = logging.getLogger("wschat")

_READY = "ready"


def _worker(recipe: AppRecipe, log_level: str, number: int, report: Connection) -> None:
    setup_logging(log_level, worker=number)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            run(recipe.build(), on_ready=lambda: report.send(_READY))
    except StartupError as exc:
        report.send(str(exc))
        raise SystemExit(1) from None


def run_workers(recipe: AppRecipe, config: ServerConfig, log_level: str) -> int:
    """Run ``config.workers`` worker processes, each with the app ``recipe`` makes,
    until they exit; the exit code.

    Start-up failures are printed once, as one line, with exit code 1.
    """
    setup_logging(log_level)
    prepare(config)  # the raised descriptor limit is inherited by the workers
    metrics_dir = tempfile.mkdtemp(prefix="wschat-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    context = multiprocessing.get_context("spawn")
    workers: list[BaseProcess] = []
    reports: dict[int, Connection] = {}
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for number in range(1, config.workers + 1):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(
                target=_worker,
                args=(recipe, log_level, number, send),
                name=f"wschat-worker-{number}",
            )
            process.start()
            send.close()
            workers.append(process)
            reports[number] = receive
        failure = _wait_until_serving(workers, reports)
        if failure is not None and not stopping:
            for worker in workers:
                if worker.is_alive():
                    worker.terminate()
            _join(workers, metrics_dir)
            return fail(failure)
        if failure is None:
            logger.info("= %d workers serving", len(workers))
        _join(workers, metrics_dir)
        return max(abs(w.exitcode or 0) for w in workers)
    finally:
        for receive in reports.values():
            receive.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _wait_until_serving(workers: list[BaseProcess], reports: dict[int, Connection]) -> str | None:
    """Wait for every worker's report; the first failure's line, or None."""
    waiting = dict(zip(reports, workers, strict=True))
    while waiting:
        ready = wait([reports[n] for n in waiting] + [w.sentinel for w in waiting.values()])
        for number, worker in list(waiting.items()):
            report = reports[number]
            if report in ready:
                try:
                    message = report.recv()
                except EOFError:  # it exited without a word: its sentinel says how
                    message = None
                if message == _READY:
                    del waiting[number]
                    continue
                if message is not None:
                    return str(message)
            if worker.sentinel in ready or not worker.is_alive():
                worker.join()
                return f"worker {number} exited during start-up with code {worker.exitcode}"
    return None


def _join(workers: list[BaseProcess], metrics_dir: str) -> None:
    from prometheus_client import multiprocess

    for worker in workers:
        worker.join()
        if worker.pid is not None:
            # Its live gauges (open connections) stop counting.
            multiprocess.mark_process_dead(worker.pid, metrics_dir)  # type: ignore[no-untyped-call, unused-ignore]
