"""The verdict at the top of the report: which family leads where, by how much, and whether the seeds resolve it.

The rules (DESIGN.md, "Verdict rules"), for each dataset and each metric of the metric table that enters the verdict:

  - the families compared are the run's model families (calibration rows never lead); each cell is that family's
    mean over its own finished seeds, with its n (and its per-seed values with at most 5), and names every seed left
    out and why;
  - every pair of model families is compared (GAN vs diffusion first), each pair over the seeds both of them
    finished with a finite value ("paired by seed"): a third family's failed seed never shortens another pair; the
    leader of a pair is the better by the mean of the paired differences, "by" that mean with its Student t 95%
    interval beside it (a ratio too for costs);
  - the words follow the evidence (bench/report/tables.py evidence): "resolved" only where the exact sign-flip p of
    the paired differences is <= 0.05, which needs n >= 6 seeds; fewer seeds that agree say so in other words; counts
    (converged seeds) and zero spread are read by the same exact test, never by a t interval;
  - a row not resolved says how many seeds the observed effect would need (bench/evaluate/stats.py seeds_needed);
  - memorisation (copy excess) is ranked by closeness to 0, its exact expectation for any generator that does not
    depend on the training set; where a family's samples come near no real image no leader is named ("not
    measurable"), so under-fitting (no copies because no likeness) never leads it;
  - stability counts outcomes by one rule (bench/evaluate/stability.py outcome): a failed or diverged seed is a
    stability outcome, never a missing value in the other rows;
  - a model family missing from a dataset, or with no finished seed there, is named under its verdict table.

The verdict opens with its rows in words (verdict_words): per dataset, one to three sentences on the first pair of
model families (GAN vs diffusion), read from the same rows, never recomputed: who leads on which aspect and by how
much (the means over the pair's common seeds), how sure the seeds are, stability and cost. A margin that is 0, or
shows as 0 at the metric's precision, is a tie, never "leads by 0.00". The budget axis, the training FLOPs and the
parameters of each family head each dataset's tables.
"""

import itertools
import math

from bench.evaluate import table
from bench.evaluate.metrics import copies_measurable
from bench.evaluate.stability import OUTCOMES, RULE, outcome
from bench.evaluate.stats import (
    ALPHA,
    CLUSTER_BOOTSTRAP_COVERAGE,
    MIN_RESOLVED,
    POWER,
    POWER_CAP,
    mean_interval,
    paired_difference,
)
from bench.report.render import Cell
from bench.report.study import share_difference
from bench.report.tables import SHOW_SEEDS, evidence, families_of, label, models, needed_text

ASPECTS = ("quality", "diversity", "within-class diversity", "prompt adherence", "memorisation", "stability",
           "cost: sampling", "cost: training")
MEMORISATION = "copy_excess"  # the memorisation row's number: 0 in expectation for any generator that does not copy


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
    """A family's mean over its seeds with n, naming the seeds left out; its per-seed values behind it (a Cell) with
    2 to SHOW_SEEDS seeds."""
    if not values:
        return "n/a" + (f" ({'; '.join(notes)})" if notes else "")
    mean = sum(values.values()) / len(values)
    text = f"{m.display_mean(mean)} (n={len(values)})" + (f"; {'; '.join(notes)}" if notes else "")
    detail = ", ".join(f"seed {s} {m.display(v)}" for s, v in sorted(values.items()))
    return Cell(text, detail if 2 <= len(values) <= SHOW_SEEDS else "")


def _near_held(runs: list[dict], family: str) -> float | None:
    """A family's mean share of near-copies of held-out images over its finished seeds (None without one)."""
    shares = [r["metrics"]["near_copy_share_held"] for r in runs if r["model"] == family and r["status"] == "ok"
              and isinstance((r.get("metrics") or {}).get("near_copy_share_held"), (int, float))]
    return sum(shares) / len(shares) if shares else None


