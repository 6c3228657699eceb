"""The one small interface every family implements, and what the harness hands it.

A family is a record of plain functions (no base class to inherit): how it trains on a benchmark and how it draws
samples for prompts and per-sample seeds at a value of its knob. The harness gives every family the same task (the
same data, the same shared data stream, the same frozen text encoder, the same seeds and budget) and scores whatever
it draws by one protocol (bench/evaluate). A family runs on the benchmarks whose functions it provides:

    image    train_image(ImageTask) -> Trained;   sample_image(Trained, Prompts, knob, net) -> (images, nfe)
    mixture  train_mixture(MixtureTask) -> Trained; sample_mixture(Trained, seeds, label, net) -> (points, nfe)

role "model" families enter the verdict; role "calibration" families (held-out real data, a copier of training
images) are reference rows that make every number readable and never lead anything. A user's family is a module
with a factory returning a Family (README: "Your own family"), given as `--family NAME=module:factory`.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bench.core import distributed
from bench.core.seeding import batch_stream
from bench.data.mixtures import real_batches
from bench.train.loops import checkpoint_interval

ROLES = ("model", "calibration")


@dataclass(frozen=True)
class Knob:
    """The setting that trades fidelity for diversity at sampling time, tuned by one rule for every family."""

    name: str  # "truncation psi", "guidance scale"
    symbol: str  # "psi", "s"
    neutral: float = 1.0  # the value that leaves the model as trained (no truncation, no guidance)


@dataclass
class Prompts:
    """A set of prompts with their per-sample seeds and text encodings: what every family draws for."""

    captions: list[str]
    labels: torch.Tensor  # (N,) the mode each prompt asks for
    text: tuple  # (states (N, L, W), pooled (N, E), mask (N, L)) from the shared frozen text encoder
    seeds: torch.Tensor  # (N,) per-sample seeds
    occurrence: torch.Tensor  # (N,) row i is the occurrence[i]-th prompt of its class (0 = the first)

    def rows(self, part: slice) -> "Prompts":
        """The prompts of rows `part` (one process's block under torchrun, the first n of a curve)."""
        return Prompts(self.captions[part], self.labels[part], tuple(x[part] for x in self.text), self.seeds[part],
                       self.occurrence[part])


@dataclass
class Trained:
    """What a family's training returns, the same fields for every family."""

    sampler: object  # what the family's sample function reads: its networks, or the images it replays
    status: dict  # {"status": "ok"}, {"status": "diverged", "diverged_at_step": k} or failed_status(exc)
    train: dict  # the run entry's "train" record: steps, examples_seen, seconds, params, flops, recipe, ...
    histories: dict[str, list[dict]] = field(default_factory=dict)  # per network, the headline's first
    snapshots: list = field(default_factory=list)  # Snapshot(step, raw, ema) for the metric-over-training curve
    raw: object | None = None  # the raw (non-EMA) network, scored beside the EMA headline
    ema_decay: float | None = None
    modules: dict = field(default_factory=dict)  # what the checkpoint keeps: name -> nn.Module
    networks: dict = field(default_factory=dict)  # the resolved network configs it was built with (asdict)

    @property
    def history(self) -> list[dict]:
        """The headline network's per-step rows (stability, divergence)."""
        return next(iter(self.histories.values()), [])


@dataclass(frozen=True)
class Family:
    name: str  # the key in results.json ("gan", "diffusion", ...)
    label: str  # as the report writes it
    role: str = "model"  # "model" (enters the verdict) or "calibration" (a reference row)
    knob: Knob | None = None  # None: nothing to tune or sweep
    grid: Callable[[object], list[float]] = lambda cfg: []  # the knob's values to tune over, from the image config
    train_image: Callable | None = None  # (ImageTask) -> Trained
    sample_image: Callable | None = None  # (Trained, Prompts, knob value, net or None) -> (images, NFE per sample)
    load_image: Callable | None = None  # (modules' states, metadata, device, TextModels) -> Trained: `gvd sample`
    autoencode: Callable | None = None  # (Trained, images) -> reconstructions: a latent model's autoencoder, scored
    train_mixture: Callable | None = None  # (MixtureTask) -> Trained
    sample_mixture: Callable | None = None  # (Trained, seeds, sampler label, net or None) -> (points, NFE)
    mixture_samplers: Callable[[object], list[str]] = lambda mix: ["G"]  # 2D sampler labels, the headline first
    search_space: dict = field(default_factory=dict)  # `gvd study stability`: knob -> Choice / LogUniform
    study_config: Callable | None = None  # (knobs, toy MixtureBenchConfig) -> the 2D config of one study run
    # (Trained, Prompts, a test image (C, H, W), knob grid) -> {name: tensor or str}: how the family makes an image,
    # drawn by the report (bench/report/process.py); None: only the snapshot strip every image family gets
    explain_image: Callable | None = None
    description: str = ""

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"family {self.name!r}: role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if (self.train_image is None) != (self.sample_image is None):
            raise ValueError(f"family {self.name!r}: give both train_image and sample_image, or neither")
        if (self.train_mixture is None) != (self.sample_mixture is None):
            raise ValueError(f"family {self.name!r}: give both train_mixture and sample_mixture, or neither")

    def runs_on(self, benchmark: str) -> bool:
        """Whether the family has functions for a benchmark: "image" or "mixture"."""
        return (self.train_image if benchmark == "image" else self.train_mixture) is not None

    def record(self) -> dict:
        """What results.json keeps of the family, so a report can be rebuilt without its code."""
        knob = None if self.knob is None else {"name": self.knob.name, "symbol": self.knob.symbol,
                                               "neutral": self.knob.neutral}
        return {"label": self.label, "role": self.role, "knob": knob, "description": self.description,
                "benchmarks": [b for b in ("mixture", "image") if self.runs_on(b)]}


@dataclass
class ImageTask:
    """One (dataset, seed) of the image benchmark, the same for every family that trains on it."""

    dataset: str
    seed: int
    cfg: object  # the ImageBenchConfig: steps, batch sizes, each built-in family's own settings
    device: torch.device
    data: object  # the training split (bench.data.images.ImageData): what the models train on
    images: torch.Tensor  # (N, C, H, W) its images, resident on the device
    text: object  # the shared frozen text encoder (bench.families.text.TextModels)
    captions: tuple  # its encodings of every training caption: states (N, L, W), pooled (N, E), mask (N, L)
    empty: tuple  # of the empty caption: states (1, L, W), mask (1, L) (classifier-free guidance)
    configs: dict  # every network config with the shapes read from the data (bench.families.text.network_configs)
    test: object  # the test split: only calibration families draw from it (never trained on)
    held_out: torch.Tensor  # (M,) indices of test images outside the scored reference set
    states: object  # bench.train.state.StateFiles: where each training resumes from and saves to
    progress: bool = True
    flops_budget: float | None = None  # budget axis "compute": the training FLOPs to spend (None: cfg.steps)

    def batches(self, batch_size: int):
        """The seed's real-data stream: step -> (batch_size,) indices into the training split, the same for every
        family at the same batch size (bench/core/seeding.py batch_stream; the built-in families draw from it)."""
        return batch_stream(len(self.data.labels), batch_size, self.seed)


@dataclass
class MixtureTask:
    """One (dataset, seed) of the 2D mixture benchmark."""

    dataset: str
    seed: int
    mix: object  # the MixtureBenchConfig
    device: torch.device
    states: object  # bench.train.state.StateFiles
    progress: bool = True

    def desc(self, part: str) -> str:
        """The progress bar's label of one training."""
        return f"{self.dataset}_{part}_seed{self.seed}"

    def begin(self, part: str) -> tuple:
        """What every 2D training starts from, the same for every family: the real data stream of the seed (unit
        variance; its generator seeded from the seed alone, so every family sees the same batches), torch's global
        generator seeded from the seed (initial weights), a generator for the family's own noise, the training's
        resumable state and the snapshot interval of the metric-over-training curve.
        Returns (real_batch(step) -> (x, None), noise generator, TrainState or None, snapshot interval)."""
        data_gen = torch.Generator().manual_seed(self.seed)
        real_batch = real_batches(self.dataset, self.mix.batch_size, self.device, data_gen)
        torch.manual_seed(self.seed)
        train_gen = torch.Generator().manual_seed(self.seed + 7919)
        state = self.states.open(part, self.mix.steps, {"data": data_gen, "train": train_gen})
        return real_batch, train_gen, state, checkpoint_interval(self.mix.steps, self.mix.eval_checkpoints)


@dataclass(frozen=True)
class Choice:
    """A study knob drawn uniformly from its values (bench/run/study.py)."""

    values: tuple


@dataclass(frozen=True)
class LogUniform:
    """A study knob drawn log-uniformly in [low, high], rounded to 3 significant digits."""

    low: float
    high: float


def train_record(*, steps: int, batch: int, seconds: float, params: dict[str, int], step_flops: float,
                 setup_flops: float = 0.0, **extra) -> dict:
    """The run entry's "train" record, the same fields for every family: steps, examples seen (steps x batch, plus
    what `extra_examples` adds), wall seconds, images/s, parameters per network and in all, training FLOPs (a
    stage before the steps, such as an autoencoder, plus steps x the FLOPs of one step, counted on the networks
    being trained: bench/train/state.steps_to_run), the batch per process under torchrun, and whatever else the
    family records (its recipe, a stage 1 ...)."""
    seen = steps * batch + extra.pop("extra_examples", 0)
    return {"steps": steps, "examples_seen": seen, "seconds": seconds,
            "images_per_s": steps * batch / max(seconds, 1e-9), "params": params,
            "params_total": sum(params.values()), "flops": setup_flops + steps * step_flops, "step_flops": step_flops,
            "setup_flops": setup_flops, **distributed.batch_record(batch), **extra}
