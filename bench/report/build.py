"""results.json -> figures/, report.md and report.html.

The report is a list of blocks (bench/report/render.py) rendered twice, as Markdown and as one self-contained HTML
page, so the two never disagree. Everything in it is read from the run folder: the families from results.json's
"families" (the family table as it ran, a user's family included), the metrics through the metric table
(bench/evaluate/table.py). `gvd report RUN_DIR` rebuilds both from the run folder alone.

Sections: the verdict (bench/report/verdict.py), runs that did not finish, the 2D mixtures, the image benchmark per
dataset (every family with the calibration rows, differences, recipes, grids, curves, sweeps), throughput, stability.
"""

import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from bench.core.files import WriteError
from bench.core.guard import error_text
from bench.core.rundir import RunDir, slug
from bench.evaluate import table
from bench.evaluate.stats import SHARE
from bench.report.charts import (
    curve_figure,
    curve_panels,
    feature_suffix,
    loss_figure,
    scatter_figure,
    sweep_figure,
    sweep_summaries,
)
from bench.report.figures import grid_cells, grids_figure, prompt_groups_figure, save_figure
from bench.report.process import READ_CLOUDS, image_process_blocks, mixture_strip_figure
from bench.report.render import to_html, to_markdown
from bench.report.speed import quality_cost_figures, throughput_blocks, time_blocks
from bench.report.tables import (
    POSITIVE,
    bounds_of,
    calibration_note,
    calibrations,
    cell,
    difference_blocks,
    families_of,
    image_table,
    image_tables,
    label,
    metric_notes,
    mixture_table,
    models,
    panel_blocks,
    recipe_blocks,
    sampler_rows,
    stability_rows,
    status_rows,
)
from bench.report.verdict import smoke_banner, verdict_blocks

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


# ---------------------------------------------------------------- the 2D mixtures


def _mixture_blocks(run_dir: Path, results: dict) -> list:
    runs = [r for r in results["runs"] if r["dataset"] in REFERENCE_2D]
    if not runs:
        return []
    num_samples = (results["config"].get("mixtures") or {}).get("num_samples", 2500)
    rows = mixture_table(results, runs)
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        rows += [[dataset, f"*{name}*", "", f"{modes}", f"{hq}", "" if rkl is None else f"{rkl}", "", "", "", "", ""]
                 for name, modes, hq, rkl in REFERENCE_2D[dataset]]
    blocks = [("h2", "2D mode-collapse mixtures"),
              ("p", (f"Protocol of VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018): {num_samples:,} "
                     "samples per run; a sample is high quality within 3 std of its nearest mode; a mode is captured "
                     "when it is the nearest mode of at least one high-quality sample; reverse KL = KL(p_gen || "
                     "uniform) over the nearest-mode histogram of the high-quality samples (as PacGAN's released "
                     "code). Within-mode spread: the high-quality samples' RMS distance from their mode's centre over "
                     "the mode's own (sqrt(2) std), averaged over modes (fresh draws 0.974, one point per mode 0). "
                     "Mean [95% t interval] over the seeds that ran ok (runs ok says n); the held-out real row "
                     "is fresh draws from the true mixture; published rows for reference (their budgets differ).")),
              ("table", ["dataset", "family", "runs ok", "modes", "high quality %", "reverse KL", "within-mode spread",
                         "params", "examples seen", "train s", "training FLOPs"], rows)]
    if samplers := sampler_rows(runs):
        blocks += [("h3", "Samplers on the same trained networks"),
                   ("table", ["dataset", "family", "sampler:steps", "NFE", "modes", "high quality %", "reverse KL",
                              f"sampling s ({num_samples:,} samples)"], samplers)]
    if any(r.get("curve") for r in runs):
        sampler = (results["config"].get("mixtures") or {}).get("curve_sampler", "dpmpp2m:20")
        blocks.append(("p", (f"Figures: the first seed's samples, training curves, and metrics over training (each "
                             f"family scored at evenly spaced steps on the same {num_samples:,} per-sample seeds, on "
                             f"the EMA weights of that step; solvers at {sampler}).")))
    panels = [("modes", "modes captured", 1), ("hq_fraction", "high quality %", 100), ("reverse_kl", "reverse KL", 1)]
    seed = results["config"]["seeds"][0]
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        here = [r for r in runs if r["dataset"] == dataset]
        figures = [(scatter_figure(run_dir, results, dataset),
                    f"{dataset}, seed {seed}: each family's final samples (colour) over the real mixture (grey), one "
                    "panel per family and sampler."),
                   (loss_figure(run_dir, results, dataset),
                    f"{dataset}, seed {seed}: each family's training losses (50-step running mean) and the GAN "
                    "discriminator's mean output on real and generated points."),
                   (curve_figure(run_dir, results, dataset, panels),
                    f"{dataset}: {', '.join(t for _, t, _ in curve_panels(here, panels))} at each training snapshot, "
                    "one line per seed of each family (a snapshot without a value is a gap).")]
        blocks += [("img", fig, caption) for fig, caption in figures if fig]
        if fig := mixture_strip_figure(run_dir, results, dataset):
            blocks += [("p", READ_CLOUDS),
                       ("img", fig, f"{dataset}, seed {seed}: each family's samples (rows) at each training snapshot "
                                    "(columns), over the real mixture in grey.")]
    return blocks


