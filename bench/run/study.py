"""`gvd study stability`: how each family fares across a hyperparameter search and seeds, not in one lucky run.

"GANs are hard to train" is a claim about the distribution of outcomes over reasonable settings. Following Lucic et
al. (2018, "Are GANs Created Equal?", sec. 5), each family gets K configurations drawn at random from a declared search
space of the knobs practitioners tune, each trained with S seeds on the same budget (steps x batch, the same real data
stream per seed for both families) on the 2D mixtures, and every run is classified by one rule for both families:

  diverged        a training loss became non-finite (the loop stops there; the run is still scored)
  low-quality     fewer than `hq_threshold` of the samples lie within 3 std of a mode (VEEGAN's high-quality test)
  mode-collapsed  good samples, but fewer modes captured than the mixture has
  converged       every mode captured and enough high-quality samples: a usable model

checked in that order (the first that applies). Each run is written to its own small JSON file in the study folder as
it finishes, so a study that is stopped and started again skips what it finished. bench/study_report.py turns
study.json into study.md / study.html.

Search spaces: each learning rate is log-uniform over [tuned / 5, tuned x 5] around the value the toy preset tuned for
that family, and each width is half, equal to or double the preset's: the same rule for both families.
"""

import dataclasses
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.config import ConfigError, MixtureBenchConfig, parse_sampler
from bench.core.executor import Executor, Shipping, execute
from bench.core.files import versions, write_json
from bench.core.guard import Interrupted, stop_on_signals
from bench.core.pool import torch_threads
from bench.data.mixtures import MIXTURES
from bench.errors import WorkerLost
from bench.evaluate.stability import divergence_step, history_losses, outcome, stability
from bench.families import BUILT_IN, Choice
from bench.report.study import write_study_report
from bench.run.mixtures import evaluate_mixture, train_mixture

SCHEMA = "gan-vs-diffusion/study/v1"
# the families with a search space (bench/families: gan.SEARCH_SPACE, diffusion.SEARCH_SPACE), in table order
FAMILIES = tuple(name for name, f in BUILT_IN.items() if f.search_space)
OUTCOMES = ("converged", "mode-collapsed", "low-quality", "diverged")  # "failed" (an exception) is kept apart
MAX_K, MAX_SEEDS = 1000, 100  # configurations and seeds a study may ask for (each a run of every dataset)


# ---------------------------------------------------------------- the search space


_TOY = MixtureBenchConfig()  # the toy preset's 2D settings: every knob the study does not vary keeps its value there
SPACES = {name: BUILT_IN[name].search_space for name in FAMILIES}


def describe_space(space: dict) -> dict:
    """JSON form of a search space: {knob: {"choice": [...]} or {"log_uniform": [low, high]}}."""
    return {k: {"choice": list(v.values)} if isinstance(v, Choice) else {"log_uniform": [v.low, v.high]}
            for k, v in space.items()}


def sample_configs(space: dict, k: int, seed: int, family: str) -> list[dict]:
    """K configurations drawn from `space`, reproducibly from (seed, family); knobs in the space's order."""
    rng = np.random.default_rng([seed, FAMILIES.index(family)])
    configs = []
    for _ in range(k):
        cfg = {}
        for name, dist in space.items():
            if isinstance(dist, Choice):
                cfg[name] = dist.values[int(rng.integers(len(dist.values)))]
            else:
                value = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
                cfg[name] = float(f"{value:.3g}")
        configs.append(cfg)
    return configs


# ---------------------------------------------------------------- outcomes and intervals


def classify(history: list[dict], family: str, metrics: dict, hq_threshold: float) -> str:
    """The outcome of one run (module docstring; bench/evaluate/stability.py outcome, the rule `gvd run`'s verdict
    uses too), from its per-step history and its final mixture metrics."""
    status = "diverged" if history and divergence_step(history, tuple(history_losses(history[0]))) is not None else "ok"
    return outcome(status, metrics, hq_threshold=hq_threshold)


# ---------------------------------------------------------------- one run


# Sizing of the default study (measured on the shared 2-core CPU this project is developed on): one run's CPU time at
# 2,000 steps ranges from ~10 s (a width-32 denoiser, a width-64 GAN) to ~100 s (a width-256 GAN with 2 D steps); the
# default's 7 GAN + 7 diffusion draws cost ~560 CPU-s per dataset and seed, so 2 datasets x 2 seeds take ~2,250 CPU-s:
# about 19 minutes on 2 cores at the CPU times measured under load, about 16 at the idle machine's (README).
@dataclass
class StudyConfig:
    datasets: list[str] = field(default_factory=lambda: ["ring8", "grid25"])  # built-in 2D mixtures
    k: int = 7  # configurations drawn per family
    seeds: int = 2  # training seeds per configuration (0 .. seeds-1)
    steps: int = 2000  # optimisation steps of every run (GAN: one G update, d_steps D updates)
    batch_size: int = 512  # real examples per step: every run sees steps x batch_size examples
    num_samples: int = 2500  # samples scored per run (VEEGAN / PacGAN)
    sampler: str = "ddpm:1000"  # the diffusion sampler scored (the suite's headline sampler)
    hq_threshold: float = 0.5  # a run with a smaller high-quality fraction is "low-quality"
    space_seed: int = 0  # seed of the configuration draws


