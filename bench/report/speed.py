"""The speed side of the report: the throughput blocks and the quality-vs-cost figures.

Reads what bench/speed/throughput.py measured (results.json's "throughput", tabulated by bench/speed/summary.py) and
what the runs recorded; measures nothing. `throughput_blocks` and `quality_cost_figures` are what
bench/report/build.py puts in the report.
"""

import math
import statistics
from pathlib import Path

from bench.core.rundir import RunDir, slug
from bench.report.figures import LINE_STYLES, MARKERS, joined, log_axis, new_figure, save_figure, suptitle
from bench.report.tables import colour, families_of
from bench.report.tables import label as label_of
from bench.speed.summary import summary_lines, table_rows
from bench.speed.throughput import peak_key

# ---------------------------------------------------------------- report blocks


def throughput_blocks(result: dict, figures: list[tuple[str, str]] | tuple = (),
                      text_params: int | None = None) -> list:
    """Report blocks (bench/report/build.py's format) for a throughput result, plus any quality-vs-cost figures as
    (path, caption). text_params: the run's trained text encoder's parameter count, which the report gives instead of
    the timed one's (the throughput stage builds its networks with a placeholder vocabulary)."""
    result, notes = reconciled(result), []
    if any("from the measured loops" in r["method"] for r in result["rows"]):
        notes.append(RECONCILED)
    text = (result.get("models") or {}).get("text") or {}
    if text_params and text.get("params") and text["params"] != text_params:
        notes.append(f"The shared text encoder is counted at the size this run trained ({text_params:,} parameters): "
                     f"the throughput stage timed one with a placeholder vocabulary ({text['params']:,} parameters), "
                     "whose word table costs no compute.")
        result = {**result, "models": {**result["models"], "text": {**text, "params": text_params}}}
    header, rows = table_rows(result)
    blocks = [("h2", "Throughput"),
              ("p", ("Fresh networks of this run's configs (speed does not depend on the weights). Sampling: images/s "
                     f"at batch {result['batch']} and the time of one image alone (batch 1), VAE decode included for "
                     "the diffusion model; guidance runs the conditional and unconditional halves in one batch. "
                     f"Training: images/s at batch {result['train_batch']} through the harness's own training loops. "
                     "Warm-up calls first; the median of the repeats.")),
              ("table", header, rows)]
    blocks += [("p", line[0].upper() + line[1:]) for line in summary_lines(result) + notes if line]
    blocks += [("img", path, caption) for path, caption in figures]
    return blocks


RECONCILED = (
    "Rows that did not fit the time budget are estimated from this table's measured loops of the same model and "
    "guidance, linear in the NFE through the two largest measured (proportional to the one where only one was "
    "measured), so an estimate never contradicts a measurement. The throughput stage's own estimate (NFE x one "
    "isolated network call + the decode) came out below the measured loops on a busy CPU: an isolated call runs "
    "faster than the same call inside a loop.")


def _extrapolate(points: list[tuple[float, float]], x: float) -> float | None:
    """y at x from the measured (x, y): the line through the two largest x (rising), else proportional to the
    largest; None without a point."""
    points = sorted(points)
    if not points:
        return None
    (x1, y1), (x2, y2) = points[-2] if len(points) > 1 else (0.0, 0.0), points[-1]
    slope = (y2 - y1) / (x2 - x1) if len(points) > 1 and x2 > x1 else 0.0
    return y2 + slope * (x - x2) if slope > 0 else y2 * x / x2


def reconciled(result: dict) -> dict:
    """The throughput result with every estimated sampling time re-estimated from the measured loops of the same model
    and guidance (_extrapolate: seconds per batch and seconds per image alone, linear in NFE), its images/s, TFLOP/s
    and MFU following; rows measured stay as they are. A group without a measured loop keeps its estimate."""
    rows = [dict(r) for r in result.get("rows", [])]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("stage") == "sample" and r.get("nfe"):
            groups.setdefault((r["model"], r.get("guidance")), []).append(r)
    for group in groups.values():
        batch_s = [(m["nfe"], m["batch"] / m["images_per_s"]) for m in group
                   if m["method"].startswith("measured") and m.get("images_per_s")]
        alone_s = [(m["nfe"], m["latency_s"]) for m in group if m["method"] == "measured" and m.get("latency_s")]
        for r in group:
            if r["method"] == "estimated" and (t := _extrapolate(batch_s, r["nfe"])):
                ips = r["batch"] / t
                scale = ips / r["images_per_s"] if r.get("images_per_s") else None
                r.update(images_per_s=ips, latency_s=_extrapolate(alone_s, r["nfe"]) or r.get("latency_s"),
                         method="estimated from the measured loops")
                for k in ("tflops", "mfu"):
                    if scale is not None and r.get(k) is not None:
                        r[k] *= scale
            elif r["method"] == "measured (batch-1 latency estimated)" and (t := _extrapolate(alone_s, r["nfe"])):
                r.update(latency_s=t, method="measured (batch-1 latency from the measured loops)")
    return {**result, "rows": rows}