def _unmeasurable(runs: list[dict], have: list[str], labels: dict) -> str | None:
    """Why no memorisation leader can be named, or None: a family whose samples come near no real image (near-copies
    of held-out images under half of fresh data's rate: bench/evaluate/metrics.py copies_measurable)."""
    near = {f: _near_held(runs, f) for f in have}
    blind = [f for f in have if near[f] is not None and not copies_measurable(near[f])]
    if not blind:
        return None
    shares = ", ".join(f"{labels[f]} {v:.3f}" for f, v in near.items() if v is not None)
    return (f"not measurable: the samples of {' and '.join(labels[f] for f in blind)} are near no real image "
            f"(near-copies of held-out images: {shares}; fresh data make about 0.05), so copying cannot be told "
            "from not copying")


def _pair(scored: dict, first: str, second: str, better: int, bounds=None) -> tuple[str, str, dict]:
    """(leader, runner-up, their paired difference oriented so that > 0 favours the leader) of two families over the
    seeds both have: the leader is the better by the mean difference (the first of the two on a tie)."""
    diff = paired_difference({s: better * v for s, v in scored[first].items()},
                             {s: better * v for s, v in scored[second].items()}, bounds=bounds)
    if (diff["mean"] or 0) >= 0:
        return first, second, diff
    flipped = paired_difference({s: better * v for s, v in scored[second].items()},
                                {s: better * v for s, v in scored[first].items()}, bounds=bounds)
    return second, first, flipped


def _words(diff: dict, lead: str, runner: str, labels: dict) -> str:
    return evidence(diff, (labels[lead], labels[runner]))


def _shows_zero(m, value: float) -> bool:
    """Whether a margin is 0, or prints as 0 at the metric's precision ("0.00", "+0.0")."""
    try:
        return not value or float(m.display_mean(abs(value))) == 0.0
    except ValueError:  # a format that is not a plain number
        return False


def _margin(diff: dict, m) -> str:
    """How sure the margin is, as the "by" column shows it after the margin: n and the t interval (in the leader's
    favour), or that the difference is the same on every seed."""
    if diff["same"]:
        return f"n={diff['n']}, the same on every seed"
    if diff["lo"] is None:
        return f"n={diff['n']}"
    return f"n={diff['n']}; 95% t interval {m.display_mean(diff['lo'])} to {m.display_mean(diff['hi'])}"


def _pair_row(scored: dict, first: str, second: str, m, better: int, labels: dict,
              raw: dict | None = None) -> tuple[list[str], dict]:
    """The leads / by / seeds / seeds-it-would-need cells of one pair on one metric, and the pair's difference; the
    difference carries the row's facts ("fact": leader, runner-up, their means over the common seeds in `raw`'s
    values (the metric's own, where `scored` ranks something else), the cost ratio), which the verdict's words read."""
    lead, runner, diff = _pair(scored, first, second, better, m.bounds)
    fact = {"aspect": m.aspect, "measure": m.label, "pair": (first, second), "lead": None, "runner": None}
    diff["fact"] = fact
    if not diff["n"]:
        return ["n/a", f"{labels[first]} and {labels[second]} share no seed", "no seed in common", ""], diff
    raw = raw or scored
    common = diff["seeds"]
    lead_mean = sum(raw[lead][s] for s in common) / len(common)
    runner_mean = sum(raw[runner][s] for s in common) / len(common)
    fact.update(lead_mean=m.display_mean(lead_mean), runner_mean=m.display_mean(runner_mean))
    if _shows_zero(m, diff["mean"]):
        at = "" if not diff["mean"] else (f" at the precision shown ({labels[lead]} ahead by {diff['mean']:.2g})")
        fact.update(tie=True, lead=lead, runner=runner)
        return ["tie", f"{m.display_mean(0)} between {labels[first]} and {labels[second]}{at} (n={diff['n']})",
                _words(diff, lead, runner, labels), needed_text(diff)], diff
    fact.update(tie=False, lead=lead, runner=runner)
    by = m.display_mean(diff["mean"])
    if m.aspect and m.aspect.startswith("cost") and min(lead_mean, runner_mean) > 0:
        fact["ratio"] = max(lead_mean, runner_mean) / min(lead_mean, runner_mean)
        by += f" ({_times(fact['ratio'])})"
    return [labels[lead], f"{by} over {labels[runner]} ({_margin(diff, m)})", _words(diff, lead, runner, labels),
            needed_text(diff)], diff


