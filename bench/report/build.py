"""results.json -> figures/, report.md and report.html.

The report is built as a list of blocks (heading, text, table, image) rendered twice, once as Markdown and once as a
self-contained HTML page, so the two never disagree. `gvd report RUN_DIR` rebuilds both from the run folder alone.
"""

import base64
import html
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bench.core.guard import error_text
from bench.core.results import summarise
from bench.core.rundir import RunDir, slug
from bench.data.mixtures import sample_mixture
from bench.evaluate.stability import GRAD_KEYS, LOSS_KEYS
from bench.evaluate.stats import mean_interval
from bench.evaluate.sweeps import summarise_sweeps
from bench.report.figures import (
    FAMILY_COLOURS,
    LINE_STYLES,
    REAL_COLOUR,
    grid_cells,
    grids_figure,
    new_figure,
    prompt_groups_figure,
)
from bench.report.speed import quality_cost_figures, throughput_blocks
from bench.report.tables import difference_blocks, image_table, memorisation_note, recipe_blocks, verdict_blocks

# Published 2D numbers (VEEGAN: Srivastava et al. 2017, Table 1; PacGAN: Lin et al. 2018, Table 1): modes captured,
# high-quality %, reverse KL.
REFERENCE_2D = {
    "ring8": [
        ("GAN (VEEGAN, Srivastava et al. 2017, Table 1)", 1, 99.3, None),
        ("PacGAN4 (Lin et al. 2018, Table 1)", 7.8, 95.9, 0.07),
    ],
    "grid25": [
        ("GAN (VEEGAN, Srivastava et al. 2017, Table 1)", 3.3, 0.5, None),
        ("PacGAN4 (Lin et al. 2018, Table 1)", 24.8, 93.6, 0.04),
    ],
}


def _pm(stat, fmt="{:.2f}", scale=1.0) -> str:
    if stat is None:
        return "n/a"
    mean, std = stat
    return f"{fmt.format(mean * scale)} ± {fmt.format(std * scale)}"


# ---------------------------------------------------------------- figures


def _scatter_panels(run_dir: Path, results: dict, dataset: str) -> list[tuple[str, str, np.ndarray]]:
    """(model, panel title, seed-0 samples (N, 2)) for every model and diffusion sampler with a samples file."""
    seed = results["config"]["seeds"][0]
    panels = []
    for run in results["runs"]:
        if run["dataset"] != dataset or run["seed"] != seed or run["status"] == "failed":
            continue
        for label in list(run.get("by_sampler", {})) or [None]:
            pts = RunDir(run_dir).load_points(dataset, seed, run["model"], label)
            if pts is not None:
                panels.append((run["model"], run["model"] + (f" ({label})" if label else ""), pts))
    return panels


def _scatter_figure(run_dir: Path, results: dict, dataset: str) -> str | None:
    """Seed-0 samples of every model over the real data, one panel per model (and diffusion sampler)."""
    panels = _scatter_panels(run_dir, results, dataset)
    if not panels:
        return None
    real = sample_mixture(dataset, 2500, torch.Generator().manual_seed(12345)).numpy()
    lim = np.abs(real).max() * 1.4
    fig, axes = new_figure(len(panels), width=3.2, height=3.3)
    for ax, (model, title, pts) in zip(axes, panels):
        ax.scatter(real[:, 0], real[:, 1], s=2, c=REAL_COLOUR, label="data")
        finite = pts[np.isfinite(pts).all(axis=1)]
        ax.scatter(finite[:, 0], finite[:, 1], s=2, c=FAMILY_COLOURS[model], alpha=0.5, label="samples")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), title=title, aspect="equal", xlabel="x1 (data units)",
               ylabel="x2 (data units)")
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{dataset}, seed {results['config']['seeds'][0]}: samples (colour) over the data (grey)",
                 fontsize=9)
    return RunDir(run_dir).save_figure(fig, f"{dataset}_samples", dpi=110)


