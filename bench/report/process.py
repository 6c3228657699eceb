"""How each family makes an image, as pictures: drawn from the arrays the run kept (process/*.npz, written by
bench/evaluate/process.py; the 2D snapshot samples in samples/), each figure with a "How to read these" paragraph.

    trajectory   the diffusion sampler's latent x_t and clean estimate x0_hat at evenly spaced steps, beside two other
                 samplers at the same NFE
    forward      one test image noised by q(x_t | x_0) at the same noise levels, with the SNR of every schedule
    guidance     the unconditional and conditional estimates, their difference and the guided image at three scales
    strips       every family's samples for fixed prompts and seeds at each training snapshot (images and 2D)
"""

from pathlib import Path

import numpy as np
import torch

from bench.core.rundir import RunDir, slug
from bench.data.mixtures import sample_mixture
from bench.report.figures import REAL_COLOUR, placed_by_hand, plt, save_figure, suptitle, wrap_title
from bench.report.tables import colour, families_of, label, models

CELL = 0.72  # inches per image cell
TITLE_PT = 8  # the figures' titles


def _rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W, 3) in [0, 1]."""
    image = np.clip((np.asarray(image, dtype=np.float32) + 1) / 2, 0, 1).transpose(1, 2, 0)
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def _show(ax, image=None, title: str | None = None, ylabel: str | None = None, colour_: str = "black") -> None:
    if image is not None:
        ax.imshow(_rgb(image), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=6)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=6, rotation=0, ha="right", va="center", color=colour_)


def _grid(rows: int, cols: int, title: str, extra_w: float = 1.4, hspace: float = 0.45):
    """A grid of image cells laid out by hand, its title wrapped to the figure's width above the first row's column
    titles (the top margin grows with the title's lines, so the two never overprint)."""
    width = cols * CELL + extra_w
    lines = len(wrap_title(title, width, TITLE_PT))
    top = 0.45 + lines * TITLE_PT / 72 * 1.3  # inches: the column titles, then the title's lines
    fig, axes = plt.subplots(rows, cols, figsize=(width, rows * CELL + top + 0.1), squeeze=False)
    placed_by_hand(fig)
    fig.subplots_adjust(left=extra_w / width, right=0.99, top=1 - top / (rows * CELL + top + 0.1),
                        bottom=0.02, wspace=0.08, hspace=hspace)
    suptitle(fig, title, TITLE_PT)
    return fig, axes


def _short(prompt: str, width: int = 22) -> str:
    return prompt if len(prompt) <= width else prompt[: width - 1] + "…"


# ---------------------------------------------------------------- the image figures


def trajectory_figure(rd: RunDir, dataset: str, seed: int, arrays: dict, prompts: list[str]) -> str | None:
    """Per prompt: the headline sampler's x_t and x0_hat rows, then x0_hat under the two other samplers."""
    paths = [i for i in range(3) if f"trajectory{i}_x0" in arrays]
    if not paths:
        return None
    head = arrays["trajectory0_xt"]
    n_prompts, cols = head.shape[0], head.shape[1]
    rows = [r for p in range(n_prompts) for r in [(p, "xt", 0)] + [(p, "x0", i) for i in paths]]
    title = (f"{dataset}, seed {seed}: a diffusion sample as it is made (guidance s = 1, NFE "
             f"{int(arrays['trajectory0_nfe'])} per sampler)")
    fig, axes = _grid(len(rows), cols, title, extra_w=1.9)
    t = arrays["trajectory0_t"]
    for r, (p, kind, i) in enumerate(rows):
        name = str(arrays[f"trajectory{i}_label"])
        what = "x_t" if kind == "xt" else "x0_hat"
        ylabel = (f"{_short(prompts[p]) if p < len(prompts) else f'prompt {p + 1}'}\n" if kind == "xt" else "") + \
            f"{what}, {name}"
        for c in range(cols):
            title = None
            if r == 0:
                title = "output" if c == cols - 1 else f"t = {t[c]:.0f}"
            _show(axes[r, c], arrays[f"trajectory{i}_{kind}"][p, c], title, ylabel if c == 0 else None)
    return save_figure(rd, fig, f"{slug(dataset)}_trajectory", dpi=110)


def forward_figure(rd: RunDir, dataset: str, seed: int, arrays: dict) -> str | None:
    """The noised test image in pixels and in the latent space (decoded), and log SNR of every schedule."""
    if "forward_pixels" not in arrays:
        return None
    pixels, latents, t = arrays["forward_pixels"], arrays["forward_latents"], arrays["forward_t"]
    snr, run_schedule = arrays["forward_snr"], str(arrays["forward_schedule"])
    cols = len(t)
    fig = plt.figure(figsize=(cols * CELL + 1.2 + 3.6, 2 * CELL + 1.3))
    placed_by_hand(fig)
    grid = fig.add_gridspec(2, cols + 2, width_ratios=[1] * cols + [0.9, 4.2], left=1.0 / (cols * CELL + 4.8),
                            right=0.98, top=0.72, bottom=0.22, wspace=0.08)
    for c in range(cols):
        title = f"t = {t[c]}\nSNR {snr[run_schedule][c]:.3g}"
        _show(fig.add_subplot(grid[0, c]), pixels[c], title, "pixels" if c == 0 else None)
        _show(fig.add_subplot(grid[1, c]), latents[c], None, "latents,\ndecoded" if c == 0 else None)
    ax = fig.add_subplot(grid[:, cols + 1])
    for name, values in snr.items():
        ax.plot(t, values, marker="o", ms=3, lw=2.2 if name == run_schedule else 0.9,
                label=name + (" (this run)" if name == run_schedule else ""))
    ax.set(yscale="log", xlabel="timestep t", ylabel="SNR")
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6)
    suptitle(fig, f"{dataset}: the forward process q(x_t | x_0) at the trajectory's noise levels ({run_schedule} "
                 "schedule)", 8)
    return save_figure(rd, fig, f"{slug(dataset)}_forward", dpi=110)


