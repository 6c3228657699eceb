"""Every setting of every preset is a choice the code reads, with its valid values declared beside it.

The leaf walk: for each leaf of each preset, (1) a value that breaks its declared rule exits 2 with one line naming
it, before anything is written; (2) the code reads it: a smoke run (every stage on tiny models) is traced, and every
field of every config class must be read somewhere in bench/ or models/ (not by asdict, validation or printing), so
no setting is accepted and then ignored. Derived shapes cannot be set at all.
"""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from bench import config as config_module
from bench.cli import main
from bench.config import PRESETS, ConfigError, apply_override, leaves, preset, validate
from bench.run.suite import run_suite

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["run", "--preset", "smoke", "--device", "cpu", "--workers", "1"]


def _invalid(value, rules: dict):
    """A value that breaks the declared rules (None when the rules allow every value of the type)."""
    if isinstance(value, bool):
        return "maybe"
    if "choices" in rules:
        return "not-a-choice"
    if "check" in rules and isinstance(value, int):
        return 12  # the one integer with a check: an image side, which must be a power of 2
    if "check" in rules:
        return ["not-a-name"] if isinstance(value, list) else "not:a:name"
    bound = next(((k, rules[k]) for k in ("min", "gt", "max", "lt") if k in rules), None)
    if bound is None:
        return None
    kind, b = bound
    bad = b - 1 if kind == "min" else b if kind in ("gt", "lt") else b + 1
    return [bad] if isinstance(value, (list, tuple)) else bad


def _as_text(value) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


def _all_leaves():
    for name in PRESETS:
        for key, owner, f in leaves(preset(name)):
            yield name, key, getattr(owner, f.name), f


@pytest.mark.parametrize("preset_name", list(PRESETS))
def test_every_leaf_declares_its_valid_values_and_an_invalid_one_exits_2(preset_name, tmp_path, capsys):
    out = tmp_path / "out"
    for name, key, value, f in _all_leaves():
        if name != preset_name or f.metadata.get("derived") or value is None:  # None: a benchmark switched off
            continue
        bad = _invalid(value, f.metadata.get("rules", {}))
        if bad is None:
            assert isinstance(value, (str, tuple)) and not isinstance(value, bool), f"{key} declares no rule"
            continue
        args = ["run", "--preset", name, "--device", "cpu", "--out", str(out), "--set", f"{key}={_as_text(bad)}"]
        assert main(args) == 2, key
        err = capsys.readouterr().err
        assert key in err and err.count("\n") == 1, (key, err)
        assert not out.exists(), key


def test_derived_shapes_cannot_be_set(capsys):
    derived = {key for _, key, _, f in _all_leaves() if f.metadata.get("derived")}
    assert {"images.unet.context_dim", "images.text.vocab_size", "images.dcgan.channels"} <= derived
    for key in sorted(derived):
        assert main(SMOKE + ["--set", f"{key}=3"]) == 2
        assert "cannot be set" in capsys.readouterr().err


def test_unknown_settings_name_the_closest_known_one(capsys):
    assert main(SMOKE + ["--set", "images.dcgan.loss=hinge"]) == 2
    assert "did you mean mixtures.gan.loss or images.gan.loss?" in capsys.readouterr().err
    assert main(SMOKE + ["--set", "images.vae_lr=-1"]) == 2
    assert "images.vae_lr must be > 0, got -1.0" in capsys.readouterr().err


def test_a_valid_value_reaches_the_config_the_run_uses():
    cfg = preset("smoke")
    for name, key, value, f in _all_leaves():
        if name != "smoke" or f.metadata.get("derived") or isinstance(value, (bool, list, tuple)):
            continue
        other = value + 1 if isinstance(value, int) else value * 0.5 if isinstance(value, float) else None
        if other is None:
            continue
        apply_override(cfg, f"{key}={other}")
        owner = cfg
        for part in key.split(".")[:-1]:
            owner = getattr(owner, part)
        assert getattr(owner, key.split(".")[-1]) == type(value)(other), key


# ---------------------------------------------------------------- every field is read by the code that runs


def _config_classes() -> set[type]:
    found, todo = set(), [preset("smoke")]
    while todo:
        obj = todo.pop()
        found.add(type(obj))
        todo += [v for f in dataclasses.fields(obj) if dataclasses.is_dataclass(v := getattr(obj, f.name))]
    return found


@pytest.fixture
def reads(monkeypatch):
    """(class name, field) of every read of a config field from code in bench/ or models/, other than bench/config.py
    (validation) and dataclasses' own generated methods and asdict."""
    seen: set[tuple[str, str]] = set()
    own = (str(ROOT / "bench"), str(ROOT / "models"))
    skip = str(ROOT / "bench" / "config.py")
    for cls in _config_classes():
        names = {f.name for f in dataclasses.fields(cls)}

        def traced(self, attr, _names=names, _cls=cls):
            if attr in _names:
                caller = sys._getframe(1).f_code.co_filename
                if caller.startswith(own) and caller != skip:
                    seen.add((_cls.__name__, attr))
            return object.__getattribute__(self, attr)

        monkeypatch.setattr(cls, "__getattribute__", traced, raising=False)
    return seen


def test_every_setting_is_read_by_the_code_that_runs(reads, tmp_path, monkeypatch):
    cfg = preset("smoke")
    cfg.mixtures.datasets, cfg.mixtures.eval_checkpoints = ["ring8"], 2
    validate(cfg)
    monkeypatch.setenv("GVD_CACHE", str(tmp_path / "cache"))  # a fresh judge: its training settings are read too
    run_suite(cfg, tmp_path / "run", torch.device("cpu"), workers=1)
    unread = [key for key, owner, f in leaves(cfg)
              if not f.metadata.get("derived") and (type(owner).__name__, f.name) not in reads]
    assert not unread, f"settings no code reads: {unread}"


def test_config_module_has_no_field_without_a_comment():
    source = Path(config_module.__file__).read_text().splitlines()
    for line in source:
        stripped = line.strip()
        if ": " in stripped and "= setting(" in stripped and not stripped.startswith("#"):
            assert "#" in line or source[source.index(line) - 1].strip().startswith("#"), line


def test_validate_refuses_a_bad_value_set_in_code():
    cfg = preset("smoke")
    cfg.images.caption_dropout = 2.0
    with pytest.raises(ConfigError, match="images.caption_dropout must be >= 0 and < 1"):
        validate(cfg)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_tunes_both_knobs_over_grids_of_one_size(name):
    """The same tuning effort for both families: as many truncation values as guidance values."""
    images = preset(name).images
    if images is not None:
        assert len(images.truncation_sweep) == len(images.guidance_sweep)