def _loss_figure(run_dir: Path, results: dict, dataset: str) -> str | None:
    """Seed-0 training curves: GAN losses and D outputs (the GAN's colour; D solid, G dashed), diffusion loss."""
    seed = results["config"]["seeds"][0]
    gan = RunDir(run_dir).history_path(dataset, seed, "gan")
    dif = RunDir(run_dir).history_path(dataset, seed, "diffusion")
    if not (gan.exists() or dif.exists()):
        return None
    fig, axes = new_figure(3, width=3.7, height=3)
    red, blue = FAMILY_COLOURS["gan"], FAMILY_COLOURS["diffusion"]
    if gan.exists():
        h = pd.read_csv(gan)
        axes[0].plot(h["step"], h["d_loss"], lw=0.8, c=red, ls=LINE_STYLES[0], label="D loss")
        axes[0].plot(h["step"], h["g_loss"], lw=0.8, c=red, ls=LINE_STYLES[1], label="G loss")
        axes[1].plot(h["step"], h["d_real"], lw=0.8, c=red, ls=LINE_STYLES[0], label="D(x)")
        axes[1].plot(h["step"], h["d_fake"], lw=0.8, c=red, ls=LINE_STYLES[1], label="D(G(z))")
    if dif.exists():
        h = pd.read_csv(dif)
        axes[2].plot(h["step"], h["loss"], lw=0.6, c=blue, alpha=0.4)
        axes[2].plot(h["step"], h["loss"].rolling(50, min_periods=1).mean(), c=blue, label="loss (50-step mean)")
        axes[2].set_yscale("log")
    titles = ["GAN losses", "GAN discriminator (sigmoid)", "diffusion loss"]
    ylabels = ["loss", "mean D output (probability)", "denoising loss (MSE, log scale)"]
    for ax, title, ylabel in zip(axes, titles, ylabels):
        ax.set(title=title, xlabel="training step", ylabel=ylabel)
        if ax.has_data():
            ax.legend(fontsize=7)
    fig.suptitle(f"{dataset}, seed {seed}", fontsize=9)
    return RunDir(run_dir).save_figure(fig, f"{dataset}_training")


def _curve_figure(run_dir: Path, runs: list[dict], dataset: str, panels: list[tuple[str, str, float]]) -> str | None:
    """Metric-over-training: one panel per (key, title, scale), every seed of both models as a line."""
    runs = [r for r in runs if r["dataset"] == dataset and r.get("curve")]
    if not runs:
        return None
    fig, axes = new_figure(len(panels), width=3.6, height=3)
    for ax, (key, title, scale) in zip(axes, panels):
        labelled = set()
        for r in runs:
            pts = [(p["step"], p[key] * scale) for p in r["curve"] if p.get(key) is not None]
            if not pts:
                continue
            label = None if r["model"] in labelled else r["model"]
            labelled.add(r["model"])
            ax.plot(*zip(*pts), marker="o", ms=3, lw=1, c=FAMILY_COLOURS[r["model"]], alpha=0.8, label=label)
        ax.set_xlabel("training step")
        ax.set_ylabel(title)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        if ax.has_data():
            ax.legend(fontsize=7)
    fig.suptitle(f"{dataset}: metrics over training (every seed)", fontsize=9)
    return RunDir(run_dir).save_figure(fig, f"{slug(dataset)}_curve")


SWEEP_KEYS = ("fid", "precision", "recall", "density", "coverage", "modes", "reverse_kl", "cond_accuracy")


def _sweep_summaries(runs: list[dict], dataset: str) -> dict:
    """{model: (knob name, [{"value", metric: (mean, std)}])} over the seeds of one dataset."""
    out = {}
    for model in ("gan", "diffusion"):
        mine = [r["sweep"] for r in runs if r["dataset"] == dataset and r["model"] == model
                and (r.get("sweep") or {}).get("points")]
        if mine:
            out[model] = (mine[0]["knob"], summarise_sweeps([s["points"] for s in mine], SWEEP_KEYS))
    return out


def _sweep_mean(row: dict, key: str) -> float:
    """The mean over seeds of one sweep setting's metric (NaN where no seed scored it)."""
    return row[key][0] if key in row else np.nan


