"""The known-answer panel: generators built from real data with one known defect each, scored by the same protocol as
every family, so each instrument is shown to move the right way before a reader trusts it.

    fresh            held-out test images of the prompted class (what the held-out real row shows): the yardstick
    copier           training images of the prompted class: memorisation, and nothing else
    one per class    one held-out image per class, repeated for every prompt of it: total collapse within a class
    4 per class      four per class, cycled: partial collapse within a class
    blurred          fresh images under a Gaussian blur of resolution / 16 pixels: lost detail
    noised           fresh images plus Gaussian noise of std 0.2 (in [-1, 1] units): corrupted detail
    wrong class      a fresh image of another class (shape and colour both changed on shapes) for each prompt
    half the classes only the first half of the classes: a prompt for another class gets one of them
    untrained        the GAN family's generator at its initial weights: no learning at all

Each is drawn for the scored prompts of cfg.panel_seeds seeds (the prompts and per-sample seeds a run scores), at the
run's own sample count, and scored by bench/evaluate/images.py (score, memorisation_record) and the outcome rule
(bench/evaluate/stability.py). Per instrument and defect the panel keeps the mean reading and how far it sits from
fresh data's in noise units: (mean - fresh mean) / the pooled spread over seeds of the two, signed so that a positive
number is a move the wrong way for a generator ("worse"); where both read the same on every seed and differ, the move
is beyond any noise ("beyond": "+" or "-", units None). CLAIMS says which defects each instrument is named after:
a claimed defect must move it at least MIN_UNITS the worse way, or the instrument is named as failing. Unclaimed
cells are shown too (an instrument that cannot see a defect is a fact to know, e.g. the judge's FID and one image
per class).
"""

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.files import atomic_write
from bench.evaluate import table
from bench.evaluate.images import eval_set, held_out_pool, memorisation_record, score
from bench.evaluate.metrics import class_share, copies_measurable
from bench.evaluate.stability import outcome
from bench.families import gan
from bench.families.calibration import Pool
from bench.families.interface import Trained
from bench.families.text import network_configs
from models.dcgan import Generator

PANEL_VERSION = 2  # part of the cache key: bump when a defect, a claim or the scoring changes
MIN_UNITS = 2.0  # a claimed defect must move its instrument this many noise units the worse way
PER_CLASS = 4  # "k per class"
NOISE_STD = 0.2  # "noised", in [-1, 1] pixel units


@dataclass(frozen=True)
class Defect:
    name: str
    what: str


DEFECTS = (
    Defect("fresh", "held-out test images of the prompted class"),
    Defect("copier", "training images of the prompted class"),
    Defect("one per class", "one held-out image per class, repeated"),
    Defect(f"{PER_CLASS} per class", f"{PER_CLASS} held-out images per class, cycled"),
    Defect("blurred", "fresh images, Gaussian blur of resolution / 16 px"),
    Defect("noised", f"fresh images + Gaussian noise, std {NOISE_STD}"),
    Defect("wrong class", "a fresh image of another class for each prompt"),
    Defect("half the classes", "only the first half of the classes"),
    Defect("untrained", "the GAN's generator at its initial weights"),
)
WITHIN = ("one per class", f"{PER_CLASS} per class")
DETAIL = ("blurred", "noised")
# metric key -> the defects it is named after (it must read them worse than fresh data)
CLAIMS = {
    "fid": (*DETAIL, "half the classes", "untrained"),
    "fid_lf": (*DETAIL, *WITHIN, "half the classes", "untrained"),
    "intra_fid": (*DETAIL, *WITHIN, "wrong class", "half the classes", "untrained"),
    "precision_lf": ("untrained",),
    "recall_lf": (*WITHIN, "half the classes"),
    "coverage_lf": (*WITHIN, "half the classes", "untrained"),
    "recall": ("half the classes",),
    "coverage": ("half the classes", "untrained"),
    "modes": ("half the classes",),
    "reverse_kl": ("half the classes",),
    "within_coverage": WITHIN,
    "factor_coverage": WITHIN,
    "cond_accuracy": ("wrong class", "half the classes", "untrained"),
    "duplicate_share": WITHIN,
    "copy_excess": ("copier",),
}
# the outcome each defect should get from the rule (bench/evaluate/stability.py outcome)
EXPECTED_OUTCOME = {"fresh": "converged", "copier": "converged", "one per class": "mode-collapsed",
                    f"{PER_CLASS} per class": "mode-collapsed", "wrong class": "mode-collapsed",
                    "half the classes": "mode-collapsed", "untrained": "low-quality"}