def validate_study(study: StudyConfig) -> None:
    """Raise ConfigError naming the first bad field of a study config."""
    for name in ("k", "seeds", "steps", "batch_size", "num_samples"):
        value = getattr(study, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
    for name, most in (("k", MAX_K), ("seeds", MAX_SEEDS)):
        if getattr(study, name) > most:
            raise ConfigError(f"{name} must be at most {most} (a study of that size would run for weeks), got "
                              f"{getattr(study, name)}")
    if not 0 <= study.hq_threshold <= 1:
        raise ConfigError(f"hq_threshold must be in [0, 1], got {study.hq_threshold}")
    if not study.datasets:
        raise ConfigError("the study needs at least one dataset")
    for name in study.datasets:
        if name not in MIXTURES:
            raise ConfigError(f"unknown 2D dataset {name!r}; choose from {', '.join(MIXTURES)}")
    if len(set(study.datasets)) != len(study.datasets):
        raise ConfigError(f"a dataset is named twice in {study.datasets}")
    parse_sampler(study.sampler)


def study_mixture_config(family: str, knobs: dict, study: StudyConfig) -> MixtureBenchConfig:
    """The suite's 2D config of one study run: the toy preset's settings with the family's knobs set (its
    study_config), the study's budget and sampler, no metric-over-training curve."""
    mix = dataclasses.replace(_TOY, steps=study.steps, batch_size=study.batch_size, num_samples=study.num_samples,
                              samplers=[study.sampler], eval_checkpoints=0)
    return BUILT_IN[family].study_config(knobs, mix)


def run_one(family: str, knobs: dict, dataset: str, seed: int, study: StudyConfig, device="cpu") -> dict:
    """Train and score one (family, configuration, dataset, seed) with the suite's 2D stages (bench/mixtures.py:
    the same data stream, initial weights, training loop, EMA rule and evaluation seeds): the run's entry, outcome
    included. Both families are scored on their EMA weights, as in the suite."""
    wall, cpu = time.perf_counter(), time.process_time()
    mix = study_mixture_config(family, knobs, study)
    trained = train_mixture(BUILT_IN[family], dataset, seed, mix, device, progress=False)
    score = evaluate_mixture(BUILT_IN[family], trained, dataset, seed, mix)
    metrics = {k: v for k, v in next(iter(score.by_sampler.values())).items()
               if k not in ("nfe", "sample_seconds", "samples_per_s")}
    history = trained.history
    return {
        "dataset": dataset, "family": family, "knobs": knobs, "seed": seed, **trained.status,
        "outcome": classify(history, family, metrics, study.hq_threshold),
        "metrics": metrics, "metrics_raw": score.raw,
        "train": {"steps": len(history), "examples_seen": len(history) * study.batch_size,
                  "params": trained.train["params_total"]},
        "seconds": time.perf_counter() - wall,  # training + sampling + scoring
        "cpu_seconds": time.process_time() - cpu,  # the same, in this process's CPU time (what a busy machine hides)
        "stability": stability(history),
    }


# ---------------------------------------------------------------- the study: jobs, workers, resumption


def run_path(out: Path, dataset: str, family: str, config_id: int, seed: int) -> Path:
    return Path(out) / "runs" / f"{dataset}_{family}_c{config_id:02d}_seed{seed}.json"


def _spec(study: StudyConfig) -> dict:
    """What a finished run must have been trained and scored with to be reused (the rest of StudyConfig only says
    which runs there are)."""
    return {k: getattr(study, k) for k in ("steps", "batch_size", "num_samples", "sampler", "hq_threshold")}


def _finished(path: Path, knobs: dict, spec: dict) -> dict | None:
    """The run entry stored at path if it is a finished run of this configuration and budget, else None."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = entry.get("knobs") == knobs and entry.get("spec") == spec and entry.get("status") != "failed"
    return entry if same else None


def _job(job, root=None) -> dict:
    """One run, in a worker process or in this one, on `threads` torch threads (restored after); writes its file
    (under `root` instead of the study folder when given: a Ray task's own folder, bench/core/executor.py)."""
    family, config_id, knobs, dataset, seed, study, device, threads, path = job
    path = path if root is None else run_path(root, dataset, family, config_id, seed)
    with torch_threads(threads):
        try:
            entry = run_one(family, knobs, dataset, seed, study, device)
        except Exception as exc:  # noqa: BLE001 -- a broken run is a result (retried by the next invocation)
            entry = {"dataset": dataset, "family": family, "knobs": knobs, "seed": seed, "status": "failed",
                     "outcome": "failed", "error": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc(limit=5)}
    entry.update(config_id=config_id, spec=_spec(study))
    write_json(path, entry)
    return entry


def _run_pool(jobs: list, executor: Executor, out: Path) -> list[dict]:
    """Run the jobs on the executor: `workers` at a time in separate processes (in this process with one worker), or
    on Ray; on SIGINT / SIGTERM, or when a worker dies, the workers stop (none is left behind) and Interrupted /
    WorkerLost propagates with the runs that finished in `.finished` (bench/core/pool.py, bench/core/executor.py)."""
    bar = tqdm(total=len(jobs), desc="study runs", unit="run")
    finished: dict[int, dict] = {}  # by job position: the entries keep the design's order, whatever finishes first
    position = {id(job): i for i, job in enumerate(jobs)}

    def record(job, entry):
        finished[position[id(job)]] = entry
        bar.update()

    try:
        gpu = bool(jobs) and torch.device(jobs[0][6]).type == "cuda"  # on Ray: one GPU per run
        execute(executor, _job, jobs, record, Shipping(out), gpu=gpu,
                label=lambda job: f"{job[3]} {job[0]} configuration {job[1]} seed {job[4]}")
    except (Interrupted, WorkerLost) as stop:
        stop.finished = [finished[i] for i in sorted(finished)]
        raise
    finally:
        bar.close()
    return [finished[i] for i in sorted(finished)]


def _plan(study: StudyConfig, out: Path, configs: dict, device, threads: int) -> tuple[list[dict], list[tuple]]:
    """(entries of the runs already finished in `out`, jobs for the others)."""
    done, jobs = [], []
    for seed in range(study.seeds):  # seed outermost: a study stopped early holds whole seeds of every dataset
        for dataset in study.datasets:
            for config_id in range(study.k):
                for family in FAMILIES:
                    path = run_path(out, dataset, family, config_id, seed)
                    entry = _finished(path, configs[family][config_id], _spec(study))
                    if entry is not None:
                        done.append(entry)
                    else:
                        jobs.append((family, config_id, configs[family][config_id], dataset, seed, study, device,
                                     threads, path))
    return done, jobs


def run_study(study: StudyConfig, out: Path, device: torch.device, workers: int, train: bool = True,
              executor: Executor | None = None) -> dict:
    """Every (dataset, seed, configuration, family) run not already finished in `out` (none with train=False: the
    report of what has finished so far), then study.json and the report; the runs on the executor given (default:
    this machine's pool of `workers`). Returns the study record."""
    out = Path(out)
    executor = executor or Executor("local", workers)
    alone = executor.kind == "local" and executor.workers == 1  # the one process's threads; else each run on one thread
    configs = {f: sample_configs(SPACES[f], study.k, study.space_seed, f) for f in FAMILIES}
    done, jobs = _plan(study, out, configs, device, threads=torch.get_num_threads() if alone else 1)
    jobs = jobs if train else []
    where = "Ray" if executor.kind == "ray" else f"{workers} worker(s)"
    tqdm.write(f"study: {len(done)} runs already finished in {out}, {len(jobs)} to run on {where}")
    start = time.perf_counter()
    with stop_on_signals():  # SIGINT / SIGTERM: the finished runs are kept (their files), the report is written
        try:
            entries = done + _run_pool(jobs, executor, out)
        except (Interrupted, WorkerLost) as stop:  # a signal, a worker killed: the report of what finished
            _write_record(study, out, device, workers, configs, done + stop.finished, start, len(jobs))
            if isinstance(stop, WorkerLost):
                raise WorkerLost(f"{stop}; the finished runs are kept in {out}, the same `gvd study` command goes "
                                 "on") from None
            raise
    return _write_record(study, out, device, workers, configs, entries, start, len(jobs))


def _write_record(study: StudyConfig, out: Path, device, workers: int, configs: dict, entries: list[dict],
                  start: float, invoked: int) -> dict:
    """study.json and the report of the runs in `entries` (all of the design's, or those finished so far)."""
    order = {(d, s, c, f): i for i, (d, s, c, f) in enumerate(
        (d, s, c, f) for d in study.datasets for s in range(study.seeds) for c in range(study.k) for f in FAMILIES)}
    entries.sort(key=lambda e: order[(e["dataset"], e["seed"], e["config_id"], e["family"])])
    record = {
        "schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "versions": versions(), "workers": workers,
        "study": dataclasses.asdict(study),
        "search_space": {f: describe_space(SPACES[f]) for f in FAMILIES},
        # the toy preset's settings every run starts from; each configuration's knobs replace the fields they name
        "base": {"gan_net": dataclasses.asdict(_TOY.gan_net), "gan": dataclasses.asdict(_TOY.gan),
                 "denoiser_net": dataclasses.asdict(_TOY.denoiser_net),
                 "diffusion_train": dataclasses.asdict(_TOY.diffusion_train),
                 "diffusion_num_steps": _TOY.diffusion.num_steps},
        "configs": configs,
        "planned_runs": len(order),
        "wall_seconds": time.perf_counter() - start,  # this invocation's runs (0 when every run was reused)
        "runs_this_invocation": invoked,
        "runs": entries,
    }
    write_json(out / "study.json", record)
    write_study_report(out, record)
    return record
