"""Stability diagnostics: pure functions over a training loop's per-step history rows (bench/train.py).

A history is a list of dicts, one per step, e.g. {"step", "g_loss", "d_loss", "g_grad_norm", "d_grad_norm", "d_real",
"d_fake"} for a GAN or {"step", "loss", "grad_norm", "lr"} for a diffusion model. Non-finite values are kept in the
history (a diverged run stops at its first non-finite loss), so every statistic here says what it does with them.

What each diagnostic measures, per run:
  final / min loss       where the loss ended and the best it reached (finite values only for the minimum)
  tail variance          variance of the loss over the last 20% of steps: a GAN that oscillates rather than settles
                         has a large one (Mescheder et al. 2018 study these oscillations), a converged denoiser a
                         small one
  gradient-norm spikes   steps whose gradient norm exceeds `factor` x the median of the `window` steps before it
  D(x) - D(G(z)) gap     mean over the tail of the discriminator's sigmoid output on real minus on fake: near 0 when
                         D cannot tell them apart, near 1 when D wins outright (and G's gradient vanishes,
                         Arjovsky & Bottou 2017)
  divergence             the first step with a non-finite loss, or None
  steps to threshold     the first checkpoint of the metric-over-training curve at which a quality threshold is met
"""

import math

import numpy as np

from bench.evaluate.metrics import FRESH_SPREAD

TAIL_FRACTION = 0.2  # the "end of training" the tail statistics look at
SPIKE_WINDOW = 50  # steps of history a gradient norm is compared with
SPIKE_FACTOR = 10.0  # a spike is a gradient norm this many times the recent median



def history_losses(row: dict) -> list[str]:
    """The losses a history logs: its keys ending in "loss" ("g_loss", "d_loss"; "loss")."""
    return [k for k in row if k.endswith("loss")]


def grad_key(loss: str) -> str:
    """The gradient norm logged beside a loss ("d_loss" -> "d_grad_norm"), also from a stability key
    ("d_loss_final" -> "d_grad_norm")."""
    return loss.removesuffix("_final").removesuffix("loss") + "grad_norm"


def loss_keys(stats: dict) -> list[str]:
    """The "<loss>_final" keys of a stability record, one per loss of the history it came from."""
    return [k for k in stats if k.endswith("loss_final")]


def column(history: list[dict], key: str) -> np.ndarray:
    """The values of one key over the steps, as float64 (NaN where a row lacks it or holds None)."""
    return np.array([np.nan if row.get(key) is None else row[key] for row in history], dtype=np.float64)


def tail(values: np.ndarray, fraction: float = TAIL_FRACTION) -> np.ndarray:
    """The last ceil(fraction * n) values (at least one when there are any)."""
    return values[len(values) - max(1, math.ceil(fraction * len(values))):] if len(values) else values


def loss_stats(values: np.ndarray) -> dict:
    """final (the last value, even if non-finite), min and tail_var over the finite values (None when there are none).

    tail_var is the population variance (ddof=0) of the finite values among the last 20% of steps."""
    finite = values[np.isfinite(values)]
    end = tail(values)
    end = end[np.isfinite(end)]
    return {
        "final": float(values[-1]) if len(values) else None,
        "min": float(finite.min()) if len(finite) else None,
        "tail_var": float(end.var()) if len(end) else None,
    }


def grad_spikes(norms: np.ndarray, window: int = SPIKE_WINDOW, factor: float = SPIKE_FACTOR) -> list[int]:
    """Indices i whose norm exceeds factor x the median of the (up to) `window` finite norms before i.

    The median, not the mean, so one spike does not hide the next; the first few steps compare with fewer
    predecessors and step 0 with none (never a spike). A non-finite norm counts as a spike."""
    out = []
    for i in range(1, len(norms)):
        past = norms[max(0, i - window):i]
        past = past[np.isfinite(past)]
        if not np.isfinite(norms[i]) or (len(past) and norms[i] > factor * np.median(past)):
            out.append(i)
    return out


def divergence_step(history: list[dict], keys: tuple[str, ...]) -> int | None:
    """The 'step' of the first row where any of the loss keys is non-finite, else None."""
    for row in history:
        if any(row.get(k) is not None and not math.isfinite(row[k]) for k in keys):
            return int(row["step"])
    return None


def d_gap(history: list[dict]) -> float | None:
    """Mean over the tail of D(x) - D(G(z)) (sigmoid outputs on the real and the fake batch of each step)."""
    gap = tail(column(history, "d_real") - column(history, "d_fake"))
    gap = gap[np.isfinite(gap)]
    return float(gap.mean()) if len(gap) else None


def steps_to_threshold(curve: list[dict], key: str, threshold: float) -> int | None:
    """The 'step' of the first curve point whose value of key is >= threshold, else None (never reached)."""
    for point in curve:
        value = point.get(key)
        if value is not None and value >= threshold:
            return int(point["step"])
    return None


