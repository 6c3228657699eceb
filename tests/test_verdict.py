"""The verdict's rules on synthetic results whose answer is known (bench/report/verdict.py): leaders from the paired
differences, n in every cell, dropped seeds named, "resolved" only by the exact sign-flip test (six seeds or more),
fewer seeds that agree said in other words, zero spread and 0/1 outcomes read by the same test, every pair of
families on its own seeds, absent families named, the seeds an effect would need, failures and collapses counted as
stability, memorisation ranked by closeness to 0 and not measurable where samples are near nothing, the compute gap
in the header."""

import math
import re
from pathlib import Path

import pytest

from bench.core.results import load_results
from bench.evaluate import table
from bench.evaluate.stats import seeds_needed
from bench.report.render import to_html, to_markdown
from bench.report.tables import difference_blocks, image_table, mixture_table, sampler_rows, stability_rows
from bench.report.verdict import verdict_blocks

FAMILIES = {"gan": {"label": "GAN", "role": "model"}, "diffusion": {"label": "diffusion", "role": "model"},
            "held-out-real": {"label": "held-out real", "role": "calibration"}}
THREE = {**FAMILIES, "third": {"label": "third", "role": "model"}}


def _entry(model, seed, status="ok", dataset="shapes", **metrics):
    base = {"modes": 24, "num_modes": 24, "cond_accuracy": 0.9, "num_samples": 1000}
    return {"dataset": dataset, "model": model, "seed": seed, "status": status, "role": THREE[model]["role"],
            "metrics": {**base, **metrics} if status == "ok" else {},
            "train": {"seconds": 10.0, "flops": 1e12 if model == "gan" else 1e13,
                      "params_total": 100 if model == "gan" else 500, "examples_seen": 1000},
            "throughput": {"sample_seconds": 1.0}}


def _tables(runs, families=FAMILIES):
    blocks = verdict_blocks({"families": families, "runs": runs, "config": {}})
    tables = [b for b in blocks if b[0] == "table"]
    return tables[0], tables[1], blocks


def _rows(runs, families=FAMILIES):
    header, verdict, _ = _tables(runs, families)
    return {row[1].split(" (")[0]: dict(zip(verdict[1], row)) for row in verdict[2]}


def _pair_rows(runs, families, measure):
    """Every row of one measure (one per pair of families), as dicts by the header."""
    _, verdict, _ = _tables(runs, families)
    return [dict(zip(verdict[1], row)) for row in verdict[2] if row[1].split(" (")[0] == measure]


def test_the_leader_comes_from_the_paired_seeds_not_each_familys_own_mean():
    """GAN FID 10/30/31 on seeds 0-2; diffusion 12/32 and seed 2 diverged. Each family's own mean says diffusion
    (22 < 23.7); paired over the seeds both finished, the GAN is 2 better on every one."""
    runs = [_entry("gan", s, fid_lf=f) for s, f in enumerate([10.0, 30.0, 31.0])]
    runs += [_entry("diffusion", 0, fid_lf=12.0), _entry("diffusion", 1, fid_lf=32.0),
             _entry("diffusion", 2, "diverged")]
    fid = _rows(runs)["FID"]
    assert fid["leads"] == "GAN" and fid["by"] == "2.00 over diffusion (n=2, the same on every seed)"
    assert fid["GAN"] == "23.67 (n=3)" and fid["diffusion"] == "22.00 (n=2); seed 2 diverged"
    assert fid["seeds"] == "consistent over 2 of 2 seeds; too few seeds for the exact test (p >= 0.5 at n = 2)"
    stability = _rows(runs)["runs converged"]
    assert stability["diffusion"].startswith("2/3 converged (1 diverged)") and stability["GAN"] == "3/3 converged"