def _sweep_figure(run_dir: Path, dataset: str, summaries: dict) -> str | None:
    """Both families on the same axes: precision vs recall (the fidelity/diversity trade-off), then FID and prompt
    accuracy against each family's knob (GAN psi on the top axis, diffusion guidance on the bottom one)."""
    if not summaries:
        return None
    fig, axes = new_figure(3, width=4, height=3.6)
    for model, (knob, rows) in summaries.items():
        rec, prec = [_sweep_mean(r, "recall") for r in rows], [_sweep_mean(r, "precision") for r in rows]
        axes[0].plot(rec, prec, marker="o", c=FAMILY_COLOURS[model], label=f"{model} ({knob})")
        for r, x, y in zip(rows, rec, prec):
            axes[0].annotate(f"{r['value']:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[0].set(xlabel="recall (diversity, fraction)", ylabel="precision (fidelity, fraction)")
    axes[0].set_title("precision vs recall", fontsize=9)
    axes[0].legend(fontsize=7)
    for ax, key, title in ((axes[1], "fid", "FID (judge features)"), (axes[2], "cond_accuracy",
                                                                    "prompt accuracy (fraction)")):
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(title)
        for model, (knob, rows) in summaries.items():
            c = FAMILY_COLOURS[model]
            axis = ax.twiny() if model == "gan" and "diffusion" in summaries else ax  # GAN psi on top
            vals = [r["value"] for r in rows]
            axis.errorbar(vals, [_sweep_mean(r, key) for r in rows], yerr=[r[key][1] if key in r else 0 for r in rows],
                          marker="o", ms=4, c=c, capsize=2, label=model)
            axis.set_xlabel(knob, color=c, fontsize=8)
            axis.tick_params(axis="x", colors=c, labelsize=7)
    fig.suptitle(f"{dataset}: guidance (diffusion) and truncation (GAN) sweeps, same prompts and seeds", fontsize=9)
    return RunDir(run_dir).save_figure(fig, f"{slug(dataset)}_sweeps")


# ---------------------------------------------------------------- blocks


def _mixture_sampler_blocks(mix_runs: list[dict], num_samples: int) -> list:
    """Every diffusion sampler on the same trained 2D denoisers: mean ± std over seeds."""
    diff_runs = [r for r in mix_runs if r.get("by_sampler")]
    if not diff_runs:
        return []
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in diff_runs):
        for label in diff_runs[0]["by_sampler"]:
            per = [{"dataset": dataset, "model": label, "status": r["status"], "metrics": r["by_sampler"][label]}
                   for r in diff_runs if r["dataset"] == dataset and label in r["by_sampler"]]
            s = summarise({"runs": per})[0]
            rows.append([dataset, label, _pm(s.get("nfe"), "{:.0f}"), _pm(s.get("modes"), "{:.1f}"),
                         _pm(s.get("hq_fraction"), "{:.1f}", 100), _pm(s.get("reverse_kl"), "{:.3f}"),
                         _pm(s.get("sample_seconds"), "{:.2f}")])
    return [("h3", "Diffusion samplers on the same trained denoisers"),
            ("table", ["dataset", "sampler:steps", "NFE", "modes", "high quality %", "reverse KL",
                       f"sampling s ({num_samples:,} samples)"], rows)]


def _mixture_blocks(run_dir: Path, results: dict) -> list:
    mix_runs = [r for r in results["runs"] if r["dataset"] in REFERENCE_2D]
    if not mix_runs:
        return []
    summary = summarise({"runs": mix_runs})
    num_samples = (results["config"].get("mixtures") or {}).get("num_samples", 2500)
    blocks = [("h2", "2D mode-collapse mixtures"),
              ("p", (f"Protocol of VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018): {num_samples:,} "
                     "samples per run; a sample is high quality within 3 std of its nearest mode; a mode is captured "
                     "when it is the nearest mode of at least one high-quality sample; reverse KL = KL(p_gen || "
                     "uniform) over the nearest-mode histogram of the high-quality samples (as PacGAN's released "
                     "code). Mean ± std over seeds; published rows for reference (their budgets differ)."))]
    header = ["dataset", "model", "runs ok", "modes", "high quality %", "reverse KL", "params", "examples seen",
              "train s"]
    rows = []
    for s in summary:
        runs = [r for r in mix_runs if r["dataset"] == s["dataset"] and r["model"] == s["model"]]
        train = [r["train"] for r in runs if r.get("train")]
        name = s["model"] + (f" ({runs[0].get('sampler')})" if runs[0].get("sampler") else "")
        rows.append([s["dataset"], name, f"{s['ok']}/{s['seeds']}", _pm(s.get("modes"), "{:.1f}"),
                     _pm(s.get("hq_fraction"), "{:.1f}", 100), _pm(s.get("reverse_kl"), "{:.3f}"),
                     str(train[0]["params_total"]) if train else "n/a",
                     str(train[0]["examples_seen"]) if train else "n/a",
                     f"{np.mean([t['seconds'] for t in train]):.1f}" if train else "n/a"])
    for dataset in dict.fromkeys(r["dataset"] for r in mix_runs):
        for name, modes, hq, rkl in REFERENCE_2D[dataset]:
            rows.append([dataset, f"*{name}*", "", f"{modes}", f"{hq}", "" if rkl is None else f"{rkl}", "", "", ""])
    blocks.append(("table", header, rows))
    blocks += _mixture_sampler_blocks(mix_runs, num_samples)
    if any(r.get("curve") for r in mix_runs):
        sampler = (results["config"].get("mixtures") or {}).get("curve_sampler", "dpmpp2m:20")
        blocks.append(("p", (f"Figures: seed-{results['config']['seeds'][0]} samples, training curves, and metrics "
                             f"over training (each model scored at evenly spaced steps on the same {num_samples:,} "
                             f"per-sample seeds; diffusion with {sampler} on the EMA weights of that step).")))
    curve_panels = [("modes", "modes captured", 1), ("hq_fraction", "high quality %", 100),
                    ("reverse_kl", "reverse KL", 1)]
    for dataset in dict.fromkeys(r["dataset"] for r in mix_runs):
        for fig in (_scatter_figure(run_dir, results, dataset), _loss_figure(run_dir, results, dataset),
                    _curve_figure(run_dir, mix_runs, dataset, curve_panels)):
            if fig:
                blocks.append(("img", fig, fig))
    return blocks


