"""The report's tables and metrics.csv, each read from the family table (results.json "families") and the metric
table (bench/evaluate/table.py): per dataset every family at its neutral and tuned knob with the calibration rows,
the paired differences between model families, each family's recipe and budget, the 2D mixture tables, the
stability diagnostics and the runs that did not finish.

Cells average seeds: "mean [95% interval]" with two or more seeds, the value alone with one (never a +- 0), "(same
on every seed)" instead of an interval of width 0, the per-seed values behind the cell with at most SHOW_SEEDS seeds,
and every table says n. The interval stays in the metric's range (bench/evaluate/stats.py bounded_interval: Student's
t, on the logit scale for a share, clipped to the bounds otherwise); it assumes roughly normal per-seed values.
"""

import itertools
import math

from bench.evaluate import table
from bench.evaluate.stability import grad_key, loss_keys
from bench.evaluate.stats import (
    MIN_RESOLVED,
    POWER_CAP,
    SHARE,
    bounded_interval,
    paired_difference,
    seeds_needed,
    seeds_needed_rates,
    smallest_p,
)
from bench.report.figures import family_colour
from bench.report.render import Cell

# ---------------------------------------------------------------- the families as the report sees them: results.json's
# "families" (the family table as it ran), so a report is rebuilt without any family's code, a user's included


def families_of(results: dict) -> dict:
    """name -> description ({"label", "role", "knob", ...}) of every family in the results, in the run's order;
    a name found only in the entries gets a plain description (role "model")."""
    out = dict(results.get("families") or {})
    for r in results.get("runs", []):
        out.setdefault(r["model"], {"label": r["model"], "role": r.get("role", "model"), "knob": None})
    return out


def models(families: dict) -> list[str]:
    """The families that compete (role "model"), in order."""
    return [f for f, d in families.items() if d.get("role", "model") == "model"]


def calibrations(families: dict) -> list[str]:
    """The reference rows (role "calibration"), in order."""
    return [f for f, d in families.items() if d.get("role") == "calibration"]


def label(families: dict, name: str) -> str:
    return (families.get(name) or {}).get("label") or name


def knob_symbol(families: dict, name: str) -> str | None:
    knob = (families.get(name) or {}).get("knob")
    return knob.get("symbol") if knob else None


def colour(families: dict, name: str) -> str:
    """The family's colour in every figure (bench/report/figures.py family_colour)."""
    return family_colour(name, list(families).index(name) if name in families else 0,
                         (families.get(name) or {}).get("role", "model"))


# ---------------------------------------------------------------- metrics.csv