@pytest.mark.parametrize("n, words", [
    (2, "consistent over 2 of 2 seeds; too few seeds for the exact test (p >= 0.5 at n = 2)"),
    (3, "consistent over 3 of 3 seeds; too few seeds for the exact test (p >= 0.25 at n = 3)"),
    (5, "consistent over 5 of 5 seeds; too few seeds for the exact test (p >= 0.062 at n = 5)"),
    (6, "resolved: sign-flip p 0.031 (6 of 6 seeds favour GAN)"),
])
def test_zero_spread_is_read_by_the_exact_test_like_any_consistent_difference(n, words):
    """Modes 24 vs 23 on every seed: no t interval (its width would be 0), the exact test's words; resolved from six
    seeds on (p = 2 / 64), never before, and one seed more of zero spread changes nothing but n."""
    runs = [_entry(m, s, fid_lf=20.0, modes=24 if m == "gan" else 23) for s in range(n) for m in ("gan", "diffusion")]
    modes = _rows(runs)["modes"]
    assert modes["leads"] == "GAN" and modes["seeds"] == words
    assert modes["by"] == f"1.0 over diffusion (n={n}, the same on every seed)"
    assert modes["seeds it would need"] == ("" if n == 6 else "6")  # zero spread: the fewest the test can resolve


def test_a_clear_difference_on_three_seeds_is_consistent_not_resolved():
    """The issue's case: GAN - diffusion per seed 10, 11, 9 (t interval [7.5, 12.5], far from 0) read "resolved;
    sign-flip p 0.25". Three seeds cannot give p below 0.25: consistent, too few seeds, and the seeds it would need
    (the observed mean 10 and sd 1 taken as true: 6)."""
    runs = [_entry("gan", s, fid_lf=g) for s, g in enumerate([30.0, 32.0, 31.0])]
    runs += [_entry("diffusion", s, fid_lf=d) for s, d in enumerate([20.0, 21.0, 22.0])]
    fid = _rows(runs)["FID"]
    assert fid["leads"] == "diffusion" and fid["by"] == "10.00 over GAN (n=3; 95% t interval 7.52 to 12.48)"
    assert fid["seeds"] == "consistent over 3 of 3 seeds; too few seeds for the exact test (p >= 0.25 at n = 3)"
    assert fid["seeds it would need"] == "6"


def test_a_row_not_resolved_says_how_many_seeds_its_effect_would_need():
    """GAN - diffusion FID per seed 2, -1, 3, 0.5 (mean 1.125, sd 1.70): mixed signs at n = 4; the seeds it would
    need are stats.seeds_needed of that mean and sd (checked there against the closed form and the t test)."""
    diffs = [2.0, -1.0, 3.0, 0.5]
    runs = [_entry("gan", s, fid_lf=20.0 + d) for s, d in enumerate(diffs)]
    runs += [_entry("diffusion", s, fid_lf=20.0) for s in range(4)]
    fid = _rows(runs)["FID"]
    sd = math.sqrt(sum((d - 1.125) ** 2 for d in diffs) / 3)
    assert fid["leads"] == "diffusion"
    assert fid["seeds"].startswith("3 of 4 seeds favour diffusion, 1 favour GAN; sign-flip p 0.38; too few seeds")
    assert fid["seeds it would need"] == str(seeds_needed(1.125, sd)) and 6 < seeds_needed(1.125, sd) <= 50


def test_ten_seeds_always_converged_against_never_is_resolved():
    """The strongest stability result, 10/10 converged vs 0/10 (every GAN seed low-quality): exact p 2 / 1024, read
    from the 0/1 outcomes, never from a t interval of them."""
    mix = dict(dataset="ring8", num_modes=8, num_samples=2500, reverse_kl=0.1, modes=8)
    runs = [_entry("gan", s, hq_fraction=0.1, **mix) for s in range(10)]
    runs += [_entry("diffusion", s, hq_fraction=0.97, **mix) for s in range(10)]
    row = _rows(runs)["runs converged"]
    assert row["GAN"] == "0/10 converged (10 low-quality)" and row["diffusion"] == "10/10 converged"
    assert row["leads"] == "diffusion" and row["by"] == "100% of seeds over GAN (n=10)"
    assert row["seeds"] == "resolved: sign-flip p 0.002 (10 of 10 seeds favour diffusion)"
    assert "interval" not in row["by"]
    three = _rows([r for r in runs if r["seed"] < 3])["runs converged"]
    assert three["seeds"] == "consistent over 3 of 3 seeds; too few seeds for the exact test (p >= 0.25 at n = 3)"
    assert three["seeds it would need"] == "6"


