"""The family table: every family the suite can run, registered in one place.

    gan            bench/families/gan.py          one generator pass per sample
    diffusion      bench/families/diffusion.py    a denoiser sampled step by step
    held-out-real  bench/families/calibration.py  real data no model saw (a calibration row)
    copier         bench/families/calibration.py  training images replayed (a calibration row)

A user's family joins with `--family NAME=MODULE:FACTORY` (MODULE an importable module or a path to a .py file;
FACTORY() returns a bench.families.Family): it runs through the same protocol and shows in every table. The run's
config records the spec (a file's path made absolute), so `gvd run --resume` finds it again; results.json records
each family's description, so `gvd report` and `gvd compare` need no code of it. NAME is checked against every name
the suite gives files and rows (RESERVED; names_clash): a family named like one would overwrite or be read as it.
"""

import dataclasses
import importlib
import importlib.util
import re
import sys
from pathlib import Path

from bench.core.guard import USER_FAULTS
from bench.core.rundir import FILE_PARTS
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
           "RESERVED", "Trained", "absolute_spec", "check_names", "load_user_family", "names_clash", "resolve",
           "train_record"]

BUILT_IN = {f.name: f for f in (gan.FAMILY, diffusion.FAMILY, calibration.HELD_OUT, calibration.COPIER)}
SPEC = re.compile(r"^([a-z][a-z0-9_-]*)=([^:]+):([A-Za-z_][A-Za-z0-9_]*)$")
# Every name the suite itself gives a file part or a row, beside the families': the run folder's parts that are no
# family (core/rundir.py FILE_PARTS: the real images' grid, the shared text encoder's history, the prompts), the
# throughput stage's rows of the diffusion family's own networks ("vae", "text"), and the calibration rows' words.
RESERVED = frozenset({*BUILT_IN, *FILE_PARTS, "vae", "text", "held-out", "real", "copier", "tuned"})
SEPARATORS = ("-", "_")  # a family's files are "<name>", "<name>-<network>", "<name>_tuned", "<name>_<sampler>"


class FamilyError(UserError):
    """A family that cannot be found or loaded; the message is one line naming it (exit status 2)."""


def _is_file(module: str) -> bool:
    return module.endswith(".py") or "/" in module


def absolute_spec(spec: str) -> str:
    """NAME=MODULE:FACTORY with a .py file's path made absolute (an importable module's name as it is), so the
    run's config finds the file again from any folder (`gvd sample`, `gvd run --resume` run elsewhere)."""
    m = SPEC.match(spec.strip())
    if not m or not _is_file(m.group(2)):
        return spec
    name, module, factory = m.groups()
    return f"{name}={Path(module).expanduser().absolute()}:{factory}"


def names_clash(name: str, others) -> str | None:
    """Why a family called `name` would share a file or a row with the suite's own names or another family's
    (`others`), or None. A name extending another with a separator clashes too: "diffusion-vae" is the diffusion
    family's VAE history, "gan_tuned" the GAN's tuned grid."""
    if name in RESERVED:
        return "is a built-in family" if name in BUILT_IN else "is a name the suite uses for its own files and rows"
    for other in (*RESERVED, *others):
        if other == name:
            return "is given twice"
        for sep in SEPARATORS:
            if name.startswith(other + sep) or other.startswith(name + sep):
                return f"would share file names with {other!r} ({other}{sep}...)"
    return None


def check_names(user_specs: list[str]) -> None:
    """Every user family's name clashes with no name of the suite's and no other user family's (FamilyError)."""
    seen = []
    for spec in user_specs:
        name = spec.partition("=")[0].strip()
        clash = names_clash(name, seen)
        if clash:
            raise FamilyError(f"--family {spec!r}: the name {name!r} {clash}; choose another name")
        seen.append(name)


def _import(module: str):
    """An importable module by name, or a .py file by path."""
    if _is_file(module):
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
    clash = names_clash(name, ())
    if clash:
        raise FamilyError(f"--family {spec!r}: the name {name!r} {clash}; choose another name")
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
    check_names(user_specs)
    for spec in user_specs:
        family = load_user_family(spec)
        known[family.name] = family
    missing = [n for n in names if n not in known]
    if missing:
        raise FamilyError(f"families: unknown family {', '.join(map(repr, missing))}; choose from {', '.join(known)} "
                          "or add one with --family NAME=MODULE:FACTORY")
    return [known[n] for n in names]