# ---------------------------------------------------------------- the image benchmark


def _stacked_blocks(results: dict, per: list[dict]) -> list:
    """The Stacked MNIST mode table: every family beside the published rows (REFERENCE_STACKED)."""
    families = families_of(results)
    rows = []
    for family in models(families) + calibrations(families):
        ok = [r for r in per if r["model"] == family and r["status"] == "ok"]
        if ok:
            rows.append([label(families, family), cell([r["metrics"].get("modes") for r in ok], fmt="{:.0f}",
                                                       bounds=bounds_of(table.metric("modes"), ok)),
                         cell([r["metrics"].get("reverse_kl") for r in ok], fmt="{:.3f}", bounds=POSITIVE),
                         cell([r["metrics"].get("num_samples") for r in ok], fmt="{:.0f}", bounds=POSITIVE)])
    rows += [[f"*{name}*", str(modes), str(kl), "26,000"] for name, modes, kl in REFERENCE_STACKED]
    return [("p", ("Stacked MNIST protocol (Metz et al. 2017; VEEGAN; PacGAN): modes = distinct digit triples the "
                   "judge reads (of 1,000); reverse KL = KL(p_gen || p_data) over the triples, p_data the test "
                   "split's (the published rows use the same direction against the uniform distribution, as PacGAN's "
                   "released code computes it). The published rows count 26,000 samples; with fewer, the mode count "
                   "is a lower bound (N samples from the uniform distribution show 1000 (1 - e^(-N/1000)) modes on "
                   "average). Published budgets and architectures differ from ours, and their GANs are unconditional "
                   "while ours are prompted with the three digits (drawn uniformly, like the data), so here the count "
                   "also measures how well each model follows its prompt.")),
            ("table", ["family", "modes (of 1000)", "reverse KL", "samples"], rows)]


def _sweep_blocks(run_dir: Path, results: dict, per: list[dict], dataset: str) -> list:
    families = families_of(results)
    summaries = sweep_summaries(per, dataset, families)
    if not summaries:
        return []
    lf = feature_suffix(summaries)
    keys = [k + lf for k in ("fid", "precision", "recall", "coverage")]
    rows = []
    for family, (knob, points) in summaries.items():
        for p in points:
            rows.append([label(families, family), f"{knob} {p['value']:g}"]
                        + [f"{p[k][0]:.3g}" if k in p else "n/a" for k in keys]
                        + [f"{p['modes'][0]:.0f}" if "modes" in p else "n/a",
                           f"{p['cond_accuracy'][0]:.3f}" if "cond_accuracy" in p else "n/a"])
    n = next((p["num_samples"] for r in per for p in (r.get("sweep") or {}).get("points", [])
              if "num_samples" in p), 0)
    seeds = max(len([r for r in per if r["model"] == f and r.get("sweep")]) for f in summaries)
    space = " (label-free features)" if lf else " (judge features)"
    said = sweep_sentences(summaries, families, lf)
    blocks = [("p", (f"Fidelity/diversity sweeps on {n:,} samples per setting, on the validation prompts and seeds "
                     f"(disjoint from the scored ones; each family's tuned setting is the lowest FID{space} here), "
                     f"means over {seeds} seed(s): classifier-free guidance scale for diffusion (Ho & Salimans 2021), "
                     "latent truncation z <- psi z for the GAN (scaling toward the mean latent; Brock et al. 2019 "
                     "resample |z| beyond a threshold instead). Both knobs are meant to trade diversity (recall) for "
                     "fidelity (precision) as they move away from their neutral value." + (f" Here: {said}" if said
                                                                                            else ""))),
              ("table", ["family", "setting", f"FID{space}", "precision", "recall", "coverage", "modes",
                         "prompt accuracy"], rows)]
    if fig := sweep_figure(run_dir, results, dataset, summaries):
        blocks.append(("img", fig, f"{dataset}: each family along its knob on the validation prompts and seeds: "
                                   f"precision against recall{space} (each point labelled with its knob value), and "
                                   "FID and prompt accuracy against each family's own knob (its axis in its colour; "
                                   "bars: the spread over seeds)."))
    return blocks