def test_a_third_family_failing_a_seed_leaves_gan_vs_diffusion_on_its_own_three_seeds():
    """GAN, diffusion and a third family; the third's seed 1 failed. Every pair is compared over the seeds it shares:
    GAN vs diffusion keeps n = 3, the pairs with the third n = 2; the multiplicity line counts all three pairs."""
    runs = [_entry("gan", s, fid_lf=30.0 + s) for s in range(3)]
    runs += [_entry("diffusion", s, fid_lf=20.0 + s) for s in range(3)]
    runs += [_entry("third", 0, fid_lf=25.0), {**_entry("third", 1, "failed"), "error": "boom"},
             _entry("third", 2, fid_lf=27.0)]
    fid = _pair_rows(runs, THREE, "FID")
    assert [(r["leads"], r["by"].split(" (")[0]) for r in fid] == [("diffusion", "10.00 over GAN"),
                                                                    ("third", "5.00 over GAN"),
                                                                    ("diffusion", "5.00 over third")]
    assert [r["by"].split("(n=")[1][0] for r in fid] == ["3", "2", "2"]
    assert fid[0]["third"] == "26.00 (n=2); seed 1 failed" and fid[1]["GAN"] == fid[1]["third"] == ""
    stability = _pair_rows(runs, THREE, "runs converged")
    assert len(stability) == 3 and stability[0]["leads"] == "tie" and stability[0]["by"].endswith("(n=3)")
    _, verdict, blocks = _tables(runs, THREE)
    note = next(b[1] for b in blocks if b[0] == "p" and "comparisons" in b[1])
    assert f"None of the {len(verdict[2])} comparisons" in note


def test_a_missing_family_or_one_without_a_finished_seed_is_named():
    """On ring8 the third family has no run and diffusion only failed seeds; on grid25 only the GAN ran. Neither is
    silently dropped: each verdict section names them."""
    mix = dict(num_modes=8, num_samples=2500, reverse_kl=0.1, modes=8, hq_fraction=0.9)
    runs = [_entry("gan", s, dataset="ring8", **mix) for s in range(3)]
    runs += [{**_entry("diffusion", s, "failed", dataset="ring8"), "error": "boom"} for s in range(3)]
    runs += [_entry("gan", 0, dataset="grid25", **mix)]
    results = {"families": {**THREE, "third": {**THREE["third"], "benchmarks": ["mixture", "image"]}}, "runs": runs,
               "config": {"mixtures": {"datasets": ["ring8", "grid25"]}}}
    text = to_markdown(verdict_blocks(results))
    ring8, grid25 = text.split("### Verdict: grid25")
    assert ("Not compared here: diffusion: no finished seed (seed 0 failed, seed 1 failed, seed 2 failed); it "
            "counts in the stability row only; third: no run on this dataset.") in ring8
    assert "0/3 converged (3 failed)" in ring8  # diffusion's failures are stability outcomes
    assert "Nothing to compare: 1 model family ran on this dataset." in grid25
    assert "diffusion: no run on this dataset; third: no run on this dataset." in grid25


def test_the_multiplicity_line_counts_only_comparisons_the_exact_test_could_resolve():
    """With 3 seeds none can be a false alarm; with 8, the rows with 8 pairs are tested at 5%, and one resolved at
    p = 2 / 256 holds under Bonferroni across the few comparisons."""
    runs = [_entry(m, s, fid_lf=10.0 + s + 5 * (m == "gan")) for s in range(3) for m in ("gan", "diffusion")]
    blocks = _tables(runs)[2]
    assert any(b[0] == "p" and b[1].startswith("None of the") and "none can be a false alarm" in b[1] for b in blocks)
    runs = [_entry(m, s, fid_lf=10.0 + s + 5 * (m == "gan"), modes=24) for s in range(8) for m in ("gan", "diffusion")]
    _, verdict, blocks = _tables(runs)
    rows = {row[1].split(" (")[0]: dict(zip(verdict[1], row)) for row in verdict[2]}
    assert rows["FID"]["seeds"] == "resolved: sign-flip p 0.0078 (8 of 8 seeds favour diffusion)"
    line = next(b[1] for b in blocks if b[0] == "p" and "comparisons had" in b[1])
    k = len(verdict[2])
    assert line.startswith(f"{k} of the {k} comparisons had the 6 or more paired seeds")
    assert f"0.05 / {k} = {0.05 / k:.2g} (Bonferroni)" in line