# ---------------------------------------------------------------- quality against cost


def _quality_key(runs: list[dict]) -> tuple[str, str] | None:
    """FID where the runs have it (images: on label-free features, else the judge's), else reverse KL (2D mixtures);
    lower is better for all."""
    for key, label in (("fid_lf", "FID (label-free features)"), ("fid", "FID (judge features)"),
                       ("reverse_kl", "reverse KL (nats)")):
        if any(_finite(r.get("metrics", {}).get(key)) for r in runs):
            return key, label
    return None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _sampling_points(run: dict, key: str) -> list[tuple[str, float, float, float | None]]:
    """(sampler name, NFE, quality, seconds per image) of a run: every sampler in by_sampler, else the headline."""
    out = []
    per = run.get("by_sampler") or {run.get("sampler") or run["model"]: {**run.get("metrics", {}),
                                                                          **run.get("throughput", {})}}
    for label, m in per.items():
        if not _finite(m.get(key)) or m.get("nfe") is None:
            continue
        ips = m.get("samples_per_s")
        if not ips and m.get("sample_seconds") and m.get("num_samples"):
            ips = m["num_samples"] / m["sample_seconds"]
        out.append((str(label).partition(":")[0], float(m["nfe"]), float(m[key]), 1.0 / ips if ips else None))
    return out


def _training_points(run: dict, key: str) -> list[tuple[float, float]]:
    """(training wall seconds, quality) along a run's metric-over-training curve, then its final point. Curve points
    without their own "seconds" are placed at step x (seconds per step), after any VAE stage; a snapshot without a
    finite value is NaN, a gap in the line (never a straight line across it). [] when no point has a value."""
    train = run.get("train") or {}
    total, steps = train.get("seconds"), train.get("steps")
    if not total:
        return []
    offset = (train.get("vae") or {}).get("seconds", 0.0)
    points = []
    for c in run.get("curve") or []:
        sec = c.get("seconds")
        if sec is None and steps and c.get("step") is not None:
            sec = offset + c["step"] * (total - offset) / steps
        if sec is not None:
            points.append((float(sec), float(c[key]) if _finite(c.get(key)) else math.nan))
    final = run.get("metrics", {}).get(key)
    points.append((float(total), float(final) if _finite(final) else math.nan))
    return sorted(points, key=lambda p: p[0]) if any(math.isfinite(y) for _, y in points) else []


def _sampling_curves(runs: list[dict], key: str) -> dict[tuple[str, str], list[tuple[float, float, float | None]]]:
    """{(model, sampler name): [(NFE, quality, seconds per image or None)]}, each the mean over the seeds."""
    by_curve: dict[tuple[str, str], dict[float, list]] = {}
    for r in runs:
        for name, nfe, q, spi in _sampling_points(r, key):
            by_curve.setdefault((r["model"], name), {}).setdefault(nfe, []).append((q, spi))
    out = {}
    for curve, pts in by_curve.items():
        out[curve] = [(nfe, statistics.mean(p[0] for p in pts[nfe]),
                       statistics.mean(p[1] for p in pts[nfe]) if all(p[1] for p in pts[nfe]) else None)
                      for nfe in sorted(pts)]
    return out