def _rows_by_pair(front: list[str], cells: list[str], pairs: list[tuple[list[str], dict]]) -> list[tuple]:
    """One row per pair: the family cells on the first, blank on the others (the row's measure repeated)."""
    return [(front + (cells if i == 0 else [""] * len(cells)) + tail, diff) for i, (tail, diff) in enumerate(pairs)]


def metric_row(runs: list[dict], names: list[str], m, labels: dict) -> list[tuple[list[str], dict]] | None:
    """The verdict rows of metric m, one per pair of the families `names` that both have values, each with its
    paired difference; None when fewer than two families have a value."""
    cells = {f: _seed_values(runs, f, m) for f in names}
    have = [f for f in names if cells[f][0]]
    if len(have) < 2:
        return None
    scored = raw = {f: cells[f][0] for f in have}
    better, measure = m.better, m.label
    if m.key == MEMORISATION:
        if why := _unmeasurable(runs, have, labels):
            unmeasured = {"n": 0, "fact": {"aspect": m.aspect, "measure": m.label, "pair": tuple(have[:2]),
                                           "lead": None, "runner": None, "unmeasurable": True}}
            return [([m.aspect, measure] + [_cell(*cells[f], m) for f in names] + ["none", why, "", ""], unmeasured)]
        measure += " (ranked by closeness to 0, its exact expectation for a generator that does not copy)"
    elif m.target is not None:
        measure += f" (ranked by closeness to {m.target:.3g}, fresh data's: more or less is a defect)"
    if m.target is not None:
        scored = {f: {s: abs(v - m.target) for s, v in scored[f].items()} for f in have}
        better = -1
    pairs = [_pair_row(scored, a, b, m, better or 1, labels, raw) for a, b in itertools.combinations(have, 2)]
    return _rows_by_pair([m.aspect, measure], [_cell(*cells[f], m) for f in names], pairs)


def stability_row(runs: list[dict], names: list[str], labels: dict) -> list[tuple[list[str], dict]]:
    """Per family, its seeds by outcome (one rule for every family); per pair, the leader has more converged seeds
    over the seeds both ran, read by the exact sign-flip test of the 0/1 differences (never a t interval)."""
    counts, usable = {}, {}
    for f in names:
        mine = [r for r in runs if r["model"] == f and r["status"] != "interrupted"]
        outcomes = {r["seed"]: outcome(r["status"], r.get("metrics") or {}, r.get("baseline")) for r in mine}
        usable[f] = {s: float(o == "converged") for s, o in outcomes.items()}
        parts = [f"{sum(o == k for o in outcomes.values())} {k}" for k in OUTCOMES[1:]
                 if any(o == k for o in outcomes.values())]
        counts[f] = (f"{sum(usable[f].values()):.0f}/{len(outcomes)} converged" + (f" ({', '.join(parts)})"
                                                                                      if parts else "")
                     if outcomes else "no finished seed")
    pairs = []
    for a, b in itertools.combinations(names, 2):
        lead, runner, diff = _pair(usable, a, b, +1)
        fact = {"aspect": "stability", "measure": "runs converged", "pair": (a, b), "lead": None, "runner": None,
                "counts": {f: counts[f] for f in (a, b)}}
        diff["fact"] = fact
        if not diff["n"]:
            pairs.append((["n/a", f"{labels[a]} and {labels[b]} share no seed", "no seed in common", ""], diff))
            continue
        fact["converged"] = {f: (round(sum(usable[f][s] for s in diff["seeds"])), diff["n"]) for f in (a, b)}
        if not diff["mean"]:
            fact.update(tie=True, lead=lead, runner=runner)
            pairs.append((["tie", f"0 seeds between {labels[a]} and {labels[b]} (n={diff['n']})",
                           _words(diff, lead, runner, labels), needed_text(diff)], diff))
            continue
        fact.update(tie=False, lead=lead, runner=runner)
        rates = [sum(usable[f][s] for s in diff["seeds"]) / diff["n"] for f in (lead, runner)]
        pairs.append(([labels[lead], f"{diff['mean']:.0%} of seeds over {labels[runner]} (n={diff['n']})",
                       _words(diff, lead, runner, labels), needed_text(diff, rates)], diff))
    front = ["stability", "runs converged (usable: not failed, diverged, collapsed or low-quality)"]
    return _rows_by_pair(front, [counts[f] for f in names], pairs)


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


