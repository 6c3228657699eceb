"""results.json -> figures/, report.md and report.html.

The report is built as a list of blocks (heading, text, table, image) rendered twice, once as Markdown and once as a
self-contained HTML page, so the two never disagree. `gvd report RUN_DIR` rebuilds both from the run folder alone.
"""

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bench.results import atomic_write, sample_file_stem, summarise

# Published 2D numbers (DESIGN.md): modes captured, high-quality %, reverse KL.
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


def _scatter_figure(run_dir: Path, results: dict, dataset: str) -> str | None:
    """Seed-0 samples of every model over the real data, one panel per model (and diffusion sampler)."""
    import torch

    from bench.data import sample_mixture

    seed = results["config"]["seeds"][0]
    panels = []
    for run in results["runs"]:
        if run["dataset"] != dataset or run["seed"] != seed or run["status"] == "failed":
            continue
        labels = list(run.get("by_sampler", {})) or [None]
        for label in labels:
            path = run_dir / "samples" / f"{sample_file_stem(dataset, run['model'], seed, label)}.npy"
            if path.exists():
                panels.append((run["model"] + (f" ({label})" if label else ""), np.load(path)))
    if not panels:
        return None
    real = sample_mixture(dataset, 2500, torch.Generator().manual_seed(12345)).numpy()
    lim = np.abs(real).max() * 1.4
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.3), squeeze=False)
    for ax, (title, pts) in zip(axes[0], panels):
        ax.scatter(real[:, 0], real[:, 1], s=2, c="0.75", label="data")
        finite = pts[np.isfinite(pts).all(axis=1)]
        ax.scatter(finite[:, 0], finite[:, 1], s=2, c="C1" if title.startswith("gan") else "C0", alpha=0.5, label="samples")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), title=title, aspect="equal")
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{dataset}, seed {seed}: samples (colour) over the data (grey)", fontsize=9)
    fig.tight_layout()
    name = f"figures/{dataset}_samples.png"
    (run_dir / "figures").mkdir(exist_ok=True)
    fig.savefig(run_dir / name, dpi=110)
    plt.close(fig)
    return name


def _loss_figure(run_dir: Path, results: dict, dataset: str) -> str | None:
    """Seed-0 training curves: GAN losses and D outputs, diffusion loss."""
    seed = results["config"]["seeds"][0]
    gan = run_dir / "history" / f"{dataset}_gan_seed{seed}.csv"
    dif = run_dir / "history" / f"{dataset}_diffusion_seed{seed}.csv"
    if not (gan.exists() or dif.exists()):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    if gan.exists():
        h = pd.read_csv(gan)
        axes[0].plot(h["step"], h["d_loss"], lw=0.8, label="D loss")
        axes[0].plot(h["step"], h["g_loss"], lw=0.8, label="G loss")
        axes[1].plot(h["step"], h["d_real"], lw=0.8, label="D(x)")
        axes[1].plot(h["step"], h["d_fake"], lw=0.8, label="D(G(z))")
    if dif.exists():
        h = pd.read_csv(dif)
        axes[2].plot(h["step"], h["loss"], lw=0.6, c="C0", alpha=0.4)
        axes[2].plot(h["step"], h["loss"].rolling(50, min_periods=1).mean(), c="C0", label="loss (50-step mean)")
        axes[2].set_yscale("log")
    for ax, title in zip(axes, ["GAN losses", "GAN discriminator (sigmoid)", "diffusion loss"]):
        ax.set(title=title, xlabel="step")
        if ax.has_data():
            ax.legend(fontsize=7)
    fig.suptitle(f"{dataset}, seed {seed}", fontsize=9)
    fig.tight_layout()
    name = f"figures/{dataset}_training.png"
    fig.savefig(run_dir / name, dpi=100)
    plt.close(fig)
    return name


# ---------------------------------------------------------------- blocks