# Published Stacked MNIST numbers (the papers and tables named in each row): modes captured (of 1000), KL(p_gen ||
# p_data) with p_data uniform: the direction of PacGAN's released code (fjxmlzn/PacGAN, stacked_MNIST_experiments/
# unrolled_GAN_experiment/*/model.py, log_metrics: KLD(p, q) with p the generated mode histogram, q uniform over
# 1000), i.e. our reverse_kl.
REFERENCE_STACKED = [
    ("DCGAN (Srivastava et al. 2017, Table 4)", 99, 3.40),
    ("VEEGAN (Srivastava et al. 2017, Table 4)", 150, 2.95),
    ("PacDCGAN2 (Lin et al. 2018, Table 2)", 1000, 0.06),
    ("DDGAN, a diffusion-GAN hybrid (Xiao et al. 2022, Table 3)", 1000, 0.071),
]


def _stacked_blocks(summary: list[dict]) -> list:
    """The Stacked MNIST mode table: our models beside the published rows (REFERENCE_STACKED)."""
    rows = [[s["model"], _pm(s.get("modes"), "{:.0f}"), _pm(s.get("reverse_kl"), "{:.3f}"),
             _pm(s.get("num_samples"), "{:.0f}")] for s in summary]
    rows += [[f"*{name}*", str(modes), str(kl), "26,000"] for name, modes, kl in REFERENCE_STACKED]
    return [("p", ("Stacked MNIST protocol (Metz et al. 2017; VEEGAN; PacGAN): modes = distinct digit triples the "
                   "judge reads (of 1,000); reverse KL = KL(p_gen || p_data) over the triples, p_data the test "
                   "split's (the published rows use the same direction against the uniform distribution, as PacGAN's "
                   "released code computes it). The published rows count 26,000 samples; with fewer, the mode count "
                   "is a lower bound (N samples from the uniform distribution show 1000 (1 - e^(-N/1000)) modes on "
                   "average). Published budgets and architectures differ from ours, and their GANs are unconditional "
                   "while ours are prompted with the three digits (drawn uniformly, like the data), so here the count "
                   "also measures how well each model follows its prompt.")),
            ("table", ["model", "modes (of 1000)", "reverse KL", "samples"], rows)]


def _sweep_blocks(run_dir: Path, runs: list[dict], dataset: str) -> list:
    summaries = _sweep_summaries(runs, dataset)
    if not summaries:
        return []
    rows = []
    for model, (knob, points) in summaries.items():
        for p in points:
            rows.append([model, f"{knob} {p['value']:g}", _pm(p.get("fid")), _pm(p.get("precision")),
                         _pm(p.get("recall")), _pm(p.get("coverage")), _pm(p.get("modes"), "{:.0f}"),
                         _pm(p.get("cond_accuracy"))])
    n = next((p["num_samples"] for r in runs for p in (r.get("sweep") or {}).get("points", [])
              if "num_samples" in p), 0)
    blocks = [("p", (f"Fidelity/diversity sweeps on {n:,} samples per setting, on the validation prompts and seeds "
                    "(disjoint from the scored ones; each family's tuned setting is the lowest FID here): "
                    "classifier-free guidance scale for diffusion (Ho & Salimans 2021), latent truncation z <- psi z "
                    "for the GAN (scaling toward the mean latent; Brock et al. 2019 resample |z| beyond a threshold "
                    "instead). Both should raise precision and lower recall as they move from 1."))]
    blocks.append(("table", ["model", "setting", "FID", "precision", "recall", "coverage", "modes", "prompt accuracy"],
                   rows))
    fig = _sweep_figure(run_dir, dataset, summaries)
    if fig:
        blocks.append(("img", fig, fig))
    return blocks


