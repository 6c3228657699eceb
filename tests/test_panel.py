"""The known-answer panel (bench/evaluate/panel.py) and the readers behind it (bench/data/encoder.py), on the smoke
preset's data with enough samples per class (240 over 24 classes) for within-class numbers to exist: every instrument
must see the defect it is named after, and the outcome rule must call each defect what it is."""

import numpy as np
import pytest
import torch

from bench.config import preset
from bench.data.encoder import EncoderConfig
from bench.data.images import SHAPE_FACTORS, load_splits, make_shapes
from bench.evaluate import panel as panel_mod
from bench.report.render import to_markdown
from bench.report.tables import panel_blocks, panel_failures
from bench.run.images import prepare, train_shared


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    cfg = preset("smoke").images
    cfg.num_samples, cfg.num_test, cfg.panel_seeds = 240, 600, 2
    cfg.encoder = EncoderConfig(width=16, code_dim=32, steps=300, batch_size=64)
    cache = tmp_path_factory.mktemp("cache")
    prep = prepare("shapes", cfg, torch.device("cpu"), cache)
    text = train_shared(prep, cfg, "cpu", progress=False).text
    return cfg, prep, text


@pytest.fixture(scope="module")
def panel(setting):
    cfg, prep, text = setting
    return panel_mod.calibration_panel(prep, text, cfg)


def test_shapes_record_their_generator_factors():
    data = make_shapes(50, resolution=16, seed=3)
    assert data.factor_names == SHAPE_FACTORS and data.factors.shape == (50, 4)
    x, y, size, background = data.factors.T
    # the shape lies inside the frame with a pixel to spare, and both sizes occur
    assert ((x - size) * 16 >= 1 - 1e-4).all() and ((x + size) * 16 <= 15 + 1e-4).all()
    assert np.allclose(sorted(set(np.round(size.numpy() * 16, 3).tolist())), [0.22 * 16, 0.36 * 16], atol=1e-3)
    assert (background >= 0).all() and (background <= 0.4).all()
    # image i does not depend on n: nor do its factors
    assert torch.equal(make_shapes(10, resolution=16, seed=3).factors, data.factors[:10])


def test_the_factor_read_out_recovers_the_generators_own_factors(setting):
    """The known answer: on test images it never trained on, the read-out's factors match the generator's."""
    _, prep, _ = setting
    r2 = prep.factors.record["test_r2"]
    assert set(r2) == set(SHAPE_FACTORS)
    assert min(r2.values()) > 0.9, r2
    read = prep.factors.features(prep.test.images[:100])
    assert np.abs(read - prep.test.factors[:100].numpy()).mean() < 0.05


def test_the_label_free_features_are_less_class_than_the_judges(panel):
    shares = panel["class_share"]
    assert shares["judge"] > 0.8 and shares["label-free"] < shares["judge"] and shares["factors"] < 0.2


@pytest.mark.parametrize("key, defect", [
    ("within_coverage", "one per class"), ("factor_coverage", "one per class"), ("fid_lf", "one per class"),
    ("intra_fid", "one per class"), ("duplicate_share", "one per class"),
    ("fid", "blurred"),
    ("cond_accuracy", "wrong class"), ("intra_fid", "wrong class"),
    ("modes", "half the classes"), ("cond_accuracy", "untrained"),
    ("copy_excess", "copier"),
])
def test_each_instrument_sees_the_defect_it_is_named_after(panel, key, defect):
    cell = panel["instruments"][key][defect]
    assert cell["claimed"] and cell["passed"], (key, defect, cell)


def test_the_judges_fid_barely_sees_collapse_within_a_class_and_the_panel_says_so(panel):
    """The defect the issue found: on the judge's class-dominated features one image per class costs FID little next
    to a blur (so it can score better than a trained model); on label-free features it costs more than the blur.
    The judge's FID is not named after it (unclaimed), and the panel shows the reading, not hidden."""
    judge, free = panel["instruments"]["fid"], panel["instruments"]["fid_lf"]
    assert judge["one per class"]["claimed"] is False and free["one per class"]["claimed"] is True

    def cost(cells, defect):  # the defect's FID above fresh data's
        return cells[defect]["mean"] - cells["fresh"]["mean"]

    judge_ratio = cost(judge, "one per class") / cost(judge, "blurred")
    free_ratio = cost(free, "one per class") / cost(free, "blurred")
    assert free_ratio > 1 and judge_ratio < 0.5 * free_ratio, (judge_ratio, free_ratio)


def test_the_outcome_rule_calls_each_defect_what_it_is(panel):
    outcomes = panel["outcomes"]
    assert set(outcomes["fresh"]) == {"converged"}  # fresh data read converged: the rule has a floor it can pass
    assert set(outcomes["copier"]) == {"converged"}
    for defect in ("one per class", "wrong class", "half the classes"):
        assert set(outcomes[defect]) == {"mode-collapsed"}, (defect, outcomes[defect])
    assert "converged" not in outcomes["untrained"]


def test_memorisation_is_not_measurable_where_samples_are_near_nothing(panel):
    assert panel["instruments"]["copy_excess"]["untrained"].get("measurable") is False


def test_the_panel_is_cached_and_rendered(setting, panel):
    cfg, prep, text = setting
    again = panel_mod.calibration_panel(prep, text, cfg)  # from the cache: no scoring
    assert again == panel
    text_md = to_markdown(panel_blocks({"panel": {"shapes": panel}}, "shapes"))
    assert "known-answer panel" in text_md and "within-class coverage" in text_md and "✓" in text_md
    for failure in panel_failures(panel):  # every failure the report names is a claimed cell that failed
        assert "does not see" in failure or "outcome rule" in failure


def test_defects_are_what_they_say(setting):
    """The panel's generators, checked against their definitions on one seed's prompts."""
    cfg, prep, text = setting
    ev = panel_mod.eval_set(prep, text, cfg, 0)
    draw = lambda name: panel_mod.draw_defect(name, prep, ev.scored, 0, panel_mod._untrained(prep, text, cfg, 0))  # noqa
    labels = ev.scored.labels
    one = draw("one per class")
    for c in labels.unique():
        rows = one[labels == c]
        assert (rows == rows[0]).all()  # one image per class
    judged = prep.judge.labels(draw("wrong class"))
    assert (judged != labels).float().mean() > 0.9  # another class for every prompt
    assert len(prep.judge.labels(draw("half the classes")).unique()) <= prep.data.num_modes // 2 + 1
    assert torch.equal(draw("fresh"), draw("fresh"))  # seeded: the same images for the same seed
    with pytest.raises(ValueError, match="unknown defect"):
        draw("nothing")


def test_load_splits_carry_factors_through_the_split():
    train, test = load_splits("shapes", 64, 32, 16)
    assert train.factors.shape == (64, 4) and test.factors.shape == (32, 4)