def dataset_verdict(runs: list[dict], names: list[str], labels: dict) -> tuple[list, list[dict]]:
    """(rows of one dataset's verdict table in the order of ASPECTS, the paired difference of every comparison)."""
    found = [r for m in table.verdict_metrics() if (r := metric_row(runs, names, m, labels)) is not None]
    found.append(stability_row(runs, names, labels))
    pairs = [p for rows in found for p in rows]
    pairs.sort(key=lambda p: ASPECTS.index(p[0][0]) if p[0][0] in ASPECTS else len(ASPECTS))
    return [row for row, _ in pairs], [diff for _, diff in pairs]


def multiplicity_line(diffs: list[dict]) -> str:
    """What testing many comparisons at 5% means for one false "resolved": only those with enough seeds for the exact
    test to resolve them can be a false alarm."""
    diffs = [d for d in diffs if d["n"]]  # a pair with no seed in common is no comparison
    testable = [d for d in diffs if d["n"] >= MIN_RESOLVED]
    if not diffs:
        return ""
    if not testable:
        return (f"None of the {len(diffs)} comparisons has the {MIN_RESOLVED} paired seeds the exact test needs to "
                "resolve a difference at 5%: none reads 'resolved', so none can be a false alarm; `gvd run --resume "
                "RUN_DIR --seeds ...` adds seeds to this run.")
    k = len(testable)
    resolved = [d for d in testable if d["resolved"]]
    strict = sum(d["p_sign"] <= ALPHA / k for d in resolved)
    return (f"{k} of the {len(diffs)} comparisons had the {MIN_RESOLVED} or more paired seeds the exact test needs "
            f"and were each tested at the 5% level; {len(resolved)} read 'resolved'. Were no difference real, the "
            f"chance that at least one of the {k} reads 'resolved' is up to {1 - (1 - ALPHA) ** k:.0%} (1 - 0.95^{k}, "
            f"less when rows move together); {strict} of the resolved have a sign-flip p at or below 0.05 / {k} = "
            f"{ALPHA / k:.2g} (Bonferroni) and hold across the page, the others on their own.")


def study_line(study: dict, dataset: str, labels: dict) -> str | None:
    """The stability study's outcome on this dataset, beside the run's stability row: the share of converged runs
    per configuration of each family, and the lead with its interval taking the configuration as the unit; resolved
    only where the exact permutation test over configurations gives p <= 0.05 (the rule of the rows above)."""
    if dataset not in study.get("study", {}).get("datasets", []):
        return None
    s = share_difference(study, dataset)
    if s is None:
        return None
    info = study["study"]
    shares = ", ".join(f"{labels.get(f, f)} {s['runs'][f][0]}/{s['runs'][f][1]} runs ({s['share'][f]:.0%} per "
                       f"configuration)" for f in s["share"])
    resolved = ("resolved" if s["p"] <= ALPHA else "not resolved") + f" (permutation p {s['p']:.2g} over the "
    resolved += "configurations)"
    lead = labels.get(s["first"], s["first"])
    low, high = CLUSTER_BOOTSTRAP_COVERAGE
    return (f"Stability study beside it ({info['k']} random configurations x {info['seeds']} seeds per family, "
            f"{info['steps']:,} steps; `gvd study stability`): converged {shares}; {lead} leads by "
            f"{s['difference']:.0%} (cluster-bootstrap interval {s['lo']:.0%} to {s['hi']:.0%}, the configuration "
            f"as the unit; nominally 95%, it covered the true difference in {low:.0%} to {high:.0%} of simulated "
            f"studies of 7 configurations x 2 seeds): {resolved}.")