def _fid_notes(per: list[dict], summary: list[dict]) -> list[str]:
    """FID by sample count with its extrapolation, and the Inception-feature scores, where the runs have them."""
    notes = []
    for s in summary:
        if "fid_inf" in s:
            curve = next(r["metrics"]["fid_curve"] for r in per if r["model"] == s["model"]
                         and r.get("metrics", {}).get("fid_curve"))
            notes.append(f"{s['model']} FID by sample count (seed {per[0]['seed']}): "
                         + ", ".join(f"{p['fid']:.2f} at {p['n']:,}" for p in curve)
                         + f"; extrapolated to infinitely many samples (Chong & Forsyth 2020): {_pm(s['fid_inf'])}.")
    for s in summary:
        if "fid_inception" in s:
            notes.append(f"{s['model']} on Inception features (clean-fid's 'clean' mode): FID "
                         f"{_pm(s['fid_inception'])}, KID x1e3 {_pm(s.get('kid_inception'), scale=1e3)}.")
    return notes


def _image_notes(per: list[dict], summary: list[dict]) -> list[str]:
    """The VAE's and the text encoder's own numbers, the FID notes, and what could not be measured."""
    vae = [r["train"]["vae"] for r in per if (r.get("train") or {}).get("vae")]
    notes = []
    psnr, kept = _mean_std([v.get("psnr") for v in vae]), _mean_std([v.get("recon_accuracy") for v in vae])
    if psnr is not None:
        notes.append(f"VAE reconstructions of test images: PSNR {psnr[0]:.1f} dB"
                     + (f", judge keeps the class of {kept[0]:.1%} of them (the ceiling of the diffusion model's "
                        "prompt accuracy)." if kept is not None else " (no judge to read their classes)."))
    notes += _fid_notes(per, summary)
    if any(r.get("features") == "inception" for r in per):
        notes.append("This dataset has no classes for a judge: FID, KID, precision/recall and density/coverage "
                     "are on Inception features.")
    missing = next((r["unavailable"] for r in per if r.get("unavailable")), None)
    if missing:
        notes.append(f"Unavailable here: {', '.join(missing['metrics'])} ({missing['why']}).")
    return notes


GRID_PARTS = (("real", "real (test split)"), ("gan", "GAN"), ("diffusion", "diffusion"), ("gan_tuned", "GAN tuned"),
              ("diffusion_tuned", "diffusion tuned"))
PROMPT_GROUPS = 8  # prompts (cells of the grids' first row) in the side-by-side figure


def _read_grids(rd: RunDir, dataset: str, seed: int) -> list[tuple[str, str, np.ndarray]]:
    """(part, label, RGB array) of every sample grid the run saved for (dataset, seed)."""
    out = []
    for part, label in GRID_PARTS:
        path = rd.grid_path(dataset, seed, part)
        if path.is_file():
            with Image.open(path) as im:
                out.append((part, label, np.asarray(im.convert("RGB"))))
    return out


def _grid_figures(rd: RunDir, dataset: str, seed: int, prompts: list[str] | None) -> list[str]:
    """The grids built into figures: real / GAN / diffusion side by side per prompt (prompt above each group), and
    the whole grids upscaled nearest-neighbour. Returns the figure paths."""
    grids = _read_grids(rd, dataset, seed)
    if not grids:
        return []
    paths = []
    neutral = [g for g in grids if g[0] in ("real", "gan", "diffusion")]
    if prompts and len(neutral) > 1:
        cells = {part: grid_cells(arr, len(prompts)) for part, _, arr in neutral}
        groups = [(prompt, [(label, cells[part][i]) for part, label, _ in neutral])
                  for i, prompt in enumerate(prompts[:PROMPT_GROUPS])]
        fig = prompt_groups_figure(groups, f"{dataset}, seed {seed}: the same prompt and sample seed per group "
                                           "(neutral knobs; images upscaled nearest-neighbour)")
        paths.append(rd.save_figure(fig, f"{slug(dataset)}_prompts"))
    fig = grids_figure([(label, arr) for _, label, arr in grids],
                       f"{dataset}, seed {seed}: sample grids, cell by cell the same prompts")
    paths.append(rd.save_figure(fig, f"{slug(dataset)}_grids"))
    return paths