def guidance_figure(rd: RunDir, dataset: str, seed: int, arrays: dict, prompts: list[str]) -> str | None:
    """Per prompt: x0_hat unconditional, conditional, their difference, the guided x0_hat at three scales; under
    them the finished samples at those scales."""
    if "guidance_guided" not in arrays:
        return None
    scales, t = arrays["guidance_scales"], arrays["guidance_t"]
    n, k = arrays["guidance_guided"].shape[:2]
    fig, axes = _grid(2 * n, 3 + k, f"{dataset}, seed {seed}: classifier-free guidance taken apart at one step",
                      extra_w=1.6, hspace=0.7)
    limit = float(np.abs(arrays["guidance_difference"]).max()) or 1.0
    for p in range(n):
        top, bottom = axes[2 * p], axes[2 * p + 1]
        name = _short(prompts[p]) if p < len(prompts) else f"prompt {p + 1}"
        _show(top[0], arrays["guidance_uncond"][p], "x0_hat,\nempty caption", f"{name}\nat t = {t[p]:.0f}")
        _show(top[1], arrays["guidance_cond"][p], "x0_hat,\nwith caption")
        top[2].imshow(arrays["guidance_difference"][p].astype(np.float32), cmap="RdBu_r", vmin=-limit, vmax=limit,
                      interpolation="nearest")
        top[2].set(xticks=[], yticks=[])
        top[2].set_title("difference\n(with - empty)", fontsize=6)
        for j in range(k):
            _show(top[3 + j], arrays["guidance_guided"][p, j], f"x0_hat guided,\ns = {scales[j]:g}")
            _show(bottom[3 + j], arrays["guidance_final"][p, j], f"sample, s = {scales[j]:g}")
        for ax in bottom[:3]:
            _show(ax)
        bottom[0].text(1.0, 0.5, "finished samples\n(same seed) →", ha="right", va="center", fontsize=6,
                       transform=bottom[2].transAxes)
    return save_figure(rd, fig, f"{slug(dataset)}_guidance", dpi=110)


