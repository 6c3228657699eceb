"""The image benchmark's fair-comparison tables (bench/report.py's block format): each family at its neutral and its
tuned knob, an interval for every mean, the GAN-minus-diffusion difference and whether the seeds resolve it, the
training recipe of each family, memorisation.

Intervals (bench/stats.py): with two or more seeds, Student's t interval for the mean over seeds; with one seed, the
FID column shows the run's basic bootstrap interval for the population FID at its sample count (resampling both
sets: metrics.fid_bootstrap) and the differences cannot be called.
"""

import numpy as np

from bench.evaluate.stats import family_differences, mean_interval

FAMILIES = ("gan", "diffusion")
COLUMNS = [("fid", "FID", "{:.2f}", 1), ("kid", "KID x1e3", "{:.2f}", 1e3), ("precision", "precision", "{:.2f}", 1),
           ("recall", "recall", "{:.2f}", 1), ("density", "density", "{:.2f}", 1),
           ("coverage", "coverage", "{:.2f}", 1), ("modes", "modes", "{:.0f}", 1),
           ("reverse_kl", "reverse KL", "{:.3f}", 1), ("forward_kl", "forward KL", "{:.3f}", 1),
           ("cond_accuracy", "prompt accuracy", "{:.3f}", 1), ("near_copy_share", "near-copies", "{:.3f}", 1),
           ("c_t", "C_T", "{:.2f}", 1)]
DIFFERENCE_KEYS = ("fid", "precision", "recall", "coverage", "modes", "cond_accuracy", "near_copy_share")


def _mean(values: list, fmt: str, scale: float = 1.0) -> str:
    """Mean over seeds, with the t interval for the mean when there are two or more."""
    stat = mean_interval([v * scale for v in values if v is not None])
    if stat["mean"] is None:
        return "n/a"
    text = fmt.format(stat["mean"])
    return text if stat["lo"] is None else f"{text} [{fmt.format(stat['lo'])}, {fmt.format(stat['hi'])}]"


def setting_runs(per: list[dict], setting: str) -> list[dict]:
    """The entries as seen at one knob setting: "neutral" (entry metrics) or "tuned" (entry["tuned"]["metrics"])."""
    if setting == "neutral":
        return per
    return [{**r, "metrics": r["tuned"]["metrics"]} for r in per if r.get("tuned")]


def _fid_interval(runs: list[dict]) -> str:
    """The FID column's interval: over seeds with 2+ seeds, else the single run's bootstrap interval."""
    if len(runs) >= 2:
        return "over seeds"
    m = runs[0].get("metrics", {}) if runs else {}
    return f"[{m['fid_lo']:.2f}, {m['fid_hi']:.2f}] (bootstrap)" if m.get("fid_lo") is not None else "n/a"


def _label(runs: list[dict], family: str, setting: str) -> str:
    values = sorted({r["tuned"]["value"] for r in runs if r.get("tuned")}) if setting == "tuned" else [1.0]
    knob = "psi" if family == "gan" else "s"
    return f"{setting} ({knob} = {', '.join(f'{v:g}' for v in values)})"