def _grid_blocks(run_dir: Path, per: list[dict], dataset: str) -> list:
    """The first seed's sample grids (real, GAN, diffusion) as figures, and where their prompts are."""
    seed, rd = min(r["seed"] for r in per), RunDir(run_dir)
    prompts = rd.read_prompts(dataset, seed)
    try:
        figures = _grid_figures(rd, dataset, seed, prompts)
    except ValueError as exc:  # a grid that does not match its prompt count: say so, draw nothing
        return [("p", f"Sample grids of {dataset} not drawn: {exc}.")]
    blocks = [("img", f, f"{dataset} seed {seed}: samples") for f in figures]
    if prompts is not None:
        blocks.append(("p", f"The grids share their prompts cell by cell (row-major); all {len(prompts)} in "
                            f"{rd.relative(rd.prompts_path(dataset, seed))}."))
    return blocks


def _image_curve_blocks(run_dir: Path, per: list[dict], dataset: str) -> list:
    curve_panels = [("fid", "FID (judge features)", 1), ("modes", "modes", 1),
                    ("cond_accuracy", "prompt accuracy", 1), ("recall", "recall", 1)]
    fig = _curve_figure(run_dir, per, dataset, curve_panels)
    if not fig:
        return []
    n = next((p["num_samples"] for r in per for p in r.get("curve", []) if "num_samples" in p), 0)
    return [("p", (f"Metrics over training: both models scored at evenly spaced training steps on the first "
                   f"{n:,} scored prompts and seeds, each family's EMA weights of that step at its neutral knob "
                   "(GAN psi = 1; diffusion s = 1 with the headline sampler).")), ("img", fig, fig)]


def _image_blocks(run_dir: Path, results: dict) -> list:
    runs = [r for r in results["runs"] if r["dataset"] not in REFERENCE_2D]
    if not runs:
        return []
    blocks = [("h2", "Image benchmark: conditional DCGAN vs text-conditioned latent diffusion"),
              ("p", ("Both models get the same frozen CLIP-style text encoder, the same prompts (drawn from the data's "
                     "caption distribution) and the same per-sample seeds, and both sample from an EMA of their "
                     "weights. The reference is the test split, never a training image. Each family is scored at its "
                     "neutral knob (GAN truncation psi = 1, diffusion guidance s = 1) and at its tuned knob: the "
                     "lowest FID over its sweep grid on validation prompts and seeds disjoint from the scored ones. "
                     "NFE counts network passes per sample, both halves of guidance included. Metrics on the judge's "
                     "features: FID and KID (biased at small N, Chong & Forsyth 2020), precision/recall "
                     "(Kynkaanniemi et al. 2019, k=3), density/coverage (Naeem et al. 2020, k=5); modes, reverse "
                     "KL(p_gen || p_test) and forward KL(p_test || p_gen) over the judge's labels; prompt accuracy = "
                     "share of samples the judge assigns to the prompted class; near-copies and C_T measure "
                     "memorisation. Mean [95% t interval] over seeds."))]
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        per = [r for r in runs if r["dataset"] == dataset]
        summary = summarise({"runs": per})
        header, rows = image_table(per)
        blocks += [("h3", dataset), ("table", header, rows)] + difference_blocks(per)
        blocks += recipe_blocks(per, results.get("config", {}))
        if dataset == "stacked-digits":
            blocks += _stacked_blocks(summary)
        notes = _image_notes(per, summary) + [n for n in [memorisation_note(per)] if n]
        if notes:
            blocks.append(("p", " ".join(notes)))
        blocks += _grid_blocks(run_dir, per, dataset) + _image_curve_blocks(run_dir, per, dataset)
        blocks += _sweep_blocks(run_dir, per, dataset)
    return blocks