def test_per_seed_values_stand_behind_a_cell_of_a_few_seeds():
    """At n <= 5 a family's cell carries its per-seed values: after it in Markdown, a hover title in HTML; at n = 6
    the mean and n alone."""
    runs = [_entry(m, s, fid_lf=10.0 + s + (m == "gan")) for s in range(3) for m in ("gan", "diffusion")]
    blocks = verdict_blocks({"families": FAMILIES, "runs": runs, "config": {}})
    assert "| 12.00 (n=3); seed 0 11.00, seed 1 12.00, seed 2 13.00 |" in to_markdown(blocks)
    assert '<td title="seed 0 11.00, seed 1 12.00, seed 2 13.00">12.00 (n=3)</td>' in to_html(blocks)
    runs = [_entry(m, s, fid_lf=10.0 + s + (m == "gan")) for s in range(6) for m in ("gan", "diffusion")]
    assert "| 13.50 (n=6) |" in to_markdown(verdict_blocks({"families": FAMILIES, "runs": runs, "config": {}}))


def test_an_interval_narrower_than_its_format_shows_enough_digits_to_be_one():
    """The example's held-out real row read "0.98 [0.98, 0.98]" (within-mode spread 0.9801 to 0.9808 over seeds):
    an interval whose ends print alike looks like a constant. The cell takes the fewest digits that tell them apart,
    the mean and per-seed values in the same digits; a cell whose ends already differ keeps its format."""
    from bench.report.tables import cell

    values = [0.9801, 0.9808, 0.9803]
    text = str(cell(values, fmt="{:.2f}", bounds=(0, math.inf)))
    (mean, lo, hi), = re.findall(r"^([\d.]+) \[([\d.]+), ([\d.]+)\]", text)
    assert float(lo) < float(mean) < float(hi) and lo != hi and len(mean) > 4
    assert float(mean) == pytest.approx(sum(values) / 3, abs=5e-4)
    assert str(cell([0.5, 0.7, 0.9], fmt="{:.2f}", bounds=(0, 1))).startswith("0.70 [")


def test_a_dropped_nan_is_named_and_a_collapse_is_a_stability_outcome():
    """ring8: the GAN's seed 2 collapsed to 0 modes, so it has no high-quality sample and no reverse KL (NaN)."""
    mix = dict(dataset="ring8", num_modes=8, num_samples=2500)
    runs = [_entry("gan", s, reverse_kl=0.1, modes=8, hq_fraction=0.9, **mix) for s in range(2)]
    runs += [_entry("gan", 2, reverse_kl=math.nan, modes=0, hq_fraction=0.0, **mix)]
    runs += [_entry("diffusion", s, reverse_kl=0.01, modes=8, hq_fraction=0.97, **mix) for s in range(3)]
    rows = _rows(runs)
    assert rows["reverse KL"]["GAN"] == "0.100 (n=2); seed 2: no value"
    assert rows["runs converged"]["GAN"] == "2/3 converged (1 low-quality)"
    assert rows["runs converged"]["leads"] == "diffusion"


@pytest.mark.parametrize("gan_excess, gan_near, leader", [
    (0.0, 0.05, "tie"),  # two families that both read the exact null 0: no winner
    (0.9, 0.05, "diffusion"),  # a copier loses to fresh samples: farther from 0
    (-0.2, 0.05, "diffusion"),  # below 0 is no better than 0: closeness to 0 ranks, not lower-is-better
])
def test_memorisation_is_ranked_by_closeness_to_zero(gan_excess, gan_near, leader):
    runs = []
    for s in range(3):
        runs += [_entry("gan", s, copy_excess=gan_excess + 0.001 * s, near_copy_share_held=gan_near),
                 _entry("diffusion", s, copy_excess=0.001 * s, near_copy_share_held=0.05),
                 _entry("held-out-real", s, copy_excess=0.001 * s, near_copy_share_held=0.05)]
    row = _rows(runs)["copy excess"]
    assert row["measure"].startswith("copy excess (ranked by closeness to 0")
    assert row["leads"] == leader
    assert "held-out real" not in row  # a calibration row is never a column of the verdict