VERDICT_RULE = (
    "Per dataset, each model family at its neutral knob: its mean over its finished seeds with n (the per-seed values "
    "behind it with at most 5 seeds), and for every pair of model families the leader and by how much, from the "
    "differences paired by seed over the seeds both finished. The words follow the evidence, by one rule: "
    f"'resolved' only where the exact sign-flip test of the paired differences gives p <= 0.05, which needs at least "
    f"{MIN_RESOLVED} paired seeds (n seeds cannot give p below 2 / 2^n: 0.25 at n = 3, 0.0625 at n = 5); fewer seeds "
    "that all agree read 'consistent over k of n seeds; too few seeds for the exact test'. The test assumes only "
    "that the differences are symmetric about 0 when there is no difference, so counts of converged seeds, zero "
    "spread and float rounding are read by the same rule. Beside the margin stands the paired Student t 95% "
    "interval, for what it is (it assumes roughly normal differences; none where the difference is the same on "
    "every seed). 'Seeds it would need', for a row not resolved: the fewest paired seeds at which the exact test at "
    f"5% would resolve the observed effect in {POWER:.0%} of simulated replications, taking the observed mean and sd "
    "of the paired differences as true and the differences as normal (for the stability row, each family's observed "
    f"share of converged seeds as its true rate), looked for up to {POWER_CAP}. Calibration rows (held-out real, "
    "copier) are in the tables below, never here.")


def outcome_rule() -> str:
    """The stability row's rule, the same for both benchmarks, side by side (bench/evaluate/stability.py RULE)."""
    return ("The stability row counts each seed's outcome by one rule for both benchmarks, each measured against "
            "fresh data at the same sample count (on images the held-out real row on the same prompts), the first "
            "that applies: failed or diverged; " + "; ".join(f"{name}: {what}" for name, what in RULE)
            + "; else converged.")


def _benchmark(results: dict, dataset: str) -> str:
    mixtures = (results.get("config") or {}).get("mixtures") or {}
    return "mixture" if dataset in (mixtures.get("datasets") or []) else "image"


def absent_note(results: dict, runs: list[dict], names: list[str], dataset: str, labels: dict) -> str | None:
    """The model families a dataset's verdict lacks or compares without a finished seed, each named with why."""
    families, benchmark = families_of(results), _benchmark(results, dataset)
    notes = []
    for f in names:
        mine = [r for r in runs if r["model"] == f]
        if not mine:
            runs_here = benchmark in (families[f].get("benchmarks") or [benchmark])
            what = "the 2D mixtures" if benchmark == "mixture" else "the image benchmark"
            notes.append(f"{labels[f]}: no run on this dataset" if runs_here else
                         f"{labels[f]}: does not run on {what}")
        elif not any(r["status"] == "ok" for r in mine):
            why = ", ".join(f"seed {r['seed']} {r['status']}" for r in mine)
            notes.append(f"{labels[f]}: no finished seed ({why}); it counts in the stability row only")
    return ("Not compared here: " + "; ".join(notes) + ".") if notes else None


# ---------------------------------------------------------------- the verdict in words


WORD_ASPECTS = ("quality", "diversity", "within-class diversity", "prompt adherence", "memorisation")


def _aspect_call(facts: list[dict]) -> tuple[str, dict | None]:
    """How one aspect's rows of a pair read together: ("lead", the first row naming the leader) when every row with a
    leader names the same one, ("tie", a row) when every row is a tie, ("split", None) when rows name both, ("none",
    None) when no row has a leader or a tie (not measurable, no seed in common)."""
    leading = [f for f in facts if f.get("lead") and not f.get("tie")]
    if leading:
        if len({f["lead"] for f in leading}) == 1:
            return "lead", leading[0]
        return "split", None
    ties = [f for f in facts if f.get("tie")]
    return ("tie", ties[0]) if ties else ("none", None)


def _example(f: dict) -> str:
    return f"{f['measure']} {f['lead_mean']} vs {f['runner_mean']}"