def _stability_rows(runs: list[dict]) -> list[list[str]]:
    """One row per (dataset, model, network): loss statistics, gradient spikes, D gap, divergence, time to threshold."""
    rows = []
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r.get("stability"):
            groups.setdefault((r["dataset"], r["model"]), []).append(r)
    for (dataset, model), mine in groups.items():
        st = [r["stability"] for r in mine]
        diverged = [s["diverged_at_step"] for s in st if s.get("diverged_at_step") is not None]
        reached = [s["steps_to_threshold"] for s in st if s.get("steps_to_threshold") is not None]
        threshold = next((s["threshold"] for s in st if "threshold" in s), None)
        for i, (loss, grad) in enumerate(zip(LOSS_KEYS[model], GRAD_KEYS[model])):
            network = {"d_loss": "D", "g_loss": "G"}.get(loss, "denoiser")
            first = i == 0
            rows.append([dataset, model, network, _pm(_over(st, f"{loss}_final"), "{:.3g}"),
                         _pm(_over(st, f"{loss}_min"), "{:.3g}"), _pm(_over(st, f"{loss}_tail_var"), "{:.2g}"),
                         _pm(_over(st, f"{grad}_spikes"), "{:.1f}"),
                         _pm(_over(st, "d_gap"), "{:.2f}") if model == "gan" and first else "",
                         (f"{len(diverged)}/{len(st)}" + (f" (step {min(diverged)})" if diverged else ""))
                         if first else "",
                         (f"{_pm(_mean_std(reached), '{:.0f}')} ({len(reached)}/{len(st)} reached {threshold})"
                          if threshold and first else "")])
    return rows


def _over(stats: list[dict], key: str) -> tuple[float, float] | None:
    return _mean_std([s.get(key) for s in stats])


def _mean_std(values: list) -> tuple[float, float] | None:
    """Mean and sample std of the finite values (None when there are none; std 0 for one)."""
    stat = mean_interval(values)
    return None if stat["mean"] is None else (stat["mean"], stat["sd"] or 0.0)


def _stability_blocks(results: dict) -> list:
    rows = _stability_rows(results["runs"])
    if not rows:
        return []
    return [("h2", "Training stability"),
            ("p", ("From the per-step histories (history/*.csv), mean ± std over seeds: the loss at the end and at "
                   "its lowest, its variance over the last 20% of steps (oscillation), gradient-norm spikes (steps "
                   "above 10x the median of the 50 before), the discriminator's mean sigmoid gap D(x) - D(G(z)) over "
                   "the last 20% (near 1: D wins and G's gradient fades), divergence (a non-finite loss: runs and "
                   "first step) and the first metric-over-training checkpoint that meets the quality threshold (runs "
                   "that reached it).")),
            ("table", ["dataset", "model", "network", "final loss", "min loss", "loss var (last 20%)", "grad spikes",
                       "D(x) - D(G(z))", "diverged", "steps to threshold"], rows)]


def _detail(r: dict) -> str:
    """What went wrong with a run entry, in one line."""
    if r.get("status") == "diverged":
        where = r.get("diverged_in") or (f"step {r['diverged_at_step']}" if r.get("diverged_at_step") is not None
                                        else "")
        return f"non-finite at {where}" if where else "non-finite"
    if r.get("status") == "interrupted":
        return "stopped before it finished; `gvd run --resume` reruns it"
    return str(r.get("error", ""))


def _status_blocks(results: dict) -> list:
    bad = [r for r in results["runs"] if r.get("status") != "ok"]
    if not bad:
        return []
    rows = [[str(r.get("dataset")), str(r.get("model")), str(r.get("seed")), str(r.get("status")), _detail(r)]
            for r in bad]
    return [("h2", "Runs that did not finish cleanly"),
            ("table", ["dataset", "model", "seed", "status", "detail"], rows)]


def _head_blocks(results: dict) -> list:
    return [("h1", f"gan-vs-diffusion: {results.get('suite', '?')}"),
            ("p", f"Created {results.get('created', '?')} on {results.get('device', '?')}; "
                  + ", ".join(f"{k} {v}" for k, v in (results.get("versions") or {}).items()) + "; seeds "
                  + ", ".join(str(s) for s in (results.get("config") or {}).get("seeds", [])) + ".")]