@pytest.mark.parametrize("gan_spread, leader", [
    (1.42, "diffusion"),  # strewn across the 3-std disc (reports/example's grid25 GAN): more is not more diverse
    (0.30, "diffusion"),  # collapsed towards the centres
    (0.97, "GAN"),  # fresh data read 0.974: the GAN there, the diffusion model at 0.80
])
def test_within_mode_spread_is_ranked_by_closeness_to_fresh_data(gan_spread, leader):
    """The example's grid25 GAN (0/3 converged, 4% of samples on the modes) read "GAN leads on within-class diversity
    (within-mode spread 1.42 vs 0.93)": higher-is-better rewarded samples strewn past the mode's own spread. Fresh draws
    read 0.974 (bench/evaluate/metrics.py FRESH_SPREAD); the verdict ranks by closeness to it."""
    runs = []
    for s in range(3):
        runs += [_entry("gan", s, dataset="grid25", mode_spread=gan_spread + 0.001 * s),
                 _entry("diffusion", s, dataset="grid25", mode_spread=0.80 + 0.001 * s)]
    row = _rows(runs)["within-mode spread"]
    assert row["measure"].startswith("within-mode spread (ranked by closeness to 0.974")
    assert row["leads"] == leader


def test_memorisation_names_no_leader_where_samples_are_near_no_real_image():
    """The GAN's samples make no near-copy of any held-out image (fresh data make 5%): whatever its copy excess reads,
    copying cannot be told from not copying, so no family leads; the row says why."""
    runs = []
    for s in range(3):
        runs += [_entry("gan", s, copy_excess=0.0, near_copy_share_held=0.0),
                 _entry("diffusion", s, copy_excess=0.3 + 0.01 * s, near_copy_share_held=0.04)]
    row = _rows(runs)["copy excess"]
    assert row["leads"] == "none"
    assert row["by"].startswith("not measurable: the samples of GAN are near no real image")
    assert "diffusion 0.040" in row["by"]


def test_the_compute_gap_heads_the_verdict_and_the_rows_tested_are_counted():
    runs = [_entry(m, s, fid_lf=10.0 + s + (m == "gan")) for s in range(3) for m in ("gan", "diffusion")]
    header, verdict, blocks = _tables(runs)
    budget = {row[0]: row for row in header[2]}
    assert budget["diffusion"][1:5] == ["500", "5x", "1e+13", "10x"] and budget["GAN"][2] == "1x"
    assert header[1] == ["family", "parameters", "ratio", "training FLOPs", "ratio", "examples seen"]
    note = next(b[1] for b in blocks if b[0] == "p" and "comparisons" in b[1])
    assert f"None of the {len(verdict[2])} comparisons has the 6 paired seeds" in note


def test_a_stability_study_of_the_dataset_stands_beside_the_stability_row():
    """A study of 3 configurations x 2 seeds per family on ring8: diffusion converged in 2 configurations, the GAN in
    none; its shares and its cluster interval (the configuration as the unit) follow the verdict table."""
    runs = [{"family": f, "dataset": "ring8", "config_id": c, "seed": s,
             "outcome": "converged" if f == "diffusion" and c < 2 else "low-quality"}
            for f in ("gan", "diffusion") for c in range(3) for s in range(2)]
    study = {"study": {"datasets": ["ring8"], "k": 3, "seeds": 2, "steps": 2000},
             "search_space": {"gan": {}, "diffusion": {}}, "runs": runs}
    entries = [_entry(m, s, dataset="ring8", modes=8, num_modes=8, hq_fraction=0.9) for s in range(3)
               for m in ("gan", "diffusion")]
    blocks = verdict_blocks({"families": FAMILIES, "runs": entries, "config": {}}, study)
    line = next(b[1] for b in blocks if b[0] == "p" and b[1].startswith("Stability study"))
    assert "GAN 0/6 runs (0% per configuration)" in line and "diffusion 4/6 runs (67% per configuration)" in line
    assert "diffusion leads by 67%" in line and "the configuration as the unit" in line
    # 3 configurations a side cannot resolve this (both converging configurations on one side: 8 of the 20 splits),
    # and the bootstrap interval's simulated coverage stands beside it
    assert "not resolved (permutation p 0.4 over the configurations)" in line
    assert "it covered the true difference in 89% to 94% of simulated studies" in line
    assert not [b for b in verdict_blocks({"families": FAMILIES, "runs": entries, "config": {}}, None)
                if b[0] == "p" and b[1].startswith("Stability study")]