def _how_sure(diffs: list[dict]) -> str:
    """How sure the seeds are of a pair's leads (non-cost rows with a leader), by the verdict's one rule."""
    leads = [d for d in diffs if d["fact"].get("lead") and not d["fact"].get("tie")
             and not str(d["fact"]["aspect"]).startswith("cost")]
    if not leads:
        return ""
    k, n = len(leads), max(d["n"] for d in leads)
    resolved = sum(d["resolved"] for d in leads)
    agree = sum(not d["resolved"] and max(d["above"], d["below"]) == d["n"] for d in leads)
    mixed = k - resolved - agree
    rows = f"the {k} rows that name a leader" if k > 1 else "the one row that names a leader"
    if resolved == k:
        return f"How sure: {rows} {'all ' if k > 1 else ''}resolved by the exact sign-flip test (p <= 0.05)."
    if n < MIN_RESOLVED:  # nothing can be resolved: say how many agree
        held = (f"{'all of ' if k > 1 else ''}{rows} held on every seed" if agree == k else
                f"of {rows}, {agree} held on every seed" + (f" and {mixed} went different ways on different seeds"
                                                             if mixed else ""))
        return (f"How sure: {n} paired seed{'s are' if n != 1 else ' is'} too few for the exact test to resolve a "
                f"difference (it needs {MIN_RESOLVED}); {held}.")
    parts = [f"{resolved} of {rows} resolved (exact sign-flip test, p <= 0.05)"]
    if agree:
        parts.append(f"{agree} more held on every seed without resolving")
    if mixed:
        parts.append(f"{mixed} went different ways on different seeds")
    return "How sure: " + "; ".join(parts) + "."


def _times(ratio: float) -> str:
    """A cost ratio as a reader says it: "1.62x", "14.6x", "2,930x"."""
    return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.3g}x"


def _seconds(shown: str) -> str:
    """A mean as the table shows it ("1.11e+03", "0.00772") as a sentence says it: "1,110 s", "0.00772 s"."""
    try:
        value = float(shown)
    except ValueError:
        return f"{shown} s"
    return f"{value:,.0f} s" if value >= 1000 else f"{shown} s"


def _cost_sentence(facts: list[dict], labels: dict) -> str:
    """Which family costs more to sample and to train, as a ratio of the means over the common seeds."""
    costs = {f["aspect"].removeprefix("cost: "): f for f in facts
             if str(f["aspect"]).startswith("cost") and f.get("lead") and not f.get("tie") and f.get("ratio")}
    verbs = {"sampling": "to sample", "training": "to train"}
    parts = [(labels[f["runner"]], f"{_times(f['ratio'])} more {verbs.get(k, k)} ({_seconds(f['runner_mean'])} vs "
                                   f"{_seconds(f['lead_mean'])})") for k, f in costs.items()]
    if not parts:
        return ""
    if len({who for who, _ in parts}) == 1:
        return f"{parts[0][0]} costs " + " and ".join(what for _, what in parts) + "."
    return "; ".join(f"{who} costs {what}" for who, what in parts) + "."


def _stability_sentence(facts: list[dict], labels: dict) -> str:
    fact = next((f for f in facts if f["aspect"] == "stability"), None)
    if fact is None or "converged" not in fact:
        return ""
    return "Converged: " + ", ".join(f"{labels[f]} {k}/{n} seeds" for f, (k, n) in fact["converged"].items()) + "."


def pair_words(dataset: str, diffs: list[dict], labels: dict) -> str:
    """One to three sentences on one pair of families on one dataset, read from the verdict rows' facts: who leads on
    which aspect with the metric's means, ties and splits; how sure the seeds are; stability and cost."""
    facts = [d["fact"] for d in diffs]
    by_leader: dict[str, list[str]] = {}
    ties, splits, unmeasured = [], [], []
    for aspect in WORD_ASPECTS:
        mine = [f for f in facts if f["aspect"] == aspect]
        if not mine:
            continue
        call, fact = _aspect_call(mine)
        if call == "lead":
            by_leader.setdefault(fact["lead"], []).append(f"{aspect} ({_example(fact)})")
        elif call == "tie":
            ties.append(f"{aspect} ({fact['measure']} {fact['lead_mean']} each)")
        elif call == "split":
            splits.append(aspect)
        elif any(f.get("unmeasurable") for f in mine):
            unmeasured.append(aspect)
    clauses = [f"{labels[who]} leads on {', '.join(what[:-1]) + ' and ' if len(what) > 1 else ''}{what[-1]}"
               for who, what in by_leader.items()]
    if ties:
        clauses.append(f"they tie on {' and '.join(ties)}")
    if splits:
        clauses.append(f"{' and '.join(splits)} {'is' if len(splits) == 1 else 'are'} split (its measures disagree)")
    if unmeasured:
        clauses.append(f"{' and '.join(unmeasured)}: not measurable")
    first = f"On {dataset}, " + ("; ".join(clauses) if clauses else "no measure names a leader") + "."
    sentences = [first, _how_sure(diffs), _stability_sentence(facts, labels), _cost_sentence(facts, labels)]
    return " ".join(x[0].upper() + x[1:] for x in sentences if x)


