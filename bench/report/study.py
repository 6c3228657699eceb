"""study.json -> study.md / study.html and figures/ for `gvd study stability` (bench/study.py).

Built as bench/report.py's blocks (heading, text, table, image), rendered by its to_markdown / to_html, so the two
pages never disagree. Per dataset: the share of runs in each outcome per family; the verdict (how much more likely one
family is to give a converged model from a random configuration, with a Newcombe interval); the empirical CDF of the
final quality metrics across configurations and across seeds at each family's best configuration; the best
configuration and the search budget it took to find it; the metrics against each knob's value.
"""

from pathlib import Path

import numpy as np

from bench.core.files import atomic_write
from bench.evaluate.stats import ALPHA, CLUSTER_BOOTSTRAP_COVERAGE, cluster_difference, cluster_permutation_p
from bench.report.figures import family_colour, log_axis, plt, png_bytes, suptitle
from bench.report.render import to_html, to_markdown

NAMES = {"gan": "GAN"}  # a family's name as the text writes it (its own name otherwise)


def _name(family: str) -> str:
    return NAMES.get(family, family)


def _colour(record: dict, family: str) -> str:
    return family_colour(family, _families(record).index(family))


def _families(record: dict) -> list[str]:
    """The study's families, in its search space's order (the family table's: bench/run/study.py FAMILIES)."""
    return list(record["search_space"])
OUTCOME_ORDER = ("converged", "mode-collapsed", "low-quality", "diverged", "failed")
KNOB_LABELS = {"lr_g": "learning rate of G", "lr_d": "learning rate of D", "lr": "peak learning rate",
               "beta1": "Adam beta1", "d_steps": "D steps per G step", "loss": "GAN loss",
               "spectral_norm": "spectral norm on D", "width": "width (hidden units)", "schedule": "noise schedule",
               "prediction": "network predicts", "ema": "EMA decay"}
MARKERS = {"converged": "o", "mode-collapsed": "s", "low-quality": "v", "diverged": "X", "failed": "X"}


def _runs(record: dict, dataset: str | None, family: str) -> list[dict]:
    return [r for r in record["runs"] if r["family"] == family and (dataset is None or r["dataset"] == dataset)]


def _scored(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r.get("metrics")]


def config_summaries(runs: list[dict]) -> list[dict]:
    """Per configuration (in draw order): its knobs, seeds run, converged seeds, and the per-seed hq_fraction and
    modes / num_modes (failed runs left out)."""
    out: dict[int, dict] = {}
    for r in sorted(runs, key=lambda r: (r["config_id"], r["seed"])):
        s = out.setdefault(r["config_id"], {"config_id": r["config_id"], "knobs": r["knobs"], "runs": 0,
                                            "converged": 0, "hq": [], "modes": []})
        s["runs"] += 1
        s["converged"] += r["outcome"] == "converged"
        if r.get("metrics"):
            s["hq"].append(r["metrics"]["hq_fraction"])
            s["modes"].append(r["metrics"]["modes"] / r["metrics"]["num_modes"])
    return list(out.values())


def best_config(summaries: list[dict]) -> dict | None:
    """The configuration with the most converged seeds, ties broken by mean modes captured, then mean hq_fraction."""
    def key(s: dict) -> tuple:
        return s["converged"] / s["runs"], _mean(s["modes"]), _mean(s["hq"])

    return max(summaries, key=key) if summaries else None


def _mean(values: list, empty: float = -1.0) -> float:
    return float(np.mean(values)) if values else empty


def _step_ecdf(ax, values, **style) -> None:
    x = np.sort(np.asarray(values, dtype=float))
    if len(x):
        ax.step(np.concatenate([[0.0], x, [1.0]]), np.concatenate([[0.0], np.arange(1, len(x) + 1) / len(x), [1.0]]),
                where="post", **style)