def _mixture_blocks(run_dir: Path, results: dict) -> list:
    mix_runs = [r for r in results["runs"] if r["dataset"] in REFERENCE_2D]
    if not mix_runs:
        return []
    summary = summarise({"runs": mix_runs})
    num_samples = (results["config"].get("mixtures") or {}).get("num_samples", 2500)
    blocks = [("h2", "2D mode-collapse mixtures"),
              ("p", (f"Protocol of VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018): {num_samples:,} samples per run; "
                    "a sample is high quality within 3 std of its nearest mode; a mode is captured when it is the nearest "
                    "mode of at least one high-quality sample; reverse KL = KL(p_gen || uniform) over the nearest-mode "
                    "histogram. Mean ± std over seeds; published rows for reference (their budgets differ)."))]
    header = ["dataset", "model", "runs ok", "modes", "high quality %", "reverse KL", "params", "examples seen", "train s"]
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

    diff_runs = [r for r in mix_runs if r.get("by_sampler")]
    if diff_runs:
        blocks.append(("h3", "Diffusion samplers on the same trained denoisers"))
        rows = []
        for dataset in dict.fromkeys(r["dataset"] for r in diff_runs):
            for label in diff_runs[0]["by_sampler"]:
                per = [{"dataset": dataset, "model": label, "status": r["status"], "metrics": r["by_sampler"][label]}
                       for r in diff_runs if r["dataset"] == dataset and label in r["by_sampler"]]
                s = summarise({"runs": per})[0]
                rows.append([dataset, label, _pm(s.get("nfe"), "{:.0f}"), _pm(s.get("modes"), "{:.1f}"),
                             _pm(s.get("hq_fraction"), "{:.1f}", 100), _pm(s.get("reverse_kl"), "{:.3f}"),
                             _pm(s.get("sample_seconds"), "{:.2f}")])
        blocks.append(("table", ["dataset", "sampler:steps", "NFE", "modes", "high quality %", "reverse KL",
                                 "sampling s (2,500 samples)"], rows))
    for dataset in dict.fromkeys(r["dataset"] for r in mix_runs):
        for fig in (_scatter_figure(run_dir, results, dataset), _loss_figure(run_dir, results, dataset)):
            if fig:
                blocks.append(("img", fig, fig))
    return blocks


# Published Stacked MNIST numbers (DESIGN.md): modes captured (of 1000), KL(p_gen || p_data).
REFERENCE_STACKED = [
    ("DCGAN (Srivastava et al. 2017, Table 4)", 99, 3.40),
    ("VEEGAN (Srivastava et al. 2017, Table 4)", 150, 2.95),
    ("PacDCGAN2 (Lin et al. 2018, Table 2)", 1000, 0.06),
    ("DDGAN, a diffusion-GAN hybrid (Xiao et al. 2022, Table 3)", 1000, 0.071),
]
IMAGE_METRICS = [("fid", "FID", "{:.2f}", 1), ("kid", "KID x1e3", "{:.2f}", 1e3), ("precision", "precision", "{:.2f}", 1),
                 ("recall", "recall", "{:.2f}", 1), ("density", "density", "{:.2f}", 1),
                 ("coverage", "coverage", "{:.2f}", 1), ("modes", "modes", "{:.0f}", 1), ("kl", "KL", "{:.3f}", 1),
                 ("cond_accuracy", "prompt accuracy", "{:.2f}", 1)]