def strip_figure(rd: RunDir, results: dict, dataset: str, seed: int, per_family: dict,
                 prompts: list[str]) -> str | None:
    """One strip per family: its samples for the same prompts and seeds (rows) at each training snapshot (columns)."""
    strips = {f: a for f, a in per_family.items() if "strip" in a}
    if not strips:
        return None
    families = families_of(results)
    n = max(a["strip"].shape[1] for a in strips.values())
    cols = sum(a["strip"].shape[0] for a in strips.values()) + len(strips) - 1
    fig, axes = _grid(n, cols, f"{dataset}, seed {seed}: each family's EMA at each training snapshot, the same "
                               "prompts and seeds (neutral knobs)", extra_w=1.6)
    c0 = 0
    for family, a in strips.items():
        steps = a["strip_steps"]
        for j, step in enumerate(steps):
            for p in range(n):
                title = f"{label(families, family)}\nstep {int(step):,}" if p == 0 else None
                ylabel = (_short(prompts[p]) if p < len(prompts) else f"prompt {p + 1}") if c0 + j == 0 else None
                _show(axes[p, c0 + j], a["strip"][j, p] if p < a["strip"].shape[1] else None, title, ylabel)
                if p == 0:
                    axes[p, c0 + j].title.set_color(colour(families, family))
        c0 += len(steps)
        if c0 < cols:
            for p in range(n):
                _show(axes[p, c0])
            c0 += 1
    return save_figure(rd, fig, f"{slug(dataset)}_snapshots", dpi=110)


READ_TRAJECTORY = (
    "How to read these: a diffusion model makes an image by removing a little noise at a time. The first row of "
    "each prompt is the latent it is working on (x_t, decoded by the autoencoder), the next is its guess at the "
    "finished image from there (x0_hat): the guess settles long before the noise is gone, so an error in the layout "
    "shows early and one in the fine detail late. The last column is the sample itself; the rows below run the same "
    "network from the same noise under two other samplers with the same number of network passes: where they "
    "disagree, the sampler, not the model, decides the picture. The timesteps t above the columns are the first "
    "sampler's; the other samplers are shown at the same network calls of their own grids.")
READ_FORWARD = (
    "How to read these: training teaches the network to undo this. A test image is mixed with Gaussian noise as "
    "sqrt(a_t) x_0 + sqrt(1 - a_t) noise at the noise levels the sampler visits; the signal-to-noise ratio a_t / "
    "(1 - a_t) under each frame says how much image is left. The latent diffusion model is noised in its "
    "autoencoder's latent space (second row, decoded), not in pixels. The chart puts the run's schedule beside the "
    "other built-in ones at the same timesteps: a schedule that spends fewer steps at high SNR leaves more of them "
    "for the coarse layout.")
READ_GUIDANCE = (
    "How to read these: guidance runs the network twice at each step, once with the caption and once with the empty "
    "caption, and moves past the conditional answer along their difference: x0_u + s (x0_c - x0_u). The difference "
    "map is what the caption adds at this step (red: brighter with the caption, blue: darker). s = 1 is the plain "
    "conditional model; larger s follows the prompt harder, usually at the cost of variety (the sweeps above "
    "measure that trade).")
READ_STRIP = (
    "How to read these: each column is one family's EMA weights at a training snapshot (the steps the curves "
    "above score), each row one prompt with one fixed seed. A model that is learning fills in each row's prompt; a "
    "GAN that collapses makes its rows look alike, whatever they ask for, or changes what it makes from one "
    "snapshot to the next.")