def _change(before: float, after: float, shown: str = "{:.3g}") -> str:
    """How a value moved, judged at the precision the sweep table shows it."""
    a, b = shown.format(before), shown.format(after)
    return f"{a} -> {b} " + ("(unchanged)" if a == b else "(up)" if after > before else "(down)")


def sweep_sentences(summaries: dict, families: dict, lf: str) -> str:
    """Per family, what its sweep shows: precision and recall at the neutral setting and at the setting farthest from
    it, as the sweep table prints them, and whether that is the intended trade (precision up, recall down)."""
    out = []
    for family, (knob, points) in summaries.items():
        spec = (families.get(family) or {}).get("knob") or {}
        neutral = spec.get("neutral", points[0]["value"])
        here = [p for p in points if ("precision" + lf) in p and ("recall" + lf) in p]
        start = next((p for p in here if p["value"] == neutral), None)
        if start is None or len(here) < 2:
            continue
        end = max(here, key=lambda p: abs(p["value"] - neutral))
        (p0, _), (p1, _) = start["precision" + lf], end["precision" + lf]
        (r0, _), (r1, _) = start["recall" + lf], end["recall" + lf]
        moves = {"precision": _change(p0, p1), "recall": _change(r0, r1)}
        up = {k: v.endswith("(up)") for k, v in moves.items()}
        down = {k: v.endswith("(down)") for k, v in moves.items()}
        if up["precision"] and down["recall"]:
            reading = "the intended trade"
        elif down["precision"] and up["recall"]:
            reading = "the opposite of the intended trade"
        elif up["precision"] and up["recall"]:
            reading = "both rise: no trade at this setting"
        elif down["precision"] and down["recall"]:
            reading = "both fall"
        else:
            reading = "no trade at the precision shown"
        name = label(families, family)
        out.append(f"{name[0].upper()}{name[1:]}, {knob} {neutral:g} -> {end['value']:g}: precision "
                   f"{moves['precision']}, recall {moves['recall']}: {reading}.")
    return " ".join(out)


def _image_notes(results: dict, per: list[dict]) -> list[str]:
    """A latent family's autoencoder, FID by sample count, Inception-feature scores, and what could not be
    measured."""
    families, notes = families_of(results), []
    for family in models(families):
        ok = [r for r in per if r["model"] == family and r["status"] == "ok"]
        stage = [r["train"]["vae"] for r in ok if (r.get("train") or {}).get("vae", {}).get("psnr") is not None]
        if stage:
            kept = [s.get("recon_accuracy") for s in stage]
            notes.append(f"{label(families, family)}'s autoencoder on the reference images: PSNR "
                         f"{cell([s['psnr'] for s in stage], fmt='{:.1f}', bounds=POSITIVE)} dB"
                         + (f", the judge keeps the class of {cell(kept, fmt='{:.1%}', bounds=SHARE)} of them (the "
                            "ceiling of its prompt accuracy)." if None not in kept else
                            " (no judge to read their classes)."))
        curve = next((r["metrics"]["fid_curve"] for r in ok if r["metrics"].get("fid_curve")), None)
        if curve:
            notes.append(f"{label(families, family)} FID by sample count (seed {ok[0]['seed']}): "
                         + ", ".join(f"{p['fid']:.2f} at {p['n']:,}" for p in curve) + "; extrapolated to infinitely "
                         f"many samples (Chong & Forsyth 2020): {cell([r['metrics'].get('fid_inf') for r in ok])}.")
        if any("fid_inception" in r["metrics"] for r in ok):
            notes.append(f"{label(families, family)} on Inception features (clean-fid's 'clean' mode): FID "
                         f"{cell([r['metrics'].get('fid_inception') for r in ok], fmt='{:.2f}', bounds=POSITIVE)}, KID "
                         "x1e3 "
                         f"{cell([r['metrics'].get('kid_inception') for r in ok], fmt='{:.2f}', scale=1e3)}.")
    if any(r.get("features") == "inception" for r in per):
        notes.append("This dataset has no classes for a judge: FID, KID, precision/recall and density/coverage "
                     "are on Inception features.")
    missing = next((r["unavailable"] for r in per if r.get("unavailable")), None)
    if missing:
        notes.append(f"Unavailable here: {', '.join(missing['metrics'])} ({missing['why']}).")
    return notes


