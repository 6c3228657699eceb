"""The family table: every family the suite can run, registered in one place.

    gan            bench/families/gan.py          one generator pass per sample
    diffusion      bench/families/diffusion.py    a denoiser sampled step by step
    held-out-real  bench/families/calibration.py  real data no model saw (a calibration row)
    copier         bench/families/calibration.py  training images replayed (a calibration row)

A user's family joins with `--family NAME=MODULE:FACTORY` (MODULE an importable module or a path to a .py file;
FACTORY() returns a bench.families.Family): it runs through the same protocol and shows in every table. The run's
config records the spec, so `gvd run --resume` finds it again; results.json records each family's description, so
`gvd report` and `gvd compare` need no code of it.
"""

import dataclasses
import importlib
import importlib.util
import re
import sys
from pathlib import Path

from bench.core.guard import USER_FAULTS
from bench.errors import UserError
from bench.families import calibration, diffusion, gan
from bench.families.interface import (
    Choice,
    Family,
    ImageTask,
    Knob,
    LogUniform,
    MixtureTask,
    Prompts,
    Trained,
    train_record,
)

__all__ = ["BUILT_IN", "Choice", "Family", "FamilyError", "ImageTask", "Knob", "LogUniform", "MixtureTask", "Prompts",
           "Trained", "load_user_family", "resolve", "train_record"]

BUILT_IN = {f.name: f for f in (gan.FAMILY, diffusion.FAMILY, calibration.HELD_OUT, calibration.COPIER)}
SPEC = re.compile(r"^([a-z][a-z0-9_-]*)=([^:]+):([A-Za-z_][A-Za-z0-9_]*)$")


class FamilyError(UserError):
    """A family that cannot be found or loaded; the message is one line naming it (exit status 2)."""


def _import(module: str):
    """An importable module by name, or a .py file by path."""
    if module.endswith(".py") or "/" in module:
        path = Path(module)
        if not path.is_file():
            raise FamilyError(f"family module {module}: no such file")
        spec = importlib.util.spec_from_file_location(f"gvd_family_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod
    return importlib.import_module(module)


def load_user_family(spec: str) -> Family:
    """The Family of `NAME=MODULE:FACTORY`, named NAME. FamilyError (one line) when it cannot be had."""
    m = SPEC.match(spec.strip())
    if not m:
        raise FamilyError(f"--family {spec!r}: expected NAME=MODULE:FACTORY, e.g. vae=my_family.py:make (NAME in "
                          "lower case letters, digits, '-' and '_')")
    name, module, factory = m.groups()
    if name in BUILT_IN:
        raise FamilyError(f"--family {spec!r}: {name!r} is a built-in family; choose another name")
    try:
        family = getattr(_import(module), factory)()
    except FamilyError:
        raise
    except USER_FAULTS as exc:  # the user's code: whatever it raises (sys.exit(3) included) is one line here
        raise FamilyError(f"--family {spec!r}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not isinstance(family, Family):
        raise FamilyError(f"--family {spec!r}: {factory}() returned {type(family).__name__}, not a "
                          "bench.families.Family")
    return dataclasses.replace(family, name=name)


def resolve(names: list[str], user_specs: list[str] = ()) -> list[Family]:
    """The families a run asks for, in its order: built-in names and the names of its user specs."""
    known = dict(BUILT_IN)
    for spec in user_specs:
        family = load_user_family(spec)
        known[family.name] = family
    missing = [n for n in names if n not in known]
    if missing:
        raise FamilyError(f"families: unknown family {', '.join(map(repr, missing))}; choose from {', '.join(known)} "
                          "or add one with --family NAME=MODULE:FACTORY")
    return [known[n] for n in names]
