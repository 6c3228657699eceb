"""The verdict at the top of the report: which family leads where, by how much, and whether the seeds resolve it.

The rules (DESIGN.md, "Verdict rules"), for each dataset and each metric of the metric table that enters the verdict:

  - the families compared are the run's model families (calibration rows never lead); each cell is that family's
    mean over its own finished seeds, with its n, and names every seed left out and why;
  - the leader and "by" come from the paired differences over the seeds every compared family finished with a
    finite value (DESIGN: "paired by seed"): the families are ranked by their mean over those common seeds, and
    "by" is the mean paired difference between the leader and the runner-up (a ratio beside it for costs);
  - "resolved" needs n >= 3 paired seeds, a non-zero spread of the differences and the paired Student t 95% interval
    excluding 0 (bench/evaluate/stats.py paired_difference); the exact sign-flip p stands beside it;
  - memorisation is ranked by closeness to the held-out baseline (the held-out real row's copy excess, seed by seed;
    0 when the run has no such row), so under-fitting (no copies because no likeness) never leads it;
  - stability counts outcomes by one rule (bench/evaluate/stability.py outcome): a failed or diverged seed is a
    stability outcome, never a missing value in the other rows.

The budget axis, the training FLOPs and the parameters of each family head each dataset's verdict.
"""

import math

from bench.evaluate import table
from bench.evaluate.stability import OUTCOMES, outcome
from bench.evaluate.stats import mean_interval, paired_difference
from bench.report.study import share_difference
from bench.report.tables import families_of, label, models

ASPECTS = ("quality", "diversity", "prompt adherence", "memorisation", "stability", "cost: sampling",
           "cost: training")
MEMORISATION = "copy_excess"  # the memorisation row's number: near-copies of training minus of held-out images
BASELINE = "held-out-real"  # the calibration family whose copy excess is the memorisation baseline


def _seed_values(runs: list[dict], family: str, m) -> tuple[dict, list[str]]:
    """({seed: value} over the family's finished seeds with a finite value, [notes on the seeds left out])."""
    values, notes = {}, []
    for r in runs:
        if r["model"] != family:
            continue
        if r["status"] != "ok":
            notes.append(f"seed {r['seed']} {r['status']}")
            continue
        v = table.value(r, m)
        if v is None or not math.isfinite(v):
            notes.append(f"seed {r['seed']}: no value")
        else:
            values[r["seed"]] = v
    return values, notes


def _cell(values: dict, notes: list[str], m) -> str:
    """A family's mean over its seeds with n, naming the seeds left out."""
    if not values:
        return "n/a" + (f" ({'; '.join(notes)})" if notes else "")
    mean = sum(values.values()) / len(values)
    text = f"{m.display_mean(mean)} (n={len(values)})"
    return text + (f"; {'; '.join(notes)}" if notes else "")


def _distance_to_baseline(runs: list[dict], family: str, m, baseline: dict) -> dict:
    """Per seed, |copy excess - the held-out row's copy excess of that seed| (0 when the run has no held-out row)."""
    values, _ = _seed_values(runs, family, m)
    return {s: abs(v - baseline.get(s, 0.0)) for s, v in values.items() if not baseline or s in baseline}


def _ranked(per_family: dict, better: int) -> tuple[list[str], list[int]]:
    """(families best first by their mean over the seeds every one of them has, those common seeds)."""
    common = sorted(set.intersection(*(set(v) for v in per_family.values())))
    if not common:
        return list(per_family), []
    means = {f: sum(v[s] for s in common) / len(common) for f, v in per_family.items()}
    return sorted(per_family, key=lambda f: -better * means[f]), common


def _resolved(diff: dict) -> str:
    p = diff.get("p_sign")
    p_text = "" if p is None else f"; sign-flip p {p:.3g}"
    return ("resolved" if diff["resolved"] else f"not resolved ({diff['why']})") + p_text