COPY_SIGN = {"copier": +1}  # copy_excess has no better side (table better = 0): copying is up


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of std sigma pixels, edges replicated. (N, C, H, W) -> (N, C, H, W)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    c = images.shape[1]
    x = F.conv2d(F.pad(images, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def other_class(labels: torch.Tensor, num_modes: int) -> torch.Tensor:
    """A fixed other class for each label: shifted by half the classes plus one (shapes: another shape and another
    colour), never the label itself."""
    shift = (num_modes // 2 + 1) % num_modes or 1
    return (labels + shift) % num_modes


def draw_defect(name: str, prep, prompts, seed: int, untrained) -> torch.Tensor:
    """The images of one defect for the prompts (labels, per-class occurrence), seeded by the run seed."""
    labels, occurrence = prompts.labels, prompts.occurrence
    held = held_out_pool(prep, seed)
    fresh = lambda: held.draw(labels, occurrence)  # noqa: E731
    if name == "fresh":
        return fresh()
    if name == "copier":
        return Pool.of(prep.data.images, prep.data.labels, seed).draw(labels, occurrence)
    if name in WITHIN:
        return held.draw(labels, occurrence % (1 if name == "one per class" else PER_CLASS))
    if name == "blurred":
        return blur(fresh(), prep.data.images.shape[-1] / 16)
    if name == "noised":
        gen = torch.Generator().manual_seed(40_000 + seed)
        images = fresh()
        return (images + NOISE_STD * torch.randn(images.shape, generator=gen)).clamp(-1, 1)
    if name == "wrong class":
        return held.draw(other_class(labels, prep.data.num_modes), occurrence)
    if name == "half the classes":
        kept = torch.tensor(sorted(held.by_class))[: max(1, len(held.by_class) // 2)]
        return held.draw(torch.where(torch.isin(labels, kept), labels, kept[labels % len(kept)]), occurrence)
    if name == "untrained":
        return gan.sample_image(untrained, prompts, 1.0)[0]
    raise ValueError(f"unknown defect {name!r}")


def _untrained(prep, text, cfg, seed: int) -> Trained:
    configs = network_configs(cfg, channels=prep.data.images.shape[1], resolution=cfg.resolution,
                              vocab_size=len(text.tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(50_000 + seed)
        G = Generator(configs["dcgan"]).eval()
    return Trained(G, {"status": "ok"}, {})


def read_defects(prep, text, cfg, seed: int, device="cpu") -> tuple[object, dict[str, dict]]:
    """(the seed's EvalSet, every defect's metrics and outcome on its scored prompts)."""
    ev = eval_set(prep, text, cfg, seed, device)
    untrained = _untrained(prep, text, cfg, seed)
    out = {}
    for defect in DEFECTS:
        images = draw_defect(defect.name, prep, ev.scored, seed, untrained).float()
        metrics = score(prep, ev, ev.scored, images)
        metrics.update({k: v for k, v in memorisation_record(ev, prep, images).items()
                        if k in ("copy_excess", "near_copy_share", "near_copy_share_held")})
        metrics["outcome"] = outcome("ok", metrics, ev.baseline)
        out[defect.name] = metrics
    return ev, out


def _units(fresh: list[float], other: list[float], sign: int) -> float | None:
    """(mean(other) - mean(fresh)) / pooled sd over seeds, times sign (+1: up is worse); inf when both are constant
    and differ, 0 when they are equal; None with fewer than two seeds."""
    if min(len(fresh), len(other)) < 2:  # one seed: no spread to measure a move in
        return None
    diff = (np.mean(other) - np.mean(fresh)) * sign
    sd = math.sqrt((np.var(fresh, ddof=1) + np.var(other, ddof=1)) / 2)
    if sd > 1e-12 * max(1.0, abs(np.mean(fresh))):
        return float(diff / sd)
    return 0.0 if abs(diff) <= 1e-12 * max(1.0, abs(np.mean(fresh))) else math.copysign(math.inf, diff)


def summarise(readings: list[dict[str, dict]]) -> dict:
    """Per instrument and defect: mean, sd, noise units against fresh data (positive = worse), whether it is claimed
    and passed; per defect the outcomes over seeds."""
    rows = {}
    for key in CLAIMS:
        m = table.metric(key)
        cells = {}
        fresh = [r["fresh"][key] for r in readings if r["fresh"].get(key) is not None]
        for defect in DEFECTS:
            values = [r[defect.name][key] for r in readings if r[defect.name].get(key) is not None]
            if not values:
                continue
            sign = COPY_SIGN.get(defect.name, +1) if key == "copy_excess" else -(m.better or 1)
            units = None if defect.name == "fresh" else _units(fresh, values, sign)
            claimed = defect.name in CLAIMS[key]
            cells[defect.name] = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1))
                                  if len(values) > 1 else 0.0, "units": units, "claimed": claimed,
                                  "passed": (units is not None and units >= MIN_UNITS) if claimed else None}
            if units is not None and math.isinf(units):  # constant readings that differ: JSON keeps no infinity
                cells[defect.name].update(units=None, beyond="+" if units > 0 else "-")
            if key == "copy_excess" and not copies_measurable(
                    np.mean([r[defect.name].get("near_copy_share_held", 0.0) for r in readings])):
                cells[defect.name].update(measurable=False, units=None)
        if cells:
            rows[key] = cells
    outcomes = {d.name: [r[d.name]["outcome"] for r in readings] for d in DEFECTS}
    return {"instruments": rows, "outcomes": outcomes}


def class_shares(ev) -> dict:
    """The share of each feature space's variance that is class identity, on the reference images."""
    out = {}
    for name, feats in (("judge", ev.ref.feats), ("label-free", ev.ref.lf), ("factors", ev.ref.factors),
                        ("inception", ev.real_inception)):
        if feats is not None and ev.ref.labels is not None:
            out[name] = class_share(feats, ev.ref.labels)
    return out


def _key(prep, cfg, seeds) -> str:
    """sha256 of what the panel depends on: the readers' weights, the data and the sample count."""
    readers = {name: getattr(prep, name).weights_sha256 if getattr(prep, name, None) is not None else None
               for name in ("judge", "encoder", "factors")}
    blob = {"version": PANEL_VERSION, "dataset": prep.dataset, "readers": readers, "seeds": list(seeds),
            "reference": prep.reference_record["hash"], "train": len(prep.data.labels), "n": cfg.num_samples,
            "sweep": cfg.sweep_samples, "dcgan": repr(cfg.dcgan), "held_out": len(prep.held_out)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def calibration_panel(prep, text, cfg, device="cpu", progress=None) -> dict | None:
    """The panel of one image dataset at the config's sample count, on seeds 0 .. cfg.panel_seeds - 1, from the cache
    in prep.cache_dir when it was computed before for the same readers, data and count (a damaged entry is
    recomputed). None for data without a judge or without held-out images (nothing to build fresh data from), or
    with panel_seeds 0."""
    seeds = tuple(range(cfg.panel_seeds))
    if prep.judge is None or prep.encoder is None or len(prep.held_out) == 0 or not seeds:
        return None
    path = Path(prep.cache_dir) / f"panel-{_key(prep, cfg, seeds)[:20]}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    readings, ev = [], None
    for seed in seeds:
        ev, reading = read_defects(prep, text, cfg, seed, device)
        readings.append(reading)
        if progress is not None:
            progress(seed)
    panel = {"dataset": prep.dataset, "num_samples": cfg.num_samples, "seeds": list(seeds), "min_units": MIN_UNITS,
             "defects": [{"name": d.name, "what": d.what} for d in DEFECTS], "expected_outcome": EXPECTED_OUTCOME,
             **summarise(readings), "class_share": class_shares(ev),
             "readers": {"judge_accuracy": prep.judge.accuracy, "encoder": prep.encoder.record,
                         "factors": prep.factors.record if prep.factors is not None else None}}
    atomic_write(path, json.dumps(panel, indent=1, default=float))
    return panel