def _sampling_figure(run_dir: Path, dataset: str, runs: list[dict], quality: tuple[str, str],
                     families: dict) -> tuple[str, str] | None:
    """(path, caption) of quality vs NFE and vs sampling ms per image: one line per sampler of a family that has
    several (its colour, one line style and marker each), a one-pass family as one star. Where no family was scored at
    more than one NFE (the image benchmark scores one sampler setting), a quality-vs-NFE panel would be one point per
    family dressed as a curve: one panel against sampling time instead, each point labelled with its NFE."""
    key, label = quality
    curves = _sampling_curves(runs, key)
    if not curves:
        return None
    nfes: dict[str, set] = {}
    for (model, _), pts in curves.items():
        nfes.setdefault(model, set()).update(p[0] for p in pts)
    several = any(len(n) > 1 for n in nfes.values())  # a family scored at several NFE (one sampler each, or one many)
    show_time = any(p[2] for pts in curves.values() for p in pts)
    show_nfe = several or not show_time
    fig, axes = new_figure(show_nfe + show_time, width=4.5, height=3.4)
    k = 0
    for (model, name), pts in curves.items():
        if len(pts) == 1 and pts[0][0] <= 1:  # one pass per sample: a point, not a line
            style = {"marker": "*", "markersize": 12, "ls": "none"}
            text = f"{label_of(families, model)} ({pts[0][0]:g} forward)"
        else:
            style = {"marker": MARKERS[k % len(MARKERS)], "ls": LINE_STYLES[k % len(LINE_STYLES)]}
            text = f"{label_of(families, model)}, {name}" + ("" if several else f" (NFE {pts[0][0]:g})")
            k += 1
        style["color"] = colour(families, model)
        if show_nfe:
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], label=text, **style)
        timed = [(p[2] * 1e3, p[1], p[0]) for p in pts if p[2]]
        if show_time and timed:
            axes[-1].plot([t[0] for t in timed], [t[1] for t in timed], label=text, **style)
            if not several:
                for x, y, nfe in timed:
                    axes[-1].annotate(f"NFE {nfe:g}", (x, y), fontsize=7, xytext=(4, -10), textcoords="offset points")
    if show_nfe:
        axes[0].set(xlabel="network evaluations per image (NFE)", ylabel=label, title="quality vs NFE")
        log_axis(axes[0], "x")
    if show_time:
        axes[-1].set(xlabel="sampling time per image (ms, at the evaluation batch)", ylabel=label,
                     title="quality vs sampling cost")
        log_axis(axes[-1], "x")
    for ax in axes:
        if ax.has_data():
            ax.legend(fontsize=7)
    suptitle(fig, f"{dataset}: lower is better; mean over seeds", 9)
    path = save_figure(RunDir(run_dir), fig, f"{slug(dataset)}_quality_vs_sampling")
    what = f"{label}, lower is better, mean over seeds"
    if show_nfe:
        return path, (f"{dataset}: sample quality against the network evaluations per image (NFE)"
                      + (" and against the sampling time per image" if show_time else "")
                      + f", one line per sampler on the same trained networks ({what}).")
    return path, (f"{dataset}: sample quality against the sampling time per image, each family at the one sampler "
                  f"setting this benchmark scores, its NFE beside the point ({what}). Quality at several NFE is "
                  "measured on the 2D benchmarks (the samplers table); the throughput table above gives the image "
                  "models' time at every NFE.")


def _training_figure(run_dir: Path, dataset: str, runs: list[dict], quality: tuple[str, str],
                     families: dict) -> tuple[str, str] | None:
    """(path, caption) of quality vs training wall time: one line per (model, seed), the family's colour, one line
    style per seed (past len(LINE_STYLES) seeds one legend entry per family, its seeds' lines alike)."""
    key, label = quality
    lines = {(r["model"], r["seed"]): _training_points(r, key) for r in runs}
    if not any(lines.values()):
        return None
    fig, (ax,) = new_figure(1, width=5, height=3.4)
    seeds = {seed: i for i, seed in enumerate(sorted({seed for _, seed in lines}))}
    if len(seeds) <= len(LINE_STYLES):  # a line style per seed while there are styles to tell them apart
        for (model, seed), pts in lines.items():
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colour(families, model),
                        ls=LINE_STYLES[seeds[seed]], label=f"{label_of(families, model)}, seed {seed}")
    else:  # more seeds than styles: one artist per family, every seed in it
        for model in dict.fromkeys(model for model, _ in lines):
            mine = [pts for (m, _), pts in lines.items() if m == model and pts]
            ax.plot(*joined(mine), marker="o", ms=3, lw=1, alpha=0.8, color=colour(families, model),
                    label=f"{label_of(families, model)}, {len(mine)} seeds")
    ax.set(xlabel="training wall time (s; a latent family's autoencoder included)", ylabel=label,
           title=f"{dataset}: quality vs training time")
    ax.legend(fontsize=7)
    path = save_figure(RunDir(run_dir), fig, f"{slug(dataset)}_quality_vs_training_time")
    return path, (f"{dataset}: sample quality ({label}, lower is better) against training wall time, every seed of "
                  "every family: the metric-over-training snapshots placed at the time they were reached.")