def verdict_words(dataset: str, diffs: list[dict], names: list[str], labels: dict) -> str:
    """The words of a dataset's verdict: the first pair of model families (GAN vs diffusion), and where more
    families compete, a pointer to the other pairs in the table."""
    first = tuple(names[:2])
    mine = [d for d in diffs if (d.get("fact") or {}).get("pair") == first]
    text = pair_words(dataset, mine, labels) if mine else f"On {dataset}: nothing to compare."
    if len(names) > 2:
        text += " The other pairs of model families are in the table below."
    return text


def verdict_blocks(results: dict, study: dict | None = None) -> list:
    """The verdict section: first its rows in words, per dataset (verdict_words); then the rules; then per dataset the
    budget table and the verdict table (report blocks), the model families it lacks named under it; where a
    stability study of the dataset is given, its outcome beside the stability row; the multiplicity line last. A
    smoke run's verdict opens with its banner."""
    families = families_of(results)
    names, labels = models(families), {f: label(families, f) for f in families}
    if len(names) < 2:
        return []
    words, tables, tested = [], [], []
    for dataset in dict.fromkeys(r["dataset"] for r in results["runs"]):
        runs = [r for r in results["runs"] if r["dataset"] == dataset]
        present = [f for f in names if any(r["model"] == f for r in runs)]
        tables.append(("h3", f"Verdict: {dataset}"))
        note = absent_note(results, runs, names, dataset, labels)
        if len(present) < 2:
            text = (f"Nothing to compare: {len(present)} model famil{'y' if len(present) == 1 else 'ies'} ran on "
                    f"this dataset. " + (note or ""))
            tables.append(("p", text))
            words.append(("p", f"On {dataset}: {text}"))
            continue
        if all(r["status"] == "interrupted" for r in runs):
            text = (f"Nothing to compare yet: all {len(runs)} entries were interrupted before they finished; "
                    "`gvd run --resume RUN_DIR` runs them.")
            tables.append(("p", text))
            words.append(("p", f"On {dataset}: {text}"))
            continue
        rows, diffs = dataset_verdict(runs, present, labels)
        tested += diffs
        words.append(("p", verdict_words(dataset, diffs, present, labels)))
        tables += [("table", ["family", "parameters", "ratio", "training FLOPs", "ratio", "examples seen"],
                    budget_rows(runs, present, labels)),
                   ("table", ["aspect", "measure"] + [labels[f] for f in present]
                    + ["leads", "by", "seeds", "seeds it would need"], rows)]
        if note:
            tables.append(("p", note))
        if study and (line := study_line(study, dataset, labels)):
            tables.append(("p", line))
    blocks = [("h2", "Verdict")] + smoke_banner(results) + words
    blocks += [("p", VERDICT_RULE), ("p", outcome_rule())] + tables
    if line := multiplicity_line(tested):
        blocks.append(("p", line))
    return blocks


SMOKE_BANNER = ("A plumbing check: these numbers mean nothing. The smoke preset trains tiny models for a few steps "
                "to show that every stage runs; run `gvd run` (the quick preset) for numbers worth reading.")


def smoke_banner(results: dict) -> list:
    """The banner over a smoke run's report and verdict (results.json "suite" is the preset's name): its numbers look
    like results and are not."""
    return [("banner", SMOKE_BANNER)] if results.get("suite") == "smoke" else []
