"""What the suite offers, by name: presets and datasets. Imports nothing heavy (no torch), so `gvd --help`,
`gvd presets` and `gvd datasets` answer at once; bench/config.py builds the presets named here and
bench/data/registry.py loads the datasets.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """One measured wall time of `gvd run --preset NAME` (start to exit), and how it was measured."""

    seconds: float
    how: str  # the machine, the load (`uptime`), the date, what was cached


# THE ONE PLACE the run times are written: README.md (quick start and presets table), reports/README.md and `gvd
# presets` quote these (tests/test_docs.py checks every one of them). Re-measure a preset, update its line here and
# the README lines that test names. A preset without a line has no measured time and none is quoted.
MEASURED = {
    # the committed example (reports/example/results.json "stages" wall_s): `gvd run`, 3 seeds, 2 jobs at a time;
    # /usr/bin/time: 2,291 user + 27 system CPU-seconds. The example before the readers and the panel (7db110a) took
    # 1,310 s on a quieter machine.
    "quick": Timing(2755, "2 CPU cores shared with other work (load average 4 to 6.5, median 5.3: a test suite "
                          "and two other jobs beside it), 3 seeds, 2 jobs at a time, bf16 autocast, the judge, readers "
                          "and panel cached from an earlier run; 2,318 CPU-seconds, about 20 minutes on 2 idle cores; "
                          "the committed example, 2026-12-08"),
    "toy": Timing(194, "2 CPU cores, 3 seeds, 2 jobs at a time"),
    # `/usr/bin/time gvd run --preset smoke` with an empty GVD_CACHE, 2026-12-08: 124 CPU-seconds
    "smoke": Timing(260, "2 CPU cores shared with other work (load 4 to 9), an empty cache: the judge and the readers "
                         "train first"),
}


def duration(seconds: float) -> str:
    """A wall time as README quotes it: "47 s", "3 min 14 s", "21 min 50 s"."""
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def measured(name: str) -> str:
    """"21 min 50 s measured on 2 CPU cores", or "" for a preset without a measured time."""
    return f"{duration(MEASURED[name].seconds)} measured on 2 CPU cores" if name in MEASURED else ""


# name -> one-line description; `gvd run` without --preset runs DEFAULT_PRESET. bench/config.py has one factory each.
PRESETS = {
    "quick": f"2D benchmarks + shapes 16x16: DCGAN vs latent diffusion, 3 seeds (the default; {measured('quick')})",
    "full": "every dataset at 32x32, larger models, 3 seeds: for a GPU (--device cuda)",
    "toy": f"2D ring8 + grid25, 3 seeds, GAN vs diffusion ({measured('toy')})",
    "smoke": f"a plumbing check of every stage on tiny models: its numbers mean nothing ({measured('smoke')})",
    "stacked": "stacked digits 16x16 (1000 modes), 5,000 samples, vs published rows (CPU; not timed)",
}
DEFAULT_PRESET = "quick"


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, before it is loaded: its benchmark, channels and modes (None: read from the data)."""

    name: str  # as given: "shapes", "folder:/data/cats", ...
    kind: str  # "mixture" (2D points) or "image"
    channels: int | None  # 2D mixtures: 2 coordinates; images: 1 or 3; None until a folder is read
    num_modes: int | None  # mixture components or classes; None until a folder is read
    description: str


# name (or "kind:" prefix) -> (kind, channels, modes, description)
_BUILT_IN = {
    "ring8": ("mixture", 2, 8, "8 Gaussians on a circle of radius 1, std 0.01 (VEEGAN, PacGAN 2D ring)"),
    "grid25": ("mixture", 2, 25, "25 Gaussians on {-4,-2,0,2,4}^2, std 0.05 (VEEGAN, PacGAN 2D grid)"),
    "shapes": ("image", 3, 24, "procedurally drawn coloured shapes with captions ('a small red circle'); "
                               "4 shapes x 6 colours = 24 modes"),
    "digits": ("image", 1, 10, "scikit-learn's 1,797 real 8x8 handwritten digits, resized, 1 channel; 10 modes"),
    "stacked-digits": ("image", 3, 1000, "three real digits stacked as RGB channels (Stacked MNIST protocol); "
                                         "1000 modes"),
    "folder:": ("image", None, None, "an image folder with class sub-folders (ImageFolder), optional metadata.csv "
                                     "captions"),
    "mnist:": ("image", 1, 10, "torchvision MNIST from a local root (no download); 10 modes"),
    "fashion-mnist:": ("image", 1, 10, "torchvision Fashion-MNIST from a local root (no download); 10 modes"),
    "cifar10:": ("image", 3, 10, "torchvision CIFAR-10 from a local root (no download); 10 modes"),
}
_PLACEHOLDER = {"folder:": "folder:PATH", "mnist:": "mnist:ROOT", "fashion-mnist:": "fashion-mnist:ROOT",
                "cifar10:": "cifar10:ROOT"}


def _key(name: str) -> str | None:
    """The _BUILT_IN key a dataset name falls under, or None."""
    kind, sep, where = name.partition(":")
    if not sep:
        return name if name in _BUILT_IN and not name.endswith(":") else None
    return f"{kind}:" if f"{kind}:" in _BUILT_IN and where else None


def known(name: str, kind: str | None = None) -> bool:
    """Whether a dataset name is one the suite can load (of the given kind: "mixture" or "image")."""
    key = _key(name)
    return key is not None and (kind is None or _BUILT_IN[key][0] == kind)


def static_info(name: str) -> DatasetInfo:
    """DatasetInfo from the name alone (channels and modes None for a folder); KeyError for an unknown name."""
    key = _key(name)
    if key is None:
        raise KeyError(name)
    kind, channels, modes, description = _BUILT_IN[key]
    return DatasetInfo(name, kind, channels, modes, description)


def dataset_names(kind: str | None = None) -> dict[str, str]:
    """Every dataset name (a placeholder such as folder:PATH for the kinds that take a path) -> description."""
    return {_PLACEHOLDER.get(k, k): v[3] for k, v in _BUILT_IN.items() if kind is None or v[0] == kind}