PROMPT_GROUPS = 8  # prompts (cells of the grids' first row) in the side-by-side figure


def _read_grids(rd: RunDir, dataset: str, seed: int, families: dict) -> list[tuple[str, str, np.ndarray]]:
    """(part, label, RGB array) of every sample grid the run saved for (dataset, seed): real test images, then every
    family at its neutral and its tuned knob."""
    parts = [("real", "real (test split)")]
    for family in models(families) + calibrations(families):
        parts += [(family, label(families, family)), (f"{family}_tuned", f"{label(families, family)} tuned")]
    out = []
    for part, name in parts:
        path = rd.grid_path(dataset, seed, part)
        if path.is_file():
            with Image.open(path) as im:
                out.append((part, name, np.asarray(im.convert("RGB"))))
    return out


def _grid_figures(rd: RunDir, dataset: str, seed: int, prompts: list[str] | None, families: dict) -> list[str]:
    """The grids built into figures: real and every model family side by side per prompt (prompt above each group),
    and the whole grids upscaled nearest-neighbour. Returns the figure paths."""
    grids = _read_grids(rd, dataset, seed, families)
    if not grids:
        return []
    paths = []
    neutral = [g for g in grids if g[0] == "real" or g[0] in models(families)]
    if prompts and len(neutral) > 1:
        cells = {part: grid_cells(arr, len(prompts)) for part, _, arr in neutral}
        groups = [(prompt, [(name, cells[part][i]) for part, name, _ in neutral])
                  for i, prompt in enumerate(prompts[:PROMPT_GROUPS])]
        fig = prompt_groups_figure(groups, f"{dataset}, seed {seed}: the same prompt and sample seed per group "
                                           "(neutral knobs; images upscaled nearest-neighbour)")
        paths.append(save_figure(rd, fig, f"{slug(dataset)}_prompts"))
    fig = grids_figure([(name, arr) for _, name, arr in grids],
                       f"{dataset}, seed {seed}: sample grids, cell by cell the same prompts")
    paths.append(save_figure(rd, fig, f"{slug(dataset)}_grids"))
    return paths


def _grid_blocks(run_dir: Path, results: dict, per: list[dict], dataset: str) -> list:
    """The first seed's sample grids as figures, and where their prompts are."""
    seed, rd = min(r["seed"] for r in per), RunDir(run_dir)
    prompts = rd.read_prompts(dataset, seed)
    try:
        figures = _grid_figures(rd, dataset, seed, prompts, families_of(results))
    except ValueError as exc:  # a grid that does not match its prompt count: say so, draw nothing
        return [("p", f"Sample grids of {dataset} not drawn: {exc}.")]
    captions = [f"{dataset}, seed {seed}: real test images beside each model family's samples for the same prompt and "
                "sample seed (neutral knobs), the prompt above each group.",
                f"{dataset}, seed {seed}: every sample grid (real test images, each family at its neutral and tuned "
                "knob, the calibration rows), cell by cell the same prompts."]
    blocks = [("img", f, caption) for f, caption in zip(figures, captions[-len(figures):])]
    if prompts is not None:
        blocks.append(("p", f"The grids share their prompts cell by cell (row-major); all {len(prompts)} in "
                            f"{rd.relative(rd.prompts_path(dataset, seed))}."))
    return blocks