# ---------------------------------------------------------------- the tables' cells on the committed example


def _intervals(rows: list[list[str]]):
    """(column, mean, lo, hi) of every "mean [lo, hi]" cell, numbers as printed (a leading + kept)."""
    pattern = re.compile(r"^([-+]?[\d.]+(?:e[-+]?\d+)?) \[([-+]?[\d.]+(?:e[-+]?\d+)?), ([-+]?[\d.]+(?:e[-+]?\d+)?)\]")
    for row in rows:
        for col, text in enumerate(row):
            if m := pattern.match(str(text)):
                yield col, *(float(x) for x in m.groups())


def test_the_example_tables_keep_every_interval_in_range_and_none_on_a_constant():
    """reports/example's results (3 seeds): the issue found 14 of 183 cells outside their range ("high quality %
    52.2 [-15.8, 120.3]", "modes 15.3 [-15.7, 46.4]", "prompt accuracy 0.997 [0.984, 1.009]") and 33 intervals on
    constants ("8.87e+11 [8.87e+11, 8.87e+11]"). Rebuilt, every interval holds its mean inside the metric's range and
    a value equal on every seed says so instead."""
    results = load_results(Path(__file__).parents[1] / "reports" / "example" / "results.json")
    mix = [r for r in results["runs"] if r["dataset"] in ("ring8", "grid25")]
    per = [r for r in results["runs"] if r["dataset"] == "shapes"]
    header, rows, shown = image_table(results, per)
    bounds = {header.index(m.label): m.bounds for m in shown}
    bounds[header.index("modes")] = (0, 24)
    tables = [(mixture_table(results, mix), {3: (0, 25), 4: (0, 100), 5: (0, math.inf), 8: (0, math.inf)}),
              (sampler_rows(mix), {4: (0, 25), 5: (0, 100), 6: (0, math.inf), 7: (0, math.inf)}),
              (stability_rows(results), {5: (0, math.inf), 6: (0, math.inf), 7: (-1, 1)}), (rows, bounds)]
    cells = constants = 0
    for rows_, limits in tables:
        for col, mean, lo, hi in _intervals(rows_):
            cells += 1
            assert lo <= mean <= hi and lo < hi, (col, mean, lo, hi)
            low, high = limits.get(col, (-math.inf, math.inf))  # the displayed scale: shares and % as shown
            assert low <= lo and hi <= high, (col, mean, lo, hi)
        constants += sum("(same on every seed)" in str(c) for row in rows_ for c in row)
    assert cells > 100 and constants >= 30
    prompt = next(r for r in rows if r[1].startswith("tuned (s"))[header.index("prompt accuracy")]
    assert prompt.startswith("0.975 [") and float(prompt.split(", ")[1].split("]")[0]) <= 1.0  # the example at 3 seeds
    assert table.metric("cond_accuracy").bounds == (0.0, 1.0)


def test_the_differences_table_compares_every_pair_in_the_verdicts_words():
    """Every pair of model families, each over its own common seeds (the third's failed seed 1 shortens only its
    pairs), with the t interval, the sign-flip p, the words and the seeds the effect would need."""
    runs = [_entry("gan", s, fid_lf=30.0 + s) for s in range(3)]
    runs += [_entry("diffusion", s, fid_lf=20.0 + s) for s in range(3)]
    runs += [_entry("third", 0, fid_lf=25.0), {**_entry("third", 1, "failed"), "error": "boom"},
             _entry("third", 2, fid_lf=26.0)]
    text, table_ = difference_blocks({"families": THREE, "runs": runs, "config": {}}, runs)
    fid = {r[0]: dict(zip(table_[1], r)) for r in table_[2] if r[2] == "FID (label-free)"}
    assert list(fid) == ["GAN − diffusion", "GAN − third", "diffusion − third"]
    assert fid["GAN − diffusion"]["difference"] == "+10" and fid["GAN − diffusion"]["n"] == "3"
    assert fid["GAN − diffusion"]["95% t interval"] == "same on every seed"
    assert fid["GAN − diffusion"]["verdict"] == ("consistent over 3 of 3 seeds; too few seeds for the exact test "
                                                 "(p >= 0.25 at n = 3)")
    assert fid["GAN − third"]["n"] == "2" and fid["GAN − third"]["95% t interval"].startswith("[")
    assert fid["diffusion − third"]["seeds it would need"] == str(seeds_needed(4.5, math.sqrt(0.5))) == "6"
    assert "resolved only at p <= 0.05, which needs 6 or more pairs" in text[1]


