"""The run folder's files: atomic writes, results.json (schema versioned), metrics.csv and the per-model summary.

results.json: {"schema", "suite", "created", "device", "versions", "config", "runs": [...]} with one run entry per
(dataset, model, seed): {"dataset", "model", "seed", "status", "train": {...}, "metrics": {...}, "throughput": {...}}.
"""

import csv
import io
import json
import math
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

SCHEMA = "gan-vs-diffusion/results/v1"


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write to a temporary file in the same folder, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_safe(value):
    """NaN and inf are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(_json_safe(obj), indent=2) + "\n")


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of dicts -> CSV with the union of keys as columns (first-seen order)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue())


def versions() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}


def new_results(suite: str, config: dict, device: str) -> dict:
    return {
        "schema": SCHEMA,
        "suite": suite,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "versions": versions(),
        "config": config,
        "runs": [],
    }


def sample_file_stem(dataset: str, model: str, seed: int, label: str | None) -> str:
    """samples/<stem>.npy holds the scored 2D samples of one run and sampler (the report redraws figures from them)."""
    stem = f"{dataset}_{model}_seed{seed}"
    return stem if model == "gan" else f"{stem}_{label.replace(':', '-')}"


def load_results(path: Path) -> dict:
    data = json.loads(Path(path).read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a gan-vs-diffusion results file (schema {data.get('schema')!r})")
    return data


def metric_rows(results: dict) -> list[dict]:
    """One flat row per run entry: dataset, model, seed, status, then every scalar metric."""
    rows = []
    for run in results["runs"]:
        row = {k: run.get(k) for k in ("dataset", "model", "seed", "status")}
        row.update({k: v for k, v in run.get("metrics", {}).items() if isinstance(v, (int, float)) or v is None})
        row.update({f"train_{k}": v for k, v in run.get("train", {}).items() if isinstance(v, (int, float))})
        rows.append(row)
    return rows


def summarise(results: dict) -> list[dict]:
    """Mean and sample std over seeds for each (dataset, model) and metric: {"dataset", "model", "seeds", metric: (mean, std)}."""
    groups: dict[tuple, list[dict]] = {}
    for run in results["runs"]:
        groups.setdefault((run["dataset"], run["model"]), []).append(run)
    out = []
    for (dataset, model), runs in groups.items():
        row = {"dataset": dataset, "model": model, "seeds": len(runs),
               "ok": sum(r["status"] == "ok" for r in runs)}
        keys = dict.fromkeys(k for r in runs for k, v in r.get("metrics", {}).items() if isinstance(v, (int, float)))
        for key in keys:
            vals = np.array([r["metrics"].get(key, np.nan) for r in runs], dtype=float)
            vals = vals[np.isfinite(vals)]
            if len(vals):
                row[key] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
        out.append(row)
    return out