def build_blocks(run_dir: Path, results: dict) -> list:
    """Every section of the report; a section that cannot be built from these results says so in one line and the
    rest of the report is still written (entries may be ok, diverged, failed or interrupted, metrics may be missing)."""
    results = {**results, "runs": [r for r in results.get("runs", []) if isinstance(r, dict)]}
    results.setdefault("config", {}).setdefault("seeds", sorted({r.get("seed", 0) for r in results["runs"]}) or [0])
    sections = [lambda: _head_blocks(results), lambda: verdict_blocks(results["runs"]), lambda: _status_blocks(results),
                lambda: _mixture_blocks(run_dir, results), lambda: _image_blocks(run_dir, results),
                lambda: _throughput_blocks(run_dir, results), lambda: _stability_blocks(results)]
    blocks = []
    for section in sections:
        try:
            blocks += section()
        except Exception as exc:  # noqa: BLE001 -- one section's gap is not a lost report
            blocks.append(("p", f"(A section of this report could not be built: {error_text(exc)})"))
    return blocks


def _throughput_blocks(run_dir: Path, results: dict) -> list:
    """Speed of the image models (measured by `gvd run`) and the quality-vs-cost figures."""
    figures = quality_cost_figures(run_dir, results)
    if "error" in (results.get("throughput") or {}):
        return [("h2", "Throughput"), ("p", f"The throughput measurement failed: {results['throughput']['error']}")]
    if "throughput" in results:
        return throughput_blocks(results["throughput"], figures)
    return [("h2", "Quality vs cost")] + [("img", f, f) for f in figures] if figures else []


# ---------------------------------------------------------------- renderers


def md_escape(text: str) -> str:
    """Text from data or config made inert in Markdown: '<' cannot open an HTML tag, '|' cannot end a table cell, a
    line break cannot end a table row."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|").replace("\n", " ")


def _md_link(path: str) -> str:
    """A relative path as a Markdown link target: percent-encoded, so spaces and parentheses cannot end it."""
    return urllib.parse.quote(path, safe="/-_.~")


def to_markdown(blocks: list) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + md_escape(block[1]))
        elif kind == "p":
            out.append(md_escape(block[1]))
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("\n".join(["| " + " | ".join(map(md_escape, header)) + " |", "|" + "---|" * len(header)]
                                 + ["| " + " | ".join(map(md_escape, row)) + " |" for row in rows]))
        elif kind == "img":
            alt = md_escape(block[2]).replace("[", "\\[").replace("]", "\\]")
            out.append(f"![{alt}]({_md_link(block[1])})")
    return "\n\n".join(out) + "\n"


def _cells(row: list[str], tag: str) -> str:
    """One HTML table row's cells; the Markdown emphasis stars of the published rows dropped."""
    return "".join(f"<{tag}>{html.escape(c).replace('*', '')}</{tag}>" for c in row)


def _data_uri(root: Path | None, rel: str) -> str | None:
    """The image file root/rel as a data URI (the page then travels alone), or None when it is not there."""
    path = (root / rel) if root is not None else None
    if path is None or not path.is_file():
        return None
    kind = "png" if path.suffix.lower() == ".png" else path.suffix.lower().lstrip(".")
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_image(block: tuple, root: Path | None) -> str:
    uri = _data_uri(root, block[1])
    if uri is None:
        return f"<p class='missing'>figure not found: {html.escape(block[1])}</p>"
    return (f'<figure><img src="{uri}" alt="{html.escape(block[2])}">'
            f"<figcaption>{html.escape(block[2])}</figcaption></figure>")


# No scripts, no outside requests: images come only as data URIs, styles only from the page itself.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def to_html(blocks: list, root: Path | None = None) -> str:
    """One self-contained page: every image block read from `root` (the run folder) and embedded as a data URI;
    every string escaped."""
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            body.append("<table><tr>" + _cells(block[1], "th") + "</tr>"
                        + "".join("<tr>" + _cells(r, "td") + "</tr>" for r in block[2]) + "</table>")
        elif kind == "img":
            body.append(_html_image(block, root))
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px;display:block;overflow-x:auto;max-width:100%}"
             "td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}"
             "img{max-width:100%}figcaption{font-size:12px;color:#555}.missing{color:#a00}")
    return ("<!doctype html>\n<html><head><meta charset='utf-8'>"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            "<title>gan-vs-diffusion report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(run_dir: Path, results: dict) -> None:
    run_dir = Path(run_dir)
    blocks = build_blocks(run_dir, results)
    RunDir(run_dir).write_report(to_markdown(blocks), to_html(blocks, run_dir))