def _image_blocks(run_dir: Path, results: dict) -> list:
    runs = [r for r in results["runs"] if r["dataset"] not in REFERENCE_2D]
    if not runs:
        return []
    from bench.imagebench import slug

    blocks = [("h2", "Image benchmark: conditional DCGAN vs text-conditioned latent diffusion"),
              ("p", ("Both models get the same frozen CLIP-style text encoder, the same prompts (drawn from the data's "
                    "caption distribution) and the same per-sample seeds. Metrics on the judge's features: FID and KID "
                    "(clean-fid's formulas; biased at small N, Chong & Forsyth 2020), precision/recall (Kynkaanniemi et al. "
                    "2019, k=3), density/coverage (Naeem et al. 2020, k=5); modes and KL(p_gen || p_data) over the judge's "
                    "labels; prompt accuracy = fraction of samples the judge assigns to the prompted class. "
                    "Mean ± std over seeds."))]
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        per = [r for r in runs if r["dataset"] == dataset]
        summary = summarise({"runs": per})
        header = ["model", "runs ok"] + [h for _, h, _, _ in IMAGE_METRICS] + ["samples", "params", "examples seen",
                                                                               "train s", "NFE", "sampling s"]
        rows = []
        for s in summary:
            mine = [r for r in per if r["model"] == s["model"]]
            train = next((r["train"] for r in mine if r.get("train")), None)
            thr = next((r["throughput"] for r in mine if r.get("throughput")), {})
            name = s["model"] + (f" ({mine[0]['sampler']}, guidance {mine[0]['guidance']})" if mine[0].get("sampler") else "")
            rows.append([name, f"{s['ok']}/{s['seeds']}"]
                        + [_pm(s.get(k), fmt, scale) for k, _, fmt, scale in IMAGE_METRICS]
                        + [_pm(s.get("num_samples"), "{:.0f}"),
                           " + ".join(f"{k} {v:,}" for k, v in train["params"].items()) if train else "n/a",
                           f"{train['examples_seen']:,}" if train else "n/a",
                           f"{np.mean([r['train']['seconds'] for r in mine if r.get('train')]):.0f}" if train else "n/a",
                           str(thr.get("nfe", "n/a")), f"{thr['sample_seconds']:.1f}" if thr else "n/a"])
        if dataset == "stacked-digits":
            for name, modes, kl in REFERENCE_STACKED:
                rows.append([f"*{name}*", ""] + [""] * 6 + [str(modes), str(kl), ""] + [""] * 6)
        blocks += [("h3", dataset), ("table", header, rows)]
        judge = [r["metrics"].get("judge_accuracy") for r in per if r.get("metrics", {}).get("judge_accuracy") is not None]
        vae = [r["train"]["vae"] for r in per if r.get("train", {}).get("vae")]
        text = [r["train"]["text_encoder"] for r in per if r.get("train", {}).get("text_encoder")]
        notes = []
        if judge:
            notes.append(f"Judge held-out accuracy {judge[0]:.1%}.")
        if vae:
            notes.append(f"VAE reconstructions: PSNR {np.mean([v['psnr'] for v in vae]):.1f} dB, judge keeps the class of "
                         f"{np.mean([v['recon_accuracy'] for v in vae]):.1%} of them (the ceiling of the diffusion model's "
                         "prompt accuracy).")
        if text:
            notes.append(f"Text encoder (shared): {text[0]['params']:,} parameters, {text[0]['steps']} CLIP steps, "
                         f"{np.mean([t['seconds'] for t in text]):.0f} s.")
        if notes:
            blocks.append(("p", " ".join(notes)))
        seed = min(r["seed"] for r in per)
        tag = f"{slug(dataset)}_seed{seed}"
        prompts = run_dir / "samples" / f"{tag}_prompts.txt"
        for part in ("real", "gan", "diffusion"):
            if (run_dir / "samples" / f"{tag}_{part}.png").exists():
                blocks.append(("img", f"samples/{tag}_{part}.png", f"{dataset} seed {seed}: {part}"))
        if prompts.exists():
            first = prompts.read_text().splitlines()[:8]
            blocks.append(("p", "The grids share their prompts cell by cell (row-major); the first row: "
                                + "; ".join(f"'{p}'" for p in first) + f". All 64 in samples/{tag}_prompts.txt."))
    return blocks


def _status_blocks(results: dict) -> list:
    bad = [r for r in results["runs"] if r["status"] != "ok"]
    if not bad:
        return []
    rows = [[r["dataset"], r["model"], str(r["seed"]), r["status"],
             str(r.get("diverged_at_step", "")) if r["status"] == "diverged" else r.get("error", "")] for r in bad]
    return [("h2", "Runs that did not finish cleanly"), ("table", ["dataset", "model", "seed", "status", "detail"], rows)]


def build_blocks(run_dir: Path, results: dict) -> list:
    head = [("h1", f"gan-vs-diffusion: {results['suite']}"),
            ("p", f"Created {results['created']} on {results['device']}; "
                  + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + "; seeds "
                  + ", ".join(str(s) for s in results["config"]["seeds"]) + ".")]
    return head + _status_blocks(results) + _mixture_blocks(run_dir, results) + _image_blocks(run_dir, results)


# ---------------------------------------------------------------- renderers


def to_markdown(blocks: list) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + block[1])
        elif kind == "p":
            out.append(block[1])
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                                 + ["| " + " | ".join(row) + " |" for row in rows]))
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list) -> str:
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            cells = lambda row, tag: "".join(f"<{tag}>{html.escape(c).replace('*', '')}</{tag}>" for c in row)
            body.append("<table><tr>" + cells(block[1], "th") + "</tr>"
                        + "".join("<tr>" + cells(r, "td") + "</tr>" for r in block[2]) + "</table>")
        elif kind == "img":
            body.append(f'<figure><img src="{html.escape(block[1])}" alt="{html.escape(block[2])}"></figure>')
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}"
             "img{max-width:100%}")
    return ("<!doctype html>\n<html><head><meta charset='utf-8'><title>gan-vs-diffusion report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(run_dir: Path, results: dict) -> None:
    run_dir = Path(run_dir)
    blocks = build_blocks(run_dir, results)
    atomic_write(run_dir / "report.md", to_markdown(blocks))
    atomic_write(run_dir / "report.html", to_html(blocks))