def metric_rows(results: dict) -> list[dict]:
    """dataset, model, seed, status, role, then every metric of the table the entry has (at the neutral knob), then
    the tuned knob's value and metrics (tuned_<key>), then the train record's scalars (train_<key>)."""
    rows = []
    for run in results["runs"]:
        row = {k: run.get(k) for k in ("dataset", "model", "seed", "status", "role")}
        row.update({m.key: v for m in table.METRICS if (v := table.value(run, m)) is not None})
        if run.get("tuned"):
            row["tuned_value"] = run["tuned"].get("value")
            row.update({f"tuned_{m.key}": v for m in table.METRICS
                        if m.where()[0] == "metrics" and (v := table.value(run, m, "tuned")) is not None})
        row.update({f"train_{k}": v for k, v in (run.get("train") or {}).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
        rows.append(row)
    return rows


BOOTSTRAP_COVERAGE = "about 82% in simulation at 128 features and N = 1,000"  # bench/evaluate/metrics.fid_bootstrap
CALIBRATION_NOTE = {
    "held-out-real": "floor: real test images no model saw",
    "copier": "warning line: training images replayed",
}


SHOW_SEEDS = 5  # up to this many seeds a cell carries its per-seed values (an interval of so few says little alone)
POSITIVE = (0.0, math.inf)  # counts, seconds, FLOPs, divergences: never below 0


def cell(values, m=None, fmt: str = "{:.3g}", scale: float = 1.0, bounds: tuple | None = None) -> str:
    """The mean of the finite values with its 95% interval inside `bounds` (the metric's, when m is given) when there
    are two or more and they differ; "(same on every seed)" when they do not; the per-seed values behind it (a Cell)
    with 2 to SHOW_SEEDS values."""
    stat = bounded_interval([v for v in values if v is not None],
                            bounds or (m.bounds if m is not None else (-math.inf, math.inf)))
    if stat["mean"] is None:
        return "n/a"
    show = m.display if m is not None else (lambda v: fmt.format(v * scale))
    text = show(stat["mean"])
    if stat["same"]:
        return f"{text} (same on every seed)"
    if stat["lo"] is not None:
        if show(stat["lo"]) == show(stat["hi"]):  # a spread below the format's digits ("0.98 [0.98, 0.98]"): more
            show, text = _finer(stat, m.scale if m is not None else scale)
        text = f"{text} [{show(stat['lo'])}, {show(stat['hi'])}]"
    return Cell(text, per_seed(stat["values"], show))


def _finer(stat: dict, scale: float):
    """The fewest significant digits (4 or more) that tell an interval's ends apart, and the mean in them."""
    digits = next((k for k in range(4, 12) if f"{stat['lo'] * scale:.{k}g}" != f"{stat['hi'] * scale:.{k}g}"), 12)

    def show(v: float) -> str:
        return f"{v * scale:.{digits}g}"

    return show, show(stat["mean"])


def per_seed(values: list[float], show) -> str:
    """The values of a cell over 2 to SHOW_SEEDS seeds, as the cell's detail ("" otherwise)."""
    return f"per seed {', '.join(show(v) for v in values)}" if 2 <= len(values) <= SHOW_SEEDS else ""


def bounds_of(m, runs: list[dict]) -> tuple[float, float]:
    """A metric's range in these runs: the metric table's bounds, a count of modes capped at the modes there are."""
    if m.key == "modes":
        most = [r["metrics"]["num_modes"] for r in runs if (r.get("metrics") or {}).get("num_modes")]
        return (0.0, float(max(most))) if most else m.bounds
    return m.bounds


# ---------------------------------------------------------------- a paired difference in words (DESIGN "Verdict rules")


def evidence(d: dict, names: tuple[str, str] | None = None) -> str:
    """The words a paired difference (bench/evaluate/stats.py paired_difference) earns, by one rule: "resolved" only
    where the exact sign-flip p <= 0.05 (n >= MIN_RESOLVED); fewer seeds say how many agree and that the exact test
    cannot resolve them. names = (the family a positive difference favours, the other); without them the signs are
    counted as above or below 0."""
    n, p = d["n"], d["p_sign"]
    if d["why"] == "no seeds":
        return "no seed in common"
    if d["why"] == "no difference":
        return f"no difference on any of {n} seed{'s' * (n != 1)}"
    if n == 1:
        return f"one seed; too few seeds for the exact test (p >= {smallest_p(1):.2g} at n = 1)"
    up, down = (f"favour {names[0]}", f"favour {names[1]}") if names else ("above 0", "below 0")
    split = f"{d['above']} of {n} seeds {up}" + (f", {d['below']} {down}" if d["below"] else "")
    split += f", {d['ties']} tied" if d["ties"] else ""
    if d["resolved"]:
        return f"resolved: sign-flip p {p:.2g} ({split})"
    if n < MIN_RESOLVED:
        agree = max(d["above"], d["below"]) == n
        head = f"consistent over {n} of {n} seeds" if agree else f"{split}; sign-flip p {p:.2g}"
        return f"{head}; too few seeds for the exact test (p >= {smallest_p(n):.2g} at n = {n})"
    return f"not resolved: sign-flip p {p:.2g} ({split})"


def needed_text(d: dict, rates: tuple[float, float] | None = None) -> str:
    """How many seeds the observed effect would need: stats.seeds_needed of the observed mean and sd, or
    stats.seeds_needed_rates of two observed rates (a 0/1 outcome per seed); "" when resolved."""
    if d["resolved"]:
        return ""
    if not d["mean"]:
        return "n/a (no difference)"
    needed = seeds_needed_rates(*rates) if rates else seeds_needed(abs(d["mean"]), d["sd"] or 0.0)
    return f"more than {POWER_CAP}" if needed is None else str(needed)


def interval_text(d: dict, show) -> str:
    """A paired difference's t interval as text: "same on every seed" when it is, "n/a" with one seed."""
    if d["same"]:
        return "same on every seed"
    return "n/a" if d["lo"] is None else f"[{show(d['lo'])}, {show(d['hi'])}]"


def setting_runs(runs: list[dict], setting: str) -> list[dict]:
    """The entries as seen at one knob setting: "neutral" (entry metrics) or "tuned" (entry["tuned"]["metrics"])."""
    if setting == "neutral":
        return runs
    return [{**r, "metrics": r["tuned"]["metrics"]} for r in runs if r.get("tuned")]


def _setting_label(families: dict, family: str, runs: list[dict], setting: str) -> str:
    symbol = knob_symbol(families, family)
    if symbol is None:
        return CALIBRATION_NOTE.get(family, "no knob")
    knob = families[family]["knob"]
    values = sorted({r["tuned"]["value"] for r in runs if r.get("tuned")}) if setting == "tuned" else [knob["neutral"]]
    return f"{setting} ({symbol} = {', '.join(f'{v:g}' for v in values)})"


def _fid_interval(runs: list[dict]) -> str:
    """What the FID column's interval is: over seeds with 2+ seeds, else the run's bootstrap interval."""
    if len(runs) >= 2:
        return f"t over {len(runs)} seeds"
    m = runs[0].get("metrics", {}) if runs else {}
    if m.get("fid_lo") is None:
        return "n/a"
    return f"[{m['fid_lo']:.2f}, {m['fid_hi']:.2f}] bootstrap (one seed: see below)"


def image_table(results: dict, per: list[dict]) -> tuple[list[str], list[list[str]], list]:
    """One dataset's table: a row per (family, setting), mean [95% interval] over the seeds whose run is ok, the
    calibration rows last. Returns (header, rows, the metrics shown)."""
    families = families_of(results)
    shown = [m for m in table.of("image", columns_only=True) if any(table.value(r, m) is not None for r in per)]
    header = (["family", "setting", "runs ok", "FID interval", "FID bias-corrected"] + [m.label for m in shown]
              + ["NFE", "samples"])
    rows = []
    for family in models(families) + calibrations(families):
        mine = [r for r in per if r["model"] == family]
        for setting in ("neutral", "tuned") if knob_symbol(families, family) else ("neutral",):
            runs = [r for r in setting_runs(mine, setting) if r.get("status") == "ok"]
            if not runs:
                continue
            nfe = sorted({r["throughput"].get("nfe" if setting == "neutral" else "nfe_tuned") for r in runs
                          if r.get("throughput")} - {None})
            rows.append([label(families, family), _setting_label(families, family, runs, setting),
                         f"{len(runs)}/{len(mine)}", _fid_interval(runs),
                         cell([r["metrics"].get("fid_bc") for r in runs], fmt="{:.2f}")]
                        + [cell([table.value(r, m) for r in runs], m, bounds=bounds_of(m, runs)) for m in shown]
                        + [", ".join(map(str, nfe)) or "n/a", cell([r["metrics"].get("num_samples") for r in runs],
                                                                   fmt="{:.0f}", bounds=POSITIVE)])
    return header, rows, shown


# The per-family image table split by aspect, so no table is wider than a page: each metric's table is its verdict
# aspect, or this one's; the FID interval, the sample count and NFE stand with quality (FID is biased at small N).
TABLE_ASPECT = {"fid": "quality", "precision_lf": "quality", "duplicate_share": "within-class diversity",
                "c_t": "memorisation"}
TABLE_ORDER = ("quality", "diversity", "within-class diversity", "prompt adherence", "memorisation", "other")
LEAD_COLUMNS = 3  # family, setting, runs ok: repeated in every table


def image_tables(header: list[str], rows: list[list[str]], shown: list) -> dict[str, tuple[list[str], list]]:
    """image_table's columns split by aspect: {aspect: (header, rows)}, in TABLE_ORDER, each with the family, setting
    and runs-ok columns first; an aspect without a column is left out."""
    by_label = {m.label: TABLE_ASPECT.get(m.key) or m.aspect or "other" for m in shown}
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(header[LEAD_COLUMNS:], LEAD_COLUMNS):
        groups.setdefault(by_label.get(name, "quality"), []).append(i)
    out = {}
    for aspect in TABLE_ORDER:
        if cols := groups.get(aspect):
            keep = list(range(LEAD_COLUMNS)) + cols
            out[aspect] = ([header[i] for i in keep], [[row[i] for i in keep] for row in rows])
    return out


def difference_blocks(results: dict, per: list[dict]) -> list:
    """Every pair of model families (the first minus the second, in the run's order), at each setting, paired by seed
    over the seeds the two finished: the mean difference, its t interval, the exact sign-flip p, the words it earns
    (evidence) and, where not resolved, the seeds the observed effect would need."""
    families = families_of(results)
    names = [f for f in models(families) if any(r["model"] == f for r in per)]
    keys = [m for m in table.verdict_metrics() if m.where()[0] == "metrics" and m.better]
    rows = []
    for first, other in itertools.combinations(names, 2):
        for setting in ("neutral", "tuned"):
            runs = setting_runs(per, setting)
            for m in keys:
                a, b = ({r["seed"]: table.value(r, m) for r in runs if r["model"] == f and r["status"] == "ok"
                         and table.value(r, m) is not None} for f in (first, other))
                if not a or not b:
                    continue
                d = paired_difference(a, b, bounds=m.bounds)
                if d["mean"] is None:
                    continue
                rows.append([f"{label(families, first)} − {label(families, other)}", setting, m.label,
                             f"{d['mean']:+.3g}", str(d["n"]), interval_text(d, "{:+.3g}".format),
                             f"{d['p_sign']:.3g}", evidence(d), needed_text(d)])
    if not rows:
        return []
    return [("p", "Differences between the model families, every pair, paired by seed over the seeds both finished "
                  "(every family shares each seed's data stream, prompts and sample seeds): the mean difference, n "
                  "pairs, Student's t 95% interval (it assumes roughly normal differences; none where the difference "
                  "is the same on every seed), the exact sign-flip p, and the words it earns by the verdict's rule: "
                  f"resolved only at p <= 0.05, which needs {MIN_RESOLVED} or more pairs; where not resolved, the "
                  "seeds the observed difference would need (as in the verdict)."),
            ("table", ["pair", "setting", "metric", "difference", "n", "95% t interval", "sign-flip p", "verdict",
                       "seeds it would need"], rows)]


def recipe_blocks(results: dict, per: list[dict]) -> list:
    """What each family got: its recipe (optimiser, schedule, loss, clipping), EMA, parameters, training FLOPs,
    examples seen and wall time, means over its seeds."""
    families = families_of(results)
    rows = []
    for family in models(families):
        mine = [r for r in per if r["model"] == family and r.get("train")]
        if not mine:
            continue
        train, ema = mine[0]["train"], mine[0].get("ema") or {}
        ema_text = (f"{ema['decay']} (EDM ramp-up; initial weights left {ema['initial_weight_share']:.1e})"
                    if ema else "none")
        rows.append([label(families, family), train.get("recipe", "n/a"), ema_text,
                     " + ".join(f"{k} {v:,}" for k, v in train.get("params", {}).items()),
                     cell([r["train"].get("flops") for r in mine], bounds=POSITIVE),
                     f"{train.get('examples_seen', 0):,}",
                     cell([r["train"].get("seconds") for r in mine], fmt="{:.0f}", bounds=POSITIVE)])
    text = next((r["train"]["text_encoder"] for r in per if (r.get("train") or {}).get("text_encoder")), None)
    note = (f" The shared, frozen text encoder ({text['params']:,} parameters, {text['steps']} CLIP steps, "
            f"{text['seconds']:.0f} s, {text.get('flops', 0):.3g} FLOPs) is counted on no family's side." if text
            else "")
    budget = (results.get("config", {}).get("images") or {}).get("budget", "examples")
    axis = ("examples seen: every model family takes the same number of steps at the same batch size from the same "
            "data stream (a latent family's autoencoder images come on top)" if budget == "examples" else
            "training FLOPs: every model family spends the reference family's training FLOPs")
    return [("p", f"Recipes. The budget axis is {axis}; training FLOPs count every network pass of training "
                  f"(forward and backward), a latent family's autoencoder and its encoding of the training split "
                  f"included." + note),
            ("table", ["family", "optimiser and schedule", "EMA decay", "parameters", "training FLOPs",
                       "examples seen", "train s"], rows)]


def calibration_note(results: dict, per: list[dict]) -> str | None:
    """What the calibration rows are, and where one could not run or had to repeat images."""
    families = families_of(results)
    names = [f for f in calibrations(families) if any(r["model"] == f for r in per)]
    if not names:
        return None
    parts = []
    for family in names:
        mine = [r for r in per if r["model"] == family]
        failed = next((r.get("error") for r in mine if r["status"] == "failed"), None)
        dup = [table.value(r, table.metric("duplicate_share")) for r in mine if r["status"] == "ok"]
        what = f"{label(families, family)} ({(families[family].get('description') or '').rstrip('.')})"
        if failed:
            what += f": not scored here: {failed}"
        elif any(d for d in dup if d):
            what += f": its pool repeats images (duplicate share up to {max(d for d in dup if d is not None):.1%})"
        parts.append(what)
    return ("Calibration rows, scored like the models and never in the verdict: " + "; ".join(parts) + ". FID "
            "cannot see copying (the copier's FID is near the floor); the copy excess can.")


def metric_notes(shown: list, per: list[dict], bootstrap: bool = True) -> str | None:
    """The notes of the metric table for the columns shown, and (with bootstrap) what the one-seed FID interval
    covers."""
    notes = [m.note for m in shown if m.note]
    if bootstrap and any(r.get("metrics", {}).get("fid_lo") is not None for r in per) and len(
            {r["seed"] for r in per}) == 1:
        notes.append(f"with one seed the FID interval is that run's basic bootstrap interval for the population FID at "
                     f"this N (resampling both sets; it covers the population FID {BOOTSTRAP_COVERAGE}: it is not an "
                     "interval over seeds), with the bias-corrected FID beside it")
    return " ".join(n[0].upper() + n[1:] + "." for n in notes) if notes else None


# ---------------------------------------------------------------- the 2D mixtures


def mixture_table(results: dict, runs: list[dict]) -> list[list[str]]:
    """Per dataset and family: runs ok, modes, high-quality %, reverse KL, within-mode spread (mean [t interval] over
    seeds), parameters, examples seen, training seconds and FLOPs."""
    families = families_of(results)
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        for family in models(families) + calibrations(families):
            mine = [r for r in runs if r["dataset"] == dataset and r["model"] == family]
            ok = [r for r in mine if r["status"] == "ok"]
            if not mine:
                continue
            train = [r["train"] for r in ok if r.get("train")]
            sampler = mine[0].get("sampler") if mine[0].get("by_sampler") else None
            rows.append([dataset, label(families, family) + (f" ({sampler})" if sampler else ""),
                         f"{len(ok)}/{len(mine)}", cell([r["metrics"].get("modes") for r in ok], fmt="{:.1f}",
                                                        bounds=_modes_range(ok)),
                         cell([r["metrics"].get("hq_fraction") for r in ok], fmt="{:.1f}", scale=100, bounds=SHARE),
                         cell([r["metrics"].get("reverse_kl") for r in ok], fmt="{:.3f}", bounds=POSITIVE),
                         cell([r["metrics"].get("mode_spread") for r in ok], fmt="{:.2f}", bounds=POSITIVE),
                         f"{train[0]['params_total']:,}" if train else "n/a",
                         f"{train[0]['examples_seen']:,}" if train else "n/a",
                         cell([t.get("seconds") for t in train], fmt="{:.1f}", bounds=POSITIVE),
                         cell([t.get("flops") for t in train], bounds=POSITIVE)])
    return rows


def _modes_range(runs: list[dict]) -> tuple[float, float]:
    return bounds_of(table.metric("modes"), runs)


def sampler_rows(runs: list[dict]) -> list[list[str]]:
    """Every sampler of a family with several, on the same trained networks: mean [t interval] over seeds."""
    rows = []
    for r0 in runs:
        if not r0.get("by_sampler") or any(x[:2] == [r0["dataset"], r0["model"]] for x in rows):
            continue
        mine = [r for r in runs if r["dataset"] == r0["dataset"] and r["model"] == r0["model"] and r.get("by_sampler")]
        for sampler in r0["by_sampler"]:
            vals = [r["by_sampler"][sampler] for r in mine if sampler in r["by_sampler"]]
            rows.append([r0["dataset"], r0["model"], sampler,
                         cell([v.get("nfe") for v in vals], fmt="{:.0f}", bounds=POSITIVE),
                         cell([v.get("modes") for v in vals], fmt="{:.1f}", bounds=_modes_range(mine)),
                         cell([v.get("hq_fraction") for v in vals], fmt="{:.1f}", scale=100, bounds=SHARE),
                         cell([v.get("reverse_kl") for v in vals], fmt="{:.3f}", bounds=POSITIVE),
                         cell([v.get("sample_seconds") for v in vals], fmt="{:.2f}", bounds=POSITIVE)])
    return rows


# ---------------------------------------------------------------- stability and status


def stability_rows(results: dict) -> list[list[str]]:
    """One row per (dataset, family, loss of its history): loss statistics, gradient spikes, D gap, divergence,
    time to threshold; mean [t interval] over seeds."""
    families = families_of(results)
    groups: dict[tuple, list[dict]] = {}
    for r in results["runs"]:
        if r.get("stability"):
            groups.setdefault((r["dataset"], r["model"]), []).append(r["stability"])
    rows = []
    for (dataset, family), st in groups.items():
        diverged = [s["diverged_at_step"] for s in st if s.get("diverged_at_step") is not None]
        reached = [s["steps_to_threshold"] for s in st if s.get("steps_to_threshold") is not None]
        threshold = next((s["threshold"] for s in st if "threshold" in s), None)
        for i, loss in enumerate(loss_keys(st[0])):
            first = i == 0
            rows.append([dataset, label(families, family), loss.removesuffix("_final"),
                         cell([s.get(loss) for s in st]), cell([s.get(loss.replace("_final", "_min")) for s in st]),
                         cell([s.get(loss.replace("_final", "_tail_var")) for s in st], fmt="{:.2g}",
                              bounds=POSITIVE),
                         cell([s.get(grad_key(loss) + "_spikes") for s in st], fmt="{:.1f}", bounds=POSITIVE),
                         cell([s.get("d_gap") for s in st], fmt="{:.2f}", bounds=(-1.0, 1.0))
                         if first and "d_gap" in st[0] else "",
                         (f"{len(diverged)}/{len(st)}" + (f" (step {min(diverged)})" if diverged else "")) if first
                         else "",
                         (f"{cell(reached, fmt='{:.0f}', bounds=POSITIVE)} ({len(reached)}/{len(st)} reached "
                          f"{threshold})"
                          if threshold and first else "")])
    return rows


def status_rows(results: dict) -> list[list[str]]:
    """Every entry that did not finish cleanly, with what went wrong."""
    rows = []
    for r in results["runs"]:
        if r.get("status") == "ok":
            continue
        if r.get("status") == "diverged":
            where = r.get("diverged_in") or (f"step {r['diverged_at_step']}" if r.get("diverged_at_step") is not None
                                            else "")
            detail = f"non-finite at {where}" if where else "non-finite"
        elif r.get("status") == "interrupted":
            detail = "stopped before it finished; `gvd run --resume` reruns it"
        else:
            detail = str(r.get("error", ""))
        rows.append([str(r.get("dataset")), str(r.get("model")), str(r.get("seed")), str(r.get("status")), detail])
    return rows


# ---------------------------------------------------------------- the known-answer panel (bench/evaluate/panel.py)


def _panel_cell(c: dict, m) -> str:
    """A defect's mean reading, its distance from fresh data in noise units (+: worse), and ✓ / ✗ where the
    instrument is named after that defect."""
    if c.get("measurable") is False:
        return "not measurable"
    text = m.display_mean(c["mean"]) if m is not None else f"{c['mean']:.3g}"
    units = c.get("units")
    if units is not None:
        text += f" ({'+' if units >= 0 else '−'}{abs(units):.1f})"
    elif c.get("beyond"):  # the same on every seed, and different: beyond any noise
        text += f" ({'+' if c['beyond'] == '+' else '−'}∞)"
    return text + {True: " ✓", False: " ✗", None: ""}[c.get("passed")]


def panel_blocks(results: dict, dataset: str) -> list:
    """The known-answer panel of one image dataset: each instrument's reading of each defect in noise units, the
    outcome rule's verdict on each defect, the class share of each feature space, and every instrument that failed
    a defect it is named after."""
    panel = (results.get("panel") or {}).get(dataset)
    if not panel:
        return []
    defects = [d["name"] for d in panel["defects"]]
    rows = []
    for key, cells in panel["instruments"].items():
        m = table.metric(key)
        rows.append([m.label if m else key] + [_panel_cell(cells[d], m) if d in cells else "n/a" for d in defects])
    outcomes = panel["outcomes"]
    rows.append(["outcome (stability rule)"] + [_outcome_cell(outcomes.get(d, []), panel["expected_outcome"].get(d))
                                                for d in defects])
    shares = ", ".join(f"{name} {share:.1%}" for name, share in panel.get("class_share", {}).items())
    failed = panel_failures(panel)
    return [("h3", f"{dataset}: what each number sees (the known-answer panel)"),
            ("p", PANEL_INTRO.format(n=panel["num_samples"], seeds=len(panel["seeds"]), units=panel["min_units"])),
            ("table", ["instrument"] + defects, rows),
            ("p", "The defects: " + "; ".join(f"{d['name']}: {d['what']}" for d in panel["defects"]) + ". "
                  f"The share of each feature space's variance that is class identity (reference images): {shares}. "
                  + _readers_line(panel.get("readers") or {})),
            ("p", ("Every instrument moved the right way on every defect it is named after, and every defect got the "
                   "outcome expected of it." if not failed else "Failing (named, not hidden): " + "; ".join(failed)
                   + "."))]


PANEL_INTRO = (
    "Generators built from real data with one known defect each, scored exactly as the families are ({n:,} samples, "
    "{seeds} seeds). Each cell: the mean reading and, in brackets, how far it sits from fresh data's in noise units "
    "(the difference over the pooled spread over seeds; + is the worse direction for that metric, up for copy "
    "excess). ✓ / ✗: the instrument is named after that defect and moved at least {units:g} units the worse way, or "
    "did not. The fresh row reuses one pool of held-out images across seeds, so its spread is mostly the prompts': it "
    "understates a model's sampling noise, and the units are generous; the effects the verdict relies on are far "
    "larger. Copy excess is 'not measurable' where the samples come near no real image (near-copies of held-out "
    "images under half of fresh data's rate).")


def _outcome_cell(got: list[str], want: str | None) -> str:
    if not got:
        return "n/a"
    counts = {o: got.count(o) for o in dict.fromkeys(got)}
    text = ", ".join(f"{o} {k}/{len(got)}" for o, k in counts.items())
    return text + ("" if want is None else " ✓" if set(got) == {want} else f" ✗ (expected {want})")


def _readers_line(readers: dict) -> str:
    parts = []
    if (enc := readers.get("encoder")) and enc.get("test_mse") is not None:
        parts.append(f"label-free encoder: an autoencoder's {enc.get('code_dim')}-number code, reconstruction MSE on "
                     f"the test split {enc['test_mse']:.4f}")
    if (fac := readers.get("factors")) and fac.get("test_r2"):
        parts.append("factor read-out against the generator's own factors of the test images: R² "
                     + ", ".join(f"{k} {v:.4f}" for k, v in fac["test_r2"].items()))
    if readers.get("judge_accuracy") is not None:
        parts.append(f"judge accuracy on the test split {readers['judge_accuracy']:.1%}")
    return ("Readers: " + "; ".join(parts) + ".") if parts else ""


def panel_failures(panel: dict) -> list[str]:
    """'label: defect' for every claimed defect an instrument did not see, and 'outcome: defect' for every seed whose
    outcome is not the one expected."""
    out = []
    for key, cells in panel["instruments"].items():
        m = table.metric(key)
        out += [f"{m.label if m else key} does not see '{name}'" for name, c in cells.items()
                if c.get("claimed") and not c.get("passed")]
    for name, got in panel["outcomes"].items():
        want = panel["expected_outcome"].get(name)
        if want is not None and any(o != want for o in got):
            out.append(f"the outcome rule calls '{name}' {', '.join(sorted(set(got)))} (expected {want})")
    return out