def _image_curve_blocks(run_dir: Path, results: dict, per: list[dict], dataset: str) -> list:
    lf = any("fid_lf" in p for r in per for p in r.get("curve", []))
    panels = ([("fid_lf", "FID (label-free features)", 1), ("within_coverage", "within-class coverage", 1)] if lf
              else [("fid", "FID (judge features)", 1), ("recall", "recall", 1)])
    panels += [("modes", "modes", 1), ("cond_accuracy", "prompt accuracy", 1)]
    fig = curve_figure(run_dir, {**results, "runs": per}, dataset, panels)
    if not fig:
        return []
    n = next((p["num_samples"] for r in per for p in r.get("curve", []) if "num_samples" in p), 0)
    return [("p", (f"Metrics over training: every family scored at evenly spaced training steps on the first {n:,} "
                   "scored prompts and seeds, its EMA weights of that step at its neutral knob (diffusion with the "
                   "headline sampler).")),
            ("img", fig, f"{dataset}: {', '.join(t for _, t, _ in curve_panels(per, panels))} at each training "
                         "snapshot, one line per seed of each family (a snapshot without a value is a gap).")]


IMAGE_INTRO = (
    "Every family gets the same frozen CLIP-style text encoder, the same prompts (drawn from the data's caption "
    "distribution) and the same per-sample seeds; the model families sample from an EMA of their weights. The "
    "reference is a fixed set of test images, never a training image. Each model family is scored at its neutral "
    "knob (GAN truncation psi = 1, diffusion guidance s = 1) and at its tuned knob: the lowest FID (label-free) over "
    "its grid on validation prompts and seeds disjoint from the scored ones, against held-out test images disjoint "
    "from the scored reference. NFE counts network passes per sample, both halves of guidance included. Three "
    "readers score the samples, each frozen and trained once per dataset: the judge, a classifier of the classes "
    "(modes, reverse KL(p_gen || p_test), prompt accuracy = share of samples it assigns to the prompted class, and "
    "FID on its features, which are mostly class identity); a label-free encoder, an autoencoder trained without "
    "labels (FID, precision/recall (Kynkaanniemi et al. 2019, k=3) and coverage (Naeem et al. 2020, k=5) on its "
    "features, intra-class FID, within-class coverage and memorisation); and on shapes a read-out of the "
    "generator's own factors (factor coverage). FID is biased at small N (Chong & Forsyth 2020): compare at equal "
    "N. The known-answer panel under each dataset shows what each of these numbers sees. Cells: mean [95% Student "
    "t interval] over the seeds that ran ok (runs ok gives n; one seed shows its value alone).")


def _image_dataset_blocks(run_dir: Path, results: dict, per: list[dict], dataset: str) -> list:
    header, rows, shown = image_table(results, per)
    if not rows:  # nothing finished: no header-only table, and nothing to draw
        states = ", ".join(f"{k} {v}" for k, v in Counter(r.get("status") for r in per).items())
        return [("h3", dataset), ("p", f"No run of {dataset} finished ({states}): nothing to score yet. "
                                      "`gvd run --resume RUN_DIR` runs what is left.")]
    blocks = [("h3", dataset)]
    if note := calibration_note(results, per):
        blocks.append(("p", note))
    for aspect, (head, part) in image_tables(header, rows, shown).items():
        blocks += [("h4", f"{dataset}: {aspect}"), ("table", head, part)]
        if note := metric_notes([m for m in shown if m.label in head], per, bootstrap=aspect == "quality"):
            blocks.append(("p", note))  # what each column of this table is, under it
    blocks += difference_blocks(results, per) + recipe_blocks(results, per)
    if dataset == "stacked-digits":
        blocks += _stacked_blocks(results, per)
    if notes := _image_notes(results, per):
        blocks.append(("p", " ".join(notes)))
    blocks += panel_blocks(results, dataset)
    return (blocks + _grid_blocks(run_dir, results, per, dataset) + _image_curve_blocks(run_dir, results, per, dataset)
            + _sweep_blocks(run_dir, results, per, dataset) + image_process_blocks(run_dir, results, per, dataset))


def _image_blocks(run_dir: Path, results: dict) -> list:
    runs = [r for r in results["runs"] if r["dataset"] not in REFERENCE_2D]
    if not runs:
        return []
    blocks = [("h2", "Image benchmark: every family on the same prompts"), ("p", IMAGE_INTRO)]
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        blocks += _image_dataset_blocks(run_dir, results, [r for r in runs if r["dataset"] == dataset], dataset)
    return blocks


