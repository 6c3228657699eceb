"""The Python API beside the `gvd` command: `from bench import score, load_run`.

    score(samples, reference, ...)  -> dict   bench/run/score.py: samples made anywhere, scored by the suite's protocol
    load_run(run_dir)               -> Run    a finished (or stopped) run folder: its config, results and metrics

`import bench` stays light: bench/__init__.py reaches these only when they are asked for.
"""

from dataclasses import dataclass
from pathlib import Path

from bench.config import SuiteConfig
from bench.core.results import load_results
from bench.errors import UserError
from bench.evaluate import table
from bench.run.resume import from_dict
from bench.run.score import score

__all__ = ["Run", "load_run", "score"]


@dataclass
class Run:
    """A run folder as read back: the config it ran with and its results.json."""

    path: Path
    config: SuiteConfig  # the resolved config (`run.config.images.num_samples`)
    results: dict  # results.json as written (schema, device, versions, runs, families, ...)

    @property
    def entries(self) -> list[dict]:
        """One entry per (dataset, family, seed): status, train, metrics, tuned, throughput, ..."""
        return self.results["runs"]

    def metrics(self, dataset: str | None = None, model: str | None = None, setting: str = "neutral") -> list[dict]:
        """One flat row per entry (those of `dataset` and `model` when given): dataset, model, seed, status, role, and
        the value of every metric of the metric table it has (at the neutral knob, or the tuned one with
        setting="tuned"; None where it has none). `pandas.DataFrame(run.metrics())` makes it a table."""
        rows = []
        for e in self.entries:
            if (dataset or e["dataset"]) != e["dataset"] or (model or e["model"]) != e["model"]:
                continue
            row = {k: e.get(k) for k in ("dataset", "model", "seed", "status", "role")}
            rows.append(row | {m.key: table.value(e, m, setting) for m in table.METRICS})
        return rows


def load_run(path) -> Run:
    """The run folder `path` (its results.json and the config inside it); UserError (one line) when it is not one."""
    root = Path(path)
    if not (root / "results.json").is_file():
        raise UserError(f"{root} has no results.json (is it a `gvd run` folder?)")
    try:
        results = load_results(root / "results.json")
        config = from_dict(SuiteConfig, results["config"])
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    return Run(root, config, results)
