"""The run's charts, drawn from results.json and the run folder's files, one colour per family in every chart
(bench/report/figures.py family_colour): 2D samples over the data, training losses, metrics over training, and the
knob sweeps. Each returns the figure's path (relative to the run folder), or None when there is nothing to draw.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.core.rundir import RunDir, slug
from bench.data.mixtures import sample_mixture
from bench.evaluate.sweeps import summarise_sweeps
from bench.report.figures import LINE_STYLES, REAL_COLOUR, joined, log_axis, new_figure, save_figure, suptitle
from bench.report.tables import colour, families_of, label


def _scatter_panels(run: RunDir, results: dict, dataset: str, seed: int) -> list[tuple[str, str, np.ndarray]]:
    """(family, panel title, samples (N, 2)) for every family (and every sampler of it) with a samples file."""
    families, panels = families_of(results), []
    for r in results["runs"]:
        if r["dataset"] != dataset or r["seed"] != seed or r["status"] == "failed":
            continue
        for sampler in list(r.get("by_sampler", {})) or [None]:
            pts = run.load_points(dataset, seed, r["model"], sampler)
            if pts is not None:
                panels.append((r["model"], label(families, r["model"]) + (f" ({sampler})" if sampler else ""), pts))
    return panels


def scatter_figure(run_dir: Path, results: dict, dataset: str) -> str | None:
    """The first seed's samples of every family over the real data, one panel per family (and sampler)."""
    seed = results["config"]["seeds"][0]
    panels = _scatter_panels(RunDir(run_dir), results, dataset, seed)
    if not panels:
        return None
    families = families_of(results)
    real = sample_mixture(dataset, 2500, torch.Generator().manual_seed(12345)).numpy()
    lim = np.abs(real).max() * 1.4
    fig, axes = new_figure(len(panels), width=3.2, height=3.3)
    for ax, (family, title, pts) in zip(axes, panels):
        ax.scatter(real[:, 0], real[:, 1], s=2, c=REAL_COLOUR, label="data")
        finite = pts[np.isfinite(pts).all(axis=1)]
        ax.scatter(finite[:, 0], finite[:, 1], s=2, c=colour(families, family), alpha=0.5, label="samples")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), title=title, aspect="equal", xlabel="x1 (data units)",
               ylabel="x2 (data units)")
        ax.tick_params(labelsize=7)
    suptitle(fig, f"{dataset}, seed {seed}: samples (colour) over the data (grey)", 9)
    return save_figure(RunDir(run_dir), fig, f"{slug(dataset)}_samples", dpi=110)


def loss_figure(run_dir: Path, results: dict, dataset: str) -> str | None:
    """The first seed's training curves of every trained family: its losses (one panel per family, a 50-step mean
    over the raw values), and for a family with a discriminator its mean sigmoid outputs D(x), D(G(z))."""
    seed, run, families = results["config"]["seeds"][0], RunDir(run_dir), families_of(results)
    histories = [(f, h) for f in families if (h := run.read_history(dataset, seed, f))]
    if not histories:
        return None
    panels = [(f, h, "loss") for f, h in histories] + [(f, h, "d") for f, h in histories if "d_real" in h[0]]
    fig, axes = new_figure(len(panels), width=3.7, height=3)
    for ax, (family, rows, kind) in zip(axes, panels):
        frame, c = pd.DataFrame(rows), colour(families, family)
        keys = ([k for k in frame if k.endswith("loss")] if kind == "loss" else ["d_real", "d_fake"])
        for i, key in enumerate(keys):
            smooth = frame[key].rolling(50, min_periods=1).mean()
            ax.plot(frame["step"], smooth, lw=0.9, c=c, ls=LINE_STYLES[i % len(LINE_STYLES)],
                    label={"d_real": "D(x)", "d_fake": "D(G(z))"}.get(key, key))
        if kind == "loss" and (frame[keys] > 0).all().all() and len(keys) == 1:
            log_axis(ax, "y")
        title = f"{label(families, family)}: " + ("losses (50-step mean)" if kind == "loss" else "discriminator")
        ax.set(title=title, xlabel="training step", ylabel="loss" if kind == "loss" else "mean D output (probability)")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    suptitle(fig, f"{dataset}, seed {seed}", 9)
    return save_figure(run, fig, f"{slug(dataset)}_training")


