"""`gvd run --resume RUN_DIR`: continue a stopped run from its own config.json and results.json.

What is kept: every run entry that finished ("ok" or "diverged": a result, not a fault) and the throughput section
when it was measured. Everything else ("failed", "interrupted", missing) is run again, each of its trainings from the
state it last saved (bench/train_state.py: at an interval, after the last step and on SIGINT / SIGTERM). Every
training seeds itself from (dataset, model, seed) alone, so a rerun entry gets the numbers it would have had in one
unbroken run.

`gvd run --resume RUN_DIR --seeds 0 1 2 3 4 5` adds seeds to a run (finished or not): the seeds it had must all be in
the list; the new ones run, every kept entry stays as it was (byte for byte in results.json), config.json records the
new list, and the report is rebuilt over every seed. The seeds are the only setting a resume may change.
"""

import dataclasses
import json
import typing
from pathlib import Path

from bench.config import SuiteConfig, to_dict, validate
from bench.core.results import load_results
from bench.run.preflight import PreflightError

FINISHED = ("ok", "diverged")


def _dataclass_in(hint):
    """The dataclass a field's type names (`X` or `X | None`), or None."""
    for t in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(t):
            return t
    return None


def from_dict(cls, data: dict):
    """The inverse of dataclasses.asdict for our configs: nested dataclasses rebuilt, JSON lists turned back into
    tuples where the field holds a tuple. Keys the class does not know raise ValueError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown settings {', '.join(sorted(unknown))} in {cls.__name__}")
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_in(hints[name])
        if sub is not None and isinstance(value, dict):
            kwargs[name] = from_dict(sub, value)
        elif typing.get_origin(hints[name]) is tuple and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def load_run(root: Path) -> tuple[SuiteConfig, dict]:
    """(config, results) of the run folder to resume; PreflightError names what is missing or wrong."""
    root = Path(root)
    config_path, results_path = root / "config.json", root / "results.json"
    if not config_path.is_file():
        raise PreflightError(f"--resume {root}: no config.json there (is it a run folder?)")
    try:
        cfg = from_dict(SuiteConfig, json.loads(config_path.read_text()))
        validate(cfg)
    except (OSError, ValueError, TypeError) as exc:  # ConfigError is a ValueError
        raise PreflightError(f"{config_path}: cannot rebuild the run's config ({str(exc).splitlines()[0]})") from None
    if not results_path.is_file():  # stopped before the first entry was written: the states' own config decides
        saved = root / "state" / "config.json"
        if saved.is_file():
            try:
                under = json.loads(saved.read_text())
            except (OSError, ValueError) as exc:
                raise PreflightError(f"{saved}: cannot read it ({str(exc).splitlines()[0]})") from None
            differ = _config_differences(to_dict(cfg), under if isinstance(under, dict) else {})
            if set((under or {}).get("seeds") or []) <= set(cfg.seeds):  # more seeds: a --seeds resume that stopped
                differ = [k for k in differ if k != "seeds"]
            if differ:
                raise PreflightError(f"--resume {root}: config.json does not match the config its training states "
                                     f"were saved under ({_keys(differ)}); a resume would mix runs")
        return cfg, {"runs": []}
    try:
        previous = load_results(results_path)
    except ValueError as exc:
        raise PreflightError(str(exc).splitlines()[0]) from None
    differ = _config_differences(to_dict(cfg), previous["config"])
    if set(previous["config"].get("seeds") or []) <= set(cfg.seeds):  # more seeds: a --seeds resume that stopped
        differ = [k for k in differ if k != "seeds"]
    if differ and previous["runs"]:
        raise PreflightError(f"--resume {root}: config.json does not match the config its results.json was run with "
                             f"({_keys(differ)}); a resume would mix runs")
    return cfg, previous


def _keys(differ: list[str]) -> str:
    return f"{', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''}"


def add_seeds(cfg: SuiteConfig, seeds: list[int], root: Path) -> list[int]:
    """`--resume --seeds`: the run's config with `seeds` (which must hold every seed the run has; the new ones after
    them in the order given); returns the seeds added. PreflightError names the seeds it would drop."""
    dropped = [s for s in cfg.seeds if s not in seeds]
    if dropped:
        raise PreflightError(f"--resume {root} --seeds: the run has seeds {' '.join(map(str, cfg.seeds))}; give them "
                             f"all with the ones to add (dropping {' '.join(map(str, dropped))} would mix runs)")
    added = [s for s in dict.fromkeys(seeds) if s not in cfg.seeds]
    cfg.seeds = list(cfg.seeds) + added  # checked with the rest of the config before anything is written
    return added


def _config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The dotted keys where two saved configs differ."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _config_differences(x, y, f"{prefix}{key}.")
        elif x != y and not (isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and list(x) == list(y)):
            out.append(f"{prefix}{key}")
    return out


def finished(results: dict) -> dict[tuple, dict]:
    """{(dataset, model, seed): entry} of the entries a resumed run keeps."""
    return {(r["dataset"], r["model"], r["seed"]): r for r in results.get("runs", []) if r["status"] in FINISHED}
