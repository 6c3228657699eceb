"""`gvd compare`: two or more runs (or throughput files) side by side, deltas against the first, and a CI gate.

Inputs are either run folders (their results.json) or JSON files written by `gvd throughput --out` (schema
"gan-vs-diffusion/throughput/v1"), never a mix. For run folders each (dataset, model) pair is summarised over its ok
seeds at one knob setting (default the neutral one: entry["metrics"]; `--setting tuned`: entry["tuned"]["metrics"]);
for throughput files each (model, stage, NFE, guidance, batch) row is one measurement.

"Outside the seeds' spread": the two runs' 95% Student t intervals for the mean over seeds (bench/stats.py
mean_interval) do not overlap. Non-overlap is a conservative test of a difference (Schenker & Gentleman 2001, "On
judging the significance of differences by examining the overlap between confidence intervals", Am. Stat. 55(3)):
a delta it calls is real at better than the 5% level; one it does not call may still be. With one seed (or one
measurement) there is no interval and the answer is "n/a".

--fail-on METRIC:SIGN AMOUNT[%] (e.g. fid:+5%, cond_accuracy:-0.02, images_per_s:-10%): "+" means the metric is worse
when it rises, "-" worse when it falls; AMOUNT is absolute, or relative to the first run's value with "%". A later run
whose value moved the worse way by more than AMOUNT is a regression. Runs whose protocol records differ (other
backbone weights, reference images, resize, sample counts; bench/protocol.py) are flagged incomparable; with
--fail-on an incomparable pair fails too, since its deltas cannot certify anything. The gate reads the model rows
(role "model": the GAN, the diffusion model, a user's family) only: the calibration rows (held-out real, copier) are
yardsticks that no code change should move, shown beside them; `include_calibration` gates them too. The last line
`gvd compare` prints is the gate's answer, PASS or FAIL (verdict_line).
"""

import math
import re
from dataclasses import dataclass
from pathlib import Path

from bench.core.files import atomic_write
from bench.core.results import THROUGHPUT_SCHEMA, load_results, load_throughput, read_json
from bench.errors import UserError
from bench.evaluate import table
from bench.evaluate.protocol import comparable, compare_protocols
from bench.evaluate.stats import mean_interval
from bench.report.render import to_html, to_markdown