def quality_cost_figures(run_dir, results: dict) -> list[tuple[str, str]]:
    """Per dataset: quality vs NFE and vs sampling seconds per image (one line per diffusion sampler, the GAN as one
    point), and quality vs training wall time for both models. Uses whatever results.json holds (FID for image
    runs, reverse KL for 2D runs; sampler sweeps in "by_sampler", metric-over-training in "curve"); a dataset with
    no finite value to plot is skipped. Returns (PNG path relative to run_dir, caption) pairs."""
    paths, families = [], families_of(results)
    ok = [r for r in results.get("runs", [])
          if r.get("status") in ("ok", "diverged") and r.get("role") != "calibration"]
    for dataset in dict.fromkeys(r["dataset"] for r in ok):
        runs = [r for r in ok if r["dataset"] == dataset]
        quality = _quality_key(runs)
        if quality is None:
            continue
        for figure in (_sampling_figure, _training_figure):
            drawn = figure(Path(run_dir), dataset, runs, quality, families)
            if drawn:
                paths.append(drawn)
    return paths


# ---------------------------------------------------------------- where the time went


def _peak_of(results: dict, precision: str | None) -> float | None:
    """The measured matmul peak (FLOP/s, on the throughput stage's threads) of a training precision, or None."""
    peaks = (results.get("throughput") or {}).get("matmul_peaks") or {}
    key = peak_key(str(precision))
    return peaks[key]["tflops"] * 1e12 if key in peaks else None


def training_rate_rows(results: dict, job_threads: int) -> list[list[str]]:
    """Per (dataset, model family): training FLOP/s (the entries' training FLOPs over their training seconds, mean over
    the seeds) and its share of the matmul peak of the precision it trained in, scaled to the threads a job had."""
    families, rows = families_of(results), []
    threads = (results.get("throughput") or {}).get("threads") or 1
    groups: dict[tuple, list[dict]] = {}
    for r in results.get("runs", []):
        train = r.get("train") or {}
        if r.get("status") == "ok" and train.get("flops") and train.get("seconds") and r.get("role") != "calibration":
            groups.setdefault((r["dataset"], r["model"]), []).append(train)
    for (dataset, family), trains in groups.items():
        rate = statistics.mean(t["flops"] / t["seconds"] for t in trains)
        precision = trains[0].get("precision", "float32")
        peak = _peak_of(results, precision)
        share = "n/a" if peak is None else f"{rate / (peak * min(job_threads, threads) / threads):.0%}"
        rows.append([dataset, label_of(families, family), precision, f"{rate / 1e9:.1f}", share, str(len(trains))])
    return rows


def time_blocks(results: dict) -> list:
    """"Where the time went": the run's wall time and how its jobs ran, the stages by CPU seconds, and each family's
    training FLOP/s against the measured matmul peak."""
    record = results.get("stages")
    if not record or not record.get("stages"):
        return []
    stages, job_threads = record["stages"], record.get("job_threads", 1)
    total_cpu = sum(s["cpu_s"] for s in stages.values()) or 1.0
    rows = [[name, str(s["count"]), f"{s['wall_s']:.1f}", f"{s['cpu_s']:.1f}", f"{s['cpu_s'] / total_cpu:.0%}"]
            for name, s in sorted(stages.items(), key=lambda kv: -kv[1]["cpu_s"])]
    blocks = [("h2", "Where the time went"),
              ("p", (f"Wall time {record['wall_s']:.0f} s over {record.get('invocations', 1)} invocation(s) of gvd "
                     f"run; jobs ran {record.get('workers', 1)} at a time, {job_threads} torch thread(s) each, on "
                     f"{record.get('cpu_count', '?')} cores. Seconds are summed over every time a stage was entered, "
                     "in every job; CPU seconds are each process's own (a stage kept on two cores shows about twice "
                     "its wall time), and stages of jobs that ran side by side add up to more than the wall time. "
                     "Nested stages (a family's training inside its job) are counted in their own row and in the "
                     "enclosing one.")),
              ("table", ["stage", "entered", "wall s", "CPU s", "share of CPU s (rows nest)"], rows)]
    if rates := training_rate_rows(results, job_threads):
        threads = (results.get("throughput") or {}).get("threads")
        blocks += [("p", ("Training speed: each family's training FLOPs (counted on the networks it trains, attention "
                          "included) over its training seconds, mean over seeds, as a share of the dense matmul peak "
                          "of the precision it trains in, measured in the same run by the throughput stage on "
                          f"{threads or '?'} thread(s) and scaled to the {job_threads} a job had.")),
                   ("table", ["dataset", "family", "precision", "training GFLOP/s", "share of matmul peak", "runs"],
                    rates)]
    return blocks
