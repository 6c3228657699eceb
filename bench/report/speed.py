"""The speed side of the report: the throughput blocks and the quality-vs-cost figures.

Reads what bench/speed/throughput.py measured (results.json's "throughput", tabulated by bench/speed/summary.py) and
what the runs recorded; measures nothing. `throughput_blocks` and `quality_cost_figures` are what
bench/report/build.py puts in the report.
"""

import statistics
from pathlib import Path

from bench.core.rundir import RunDir, slug
from bench.report.figures import LINE_STYLES, MARKERS, new_figure, save_figure
from bench.report.tables import colour, families_of
from bench.report.tables import label as label_of
from bench.speed.summary import summary_lines, table_rows
from bench.speed.throughput import peak_key

# ---------------------------------------------------------------- report blocks


def throughput_blocks(result: dict, figures: list[str] | tuple = ()) -> list:
    """Report blocks (bench/report.py's format) for a throughput result, plus any quality-vs-cost figures."""
    header, rows = table_rows(result)
    blocks = [("h2", "Throughput"),
              ("p", ("Fresh networks of this run's configs (speed does not depend on the weights). Sampling: images/s "
                     f"at batch {result['batch']} and the time of one image alone (batch 1), VAE decode included for "
                     "the diffusion model; guidance runs the conditional and unconditional halves in one batch. "
                     f"Training: images/s at batch {result['train_batch']} through the harness's own training loops. "
                     "Warm-up calls first; the median of the repeats.")),
              ("table", header, rows)]
    blocks += [("p", line) for line in summary_lines(result)]
    blocks += [("img", path, path) for path in figures]
    return blocks


# ---------------------------------------------------------------- quality against cost


def _quality_key(runs: list[dict]) -> tuple[str, str] | None:
    """FID where the runs have it (images: on label-free features, else the judge's), else reverse KL (2D mixtures);
    lower is better for all."""
    for key, label in (("fid_lf", "FID (label-free features)"), ("fid", "FID (judge features)"),
                       ("reverse_kl", "reverse KL (nats)")):
        if any(isinstance(r.get("metrics", {}).get(key), (int, float)) for r in runs):
            return key, label
    return None


def _sampling_points(run: dict, key: str) -> list[tuple[str, float, float, float | None]]:
    """(sampler name, NFE, quality, seconds per image) of a run: every sampler in by_sampler, else the headline."""
    out = []
    per = run.get("by_sampler") or {run.get("sampler") or run["model"]: {**run.get("metrics", {}),
                                                                          **run.get("throughput", {})}}
    for label, m in per.items():
        if not isinstance(m.get(key), (int, float)) or m.get("nfe") is None:
            continue
        ips = m.get("samples_per_s")
        if not ips and m.get("sample_seconds") and m.get("num_samples"):
            ips = m["num_samples"] / m["sample_seconds"]
        out.append((str(label).partition(":")[0], float(m["nfe"]), float(m[key]), 1.0 / ips if ips else None))
    return out


def _training_points(run: dict, key: str) -> list[tuple[float, float]]:
    """(training wall seconds, quality) along a run's metric-over-training curve, else its final point. Curve points
    without their own "seconds" are placed at step x (seconds per step), after any VAE stage."""
    train = run.get("train") or {}
    total, steps = train.get("seconds"), train.get("steps")
    if not total:
        return []
    offset = (train.get("vae") or {}).get("seconds", 0.0)
    points = []
    for c in run.get("curve") or []:
        if isinstance(c.get(key), (int, float)):
            sec = c.get("seconds")
            if sec is None and steps and c.get("step") is not None:
                sec = offset + c["step"] * (total - offset) / steps
            if sec is not None:
                points.append((float(sec), float(c[key])))
    final = run.get("metrics", {}).get(key)
    if isinstance(final, (int, float)):
        points.append((float(total), float(final)))
    return sorted(points)


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
                     families: dict) -> str | None:
    """Quality vs NFE and vs sampling ms per image: one line per sampler of a family that has several (its colour,
    one line style and marker each), a one-pass family as one star."""
    key, label = quality
    curves = _sampling_curves(runs, key)
    if not curves:
        return None
    fig, axes = new_figure(2, width=4.5, height=3.4)
    k = 0
    for (model, name), pts in curves.items():
        if len(pts) == 1 and pts[0][0] <= 1:  # one pass per sample: a point, not a line
            style = {"marker": "*", "markersize": 12, "ls": "none"}
            text = f"{label_of(families, model)} ({pts[0][0]:g} forward)"
        else:
            style = {"marker": MARKERS[k % len(MARKERS)], "ls": LINE_STYLES[k % len(LINE_STYLES)]}
            text = f"{label_of(families, model)}, {name}"
            k += 1
        style["color"] = colour(families, model)
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], label=text, **style)
        timed = [(p[2] * 1e3, p[1]) for p in pts if p[2]]
        if timed:
            axes[1].plot(*zip(*timed), label=text, **style)
    axes[0].set(xscale="log", xlabel="network evaluations per image (NFE)", ylabel=label, title="quality vs NFE")
    axes[1].set(xscale="log", xlabel="sampling time per image (ms, at the evaluation batch)", ylabel=label,
                title="quality vs sampling cost")
    for ax in axes:
        if ax.has_data():
            ax.legend(fontsize=7)
    fig.suptitle(f"{dataset}: lower is better; mean over seeds", fontsize=9)
    return save_figure(RunDir(run_dir), fig, f"{slug(dataset)}_quality_vs_sampling")


def _training_figure(run_dir: Path, dataset: str, runs: list[dict], quality: tuple[str, str],
                     families: dict) -> str | None:
    """Quality vs training wall time: one line per (model, seed), the family's colour, one line style per seed."""
    key, label = quality
    lines = {(r["model"], r["seed"]): _training_points(r, key) for r in runs}
    if not any(lines.values()):
        return None
    fig, (ax,) = new_figure(1, width=5, height=3.4)
    seeds = sorted({seed for _, seed in lines})
    for (model, seed), pts in lines.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colour(families, model),
                    ls=LINE_STYLES[seeds.index(seed) % len(LINE_STYLES)],
                    label=f"{label_of(families, model)}, seed {seed}")
    ax.set(xlabel="training wall time (s; a latent family's autoencoder included)", ylabel=label,
           title=f"{dataset}: quality vs training time")
    ax.legend(fontsize=7)
    return save_figure(RunDir(run_dir), fig, f"{slug(dataset)}_quality_vs_training_time")


def quality_cost_figures(run_dir, results: dict) -> list[str]:
    """Per dataset: quality vs NFE and vs sampling seconds per image (one line per diffusion sampler, the GAN as one
    point), and quality vs training wall time for both models. Uses whatever results.json holds (FID for image
    runs, reverse KL for 2D runs; sampler sweeps in "by_sampler", metric-over-training in "curve"); a dataset with
    nothing to plot is skipped. Returns the PNG paths relative to run_dir."""
    paths, families = [], families_of(results)
    ok = [r for r in results.get("runs", [])
          if r.get("status") in ("ok", "diverged") and r.get("role") != "calibration"]
    for dataset in dict.fromkeys(r["dataset"] for r in ok):
        runs = [r for r in ok if r["dataset"] == dataset]
        quality = _quality_key(runs)
        if quality is None:
            continue
        for figure in (_sampling_figure, _training_figure):
            path = figure(Path(run_dir), dataset, runs, quality, families)
            if path:
                paths.append(path)
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
