"""Where a run's time goes: wall and CPU seconds per stage, recorded by every stage of `gvd run` and written to
results.json ("stages"), shown by the report in one small table.

    with stage("train diffusion"):
        ...

Each process keeps its own ledger (LEDGER); a job runs under `fresh()`, an empty one, and hands its record back with
its result, and the parent merges it (merge). A listener (`listen`) hears every stage a process enters, named with
the job's label: how the progress line of `gvd run` shows what each worker is doing. Stages nest (a family's training
inside an image job): each is timed on its own. CPU seconds are this process's (time.process_time: every thread of
it), so a stage that kept two cores busy shows about twice its wall time, and stages of parallel jobs add up to more
wall time than the run took.
"""

import time
from collections.abc import Callable
from contextlib import contextmanager


class Ledger:
    """Seconds per stage name: {"wall_s", "cpu_s", "count"}; `label` names the job it times, for the listener."""

    def __init__(self, label: str = ""):
        self.stages: dict[str, dict] = {}
        self.label = label

    def add(self, name: str, wall: float, cpu: float, count: int = 1) -> None:
        entry = self.stages.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0, "count": 0})
        entry["wall_s"] += wall
        entry["cpu_s"] += cpu
        entry["count"] += count

    @contextmanager
    def stage(self, name: str):
        if _listener is not None:
            _listener(self.label, name)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - wall, time.process_time() - cpu)

    def merge(self, record: dict) -> None:
        """Add another ledger's record (a job's) to this one."""
        for name, entry in record.items():
            self.add(name, entry["wall_s"], entry["cpu_s"], entry["count"])

    def record(self) -> dict:
        return {name: dict(entry) for name, entry in self.stages.items()}


LEDGER = Ledger()  # this process's
_listener: Callable[[str, str], None] | None = None


def stage(name: str):
    """Time a block as stage `name` in this process's current ledger."""
    return LEDGER.stage(name)


@contextmanager
def fresh(label: str):
    """An empty ledger for one job (labelled for the listener) within the block; yields it; the process's ledger is
    back after it."""
    global LEDGER
    before, LEDGER = LEDGER, Ledger(label)
    try:
        yield LEDGER
    finally:
        LEDGER = before


def listen(fn: Callable[[str, str], None] | None) -> None:
    """fn(job label, stage name) for every stage this process enters from now on (None: no one listens)."""
    global _listener
    _listener = fn