def metric_row(runs: list[dict], names: list[str], m, labels: dict) -> list[str] | None:
    """One verdict row for metric m among the families `names`, or None when fewer than two have a value."""
    cells = {f: _seed_values(runs, f, m) for f in names}
    have = [f for f in names if cells[f][0]]
    if len(have) < 2:
        return None
    scored = {f: cells[f][0] for f in have}
    better, measure = m.better, m.label
    if m.key == MEMORISATION:
        baseline = _seed_values(runs, BASELINE, m)[0]
        scored = {f: _distance_to_baseline(runs, f, m, baseline) for f in have}
        better = -1
        measure += " (ranked by closeness to the held-out baseline)" if baseline else " (ranked by closeness to 0)"
    order, common = _ranked(scored, better)
    row = [m.aspect, measure] + [_cell(*cells[f], m) for f in names]
    if not common:
        return row + ["n/a", "no seed common to all", "not resolved (n = 0)"]
    lead, runner = order[0], order[1]
    diff = paired_difference({s: scored[lead][s] for s in common}, {s: scored[runner][s] for s in common})
    if diff["mean"] == 0:
        return row + ["tie", "0", _resolved(diff)]
    by = m.display_mean(abs(diff["mean"]))
    lead_mean = sum(scored[lead][s] for s in common) / len(common)
    runner_mean = sum(scored[runner][s] for s in common) / len(common)
    if m.aspect and m.aspect.startswith("cost") and min(lead_mean, runner_mean) > 0:
        by += f" ({max(lead_mean, runner_mean) / min(lead_mean, runner_mean):.3g}x)"
    return row + [labels[lead], f"{by} over {labels[runner]} (n={diff['n']})", _resolved(diff)]


def stability_row(runs: list[dict], names: list[str], labels: dict) -> list[str]:
    """Per family, its seeds by outcome (one rule for every family); the leader has more converged seeds."""
    counts, usable = {}, {}
    for f in names:
        mine = [r for r in runs if r["model"] == f and r["status"] != "interrupted"]
        outcomes = {r["seed"]: outcome(r["status"], r.get("metrics") or {}, r.get("baseline")) for r in mine}
        usable[f] = {s: float(o == "converged") for s, o in outcomes.items()}
        parts = [f"{sum(o == k for o in outcomes.values())} {k}" for k in OUTCOMES[1:]
                 if any(o == k for o in outcomes.values())]
        counts[f] = f"{sum(usable[f].values()):.0f}/{len(outcomes)} converged" + (f" ({', '.join(parts)})"
                                                                                     if parts else "")
    order, common = _ranked(usable, +1)
    row = ["stability", "runs converged (usable: not failed, diverged, collapsed or low-quality)"]
    row += [counts[f] for f in names]
    if not common:
        return row + ["n/a", "", "not resolved (n = 0)"]
    diff = paired_difference({s: usable[order[0]][s] for s in common}, {s: usable[order[1]][s] for s in common})
    if diff["mean"] == 0:
        return row + ["tie", "0 seeds", _resolved(diff)]
    return row + [labels[order[0]], f"{diff['mean']:.0%} of seeds over {labels[order[1]]} (n={diff['n']})",
                  _resolved(diff)]


def budget_rows(runs: list[dict], names: list[str], labels: dict) -> list[list[str]]:
    """Per model family: parameters, training FLOPs and examples seen (means over its seeds), and each as a ratio to
    the first family."""
    rows, first = [], None
    for f in names:
        train = [r["train"] for r in runs if r["model"] == f and r.get("train")]
        if not train:
            continue
        stat = {k: mean_interval([t.get(k) for t in train])["mean"] for k in ("params_total", "flops",
                                                                              "examples_seen")}
        first = first or stat
        ratio = [f"{stat[k] / first[k]:.3g}x" if stat[k] and first[k] else "" for k in ("params_total", "flops")]
        rows.append([labels[f], f"{stat['params_total'] or 0:,.0f}", ratio[0],
                     f"{stat['flops']:.3g}" if stat["flops"] else "n/a", ratio[1],
                     f"{stat['examples_seen'] or 0:,.0f}"])
    return rows