def stability(history: list[dict]) -> dict:
    """Every history diagnostic of one run, flat: {"<loss>_final", "<loss>_min", "<loss>_tail_var", "<grad>_spikes",
    "<grad>_first_spike", "d_gap" (a history with a discriminator's outputs), "diverged_at_step", "steps"}, for
    every loss the history logs (history_losses) and the gradient norm beside it."""
    out: dict = {"steps": len(history)}
    losses = history_losses(history[0]) if history else []
    for key in losses:
        out.update({f"{key}_{name}": v for name, v in loss_stats(column(history, key)).items()})
        if grad_key(key) in history[0]:
            spikes = grad_spikes(column(history, grad_key(key)))
            out[f"{grad_key(key)}_spikes"] = len(spikes)
            out[f"{grad_key(key)}_first_spike"] = int(history[spikes[0]]["step"]) if spikes else None
    if history and "d_real" in history[0]:
        out["d_gap"] = d_gap(history)
    out["diverged_at_step"] = divergence_step(history, tuple(losses))
    return out


HQ_THRESHOLD = 0.5  # a 2D run with fewer high-quality samples is low-quality (the study's default too)
OUTCOMES = ("converged", "mode-collapsed", "low-quality", "diverged", "failed")
# The outcome rule measures each run against fresh data at the same sample count: on the 2D mixtures the true
# mixture's own readings (closed form), on images the held-out real row's on the same prompts ("baseline": bench/
# evaluate/images.py). A run falls short when it keeps less than HALF of what fresh data show, or (modes of images)
# MODES_SLACK fewer classes than they do: the judge's own mistakes move that count by a few.
HALF = 0.5
MODES_SLACK = 0.1
FRESH_HQ = 1 - math.exp(-4.5)  # P(|x - mode| < 3 std) for a 2D Gaussian: 0.989
RULE = (
    ("low-quality", "fewer samples on the data's support than half of fresh data's (2D: within 3 std of a mode, "
                    f"hq_fraction < {HQ_THRESHOLD}, fresh data {FRESH_HQ:.3f}; images: inside the real images' k-NN "
                    "manifold on label-free features, precision_lf < half the held-out real row's)"),
    ("mode-collapsed", "modes missing (2D: fewer than every mode; images: more than 10% fewer classes than the "
                       "held-out real row shows on the same prompts), or collapse within a mode (2D: within-mode "
                       "spread < half of fresh data's 0.974; images: within-class coverage < half the held-out real "
                       "row's), or a prompt followed no better than chance (images)"),
)


def at_chance(accuracy: float, num_modes: int, n: int) -> bool:
    """Prompt accuracy no better than a generator that ignores its prompt: within the one-sided 99% binomial band
    above chance 1 / num_modes (normal approximation) at n samples."""
    p = 1 / num_modes
    return accuracy <= p + 2.326 * math.sqrt(p * (1 - p) / max(n, 1))


def _below(value, reference, share: float = HALF) -> bool:
    """value < share x reference, both known (a missing number never decides)."""
    return value is not None and reference is not None and value < share * reference


def outcome(status: str, metrics: dict, baseline: dict | None = None, hq_threshold: float = HQ_THRESHOLD) -> str:
    """The outcome of one run, one rule for every family, both benchmarks and `gvd run` and `gvd study` alike (RULE),
    the first that applies: failed (its training or scoring raised), diverged (a non-finite loss, or non-finite
    samples), low-quality, mode-collapsed, else converged (a usable model). `baseline`: the held-out real row's
    readings on the same prompts (images); the 2D mixtures need none (fresh data's are known in closed form)."""
    if status in ("failed", "diverged"):
        return status
    base = baseline or {}
    if "hq_fraction" in metrics:  # the 2D mixtures
        if not metrics["hq_fraction"] >= hq_threshold:
            return "low-quality"
        modes, num_modes = metrics.get("modes"), metrics.get("num_modes")
        if (modes is not None and num_modes is not None and modes < num_modes) or _below(
                metrics.get("mode_spread"), FRESH_SPREAD):
            return "mode-collapsed"
        return "converged"
    if _below(metrics.get("precision_lf"), base.get("precision_lf")):
        return "low-quality"
    if _below(metrics.get("modes"), base.get("modes"), 1 - MODES_SLACK) or _below(
            metrics.get("within_coverage"), base.get("within_coverage")):
        return "mode-collapsed"
    accuracy, num_modes = metrics.get("cond_accuracy"), metrics.get("num_modes")
    if accuracy is not None and num_modes and at_chance(accuracy, num_modes, metrics.get("num_samples", 0)):
        return "mode-collapsed"
    return "converged"