RUN_METRICS = tuple(m.key for m in table.METRICS)  # every metric of the metric table (bench/evaluate/table.py)
THROUGHPUT_METRICS = ("images_per_s", "latency_s", "flops_per_image", "tflops", "mfu", "peak_memory_mb")
THROUGHPUT_SETUP = ("device", "device_type", "dtype", "threads", "batch", "train_batch", "preset", "versions")
NOT_PROTOCOL = ("versions", "num_seeds")  # listed when they differ, but the numbers stay comparable
MAX_AMOUNT = 1e6  # the largest --fail-on amount (absolute, or 1e6 as a fraction): beyond it a gate is off
SPEC = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):([+-])([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)(%?)$")


class CompareError(UserError):
    """Bad input to gvd compare (the CLI prints it as one line and exits 2)."""


@dataclass(frozen=True)
class FailOn:
    """One --fail-on threshold."""

    metric: str  # a metric key, e.g. "fid"
    worse_if_rises: bool  # "+": worse when it rises; "-": worse when it falls
    amount: float  # the tolerated move the worse way (absolute, or a fraction of the first run's value)
    relative: bool  # True when the spec ended in "%"
    spec: str  # as the user wrote it

    def limit(self, base: float) -> float:
        return self.amount * abs(base) if self.relative else self.amount

    def regressed(self, base: float, new: float) -> bool:
        """A move the worse way beyond the limit; a non-finite new value against a finite base is one too."""
        if not math.isfinite(base):
            return False
        if not math.isfinite(new):
            return True
        worse = (new - base) if self.worse_if_rises else (base - new)
        return worse > self.limit(base)


def parse_fail_on(spec: str) -> FailOn:
    """"fid:+5%" -> FailOn("fid", True, 0.05, True). CompareError (one line) for anything else."""
    m = SPEC.match(spec.strip())
    if not m:
        raise CompareError(f"--fail-on {spec!r}: expected METRIC:+AMOUNT or METRIC:-AMOUNT, e.g. fid:+5% or "
                           "cond_accuracy:-0.02 (+ = worse when it rises, - = worse when it falls)")
    metric, sign, number, pct = m.groups()
    amount = float(number) / (100 if pct else 1)
    if not math.isfinite(amount) or amount > MAX_AMOUNT:
        raise CompareError(f"--fail-on {spec!r}: the amount must be a finite number up to {MAX_AMOUNT:g} (or "
                           f"{MAX_AMOUNT:.0%}); a larger one would turn the gate off")
    return FailOn(metric, sign == "+", amount, bool(pct), spec.strip())


@dataclass
class Source:
    """One compared input: its name, its values by row key and metric, and its protocol/setup."""

    name: str
    path: Path
    values: dict  # {row key tuple: {metric: [per-seed values]}}
    runs: list | None = None  # results.json runs (run folders)
    setup: dict | None = None  # throughput setup fields (throughput files)
    roles: dict | None = None  # {row key: "model" | "calibration"} of a run folder's (dataset, family) rows


def _run_values(runs: list[dict], setting: str) -> dict:
    """{(dataset, family): {metric: [value per ok seed]}}, the metrics read through the metric table; a pair whose
    every seed failed stays, empty."""
    out: dict = {}
    for r in runs:
        row = out.setdefault((r["dataset"], r["model"]), {})
        if r.get("status") != "ok" or (setting == "tuned" and not r.get("tuned")):
            continue
        for m in table.METRICS:
            value = table.value(r, m, setting)
            if value is not None:
                row.setdefault(m.key, []).append(value)
    return out


def _throughput_values(result: dict) -> dict:
    out: dict = {}
    for r in result.get("rows", []):
        key = (r["model"], r["stage"], "" if r.get("nfe") is None else str(r["nfe"]),
               "" if r.get("guidance") is None else f"{r['guidance']:g}", str(r.get("batch", "")))
        out[key] = {m: [float(r[m])] for m in THROUGHPUT_METRICS if isinstance(r.get(m), (int, float))}
    return out


def _load(path_text: str, setting: str) -> Source:
    path = Path(path_text)
    results_path = path / "results.json" if path.is_dir() else path
    if not results_path.is_file():
        raise CompareError(f"{path_text}: no such run folder or file" if not path.exists()
                           else f"{path_text} has no results.json (is it a run folder?)")
    name = path.name if path.is_dir() else path.stem
    try:
        data = read_json(results_path)
        if isinstance(data, dict) and data.get("schema") == THROUGHPUT_SCHEMA:
            data = load_throughput(results_path, data)
            return Source(name, path, _throughput_values(data), setup={k: data.get(k) for k in THROUGHPUT_SETUP})
        results = load_results(results_path, data)
    except ValueError as exc:
        raise CompareError(str(exc).splitlines()[0]) from None
    return Source(name, path, _run_values(results["runs"], setting), runs=results["runs"], setup=_budget(results),
                  roles=_roles(results))


def _roles(results: dict) -> dict:
    """{(dataset, family): role} of a run's entries: the entry's own, else the families record's, else "model"."""
    families = results.get("families") or {}
    return {(r["dataset"], r["model"]): r.get("role") or (families.get(r["model"]) or {}).get("role") or "model"
            for r in results["runs"]}


def _budget(results: dict) -> dict:
    """What a run's numbers depend on beyond the protocol records: its preset and each benchmark's training budget
    (steps, batch sizes, samples scored). Runs that differ here are not comparable."""
    config = results.get("config") or {}
    keys = ("steps", "batch_size", "vae_steps", "vae_batch_size", "num_samples", "num_train", "resolution")
    return {"preset": results.get("suite"),
            **{f"{bench}.{k}": (config.get(bench) or {}).get(k) for bench in ("mixtures", "images") for k in keys
               if config.get(bench) is not None}}


def load_sources(paths: list[str], setting: str = "neutral") -> list[Source]:
    """Every input, checked: all run folders or all throughput files, at least two, sharing a row to compare."""
    if len(paths) < 2:
        raise CompareError("compare needs at least two run folders or throughput files")
    if setting not in ("neutral", "tuned"):
        raise CompareError(f"--setting {setting!r}: choose neutral or tuned")
    sources = [_load(p, setting) for p in paths]
    if len({s.runs is None for s in sources}) > 1:
        raise CompareError("compare takes run folders or throughput files, not a mix")
    if not any(all(k in s.values for s in sources[1:]) for k in sources[0].values):
        raise CompareError("the inputs share no (dataset, model) pair or throughput row to compare")
    return sources


def protocol_differences(a: Source, b: Source) -> tuple[list[str], bool]:
    """(lines naming what differs between two inputs' protocol records or setups, whether that makes them
    incomparable). Versions and seed counts are listed but keep the numbers comparable."""
    if a.runs is not None:
        diffs = {"/".join(k): v for k, v in compare_protocols(a.runs, b.runs).items()}
        if budget := comparable(a.setup, b.setup):
            diffs["preset and budget"] = budget
    else:
        diffs = {"setup": comparable(a.setup, b.setup)} if comparable(a.setup, b.setup) else {}
    lines, incomparable = [], False
    for where, fields in diffs.items():
        lines.append(f"{where}: {', '.join(fields)}")
        incomparable |= any(f.split(".")[0] not in NOT_PROTOCOL for f in fields)
    return lines, incomparable


def outside_spread(a: dict, b: dict) -> bool | None:
    """Whether two mean_interval results' intervals do not overlap (None when either has no interval)."""
    if a["lo"] is None or b["lo"] is None:
        return None
    return bool(a["hi"] < b["lo"] or b["hi"] < a["lo"])


def compare_rows(sources: list[Source]) -> list[dict]:
    """One row per (row key, metric) that the first input has: the per-input stats, deltas and spread calls."""
    rows = []
    keys = [k for k in sources[0].values if all(k in s.values for s in sources[1:])]
    metrics = RUN_METRICS if sources[0].runs is not None else THROUGHPUT_METRICS
    for key in keys:
        for metric in metrics:
            if not sources[0].values[key].get(metric):
                continue  # a later input without the metric (its seeds diverged or failed) shows n/a and regresses
            stats = [mean_interval(s.values[key].get(metric, [])) for s in sources]
            if any(st["mean"] is None for st in stats):
                stats = [{**st, "mean": math.nan if st["mean"] is None else st["mean"]} for st in stats]
            rows.append({"key": key, "metric": metric, "stats": stats,
                         "deltas": [st["mean"] - stats[0]["mean"] for st in stats[1:]],
                         "outside": [outside_spread(stats[0], st) for st in stats[1:]]})
    return rows


def gated(source: Source, key: tuple, include_calibration: bool = False) -> bool:
    """Whether the gate reads a row: every throughput row; a run's model rows, and its calibration rows when asked."""
    return include_calibration or source.roles is None or source.roles.get(key, "model") == "model"


def regressions(sources: list[Source], rows: list[dict], fail_on: list[FailOn],
                include_calibration: bool = False) -> list[str]:
    """One line per regression beyond a --fail-on threshold on a gated row, and per incomparable pair when any
    threshold is set."""
    lines = []
    for src in sources[1:] if fail_on else []:
        diffs, incomparable = protocol_differences(sources[0], src)
        if incomparable:
            lines.append(f"{src.name} is not comparable with {sources[0].name}: protocol differs ({'; '.join(diffs)})")
    mine = lambda key: gated(sources[0], key, include_calibration)  # noqa: E731
    for f in fail_on:
        for src in sources[1:]:  # a pair the first input scores and a later one lacks: its entries are gone
            lines += [f"regression: {f.metric} of {'/'.join(key)} in {src.name}: missing (no entry)"
                      for key, values in sources[0].values.items()
                      if values.get(f.metric) and key not in src.values and mine(key)]
        for row in (r for r in rows if r["metric"] == f.metric and mine(r["key"])):
            base = row["stats"][0]["mean"]
            for src, st in zip(sources[1:], row["stats"][1:]):
                if f.regressed(base, st["mean"]):
                    change = f"{base:.4g} -> {st['mean']:.4g}"
                    if base:
                        change += f" ({(st['mean'] - base) / abs(base):+.1%})"
                    lines.append(f"regression: {f.metric} of {'/'.join(row['key'])} in {src.name}: {change}, "
                                 f"beyond --fail-on {f.spec}")
    return lines


def _cell(st: dict) -> str:
    if not math.isfinite(st["mean"]):
        return "n/a"
    text = f"{st['mean']:.4g}"
    return text if st["lo"] is None else f"{text} [{st['lo']:.3g}, {st['hi']:.3g}]"


def _spread(flag: bool | None) -> str:
    return "n/a" if flag is None else ("yes" if flag else "no")


def _delta(d: float) -> str:
    return f"{d:+.4g}" if math.isfinite(d) else "n/a"


def verdict_line(sources: list[Source], rows: list[dict], specs: list[FailOn], failures: list[str],
                 include_calibration: bool = False) -> str:
    """The gate's answer in one line: PASS or FAIL, what was gated, and what was left out."""
    keys = {r["key"] for r in rows}
    counted = sum(gated(sources[0], k, include_calibration) for k in keys)
    left_out = len(keys) - counted
    against = f"{len(sources) - 1} input{'s' * (len(sources) > 2)} against {sources[0].name}"
    scope = f"{counted} row{'s' * (counted != 1)} gated" + (
        f", {left_out} calibration row{'s' * (left_out != 1)} shown but not gated (--include-calibration gates them)"
        if left_out else "")
    if not specs:
        return f"PASS: nothing to fail (no --fail-on given); {against} compared, {scope}"
    gates = ", ".join(f.spec for f in specs)
    if failures:
        return f"FAIL: {len(failures)} problem{'s' * (len(failures) > 1)} beyond --fail-on {gates} ({against}; " \
               f"{scope}): {failures[0]}" + (" ..." if len(failures) > 1 else "")
    return f"PASS: --fail-on {gates} holds for {against} ({scope})"


def compare_blocks(sources: list[Source], rows: list[dict], setting: str, failures: list[str]) -> list:
    """The comparison in bench/report.py's block format (rendered as compare.md and compare.html)."""
    names = [s.name for s in sources]
    key_cols = ["dataset", "model"] if sources[0].runs is not None else ["model", "stage", "NFE", "guidance", "batch"]
    what = (f"run folders, {setting} setting, mean [95% t interval] over the ok seeds" if sources[0].runs is not None
            else "throughput files, one measurement per row")
    blocks = [("h1", "gan-vs-diffusion: compare"),
              ("p", f"Inputs ({what}): " + "; ".join(f"{s.name} = {s.path}" for s in sources)
               + f". Deltas are against {names[0]}; 'outside spread' = the two 95% intervals do not overlap.")]
    if failures:
        blocks += [("h2", "Gate failed"), ("table", ["what"], [[f] for f in failures])]
    for src in sources[1:]:
        diffs, incomparable = protocol_differences(sources[0], src)
        if diffs:
            verdict = "INCOMPARABLE" if incomparable else "comparable (versions or seed counts only)"
            blocks += [("h2", f"Protocol: {src.name} vs {names[0]}: {verdict}"),
                       ("table", ["where", "fields that differ"], [d.split(": ", 1) for d in diffs])]
    header = key_cols + ["metric"] + names + [f"Δ {n}" for n in names[1:]] + [f"outside spread {n}" for n in names[1:]]
    table = [list(r["key"]) + [r["metric"]] + [_cell(st) for st in r["stats"]]
             + [_delta(d) for d in r["deltas"]] + [_spread(o) for o in r["outside"]] for r in rows]
    return blocks + [("h2", "Metrics"), ("table", header, table)]


def run_compare(paths: list[str], fail_on: list[str] = (), out: str | None = None, setting: str = "neutral",
                include_calibration: bool = False) -> tuple[int, list[str], str, str]:
    """Everything `gvd compare` does: check the inputs and specs (CompareError before anything is written), write
    compare.md / compare.html into `out` (default: the first run folder, or the first file's folder), and return
    (exit status: 1 on a regression or an incomparable pair under --fail-on, else 0; failure lines; the Markdown;
    the PASS / FAIL line)."""
    specs = [parse_fail_on(s) for s in fail_on]
    sources = load_sources(list(paths), setting)
    rows = compare_rows(sources)
    present = {r["metric"] for r in rows} | {m for v in sources[0].values.values() for m, x in v.items() if x}
    for f in specs:
        if f.metric not in present:
            raise CompareError(f"--fail-on {f.spec}: no compared row has metric {f.metric!r} "
                               f"(these have: {', '.join(sorted(present)) or 'none'})")
    out_dir = Path(out) if out else (sources[0].path if sources[0].path.is_dir() else sources[0].path.parent)
    if out_dir.exists() and not out_dir.is_dir():
        raise CompareError(f"--out {out_dir} exists and is not a folder")
    failures = regressions(sources, rows, specs, include_calibration)
    verdict = verdict_line(sources, rows, specs, failures, include_calibration)
    blocks = compare_blocks(sources, rows, setting, failures)
    blocks.insert(2, ("p", f"Gate: {verdict}"))
    markdown = to_markdown(blocks)
    atomic_write(out_dir / "compare.md", markdown)
    atomic_write(out_dir / "compare.html", to_html(blocks))
    return (1 if failures else 0), failures, markdown, verdict