def curve_panels(runs: list[dict], panels: list[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
    """The panels some snapshot of the runs scored: a metric no snapshot has gets no empty panel."""
    return [p for p in panels if any(_finite(c.get(p[0])) for r in runs for c in r.get("curve") or [])]


def curve_figure(run_dir: Path, results: dict, dataset: str, panels: list[tuple[str, str, float]]) -> str | None:
    """Metric-over-training: one panel per (key, title, scale), every seed of every family as a line."""
    runs = [r for r in results["runs"] if r["dataset"] == dataset and r.get("curve")]
    panels = curve_panels(runs, panels)
    if not runs or not panels:
        return None
    families = families_of(results)
    fig, axes = new_figure(len(panels), width=3.6, height=3)
    for ax, (key, title, scale) in zip(axes, panels):
        lines: dict[str, list] = {}  # one artist per family, every seed in it
        for r in runs:
            # a snapshot without the metric is a gap in the line (NaN), never a straight line across it
            pts = [(p["step"], p[key] * scale if _finite(p.get(key)) else np.nan) for p in r["curve"] if "step" in p]
            if any(np.isfinite(y) for _, y in pts):
                lines.setdefault(r["model"], []).append(pts)
        for model, seeds in lines.items():
            ax.plot(*joined(seeds), marker="o", ms=3, lw=1, c=colour(families, model), alpha=0.8,
                    label=label(families, model))
        ax.set(xlabel="training step", ylabel=title)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        if ax.has_data():
            ax.legend(fontsize=7)
    suptitle(fig, f"{dataset}: metrics over training (every seed)", 9)
    return save_figure(RunDir(run_dir), fig, f"{slug(dataset)}_curve")


def _finite(v) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and bool(np.isfinite(v))


SWEEP_KEYS = ("fid", "precision", "recall", "density", "coverage", "modes", "reverse_kl", "cond_accuracy", "fid_lf",
              "precision_lf", "recall_lf", "coverage_lf", "within_coverage")


def feature_suffix(summaries: dict) -> str:
    """"_lf" where the sweeps have label-free metrics (what the tuning rule reads), else "" (the judge's)."""
    return "_lf" if any("fid_lf" in row for _, rows in summaries.values() for row in rows) else ""


def sweep_summaries(runs: list[dict], dataset: str, families: dict) -> dict:
    """{family: (knob name, [{"value", metric: (mean, std)}])} over the seeds of one dataset, for every family with
    a sweep."""
    out = {}
    for family in families:
        mine = [r["sweep"] for r in runs if r["dataset"] == dataset and r["model"] == family
                and (r.get("sweep") or {}).get("points")]
        if mine:
            out[family] = (mine[0]["knob"], summarise_sweeps([s["points"] for s in mine], SWEEP_KEYS))
    return out


def _mean(row: dict, key: str) -> float:
    """The mean over seeds of one sweep setting's metric (NaN where no seed scored it)."""
    return row[key][0] if key in row else np.nan


def sweep_figure(run_dir: Path, results: dict, dataset: str, summaries: dict) -> str | None:
    """Every family with a knob on the same axes: precision vs recall (the fidelity/diversity trade-off), then FID
    and prompt accuracy against each family's knob (each family's knob on an x axis of its colour)."""
    if not summaries:
        return None
    families = families_of(results)
    lf = feature_suffix(summaries)
    space = "label-free features" if lf else "judge features"
    fig, axes = new_figure(3, width=4, height=3.6)
    for family, (knob, rows) in summaries.items():
        rec, prec = [_mean(r, "recall" + lf) for r in rows], [_mean(r, "precision" + lf) for r in rows]
        axes[0].plot(rec, prec, marker="o", c=colour(families, family), label=f"{label(families, family)} ({knob})")
        for r, x, y in zip(rows, rec, prec):
            axes[0].annotate(f"{r['value']:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[0].set(xlabel="recall (diversity, fraction)", ylabel="precision (fidelity, fraction)")
    axes[0].set_title(f"precision vs recall ({space})", fontsize=9)
    axes[0].legend(fontsize=7)
    for ax, key, title in ((axes[1], "fid" + lf, f"FID ({space})"), (axes[2], "cond_accuracy",
                                                                   "prompt accuracy (fraction)")):
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(title)
        for i, (family, (knob, rows)) in enumerate(summaries.items()):
            c = colour(families, family)
            axis = ax.twiny() if i else ax  # a family's own knob axis: the first at the bottom, the others on top
            axis.errorbar([r["value"] for r in rows], [_mean(r, key) for r in rows],
                          yerr=[r[key][1] if key in r else 0 for r in rows], marker="o", ms=4, c=c, capsize=2,
                          label=label(families, family))
            axis.set_xlabel(knob, color=c, fontsize=8)
            axis.tick_params(axis="x", colors=c, labelsize=7)
    suptitle(fig, f"{dataset}: each family along its knob, same validation prompts and seeds", 9)
    return save_figure(RunDir(run_dir), fig, f"{slug(dataset)}_sweeps")
