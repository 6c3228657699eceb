"""results.json's content (schema versioned) and the per-family summary over seeds. The files themselves are read
and written by bench/core/rundir.py.

results.json: {"schema", "suite", "created", "device", "versions", "config", "families": {name: description},
"runs": [...]} with one run entry per (dataset, family, seed): {"dataset", "model" (the family's name), "seed",
"status", "role", "train": {...}, "metrics": {...}, "throughput": {...}}. "families" describes every family of the
run (bench/families/interface.py Family.record), so a report is rebuilt without any family's code.
"""

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.core.files import versions

# v2 (fair protocol): reverse_kl = KL(p_gen || p_data) everywhere and forward_kl apart (v1's image "kl" was the
# forward direction), EMA headlines with raw metrics beside them, neutral and tuned settings, test-split references.
# v3 (the family table): any family name in "model", its description under "families", calibration rows, training
# FLOPs counted on the networks being trained, the resolved network configs per entry.
# v4 (instruments that see what they name): label-free features (FID, PRDC, intra-class FID, within-class and factor
# coverage), copy_excess as the nearest-real-image statistic with an exact null, each image entry's "baseline" (the
# held-out real row on its prompts) for the outcome rule, the 2D within-mode spread, the known-answer "panel".
SCHEMA = "gan-vs-diffusion/results/v4"
THROUGHPUT_SCHEMA = "gan-vs-diffusion/throughput/v1"  # `gvd throughput --out` files (bench/speed/throughput.py)


def new_results(suite: str, config: dict, device: str, families: dict) -> dict:
    return {
        "schema": SCHEMA,
        "suite": suite,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "versions": versions(),
        "config": config,
        "families": families,
        "runs": [],
    }


def failed_entry(dataset: str, model: str, seed: int, error: str, trace: str | None = None) -> dict:
    """The run entry of a (dataset, model, seed) that raised: its error, no training record, no metrics."""
    entry = {"dataset": dataset, "model": model, "seed": seed, "status": "failed", "error": error,
             "train": {}, "metrics": {}, "throughput": {}}
    return entry if trace is None else {**entry, "traceback": trace}


STATUSES = ("ok", "diverged", "failed", "interrupted")


def load_results(path: Path) -> dict:
    """results.json of this schema version, checked for the shape every reader relies on; ValueError (one line naming
    the file and what is wrong) for anything else."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it as JSON ({type(exc).__name__})") from None
    schema = data.get("schema") if isinstance(data, dict) else type(data).__name__
    if isinstance(schema, str) and schema.startswith("gan-vs-diffusion/results/") and schema != SCHEMA:
        raise ValueError(f"{path}: results schema {schema.rsplit('/', 1)[-1]}, this gvd reads "
                         f"{SCHEMA.rsplit('/', 1)[-1]} (its metrics differ: rerun the suite with this version)")
    if schema != SCHEMA:
        raise ValueError(f"{path}: not a gan-vs-diffusion results file (schema {schema!r})")
    if not isinstance(data.get("runs"), list) or not isinstance(data.get("config"), dict):
        raise ValueError(f"{path}: 'runs' must be a list and 'config' an object")
    if not isinstance(data.get("families", {}), dict):
        raise ValueError(f"{path}: 'families' must be an object")
    seen: dict[tuple, int] = {}
    for i, run in enumerate(data["runs"]):
        problem = _entry_problem(run)
        if problem:
            raise ValueError(f"{path}: runs[{i}] {problem}")
        key = (run["dataset"], run["model"], run["seed"])
        if key in seen:  # a hand-edited file: a seed counted twice would narrow every interval
            raise ValueError(f"{path}: runs[{seen[key]}] and runs[{i}] are both {'/'.join(map(str, key))}")
        seen[key] = i
    return data


def _entry_problem(run) -> str | None:
    """What is wrong with one run entry's shape, or None."""
    if not isinstance(run, dict):
        return "is not an object"
    if not isinstance(run.get("dataset"), str) or not isinstance(run.get("model"), str) or not run.get("model"):
        return "needs a 'dataset' string and a 'model' string (a family's name)"
    if isinstance(run.get("seed"), bool) or not isinstance(run.get("seed"), int):
        return "needs an integer 'seed'"
    if run.get("status") not in STATUSES:
        return f"has status {run.get('status')!r}, not one of {', '.join(STATUSES)}"
    for key in ("train", "metrics", "throughput"):
        if not isinstance(run.get(key, {}), dict):
            return f"'{key}' must be an object"
    return None


def summarise(results: dict) -> list[dict]:
    """Mean and sample std over seeds for each (dataset, model) and metric:
    {"dataset", "model", "seeds", metric: (mean, std)}."""
    groups: dict[tuple, list[dict]] = {}
    for run in results["runs"]:
        groups.setdefault((run["dataset"], run["model"]), []).append(run)
    out = []
    for (dataset, model), runs in groups.items():
        row = {"dataset": dataset, "model": model, "seeds": len(runs),
               "ok": sum(r["status"] == "ok" for r in runs)}
        keys = dict.fromkeys(k for r in runs for k, v in r.get("metrics", {}).items() if isinstance(v, (int, float)))
        for key in keys:
            vals = np.array([(r.get("metrics") or {}).get(key, np.nan) for r in runs], dtype=float)
            vals = vals[np.isfinite(vals)]
            if len(vals):
                row[key] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
        out.append(row)
    return out
