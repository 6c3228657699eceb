"""Typed configs of a benchmark run and the named presets.

A run is a `SuiteConfig`: which benchmarks, which seeds, and each benchmark's own config. The configs of the networks
live next to the networks (models/*.py), those of the training loops next to the loops (bench/train.py); this file
only composes them. The CLI's `--preset` choices are the keys of `PRESETS`; `--set a.b=value` edits one field.
"""

import dataclasses
import json
from dataclasses import dataclass, field

from bench.imagebench import ImageBenchConfig
from bench.judge import JudgeConfig
from bench.train import DiffusionTrainConfig, GANTrainConfig
from models.dcgan import DCGANConfig
from models.diffusion import DiffusionConfig
from models.mlp import MLPConfig
from models.text import ImageTowerConfig, TextConfig
from models.unet import UNetConfig
from models.vae import VAEConfig


class ConfigError(ValueError):
    """A bad user setting; the message is one line naming it."""


@dataclass
class MixtureBenchConfig:
    """The 2D mode-collapse benchmark (VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al. 2018)."""

    datasets: list[str] = field(default_factory=lambda: ["ring8", "grid25"])  # built-in 2D mixtures
    steps: int = 2000  # optimisation steps of each model (GAN: one D and one G update per step)
    batch_size: int = 512  # real examples per step, the same for both models: equal examples seen
    num_samples: int = 2500  # samples scored per (dataset, model, seed), as in VEEGAN/PacGAN
    gan_net: MLPConfig = field(default_factory=lambda: MLPConfig(width=128, depth=3))
    # lr 1e-3: in a sweep on both mixtures (2e-4 vs 1e-3, 2,000 steps) the GAN at DCGAN's 2e-4 had not yet put one
    # sample within 3 std of a ring mode; 1e-3 reached 8 modes / 74% high quality. Tuned for the GAN, not against it.
    gan: GANTrainConfig = field(default_factory=lambda: GANTrainConfig(lr=1e-3, lr_d=1e-3))
    denoiser_net: MLPConfig = field(default_factory=lambda: MLPConfig(width=64, depth=2, fourier=16))
    # v-prediction: with eps-prediction the x0 estimate at the noisiest cosine level divides by sqrt(alpha_bar_T) ~ 0,
    # which wrecks the first step of DPM-Solver++ (0 of 25 grid modes at 20 NFE, against 25 with v).
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(schedule="cosine", prediction="v"))
    diffusion_train: DiffusionTrainConfig = field(default_factory=DiffusionTrainConfig)
    samplers: list[str] = field(default_factory=lambda: ["ddpm:1000", "dpmpp2m:20"])  # name:steps; the first is the headline
    eval_checkpoints: int = 10  # metric-over-training: score the models at this many evenly spaced steps (0 = off)
    curve_sampler: str = "dpmpp2m:20"  # diffusion sampler at those checkpoints (20 NFE: the curve needs trends, cheaply)


@dataclass
class SuiteConfig:
    name: str = "toy"  # the preset it came from; also the default run-folder name
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # one training run per seed, per dataset, per model
    mixtures: MixtureBenchConfig | None = field(default_factory=MixtureBenchConfig)  # None = skip the 2D benchmark
    images: ImageBenchConfig | None = None  # None = skip the image benchmark
    throughput_budget_s: float = 30.0  # seconds the report's throughput section may spend measuring (0 = skip)


def _toy() -> SuiteConfig:
    return SuiteConfig(name="toy", seeds=[0, 1, 2], mixtures=MixtureBenchConfig())


def _smoke() -> SuiteConfig:
    mix = MixtureBenchConfig(
        steps=30,
        batch_size=64,
        num_samples=200,
        gan_net=MLPConfig(width=16, depth=2),
        denoiser_net=MLPConfig(width=16, depth=1),
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
        fid_bootstrap=10,  # enough to exercise the interval
        vae=VAEConfig(channels=(8, 8), latent_channels=2, groups=4),
        text=TextConfig(width=16, layers=1, heads=2, embed_dim=16),
        tower=ImageTowerConfig(channels=(8, 16), embed_dim=16, groups=4),
        unet=UNetConfig(channels=(16, 16), layers_per_block=1, attention=(False, True), heads=2, groups=4),
        dcgan=DCGANConfig(z_dim=8, width=8),
        diffusion=DiffusionConfig(schedule="scaled_linear", num_steps=50, prediction="v"),
        judge=JudgeConfig(width=16, steps=300, batch_size=64),  # 100% held-out on shapes 16x16 in ~4 s
    )
    return SuiteConfig(name="smoke", seeds=[0], mixtures=mix, images=img, throughput_budget_s=3.0)