def image_process_blocks(run_dir: Path, results: dict, per: list[dict], dataset: str) -> list:
    """The first seed's process figures of one image dataset, each after its "How to read these" paragraph."""
    rd, seed = RunDir(run_dir), min(r["seed"] for r in per)
    prompts = rd.read_prompts(dataset, seed) or []
    arrays = {f: a for f in models(families_of(results)) if (a := rd.load_process(dataset, seed, f)) is not None}
    if not arrays:
        return []
    blocks = [("h3", f"{dataset}: how each family makes an image")]
    diffusion = next((a for a in arrays.values() if "trajectory0_x0" in a), None)
    figures = []
    if diffusion is not None:
        figures += [(READ_TRAJECTORY, trajectory_figure(rd, dataset, seed, diffusion, prompts),
                     f"{dataset}, seed {seed}: the diffusion model's latent x_t and its clean-image estimate x0_hat at "
                     "evenly spaced steps of one sample per prompt, then x0_hat under two other samplers from the same "
                     "noise at the same NFE."),
                    (READ_FORWARD, forward_figure(rd, dataset, seed, diffusion),
                     f"{dataset}: one test image noised by the forward process at the sampler's noise levels, in "
                     "pixels and in the autoencoder's latent space (decoded), beside the signal-to-noise ratio of "
                     "every built-in schedule."),
                    (READ_GUIDANCE, guidance_figure(rd, dataset, seed, diffusion, prompts),
                     f"{dataset}, seed {seed}: classifier-free guidance at one step: the estimates without and with "
                     "the caption, their difference, the guided estimate at three scales, and the finished samples at "
                     "those scales.")]
    figures.append((READ_STRIP, strip_figure(rd, results, dataset, seed, arrays, prompts),
                    f"{dataset}, seed {seed}: each family's samples for the same prompts and seeds (rows) at each "
                    "training snapshot (columns), neutral knobs."))
    for text, path, caption in figures:
        if path:
            blocks += [("p", text), ("img", path, caption)]
    return blocks


# ---------------------------------------------------------------- the 2D mixtures


READ_CLOUDS = (
    "How to read these: each row is one family, each column the samples of its EMA weights at a training snapshot "
    "(grey: the data). A family that covers the mixture spreads over every mode; one that collapses gathers on a "
    "few, and a GAN's cloud often jumps from mode to mode between snapshots.")


def mixture_strip_figure(run_dir: Path, results: dict, dataset: str) -> str | None:
    """The first seed's 2D samples at each training snapshot, one row per family, over the real mixture."""
    rd, seed, families = RunDir(run_dir), results["config"]["seeds"][0], families_of(results)
    rows = []
    for r in results["runs"]:
        if r["dataset"] == dataset and r["seed"] == seed and r.get("status") != "failed":
            steps = [p["step"] for p in r.get("curve", []) if "step" in p]
            clouds = [(s, x) for s in steps if (x := rd.load_points(dataset, seed, r["model"], f"step{s}")) is not None]
            if clouds:
                rows.append((r["model"], clouds))
    if not rows:
        return None
    cols = max(len(c) for _, c in rows)
    real = sample_mixture(dataset, 1000, torch.Generator().manual_seed(12345)).numpy()
    lim = np.abs(real).max() * 1.4
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 1.45 + 0.5, len(rows) * 1.55 + 0.4), squeeze=False)
    for r, (family, clouds) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[])
            if c >= len(clouds):
                ax.set_axis_off()
                continue
            step, x = clouds[c]
            ax.scatter(real[:, 0], real[:, 1], s=1, c=REAL_COLOUR)
            finite = x[np.isfinite(x).all(axis=1)]
            ax.scatter(finite[:, 0], finite[:, 1], s=1, c=colour(families, family), alpha=0.6)
            ax.set_title(f"step {step:,}", fontsize=6)
            if c == 0:
                ax.set_ylabel(label(families, family), fontsize=7, color=colour(families, family))
    suptitle(fig, f"{dataset}, seed {seed}: samples at each training snapshot", 8)
    fig.tight_layout()
    return save_figure(rd, fig, f"{slug(dataset)}_snapshots", dpi=110)