# ---------------------------------------------------------------- the verdict in words (issue 35)


def _words(runs, families=FAMILIES):
    blocks = verdict_blocks({"families": families, "runs": runs, "config": {}})
    return [b[1] for b in blocks if b[0] == "p" and b[1].startswith("On ")], blocks


def test_the_verdict_opens_with_its_rows_in_words():
    """What a reader wants first, in one to three sentences per dataset read from the same rows as the table: who
    leads on which aspect with the table's own means, the ties, how sure the seeds are, and the cost."""
    runs = []
    for s in range(3):
        runs += [{**_entry("gan", s, fid_lf=30.0 + s, cond_accuracy=0.5), "throughput": {"sample_seconds": 0.01}},
                 {**_entry("diffusion", s, fid_lf=10.0 + s, cond_accuracy=0.8), "throughput": {"sample_seconds": 3.0}}]
    (words,), blocks = _words(runs)
    kinds = [b[0] for b in blocks]
    assert kinds.index("p") < kinds.index("table") and blocks[1] == ("p", words)  # first, before rules and tables
    rows = _rows(runs)
    fid, accuracy = rows["FID"], rows["prompt accuracy"]
    assert fid["leads"] == accuracy["leads"] == "diffusion" and rows["modes"]["leads"] == "tie"
    # the sentence's numbers are the table's cells (the means over the common seeds)
    assert (f"diffusion leads on quality (FID (label-free) {fid['diffusion'].split(' ')[0]} vs "
            f"{fid['GAN'].split(' ')[0]}) and prompt adherence (prompt accuracy 0.800 vs 0.500)") in words
    assert "they tie on diversity (modes 24.0 each)" in words
    assert ("How sure: 3 paired seeds are too few for the exact test to resolve a difference (it needs 6); all of "
            "the 2 rows that name a leader held on every seed.") in words
    assert "Diffusion costs 300x more to sample (3 s vs 0.01 s)" in words and len(words.split(". ")) <= 5
    # thousands of seconds read as a reader writes them, not as the table's 3 significant digits ("1.11e+03")
    slow = [{**r, "throughput": {"sample_seconds": 1110.0}} if r["model"] == "diffusion" else r for r in runs]
    assert "Diffusion costs 111,000x more to sample (1,110 s vs 0.01 s)" in _words(slow)[0][0]
    # six seeds of the same: resolved, and the words say so
    six = [{**r, "seed": r["seed"] + k} for r in runs for k in (0, 3)]
    (words6,), _ = _words(six)
    assert "How sure: the 2 rows that name a leader all resolved by the exact sign-flip test" in words6


def test_a_margin_that_shows_as_zero_is_a_tie_never_a_lead_by_zero():
    """'GAN leads by 0.00' was printed where another row with the same tie said 'tie': a margin that prints as 0 at
    the metric's precision is a tie, in the table and in the words."""
    runs = [_entry(m, s, fid_lf=20.0 + (0.001 if m == "diffusion" else 0.0)) for s in range(3)
            for m in ("gan", "diffusion")]
    fid = _rows(runs)["FID"]
    assert fid["leads"] == "tie" and fid["by"].startswith("0.00 between GAN and diffusion at the precision shown")
    (words,), blocks = _words(runs)
    assert "they tie on quality (FID (label-free) 20.00 each" in words
    text = to_markdown(blocks)
    assert "0.00 over" not in text and not re.search(r"leads by 0\.0+\b", text)


def test_the_words_name_a_split_aspect_and_an_unmeasurable_one():
    """Two measures of one aspect favouring different families read 'split', not a leader picked from one row."""
    runs = [_entry(m, s, recall_lf=0.6 if m == "gan" else 0.4, coverage_lf=0.3 if m == "gan" else 0.7)
            for s in range(3) for m in ("gan", "diffusion")]
    (words,), _ = _words(runs)
    assert "diversity is split (its measures disagree)" in words and "leads on diversity" not in words
