"""The verdict's rules on synthetic results whose answer is known (bench/report/verdict.py): leaders from the paired
differences, n in every cell, dropped seeds named, zero spread and two seeds never resolved, failures and collapses
counted as stability, memorisation ranked by closeness to the held-out baseline, the compute gap in the header."""

import math

import pytest

from bench.report.verdict import verdict_blocks

FAMILIES = {"gan": {"label": "GAN", "role": "model"}, "diffusion": {"label": "diffusion", "role": "model"},
            "held-out-real": {"label": "held-out real", "role": "calibration"}}


def _entry(model, seed, status="ok", dataset="shapes", **metrics):
    base = {"modes": 24, "num_modes": 24, "cond_accuracy": 0.9, "num_samples": 1000}
    return {"dataset": dataset, "model": model, "seed": seed, "status": status, "role": FAMILIES[model]["role"],
            "metrics": {**base, **metrics} if status == "ok" else {},
            "train": {"seconds": 10.0, "flops": 1e12 if model == "gan" else 1e13,
                      "params_total": 100 if model == "gan" else 500, "examples_seen": 1000},
            "throughput": {"sample_seconds": 1.0}}


def _tables(runs):
    blocks = verdict_blocks({"families": FAMILIES, "runs": runs, "config": {}})
    tables = [b for b in blocks if b[0] == "table"]
    return tables[0], tables[1], blocks


def _rows(runs):
    header, verdict, _ = _tables(runs)
    return {row[1].split(" (")[0]: dict(zip(verdict[1], row)) for row in verdict[2]}


def test_the_leader_comes_from_the_paired_seeds_not_each_familys_own_mean():
    """GAN FID 10/30/31 on seeds 0-2; diffusion 12/32 and seed 2 diverged. Each family's own mean says diffusion
    (22 < 23.7); paired over the seeds both finished, the GAN is 2 better on every one."""
    runs = [_entry("gan", s, fid=f) for s, f in enumerate([10.0, 30.0, 31.0])]
    runs += [_entry("diffusion", 0, fid=12.0), _entry("diffusion", 1, fid=32.0), _entry("diffusion", 2, "diverged")]
    fid = _rows(runs)["FID"]
    assert fid["leads"] == "GAN" and fid["by"].startswith("2.00 over diffusion (n=2)")
    assert fid["GAN"] == "23.67 (n=3)" and fid["diffusion"] == "22.00 (n=2); seed 2 diverged"
    assert fid["seeds"].startswith("not resolved (n = 2)")
    stability = _rows(runs)["runs converged"]
    assert stability["diffusion"].startswith("2/3 converged (1 diverged)") and stability["GAN"] == "3/3 converged"


def test_zero_spread_is_not_resolved_and_two_seeds_never_are():
    runs = [_entry(m, s, fid=20.0, modes=24 if m == "gan" else 23) for s in range(2) for m in ("gan", "diffusion")]
    modes = _rows(runs)["modes"]
    assert modes["leads"] == "GAN" and modes["seeds"] == "not resolved (n = 2); sign-flip p 0.5"
    runs += [_entry(m, 2, fid=20.0, modes=24 if m == "gan" else 23) for m in ("gan", "diffusion")]
    assert _rows(runs)["modes"]["seeds"] == "not resolved (no spread); sign-flip p 0.25"


def test_a_clear_difference_on_three_seeds_is_resolved_with_its_sign_flip_p():
    # GAN - diffusion per seed: 10, 11, 9: mean 10, t interval [7.5, 12.5]; the sign-flip p of 3 seeds is 2 / 8
    runs = [_entry("gan", s, fid=g) for s, g in enumerate([30.0, 32.0, 31.0])]
    runs += [_entry("diffusion", s, fid=d) for s, d in enumerate([20.0, 21.0, 22.0])]
    fid = _rows(runs)["FID"]
    assert fid["leads"] == "diffusion" and fid["by"] == "10.00 over GAN (n=3)"
    assert fid["seeds"] == "resolved; sign-flip p 0.25"


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


@pytest.mark.parametrize("gan_excess, heldout, leader", [
    (0.0, 0.0, "tie"),  # an under-fitting GAN (no near-copies of anything) against fresh samples: no winner
    (0.9, 0.0, "diffusion"),  # a copier loses to fresh samples
])
def test_memorisation_is_ranked_by_closeness_to_the_held_out_baseline(gan_excess, heldout, leader):
    runs = []
    for s in range(3):
        runs += [_entry("gan", s, copy_excess=gan_excess + 0.001 * s, near_copy_share=0.0),
                 _entry("diffusion", s, copy_excess=0.001 * s, near_copy_share=0.05),
                 _entry("held-out-real", s, copy_excess=heldout + 0.001 * s)]
    row = _rows(runs)["copy excess"]
    assert row["measure"] == "copy excess (ranked by closeness to the held-out baseline)"
    assert row["leads"] == leader
    assert "held-out real" not in row  # a calibration row is never a column of the verdict


def test_the_compute_gap_heads_the_verdict_and_the_rows_tested_are_counted():
    runs = [_entry(m, s, fid=10.0 + s + (m == "gan")) for s in range(3) for m in ("gan", "diffusion")]
    header, verdict, blocks = _tables(runs)
    budget = {row[0]: row for row in header[2]}
    assert budget["diffusion"][1:5] == ["500", "5x", "1e+13", "10x"] and budget["GAN"][2] == "1x"
    assert header[1] == ["family", "parameters", "ratio", "training FLOPs", "ratio", "examples seen"]
    note = next(b[1] for b in blocks if b[0] == "p" and "rows were each tested" in b[1])
    assert f"{len(verdict[2])} rows" in note and "0.05 / " in note


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
    assert not [b for b in verdict_blocks({"families": FAMILIES, "runs": entries, "config": {}}, None)
                if b[0] == "p" and b[1].startswith("Stability study")]
