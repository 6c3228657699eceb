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


def read_json(path: Path):
    """A file's JSON; ValueError (one line naming the file) when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: cannot read it as JSON ({type(exc).__name__})") from None


def load_results(path: Path, data=None) -> dict:
    """results.json of this schema version (data: its JSON already read), every field checked against RESULTS (the
    declared schema below); ValueError (one line naming the file, the field and what is wrong) for anything else."""
    data = read_json(path) if data is None else data
    schema = data.get("schema") if isinstance(data, dict) else type(data).__name__
    if isinstance(schema, str) and schema.startswith("gan-vs-diffusion/results/") and schema != SCHEMA:
        raise ValueError(f"{path}: results schema {schema.rsplit('/', 1)[-1]}, this gvd reads "
                         f"{SCHEMA.rsplit('/', 1)[-1]} (its metrics differ: rerun the suite with this version)")
    if schema != SCHEMA:
        raise ValueError(f"{path}: not a gan-vs-diffusion results file (schema {schema!r})")
    problem = check(data, RESULTS)
    if problem:
        raise ValueError(f"{path}: {problem}")
    seen: dict[tuple, int] = {}
    for i, run in enumerate(data["runs"]):
        if not run["model"]:
            raise ValueError(f"{path}: runs[{i}].model is empty (a family's name)")
        key = (run["dataset"], run["model"], run["seed"])
        if key in seen:  # a hand-edited file: a seed counted twice would narrow every interval
            raise ValueError(f"{path}: runs[{seen[key]}] and runs[{i}] are both {'/'.join(map(str, key))}")
        seen[key] = i
    return data


def load_throughput(path: Path, data=None) -> dict:
    """A `gvd throughput --out` file (data: its JSON already read), every field checked against THROUGHPUT;
    ValueError (one line) otherwise."""
    data = read_json(path) if data is None else data
    problem = check(data, THROUGHPUT)
    if problem:
        raise ValueError(f"{path}: {problem}")
    return data


# ---------------------------------------------------------------- the declared schema
# A spec is a Python type (str, int, bool, float = any number but a bool, None = JSON null, object = any JSON), a
# tuple of specs (any of them), a one-item list [spec] (a list of it), or a dict (a JSON object): "key" required,
# "key?" optional, "*" the spec of every undeclared key (without "*" an undeclared key is refused). Every reader
# (report, compare, resume) relies on these shapes, so a hand-edited or hostile file is one line, never a traceback.

NUM = float
OPT_NUM = (float, None)
NUMBERS = {"*": OPT_NUM}  # a flat record of numbers (metrics, stability summaries, curve points)
METRICS = {"factor_coverage_by_class?": NUMBERS, "*": OPT_NUM}
FREE = {"*": object}  # a record a family or an instrument owns (network configs, protocol records)

THROUGHPUT_ROW = {
    "model": str, "stage": str, "what?": str, "nfe?": (int, None), "guidance?": OPT_NUM, "batch?": int,
    "seconds_per_batch?": NUM, "min_seconds_per_batch?": NUM, "repeats?": int, "images_per_s?": NUM,
    "latency_s?": OPT_NUM, "flops_per_image?": OPT_NUM, "tflops?": OPT_NUM, "mfu?": OPT_NUM, "dtype?": str,
    "method?": str, "peak_memory_mb?": OPT_NUM, "*": (str, float, bool, None)}
PEAK = {"dtype": str, "n": int, "tflops": NUM, "*": object}
THROUGHPUT = {
    "schema": THROUGHPUT_SCHEMA, "device": str, "device_type?": str, "dtype?": {"train?": str, "sample?": str},
    "versions?": {"*": (str, None)}, "threads?": int, "cpu_count?": (int, None), "load_average?": NUMBERS,
    "batch?": int, "train_batch?": int, "timer?": str, "matmul_peak?": PEAK, "matmul_peaks?": {"*": PEAK},
    "models?": {"*": FREE}, "rows": [THROUGHPUT_ROW], "sampler_overhead?": FREE, "notes?": [str],
    "seconds?": NUM, "*": object}

SAMPLING_ROW = {"nfe": (int, None), "guidance?": OPT_NUM, "batch": int, "images_per_s": NUM, "latency_s?": OPT_NUM,
                "flops_per_image?": OPT_NUM, "tflops?": OPT_NUM, "mfu?": OPT_NUM, "peak_memory_mb?": OPT_NUM,
                "method?": str, "*": (str, float, bool, None)}
KNOB = (None, {"name": str, "symbol": str, "neutral": NUM, "*": object})
ENTRY = {
    "dataset": str, "model": str, "seed": int, "status": STATUSES, "role?": str, "error?": str, "traceback?": str,
    "knob?": KNOB, "sampler?": (str, None), "features?": (str, None), "curve_seconds?": NUM,
    "train?": {"params?": {"*": int}, "budget?": FREE, "text_encoder?": FREE, "recipe?": str, "precision?": str,
              "sampler?": str, "*": (float, None, str, bool, FREE)},
    "metrics?": METRICS, "metrics_raw?": METRICS, "baseline?": NUMBERS,
    "memorisation?": {"features?": str, "*": OPT_NUM},
    "stability?": {"threshold?": str, "*": OPT_NUM}, "ema?": NUMBERS, "curve?": [NUMBERS],
    "by_sampler?": {"*": NUMBERS},
    "throughput?": {"device?": str, "dtype?": {"*": str}, "params?": {"*": int}, "sampling?": [SAMPLING_ROW],
                   "*": OPT_NUM},
    "tuned?": {"knob?": str, "rule?": str, "value?": OPT_NUM, "nfe?": (int, None), "metrics?": METRICS,
               "validation?": FREE, "*": object},
    "sweep?": {"knob?": str, "prompts?": str, "points?": [NUMBERS], "*": object},
    "networks?": {"*": FREE}, "splits?": {"*": FREE}, "reference?": FREE, "protocol?": {"*": FREE},
    "*": object}
STAGE_TIME = {"wall_s": NUM, "cpu_s": NUM, "count": int, "*": OPT_NUM}
RESULTS = {
    "schema": str, "suite?": str, "created?": str, "device?": str, "versions?": {"*": (str, None)}, "config": FREE,
    "families?": {"*": {"role?": str, "label?": str, "description?": str, "benchmarks?": [str], "knob?": KNOB,
                        "*": object}},
    "runs": [ENTRY], "distributed?": FREE, "panel?": {"*": FREE}, "study?": str,
    "throughput?": ({"error": str}, THROUGHPUT),
    "stages?": {"stages?": {"*": ({"*": OPT_NUM}, STAGE_TIME)}, "report?": FREE, "*": OPT_NUM},
    "*": object}


def _kind(spec) -> str:
    """A spec in words, for the one-line message."""
    if isinstance(spec, tuple):
        return " or ".join(dict.fromkeys(_kind(s) for s in spec))
    if isinstance(spec, list):
        return "a list"
    if isinstance(spec, dict):
        return "an object"
    if isinstance(spec, str):
        return repr(spec)
    return {str: "a string", int: "an integer", bool: "true or false", float: "a number", None: "null",
            object: "anything"}[spec]


def check(value, spec, where: str = "") -> str | None:
    """What is wrong with value against spec ("runs[3].metrics.fid must be a number or null, not a string"), or
    None. Walks every field; the first problem is the answer."""
    name = where or "the file"
    if isinstance(spec, tuple):
        if isinstance(spec[0], str):  # a tuple of strings: one of these values
            return None if value in spec else f"{name} is {value!r}, not one of {', '.join(spec)}"
        if any(_is(value, s) for s in spec if not isinstance(s, (dict, list))):  # the common case, no words built
            return None
        problems = [check(value, s, where) for s in spec]
        if all(problems):  # the closest alternative's complaint when it got past the top level
            deep = [p for p in problems if p and not p.startswith(f"{name} must be")]
            return deep[0] if len(deep) == 1 else f"{name} must be {_kind(spec)}, not {_type_name(value)}"
        return None
    if isinstance(spec, str):
        return None if value == spec else f"{name} must be {spec!r}, not {value!r}"
    if isinstance(spec, list):
        if not isinstance(value, list):
            return f"{name} must be a list, not {_type_name(value)}"
        for i, item in enumerate(value):
            if problem := check(item, spec[0], f"{where}[{i}]"):
                return problem
        return None
    if isinstance(spec, dict):
        return _check_object(value, spec, where)
    if _is(value, spec):
        return None
    return f"{name} must be {_kind(spec)}, not {_type_name(value)}"


def _check_object(value, spec: dict, where: str) -> str | None:
    if not isinstance(value, dict):
        return f"{where or 'the file'} must be an object, not {_type_name(value)}"
    prefix = f"{where}." if where else ""
    for key, sub in spec.items():
        if key == "*":
            continue
        name = key.rstrip("?")
        if name not in value:
            if not key.endswith("?"):
                return f"{prefix}{name} is missing"
            continue
        if problem := check(value[name], sub, prefix + name):
            return problem
    declared = {k.rstrip("?") for k in spec}
    for key, item in value.items():
        if key in declared:
            continue
        if "*" not in spec:
            return f"{prefix}{key} is not a field of this file"
        if problem := check(item, spec["*"], prefix + str(key)):
            return problem
    return None


def _is(value, spec) -> bool:
    if spec is object:
        return True
    if spec is None:
        return value is None
    if spec is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, spec)


def _type_name(value) -> str:
    if value is None:
        return "null"
    return {bool: "true/false", int: "an integer", float: "a number", str: f"the string {str(value)[:40]!r}",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


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