def image_table(per: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One dataset's table: a row per (family, setting), mean [95% interval] over the seeds whose run is ok."""
    header = ["model", "setting", "runs ok", "FID interval"] + [h for _, h, _, _ in COLUMNS] + ["NFE", "samples"]
    rows = []
    for family in FAMILIES:
        mine = [r for r in per if r["model"] == family]
        for setting in ("neutral", "tuned"):
            runs = [r for r in setting_runs(mine, setting) if r.get("status") == "ok"]
            if not runs:
                continue
            nfe = sorted({r["throughput"].get("nfe" if setting == "neutral" else "nfe_tuned") for r in runs
                          if r.get("throughput")} - {None})
            rows.append([family, _label(runs, family, setting), f"{len(runs)}/{len(mine)}", _fid_interval(runs)]
                        + [_mean([r["metrics"].get(k) for r in runs], fmt, scale) for k, _, fmt, scale in COLUMNS]
                        + [", ".join(map(str, nfe)) or "n/a", _mean([r["metrics"].get("num_samples") for r in runs],
                                                                   "{:.0f}")])
    return header, rows


def difference_blocks(per: list[dict]) -> list:
    """GAN minus diffusion at each setting, paired by seed, with its 95% interval and whether it is resolved."""
    rows = []
    for setting in ("neutral", "tuned"):
        diffs = family_differences(setting_runs(per, setting), DIFFERENCE_KEYS).get(per[0]["dataset"], {})
        for key, d in diffs.items():
            diff = d["difference"]
            if diff.get("mean") is None:
                continue
            interval = "n/a (one seed)" if diff.get("lo") is None else f"[{diff['lo']:.3g}, {diff['hi']:.3g}]"
            verdict = ("not resolved: one seed" if diff.get("lo") is None else
                       "resolved" if diff.get("resolved") else "not resolved")
            rows.append([setting, key, f"{diff['mean']:+.3g}", interval, verdict])
    if not rows:
        return []
    return [("p", "GAN minus diffusion, paired by seed (both families share each seed's data stream, prompts and "
                  "sample seeds), with Student's t 95% interval of the mean difference; a difference is called only "
                  "when its interval excludes 0."),
            ("table", ["setting", "metric", "GAN − diffusion", "95% interval", "verdict"], rows)]


def recipe_blocks(per: list[dict], config: dict) -> list:
    """What each family got: optimiser, learning-rate schedule, EMA, clipping, parameters, examples, wall time."""
    images = config.get("images") or {}
    gan, dif = images.get("gan", {}), images.get("diffusion_train", {})
    rows = []
    for family in FAMILIES:
        mine = [r for r in per if r["model"] == family and r.get("train")]
        if not mine:
            continue
        train, ema = mine[0]["train"], mine[0].get("ema", {})
        recipe = (f"Adam({gan.get('lr')}, betas {gan.get('betas')}), constant LR, {gan.get('loss')} loss, no clipping"
                  if family == "gan" else
                  f"AdamW({dif.get('lr')}, betas {dif.get('betas')}), one-cycle LR (warm-up {dif.get('warmup')}), "
                  f"gradient clipping at {dif.get('grad_clip')}; VAE: Adam, cosine LR")
        rows.append([family, recipe, f"{ema.get('decay')} (EDM ramp-up; initial weights left "
                                     f"{ema.get('initial_weight_share', float('nan')):.1e})",
                     " + ".join(f"{k} {v:,}" for k, v in train["params"].items()),
                     f"{train['examples_seen']:,}", f"{np.mean([r['train']['seconds'] for r in mine]):.0f}"])
    text = next((r["train"]["text_encoder"] for r in per if r.get("train", {}).get("text_encoder")), None)
    note = (f" The shared, frozen text encoder ({text['params']:,} parameters, {text['steps']} CLIP steps, "
            f"{text['seconds']:.0f} s) is counted on neither side." if text else "")
    axis = ("examples seen: both families take the same number of steps at the same batch size from the same data "
            "stream (the VAE's images come on top for diffusion)" if images.get("budget", "examples") == "examples"
            else "training FLOPs: the GAN takes as many steps as give it the diffusion side's training FLOPs (UNet "
                 "and VAE), from the same data stream")
    return [("p", f"Recipes. The budget axis is {axis}." + note),
            ("table", ["model", "optimiser and schedule", "EMA decay", "parameters", "examples seen", "train s"],
             rows)]


def memorisation_note(per: list[dict]) -> str | None:
    """One sentence on memorisation, from the entries' records (judge features)."""
    parts = []
    for family in FAMILIES:
        recs = [r["memorisation"] for r in per if r["model"] == family and r.get("memorisation")]
        if recs:
            share = np.mean([m["near_copy_share"] for m in recs])
            base = np.mean([m["test_near_copy_share"] for m in recs])
            ct = np.mean([m["c_t"] for m in recs])
            parts.append(f"{family}: {share:.1%} near-copies of training images (test images: {base:.1%}), "
                         f"C_T {ct:+.2f}")
    if not parts:
        return None
    return ("Memorisation (judge features; a near-copy is closer to a training image than 95% of training images "
            "are to their nearest other one; C_T of Meehan et al. 2020, well below 0 = copying): " + "; ".join(parts)
            + ".")


# ---------------------------------------------------------------- the verdict at the top of the report

# (aspect, metric key, label, +1 when higher is better / -1 when lower is better); a row only where both families
# report the key. sample_seconds and train_seconds come from the entries' throughput and train records.
VERDICT = [("quality", "fid", "FID", -1), ("quality", "hq_fraction", "high-quality share", +1),
           ("diversity", "recall", "recall", +1), ("diversity", "coverage", "coverage", +1),
           ("diversity", "modes", "modes", +1), ("diversity", "reverse_kl", "reverse KL", -1),
           ("prompt adherence", "cond_accuracy", "prompt accuracy", +1),
           ("memorisation", "near_copy_share", "near-copy share", -1),
           ("cost: sampling", "sample_seconds", "sampling s (same sample count)", -1),
           ("cost: training", "train_seconds", "training s", -1)]
FAMILY_NAMES = {"gan": "GAN", "diffusion": "diffusion"}


def _with_costs(runs: list[dict]) -> list[dict]:
    """The entries with their sampling and training seconds beside the metrics (so they pair by seed too)."""
    out = []
    for r in runs:
        extra = {"sample_seconds": (r.get("throughput") or {}).get("sample_seconds"),
                 "train_seconds": (r.get("train") or {}).get("seconds")}
        out.append({**r, "metrics": {**(r.get("metrics") or {}), **{k: v for k, v in extra.items() if v is not None}}})
    return out


def _verdict_row(aspect: str, label: str, better: int, d: dict) -> list[str] | None:
    gan, dif, diff = d["gan"]["mean"], d["diffusion"]["mean"], d["difference"]
    if gan is None or dif is None:
        return None
    if gan == dif:
        leader, by = "tie", "0"
    else:
        leader = "GAN" if (gan - dif) * better > 0 else "diffusion"
        by = f"{abs(gan - dif):.3g}"
        if aspect.startswith("cost") and min(gan, dif) > 0:
            by += f" ({max(gan, dif) / min(gan, dif):.3g}x)"
    resolved = ("not resolved (one seed)" if diff.get("lo") is None else
                "resolved" if diff["resolved"] else "not resolved")
    return [aspect, label, f"{gan:.3g}", f"{dif:.3g}", leader, by, resolved]


def _stability_row(runs: list[dict]) -> list[str]:
    """Runs that finished (no divergence, no failure) per family: counts, no interval."""
    done = {f: (sum(r["status"] == "ok" for r in runs if r["model"] == f), sum(r["model"] == f for r in runs))
            for f in FAMILIES}
    share = {f: ok / n if n else 0.0 for f, (ok, n) in done.items()}
    leader = "tie" if share["gan"] == share["diffusion"] else max(FAMILIES, key=share.get)
    return ["stability", "runs finished (not diverged)", "{}/{}".format(*done["gan"]),
            "{}/{}".format(*done["diffusion"]), FAMILY_NAMES.get(leader, leader),
            f"{abs(share['gan'] - share['diffusion']):.0%} of seeds", "counts, no interval"]


def verdict_blocks(runs: list[dict]) -> list:
    """Per dataset, which family leads on each aspect (neutral knobs), by how much, and whether the seeds resolve it
    (the GAN-minus-diffusion t interval paired by seed excludes 0: bench/stats.py family_differences)."""
    blocks = [("h2", "Verdict"),
              ("p", "Per dataset: which family leads on each aspect at its neutral knob (GAN psi = 1, diffusion "
                    "s = 1), means over seeds, by how much, and whether the seeds resolve it (the paired 95% "
                    "interval of GAN - diffusion excludes 0). 'Not resolved' means these seeds cannot tell the "
                    "families apart; one seed never can.")]
    diffs = family_differences(_with_costs(runs), [k for _, k, _, _ in VERDICT])
    for dataset, rows_by_key in diffs.items():
        rows = []
        for aspect, key, label, better in VERDICT:
            row = _verdict_row(aspect, label, better, rows_by_key[key]) if key in rows_by_key else None
            if row:
                rows.append(row)
        rows.insert(next((i for i, r in enumerate(rows) if r[0] in ("memorisation", "cost: sampling")), len(rows)),
                    _stability_row([r for r in runs if r["dataset"] == dataset]))
        blocks += [("h3", f"Verdict: {dataset}"),
                   ("table", ["aspect", "measure", "GAN", "diffusion", "leads", "by", "seeds"], rows)]
    return blocks if len(blocks) > 2 else []