def ecdf_figure(out: Path, record: dict, dataset: str) -> str:
    """Empirical CDFs of the final hq_fraction and modes / num_modes: solid, over configurations (each the mean over
    its seeds); dashed, over the seeds of the family's best configuration."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for family in _families(record):
        summaries = [s for s in config_summaries(_runs(record, dataset, family)) if s["hq"]]
        best = best_config(summaries)
        for ax, key in zip(axes, ("hq", "modes")):
            _step_ecdf(ax, [np.mean(s[key]) for s in summaries], color=_colour(record, family),
                       label=f"{_name(family)}: {len(summaries)} configurations")
            if best is not None:
                _step_ecdf(ax, best[key], color=_colour(record, family), linestyle="--",
                           label=f"{_name(family)}: seeds of the best (c{best['config_id']:02d})")
    axes[0].set(xlabel="high-quality fraction of samples (within 3 std of a mode)",
                ylabel="share of configurations or seeds <= x")
    axes[1].set(xlabel="modes captured / modes of the mixture", ylabel="share of configurations or seeds <= x")
    for ax in axes:
        ax.set(xlim=(-0.02, 1.02), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    suptitle(fig, f"{dataset}: empirical CDF of the final metrics", 10)
    name = f"figures/{dataset}_ecdf.png"
    atomic_write(out / name, png_bytes(fig, dpi=110))
    return name


def _knob_axis(ax, values: list, space_entry: dict) -> list:
    """x positions of the values: the values themselves on a log axis for a log-uniform knob, category indices for
    a choice (labelled with the choices)."""
    if "log_uniform" in space_entry:
        lo, hi = space_entry["log_uniform"]
        ax.set_xlim(lo, hi)  # the whole searched range
        log_axis(ax, "x")
        # three labelled ticks (the ends and the geometric middle): a range of one or two decades otherwise gets
        # matplotlib's minor labels at 2, 3, 4, ... x 10^k, which overprint on a 2.2-inch panel
        ticks = [lo, (lo * hi) ** 0.5, hi]
        ax.set_xticks(ticks, [f"{v:.1g}" for v in ticks], fontsize=7)
        return [float(v) for v in values]
    choices = space_entry["choice"]
    ax.set_xticks(range(len(choices)), [str(c) for c in choices], fontsize=7)
    ax.set_xlim(-0.5, len(choices) - 0.5)
    return [choices.index(v) for v in values]


def sensitivity_figure(out: Path, record: dict, dataset: str, family: str) -> str | None:
    """Each run's hq_fraction (top) and modes / num_modes (bottom) against each knob's value; marker = outcome."""
    runs = _scored(_runs(record, dataset, family))
    if not runs:
        return None
    space = record["search_space"][family]
    fig, axes = plt.subplots(2, len(space), figsize=(2.2 * len(space), 4.6), squeeze=False, sharey=True)
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(runs))  # spreads runs that share a choice
    for col, (knob, entry) in enumerate(space.items()):
        for row, (metric, label) in enumerate((("hq_fraction", "high-quality fraction"),
                                               ("modes", "modes captured / modes"))):
            ax = axes[row, col]
            x = np.asarray(_knob_axis(ax, [r["knobs"][knob] for r in runs], entry), dtype=float)
            x = x if "log_uniform" in entry else x + jitter
            y = [r["metrics"][metric] / (r["metrics"]["num_modes"] if metric == "modes" else 1) for r in runs]
            for outcome in OUTCOME_ORDER:
                idx = [i for i, r in enumerate(runs) if r["outcome"] == outcome]
                if idx:
                    ax.scatter(x[idx], np.asarray(y)[idx], s=18, color=_colour(record, family), marker=MARKERS[outcome],
                               alpha=0.7, label=outcome)
            log = " (log)" if "log_uniform" in entry else ""
            ax.set(ylim=(-0.05, 1.05), xlabel=KNOB_LABELS.get(knob, knob) + log)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(label)
    axes[0, 0].legend(fontsize=6, loc="best")
    suptitle(fig, f"{dataset}, {_name(family)}: final metrics against each knob (one point per run)", 10)
    name = f"figures/{dataset}_{family}_sensitivity.png"
    atomic_write(out / name, png_bytes(fig))
    return name


def _pct(k: int, n: int) -> str:
    return f"{100 * k / n:.0f}% ({k})" if n else "n/a"


def outcome_rows(record: dict, dataset: str | None) -> list[list[str]]:
    """One row per family: runs, then the share (count) of each outcome."""
    rows = []
    for family in _families(record):
        runs = _runs(record, dataset, family)
        rows.append([_name(family), str(len(runs))]
                    + [_pct(sum(r["outcome"] == o for r in runs), len(runs)) for o in OUTCOME_ORDER])
    return rows


def converged_by_config(record: dict, dataset: str | None, family: str) -> list[list[float]]:
    """Per configuration of the family (over its seeds, and its datasets when dataset is None): 1 for each converged
    run, 0 for each other."""
    by_config: dict[int, list[float]] = {}
    for r in _runs(record, dataset, family):
        by_config.setdefault(r["config_id"], []).append(float(r["outcome"] == "converged"))
    return list(by_config.values())


def share_difference(record: dict, dataset: str | None) -> dict | None:
    """The families ranked by the share of converged runs per configuration (each configuration's share, averaged),
    and the leader's lead over the runner-up with its cluster-bootstrap interval ("lo", "hi") and the exact
    permutation p over configurations ("p"): the configuration is the unit, since the runs of one configuration
    share everything but their seed (bench/evaluate/stats.py cluster_difference, cluster_permutation_p). None
    without runs of two families."""
    shares = {f: converged_by_config(record, dataset, f) for f in _families(record)}
    shares = {f: s for f, s in shares.items() if s}
    if len(shares) < 2:
        return None
    mean = {f: sum(sum(c) / len(c) for c in s) / len(s) for f, s in shares.items()}
    first, second = sorted(shares, key=lambda f: -mean[f])[:2]
    d, lo, hi = cluster_difference(shares[first], shares[second])
    runs = {f: (round(sum(map(sum, s))), sum(map(len, s)), len(s)) for f, s in shares.items()}
    return {"first": first, "second": second, "share": mean, "runs": runs, "difference": d, "lo": lo, "hi": hi,
            "p": cluster_permutation_p(shares[first], shares[second])}


def verdict(record: dict, dataset: str | None) -> str:
    """How much more likely one family is to give a converged model from a random configuration and seed, with the
    interval of the difference computed with the configuration as the unit and its simulated coverage beside it;
    resolved only where the exact permutation test over configurations gives p <= 0.05 (share_difference)."""
    s = share_difference(record, dataset)
    if s is None:
        return "Verdict: not enough runs."
    first, second, (k1, n1, c1), (k2, n2, c2) = s["first"], s["second"], s["runs"][s["first"]], s["runs"][s["second"]]
    where = f"on {dataset}" if dataset else "over every dataset"
    text = (f"Verdict {where}: from a random configuration of its search space and a random seed, {_name(first)} gave "
            f"a converged model in {k1}/{n1} runs ({c1} configurations; per configuration "
            f"{100 * s['share'][first]:.0f}%), {_name(second)} in {k2}/{n2} ({c2}; {100 * s['share'][second]:.0f}%): "
            f"{_name(first)} is "
            f"{100 * s['difference']:.0f} percentage points more likely than {_name(second)} to give a usable model "
            f"(interval {100 * s['lo']:.0f} to {100 * s['hi']:.0f}, a cluster bootstrap over configurations: the "
            "runs of one configuration share all but their seed, so the configuration is the unit; nominally 95%, "
            f"it covered the true difference in {CLUSTER_BOOTSTRAP_COVERAGE[0]:.0%} to "
            f"{CLUSTER_BOOTSTRAP_COVERAGE[1]:.0%} of simulated studies of 7 configurations x 2 seeds). Exact "
            f"permutation test over the configurations: p {s['p']:.2g}")
    return text + (": resolved." if s["p"] <= ALPHA else
                   ": the configurations do not resolve a difference (resolved needs p <= 0.05).")


def best_rows(record: dict, dataset: str) -> list[list[str]]:
    """Each family's best configuration, its seeds' metrics, and the random-search budget spent when it was drawn
    (configurations are tried in draw order, each with every seed)."""
    study, rows = record["study"], []
    for family in _families(record):
        summaries = config_summaries(_runs(record, dataset, family))
        best = best_config(summaries)
        if best is None:
            continue
        runs_spent = sum(s["runs"] for s in summaries if s["config_id"] <= best["config_id"])
        first = next((s for s in summaries if s["converged"]), None)
        knobs = ", ".join(f"{k}={v}" for k, v in best["knobs"].items())
        rows.append([_name(family), f"c{best['config_id']:02d}", knobs, f"{best['converged']}/{best['runs']}",
                     f"{100 * np.mean(best['hq']):.1f}" if best["hq"] else "n/a",
                     f"{np.mean(best['modes']) * 100:.0f}" if best["modes"] else "n/a",
                     f"{runs_spent} x {study['steps']:,} = {runs_spent * study['steps']:,}",
                     f"c{first['config_id']:02d}" if first else "none"])
    return rows


def _space_rows(record: dict) -> list[list[str]]:
    rows = []
    for family, space in record["search_space"].items():
        for knob, entry in space.items():
            values = (f"log-uniform [{entry['log_uniform'][0]:.3g}, {entry['log_uniform'][1]:.3g}]"
                      if "log_uniform" in entry else "{" + ", ".join(str(v) for v in entry["choice"]) + "}")
            rows.append([_name(family), knob, values])
    return rows


def _intro_blocks(record: dict) -> list:
    study, runs = record["study"], record["runs"]
    cpu = sum(r.get("cpu_seconds", 0.0) for r in runs)
    return [
        ("h1", "Training stability study: GAN vs diffusion across hyperparameters and seeds"),
        ("p", (f"Created {record['created']} on {record['device']} with {record['workers']} worker process(es). "
               f"Each family: K = {study['k']} configurations drawn at random (seed {study['space_seed']}) from the "
               f"search space below, each trained with S = {study['seeds']} seeds, on "
               f"{', '.join(study['datasets'])}: {len(runs)} of the design's {record['planned_runs']} runs finished. "
               f"Every run: {study['steps']:,} steps of batch "
               f"{study['batch_size']} ({study['steps'] * study['batch_size']:,} real examples, the same data stream "
               f"per seed for both families), scored on {study['num_samples']:,} samples (diffusion with "
               f"{study['sampler']}). Compute: {cpu / 60:.1f} CPU-minutes in all; this invocation ran "
               f"{record['runs_this_invocation']} runs in {record['wall_seconds'] / 60:.1f} minutes of wall time.")),
        ("p", (f"Outcome of a run, the same rule for both families, the first that applies: diverged (a non-finite "
               f"training loss), low-quality (under {100 * study['hq_threshold']:.0f}% of the samples within 3 std of "
               f"a mode, VEEGAN's high-quality test), mode-collapsed (fewer modes captured than the mixture has), "
               f"else converged (a usable model). Following Lucic et al. (2018), the comparison is over the "
               f"distribution of outcomes of a random search, not one tuned setting. Learning rates are log-uniform "
               f"over [tuned / 5, tuned x 5] around the toy preset's value for each family; widths are half, equal "
               f"to and double the toy preset's; every other setting is the toy preset's.")),
        ("table", ["family", "knob", "values"], _space_rows(record)),
    ]


def _dataset_blocks(out: Path, record: dict, dataset: str) -> list:
    blocks = [("h2", dataset),
              ("table", ["family", "runs", *OUTCOME_ORDER], outcome_rows(record, dataset)),
              ("p", verdict(record, dataset)),
              ("h3", "Best configuration found"),
              ("p", ("Best = most converged seeds, then most modes, then highest high-quality fraction (means over "
                     "seeds). Found after = the runs x steps a random search in draw order had spent when it drew "
                     "that configuration; first usable = the first configuration with a converged seed.")),
              ("table", ["family", "config", "knobs", "converged seeds", "high quality %", "modes %",
                         "found after (runs x steps)", "first usable"], best_rows(record, dataset))]
    figures = [(ecdf_figure(out, record, dataset),
                f"{dataset}: the empirical CDF of the final high-quality share and of the modes captured, over each "
                "family's configurations (solid) and over the seeds of its best configuration (dashed).")]
    figures += [(f, f"{dataset}, {_name(fam)}: every run's final high-quality share (top) and modes captured (bottom) "
                    "against each knob's value; the marker is the run's outcome.")
                for fam in _families(record) if (f := sensitivity_figure(out, record, dataset, fam))]
    return blocks + [("img", f, caption) for f, caption in figures]


def study_blocks(out: Path, record: dict) -> list:
    """Every block of the study report (figures are written to out/figures as a side effect)."""
    blocks = _intro_blocks(record)
    for dataset in record["study"]["datasets"]:
        blocks += _dataset_blocks(Path(out), record, dataset)
    blocks += [("h2", "Over every dataset"),
               ("table", ["family", "runs", *OUTCOME_ORDER], outcome_rows(record, None)),
               ("p", verdict(record, None)),
               ("p", ("The interval takes the configuration as the unit: runs that share a configuration are not "
                      "independent (its seeds vary only the initialisation and the data order), so an interval that "
                      "counted every run as independent would be narrower than the evidence allows."))]
    failed = [r for r in record["runs"] if r["outcome"] == "failed"]
    if failed:
        blocks += [("h2", "Runs that failed (retried by the next `gvd study stability`)"),
                   ("table", ["dataset", "family", "config", "seed", "error"],
                    [[r["dataset"], r["family"], f"c{r['config_id']:02d}", str(r["seed"]), r["error"]]
                     for r in failed])]
    return blocks


def write_study_report(out: Path, record: dict) -> None:
    out = Path(out)
    blocks = study_blocks(out, record)
    atomic_write(out / "study.md", to_markdown(blocks))
    atomic_write(out / "study.html", to_html(blocks, out))  # figures embedded, as in report.html