def _quick() -> SuiteConfig:
    # Shapes at 16x16 rather than 32x32: on two CPU cores the VAE, not the UNet, limits prompt accuracy (small shapes
    # blur away in a 4x-downsampling VAE at 32x32), so the quick preset halves the resolution and downsamples once,
    # keeping 8x8x4 latents. `full` runs 32x32.
    img = ImageBenchConfig(
        resolution=16,
        num_train=10000,
        steps=1600,  # measured: 1,000 steps gave prompt accuracy 0.54 in a 7.6-minute quick run; spend the headroom here
        batch_size=128,
        vae_steps=800,
        vae_batch_size=64,
        text_steps=300,
        num_samples=1000,
        vae=VAEConfig(channels=(32, 64), latent_channels=4),
        unet=UNetConfig(channels=(32, 64, 64), layers_per_block=1, attention=(False, True, True)),
        dcgan=DCGANConfig(width=32, z_dim=64),
    )
    return SuiteConfig(name="quick", seeds=[0], mixtures=MixtureBenchConfig(), images=img)


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
        truncation_sweep=[0.5, 1.0],
        vae=VAEConfig(channels=(32, 64), latent_channels=4),
        unet=UNetConfig(channels=(32, 64), layers_per_block=1, attention=(False, True)),
        dcgan=DCGANConfig(width=32, z_dim=64),
    )
    return SuiteConfig(name="stacked", seeds=[0], mixtures=None, images=img)


# name -> (factory, one-line description). `gvd run` without --preset runs DEFAULT_PRESET.
PRESETS = {
    "quick": (_quick, "2D benchmarks (1 seed) + shapes 16x16: DCGAN vs latent diffusion (about 15 minutes on 2 CPU cores)"),
    "full": (_full, "every dataset at 32x32, larger models, 3 seeds: for a GPU (--device cuda)"),
    "toy": (_toy, "2D ring8 + grid25, 3 seeds, GAN vs diffusion (about 10 minutes on 2 CPU cores)"),
    "smoke": (_smoke, "a seconds-long run of every stage on tiny models, for tests and trying the CLI"),
    "stacked": (_stacked, "stacked digits 16x16 (1000 modes), 5,000 samples, modes/KL vs published (about 10 min on 2 CPUs)"),
}
DEFAULT_PRESET = "quick"


def preset(name: str) -> SuiteConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name][0]()


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


def apply_override(cfg, assignment: str):
    """Apply one `a.b.c=value` edit in place; the value is parsed as the type of the field it replaces."""
    key, sep, text = assignment.partition("=")
    if not sep:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    *path, last = key.strip().split(".")
    obj = cfg
    for part in path:
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, part):
            raise ConfigError(f"unknown setting {key!r}")
        obj = getattr(obj, part)
    if not dataclasses.is_dataclass(obj) or last not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"unknown setting {key!r}")
    current = getattr(obj, last)
    try:
        value = _coerce(text, current)
    except (ValueError, json.JSONDecodeError):
        raise ConfigError(f"bad value {text!r} for {key} (expected {type(current).__name__})") from None
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    setattr(obj, last, value)


_POSITIVE = ("steps", "batch_size", "num_samples", "lr", "lr_d", "d_steps", "width", "depth", "num_steps",
             "curve_samples", "sweep_samples")


def validate(cfg, where: str = "") -> None:
    """Raise ConfigError naming the first nonsensical field: non-positive sizes, steps and learning rates."""
    if isinstance(cfg, SuiteConfig) and not cfg.seeds:
        raise ConfigError("--seeds needs at least one seed")
    for f in dataclasses.fields(cfg):
        value, name = getattr(cfg, f.name), f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            validate(value, f"{name}.")
        elif f.name in _POSITIVE and isinstance(value, (int, float)) and not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if isinstance(cfg, ImageBenchConfig):
        from bench.images import IMAGE_DATASETS

        prefixes = {k.partition(":")[0] + k.partition(":")[1] for k in IMAGE_DATASETS}  # "shapes", "folder:", ...
        for name in cfg.datasets:
            if name.partition(":")[0] + name.partition(":")[1] not in prefixes or name.endswith(":"):
                raise ConfigError(f"unknown image dataset {name!r}; choose from {', '.join(IMAGE_DATASETS)}")
        parse_sampler(cfg.sampler)
    if isinstance(cfg, MixtureBenchConfig):
        from bench.data import MIXTURES

        for name in cfg.datasets:
            if name not in MIXTURES:
                raise ConfigError(f"unknown 2D dataset {name!r}; choose from {', '.join(MIXTURES)}")
        for spec in [*cfg.samplers, cfg.curve_sampler]:
            parse_sampler(spec)


def parse_sampler(spec: str) -> tuple[str, int]:
    """'ddim:50' -> ('ddim', 50)."""
    from models.samplers import SAMPLERS

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


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