# ---------------------------------------------------------------- stability, status, head, throughput


def _stability_blocks(results: dict) -> list:
    rows = stability_rows(results)
    if not rows:
        return []
    return [("h2", "Training stability"),
            ("p", ("From the per-step histories (history/*.csv), mean [95% t interval] over seeds: each loss at the "
                   "end and at its lowest, its variance over the last 20% of steps (oscillation), gradient-norm spikes "
                   "(steps above 10x the median of the 50 before), the discriminator's mean sigmoid gap D(x) - "
                   "D(G(z)) over the last 20% (near 1: D wins and G's gradient fades), divergence (a non-finite loss: "
                   "runs and first step) and the first metric-over-training checkpoint that meets the quality "
                   "threshold (runs that reached it).")),
            ("table", ["dataset", "family", "loss", "final", "min", "var (last 20%)", "grad spikes",
                       "D(x) - D(G(z))", "diverged", "steps to threshold"], rows)]


def _status_blocks(results: dict) -> list:
    rows = status_rows(results)
    return [("h2", "Runs that did not finish cleanly"),
            ("table", ["dataset", "family", "seed", "status", "detail"], rows)] if rows else []


def _head_blocks(results: dict) -> list:
    return [("h1", f"gan-vs-diffusion: {results.get('suite', '?')}")] + smoke_banner(results) + [
            ("p", f"Created {results.get('created', '?')} on {results.get('device', '?')}; "
                  + ", ".join(f"{k} {v}" for k, v in (results.get("versions") or {}).items() if v) + "; seeds "
                  + ", ".join(str(s) for s in (results.get("config") or {}).get("seeds", [])) + "; families "
                  + ", ".join(label(families_of(results), f) for f in families_of(results)) + ".")]


def _throughput_blocks(run_dir: Path, results: dict) -> list:
    """Speed of the image models (measured by `gvd run`) and the quality-vs-cost figures."""
    figures = quality_cost_figures(run_dir, results)
    if "error" in (results.get("throughput") or {}):
        return [("h2", "Throughput"), ("p", f"The throughput measurement failed: {results['throughput']['error']}")]
    text = next((r["train"]["text_encoder"].get("params") for r in results["runs"]
                 if (r.get("train") or {}).get("text_encoder")), None)
    if "throughput" in results:
        return throughput_blocks(results["throughput"], figures, text_params=text)
    return [("h2", "Quality vs cost")] + [("img", f, caption) for f, caption in figures] if figures else []


def load_study(run_dir: Path, results: dict) -> dict | None:
    """The stability study the verdict shows beside its stability row: the one results.json names ("study", from
    `gvd run --study DIR`), else one in the run folder (<run>/study-stability/study.json); None without one or when
    it cannot be read."""
    named = results.get("study")
    path = Path(named) / "study.json" if named else Path(run_dir) / "study-stability" / "study.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_blocks(run_dir: Path, results: dict) -> list:
    """Every section of the report; a section that cannot be built from these results says so in one line and the
    rest of the report is still written (entries may be ok, diverged, failed or interrupted, metrics may be missing)."""
    results = {**results, "runs": [r for r in results.get("runs", []) if isinstance(r, dict)]}
    results.setdefault("config", {}).setdefault("seeds", sorted({r.get("seed", 0) for r in results["runs"]}) or [0])
    study = load_study(run_dir, results)
    sections = [lambda: _head_blocks(results), lambda: verdict_blocks(results, study), lambda: _status_blocks(results),
                lambda: _mixture_blocks(run_dir, results), lambda: _image_blocks(run_dir, results),
                lambda: _throughput_blocks(run_dir, results), lambda: _stability_blocks(results),
                lambda: time_blocks(results)]
    blocks = []
    for section in sections:
        try:
            blocks += section()
        except WriteError:
            raise  # a figure that could not be written (a full disk): the report would show a missing file
        except Exception as exc:  # noqa: BLE001 -- one section's gap is not a lost report
            blocks.append(("p", f"(A section of this report could not be built: {error_text(exc)})"))
    return blocks


def write_report(run_dir: Path, results: dict) -> None:
    run_dir = Path(run_dir)
    blocks = build_blocks(run_dir, results)
    RunDir(run_dir).write_report(to_markdown(blocks), to_html(blocks, run_dir))