def dataset_verdict(runs: list[dict], names: list[str], labels: dict) -> tuple[list, int]:
    """(rows of one dataset's verdict table, the number of rows tested), rows in the order of ASPECTS."""
    rows = [r for m in table.verdict_metrics() if (r := metric_row(runs, names, m, labels)) is not None]
    rows.append(stability_row(runs, names, labels))
    rows.sort(key=lambda r: ASPECTS.index(r[0]) if r[0] in ASPECTS else len(ASPECTS))
    return rows, sum(1 for r in rows if r[-1].startswith(("resolved", "not resolved")))


def multiplicity_line(tested: int) -> str:
    """What testing many rows at 5% means for one false "resolved"."""
    if tested < 2:
        return ""
    chance = 1 - 0.95**tested
    return (f"{tested} rows were each tested at the 5% level: were no difference real, the chance that at least one "
            f"of them reads 'resolved' is up to {chance:.0%} (1 - 0.95^{tested}, less when rows move together); a "
            f"row whose sign-flip p is above 0.05 / {tested} = {0.05 / tested:.2g} (Bonferroni) is weak evidence "
            "on its own.")


def study_line(study: dict, dataset: str, labels: dict) -> str | None:
    """The stability study's outcome on this dataset, beside the run's stability row: the share of converged runs
    per configuration of each family, and the lead with its interval taking the configuration as the unit."""
    if dataset not in study.get("study", {}).get("datasets", []):
        return None
    s = share_difference(study, dataset)
    if s is None:
        return None
    info = study["study"]
    shares = ", ".join(f"{labels.get(f, f)} {s['runs'][f][0]}/{s['runs'][f][1]} runs ({s['share'][f]:.0%} per "
                       f"configuration)" for f in s["share"])
    resolved = "resolved" if s["lo"] > 0 else "not resolved (the interval includes 0)"
    lead = labels.get(s["first"], s["first"])
    return (f"Stability study beside it ({info['k']} random configurations x {info['seeds']} seeds per family, "
            f"{info['steps']:,} steps; `gvd study stability`): converged {shares}; {lead} leads by "
            f"{s['difference']:.0%} (95% cluster-bootstrap interval {s['lo']:.0%} to {s['hi']:.0%}, the "
            f"configuration as the unit): {resolved}.")


def verdict_blocks(results: dict, study: dict | None = None) -> list:
    """The verdict section: per dataset, the budget table and the verdict table (report blocks); where a stability
    study of the dataset is given, its outcome beside the stability row."""
    families = families_of(results)
    names, labels = models(families), {f: label(families, f) for f in families}
    if len(names) < 2:
        return []
    blocks = [("h2", "Verdict"), ("p", (
        "Per dataset, each model family at its neutral knob: its mean over its finished seeds with n, the leader and "
        "by how much from the differences paired by seed (the seeds every compared family finished), and whether "
        "the seeds resolve it: n >= 3 paired seeds, a non-zero spread and a paired Student t 95% interval that "
        "excludes 0 (the t interval assumes roughly normal per-seed differences; the exact sign-flip p beside it "
        "assumes only symmetry, and with n <= 5 seeds it cannot go below 0.0625). Calibration rows (held-out real, "
        "copier) are in the tables below, never here."))]
    tested = 0
    for dataset in dict.fromkeys(r["dataset"] for r in results["runs"]):
        runs = [r for r in results["runs"] if r["dataset"] == dataset]
        present = [f for f in names if any(r["model"] == f for r in runs)]
        if len(present) < 2:
            continue
        rows, n = dataset_verdict(runs, present, labels)
        tested += n
        blocks += [("h3", f"Verdict: {dataset}"),
                   ("table", ["family", "parameters", "ratio", "training FLOPs", "ratio", "examples seen"],
                    budget_rows(runs, present, labels)),
                   ("table", ["aspect", "measure"] + [labels[f] for f in present] + ["leads", "by", "seeds"], rows)]
        if study and (line := study_line(study, dataset, labels)):
            blocks.append(("p", line))
    if line := multiplicity_line(tested):
        blocks.append(("p", line))
    return blocks
