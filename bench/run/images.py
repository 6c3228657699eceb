"""The image benchmark for one (dataset, seed): every family of the run on the same data, the same frozen text
encoder, the same prompts and per-sample seeds. Stages, each returning a small dataclass:

    prepare   the fixed train/test split, the scored reference set and the held-out test images, the judge (a frozen
              classifier: mode labels and features; cached across runs) and Inception if asked for
    shared    the text encoder, CLIP pre-trained then frozen: every family reads it, none is charged for it
    train     each family's own training from the same ImageTask (bench/families); a family that raises is its own
              failed entry, the others go on
    evaluate  each family's samples scored by one protocol (bench/evaluate/images.py)
    record    run entries for results.json, assembled from the stages' results; histories, checkpoints and sample
              grids through the RunDir

The data and the judge do not depend on the seed (the judge trains once per dataset config and is cached), so seeds
measure training variance only.
"""

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench.core import distributed
from bench.core.files import WriteError, noting_cache, used_cache
from bench.core.guard import USER_FAULTS, error_text, failed_status, hold_signals
from bench.core.results import failed_entry
from bench.core.rundir import RunDir, load_checkpoint, save_checkpoint
from bench.core.seeding import sample_seeds
from bench.core.stages import stage
from bench.data.encoder import Reader, load_or_train
from bench.data.images import ImageData, load_splits, reference_set, split_hash, split_record
from bench.data.inception import Backbone, inception_backbone
from bench.data.judge import Judge, judge_failure, load_or_train_judge
from bench.evaluate.images import TUNING_RULE, EvalSet, FamilyScore, check_images, eval_set, evaluate_family
from bench.evaluate.panel import calibration_panel
from bench.evaluate.process import explain
from bench.families import Family, ImageTask, Prompts, Trained
from bench.families.text import TextModels, network_configs
from bench.train.images import train_text_encoder
from bench.train.loops import autocast, initial_weight_share, precision
from bench.train.state import StateFiles
from models.mlp import num_params
from models.text import Tokenizer

# ---------------------------------------------------------------- stage 1: data, reference, judge


@dataclass
class Prepared:
    dataset: str
    data: ImageData  # the training split: the families, the text encoder and the judge train on it
    test: ImageData  # the test split: the reference of every metric and the judge's accuracy
    reference: ImageData  # the scored reference set: test images, the same for every seed and family
    reference_record: dict  # how it was drawn (asked, given, short, hash)
    held_out: torch.Tensor  # indices of the test images outside it (validation reference, held-out real row)
    judge: Judge | None  # None for data without classes (no labels to train one on)
    inception: Backbone | None  # Inception-v3 (the extra's file or clean-fid's), when asked for and present
    inception_missing: str | None  # why Inception metrics were asked for and cannot be had
    cache_dir: Path  # where judges and reference features are cached
    failure: str | None = None  # why the run cannot go on (a judge below its accuracy floor)
    encoder: Reader | None = None  # the label-free encoder (None for data without classes: Inception reads those)
    factors: Reader | None = None  # the generator factors' read-out, for data that record them (shapes)


def prepare(dataset: str, cfg, device: torch.device, cache_dir) -> Prepared:
    """The dataset's fixed train/test split and reference set (neither varies with the seed), its judge (fitted on
    train, measured on test; cached by the splits' content), its label-free encoder and factor read-out (likewise)
    and Inception if asked for."""
    data, test = load_splits(dataset, cfg.num_train, cfg.num_test, cfg.resolution)
    reference, record, held_out = reference_set(test, cfg.num_samples, seed=0)
    data_key = {"dataset": dataset, "num_train": cfg.num_train, "num_test": cfg.num_test, "resolution": cfg.resolution}
    judge = encoder = factors = None
    if data.num_modes >= 2:
        with distributed.main_first():  # [ddp] rank 0 trains and caches them; the others read the cache
            judge = load_or_train_judge(data, test, data_key, cfg.judge, str(cache_dir), device=str(device))
            encoder = load_or_train("label-free", data, test, data_key, cfg.encoder, str(cache_dir), str(device))
            factors = load_or_train("factors", data, test, data_key, cfg.encoder, str(cache_dir), str(device))
    inception, inception_missing = inception_backbone(cfg.inception_weights, cfg.inception, str(device))
    if inception_missing:
        tqdm.write(f"{dataset}: no Inception metrics: {inception_missing}")
    failure = judge_failure(dataset, judge) if judge is not None else None
    return Prepared(dataset, data, test, reference, record, held_out, judge, inception, inception_missing,
                    Path(cache_dir), failure, encoder, factors)


# ---------------------------------------------------------------- stage 2: the shared text encoder


@dataclass
class Shared:
    """The frozen text encoder every family reads, its encodings of the training captions, and its cost."""

    text: TextModels
    captions: tuple  # states (N, L, W), pooled (N, E), mask (N, L) of every training caption, on the device
    empty: tuple  # states (1, L, W), mask (1, L) of ""
    configs: dict  # every network config with the shapes read from the data
    history: list[dict]
    record: dict  # steps, seconds, params, FLOPs: recorded once, counted on no family's side


TEXT_VERSION = 1  # part of the text encoder's cache key: bump when its network or training changes
TEXT_SEED = 0  # the text encoder is shared infrastructure, like the judge: one per dataset, not one per seed


def _text_key(prep: Prepared, cfg, device) -> str:
    """sha256 of everything the trained text encoder depends on: the training split (images, labels, captions), its
    configs and training settings, the arithmetic it trains in."""
    blob = {"version": TEXT_VERSION, "split": split_hash(prep.data), "text": asdict(cfg.text),
            "tower": asdict(cfg.tower), "steps": cfg.text_steps, "batch": cfg.text_batch_size, "lr": cfg.text_lr,
            "precision": precision(device, cfg.amp), "device": torch.device(device).type,
            "captions": hashlib.sha256("\n".join(prep.data.captions).encode()).hexdigest()}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _train_text(prep: Prepared, cfg, device, progress: bool) -> tuple[TextModels, list, dict]:
    """CLIP pre-training of the text encoder on the training split's (caption, image) pairs, from TEXT_SEED."""
    tokenizer = Tokenizer.build(prep.data.captions)
    configs = network_configs(cfg, channels=prep.data.images.shape[1], resolution=cfg.resolution,
                              vocab_size=len(tokenizer))
    t0 = time.perf_counter()
    with distributed.solo():  # [ddp] rank 0 trains it alone (the others read the cache it writes)
        encoder, history, step_flops = train_text_encoder(prep.data, tokenizer, cfg, configs, device, TEXT_SEED,
                                                          progress)
    record = {"steps": len(history), "seconds": time.perf_counter() - t0, "params": num_params(encoder),
              "flops": len(history) * step_flops, "counted": "on no family's side (shared, frozen)",
              "precision": precision(device, cfg.amp), "trained": "once per dataset (seed 0), cached"}
    return TextModels(tokenizer, encoder, torch.device(device)), history, record


def load_or_train_text(prep: Prepared, cfg, device, progress: bool = True) -> tuple[TextModels, list, dict]:
    """The dataset's frozen text encoder: from the cache in prep.cache_dir when a sound entry of the same split and
    settings exists (a damaged one is retrained), else trained (_train_text) and cached. Returns (text models, its
    training history, its record)."""
    path = prep.cache_dir / f"text-{_text_key(prep, cfg, device)[:20]}.safetensors"
    used_cache(path)
    with distributed.main_first():  # [ddp] rank 0 trains and caches it; the others read the cache
        try:
            states, meta = load_checkpoint(path)
            return TextModels.load(states, meta, device), meta["history"], meta["record"]
        except (OSError, ValueError, KeyError, RuntimeError):
            text, history, record = _train_text(prep, cfg, device, progress)
            modules, meta = text.checkpoint()
            save_checkpoint(path, modules, {**meta, "history": history, "record": record})
            return text, history, record


def train_shared(prep: Prepared, cfg, device, progress: bool = True) -> Shared:
    """The shared stage of one dataset: the frozen text encoder (load_or_train_text) and its encodings of every
    training caption and of the empty caption."""
    text, history, record = load_or_train_text(prep, cfg, device, progress)
    configs = network_configs(cfg, channels=prep.data.images.shape[1], resolution=cfg.resolution,
                              vocab_size=len(text.tokenizer))
    states_, _, mask = text.encode([""])
    return Shared(text, text.encode(prep.data.captions), (states_, mask), configs, history, record)


# ---------------------------------------------------------------- stage 3: each family's training


def _train_one(family: Family, task: ImageTask) -> Trained:
    """family.train_image(task); a family that raises is a failed Trained (the other families go on)."""
    try:
        with stage(f"train {family.name}"):
            return family.train_image(task)
    except WriteError:
        raise  # a full disk stops the suite (bench/run/suite.py), it is no family's fault
    except USER_FAULTS as exc:  # one family's fault is its own result, a sys.exit in its training too
        if distributed.world() > 1:  # [ddp] the other ranks may be inside a collective: stop
            raise
        tqdm.write(f"{task.dataset} seed {task.seed}: {family.name} failed to train: {error_text(exc)}")
        return Trained(None, failed_status(exc), {})


def train_families(families: list[Family], task: ImageTask) -> dict[str, Trained]:
    """Every family's training from the same task. On the compute budget axis the reference family
    (cfg.budget_reference) trains first and every other model family gets its training FLOPs to spend."""
    cfg = task.cfg
    reference = cfg.budget_reference  # whose training FLOPs the others spend, on the compute axis only
    if cfg.budget != "compute":
        reference = None
    trained = {}
    for family in sorted(families, key=lambda f: f.name != reference):
        budget = None
        if reference is not None and family.name != reference and family.role == "model":
            budget = (trained.get(reference) or Trained(None, {}, {})).train.get("flops")
        mine = _with(task, states=task.states.scoped(family.name), flops_budget=budget)  # its own state files
        trained[family.name] = _train_one(family, mine)
    return {f.name: trained[f.name] for f in families}


def _with(task: ImageTask, **changes) -> ImageTask:
    return ImageTask(**{**task.__dict__, **changes})


# ---------------------------------------------------------------- stage 4: evaluation (bench/evaluate/images.py)


def _evaluate(families: list[Family], trained: dict, prep: Prepared, ev: EvalSet, cfg, seed: int) -> dict:
    """FamilyScore of every family that trained; one whose evaluation raises is marked failed in its Trained."""
    scores = {}
    for family in families:
        if trained[family.name].status["status"] == "failed":
            continue
        try:
            scores[family.name] = evaluate_family(prep, ev, family, trained[family.name], cfg, seed)
        except WriteError:
            raise  # a full disk (the feature cache) stops the suite
        except USER_FAULTS as exc:  # one family's fault is its own result, a sys.exit in its sampler too
            if distributed.world() > 1:  # [ddp] stop: the others may be inside a collective
                raise
            trained[family.name].status = failed_status(exc)
    return scores


# ---------------------------------------------------------------- stage 5: record


def _knob(family: Family) -> dict | None:
    return None if family.knob is None else {"name": family.knob.name, "symbol": family.knob.symbol,
                                             "neutral": family.knob.neutral}


def _train(trained: Trained, score: FamilyScore, shared: Shared) -> dict:
    """The entry's train record: the family's own, the shared text encoder's (counted on no side), and a latent
    family's autoencoder report merged into its stage-1 record."""
    record = {**trained.train, "text_encoder": shared.record, "precision": shared.record["precision"]}
    if score.autoencoder is not None:
        record["vae"] = {**record.get("vae", {}), **score.autoencoder}
    return record


def _scores(family: Family, score: FamilyScore, validation: dict) -> dict:
    """metrics (the neutral knob, with memorisation's headline numbers), tuned, throughput, sweep, curve."""
    memorised = ("near_copy_share", "near_copy_share_held", "copy_excess", "c_t")
    metrics = {**score.neutral.metrics, **{k: score.memorisation[k] for k in memorised if k in score.memorisation}}
    out = {"metrics": metrics, "metrics_raw": score.raw, "memorisation": score.memorisation, "curve": score.curve,
           "stability": score.stability,
           "throughput": {"nfe": score.neutral.nfe, "nfe_tuned": score.tuned.nfe,
                          "sample_seconds": score.neutral.seconds,
                          "samples_per_s": len(score.neutral.images) / max(score.neutral.seconds, 1e-9)}}
    if family.knob is not None:
        tuned = {k: v for k, v in score.tuned.metrics.items() if k != "fid_curve"}
        out["tuned"] = {"knob": family.knob.name, "value": score.tuned.value, "rule": TUNING_RULE,
                        "nfe": score.tuned.nfe, "metrics": tuned, "validation": validation}
        out["sweep"] = {"knob": family.knob.name, "prompts": "validation", "points": score.validation}
    return out


def record_entry(prep: Prepared, ev: EvalSet, shared: Shared, family: Family, trained: Trained,
                 score: FamilyScore | None, seed: int) -> dict:
    """The run entry of one family (results.json), from what the stages returned."""
    if score is None:  # its training or evaluation raised
        status = trained.status
        return failed_entry(prep.dataset, family.name, seed, status.get("error", "failed"), status.get("traceback"))
    entry = {"dataset": prep.dataset, "model": family.name, "seed": seed, **trained.status,
             **(score.problem or {}), "role": family.role, "knob": _knob(family),
             "sampler": trained.train.get("sampler"), "train": _train(trained, score, shared),
             **_scores(family, score, ev.validation_reference)}
    if trained.ema_decay is not None:
        entry["ema"] = {"decay": trained.ema_decay,
                        "initial_weight_share": initial_weight_share(len(trained.history), trained.ema_decay)}
    if score.problem is not None and prep.judge is not None:
        entry["metrics"] = {"judge_accuracy": prep.judge.accuracy}
    entry["features"] = "judge" if prep.judge else "inception" if prep.inception is not None else None
    entry["splits"], entry["reference"] = split_record(prep.data, prep.test), ev.reference
    if ev.unavailable is not None:
        entry["unavailable"] = ev.unavailable
    if ev.baseline is not None:  # fresh data's readings on these prompts: the outcome rule's yardstick
        entry["baseline"] = ev.baseline
    entry["protocol"] = ev.protocols  # how the feature metrics were computed, by feature family
    entry["networks"] = trained.networks  # the resolved network configs it was built with
    return entry


def real_for_prompts(data: ImageData, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each prompt, a random real image of the prompted mode (the 'real' row of the sample grids)."""
    out = []
    for label in labels.tolist():
        pool = (data.labels == label).nonzero().flatten()
        out.append(data.images[pool[torch.randint(len(pool), (1,), generator=generator)]][0])
    return torch.stack(out)


def write_outputs(run: RunDir, prep: Prepared, shared: Shared, ev: EvalSet, families: list[Family], trained: dict,
                  scores: dict, seed: int) -> None:
    """Histories, each trained family's checkpoint (with the text encoder: it rebuilds alone for `gvd sample`) and
    the sample grids (real test images, then every family at its neutral and, when it differs, its tuned knob: the
    same prompts cell by cell)."""
    run.write_history(prep.dataset, seed, "text", shared.history)
    text_modules, text_meta = shared.text.checkpoint()
    for family in families:
        mine, score = trained[family.name], scores.get(family.name)
        for i, (part, rows) in enumerate(mine.histories.items()):  # the headline's file is the family's name
            run.write_history(prep.dataset, seed, family.name if i == 0 else f"{family.name}-{part}", rows)
        if mine.modules and score is not None and score.problem is None:
            tuned = score.tuned.value if family.knob is not None else None
            run.save_checkpoint(prep.dataset, seed, family.name, {**text_modules, **mine.modules},
                                {**text_meta, "dataset": prep.dataset, "seed": seed, "family": family.name,
                                 "networks": mine.networks, "sampler": mine.train.get("sampler"), "knob": tuned,
                                 "amp": ev.amp})
    generator = torch.Generator().manual_seed(30_000 + seed)
    run.save_grid(prep.dataset, seed, "real", real_for_prompts(prep.test, ev.scored.labels[:64], generator))
    for name, score in scores.items():
        if score.problem is None:
            run.save_grid(prep.dataset, seed, name, score.neutral.images)
            if score.tuned is not score.neutral:
                run.save_grid(prep.dataset, seed, f"{name}_tuned", score.tuned.images)
    run.write_prompts(prep.dataset, seed, ev.scored.captions[:64])


def run_image_dataset(dataset: str, seed: int, cfg, device: torch.device, run: RunDir, cache_dir,
                      families: list[Family], progress: bool = True) -> list[dict]:
    """Train and score every family on one image dataset for one seed. Returns their run entries. A stage the
    families share (data, judge, text encoder, evaluation set) raises to the caller; a family's own training,
    evaluation or record failing marks that family's entry failed only."""
    with stage("data and judge"):
        prep = prepare(dataset, cfg, device, cache_dir)
    if prep.failure is not None:
        return [failed_entry(dataset, f.name, seed, prep.failure) for f in families]
    states = StateFiles(partial(run.state_path, dataset, seed))
    with hold_signals():  # a signal stops the training under way when its step ends, with its state saved
        with stage("text encoder"):
            shared = train_shared(prep, cfg, device, progress)
        task = ImageTask(dataset, seed, cfg, torch.device(device), prep.data, prep.data.images.to(device),
                         shared.text, shared.captions, shared.empty, shared.configs, prep.test, prep.held_out,
                         states, progress)
        trained = train_families(families, task)
    with stage("evaluation set (prompts, reference features)"):
        ev = eval_set(prep, shared.text, cfg, seed, device)
    scores = _evaluate(families, trained, prep, ev, cfg, seed)
    try:
        with stage("checkpoints and sample grids"):
            write_outputs(run, prep, shared, ev, families, trained, scores, seed)
    except WriteError:
        raise  # a full disk stops the suite (bench/run/suite.py), it is no family's fault
    except Exception as exc:  # noqa: BLE001 -- the entries below still carry the numbers
        tqdm.write(f"{dataset} seed {seed}: writing checkpoints or grids failed: {error_text(exc)}")
    with stage("process figures"):
        write_process(run, prep, ev, families, trained, scores, cfg, seed)
    return [record_entry(prep, ev, shared, f, trained[f.name], scores.get(f.name), seed) for f in families]


def write_process(run: RunDir, prep: Prepared, ev: EvalSet, families: list[Family], trained: dict, scores: dict, cfg,
                  seed: int) -> None:
    """The arrays of every scored family's process figures (bench/evaluate/process.py) under process/. A family whose
    figures fail loses them alone (one line); its numbers stand. [ddp] rank 0 draws them."""
    if not distributed.is_main():
        return
    for family in families:
        score = scores.get(family.name)
        if score is None or score.problem is not None or family.role != "model":
            continue
        try:
            if arrays := explain(prep, ev, family, trained[family.name], cfg):
                run.save_process(prep.dataset, seed, family.name, arrays)
        except WriteError:
            raise  # a full disk stops the suite
        except Exception as exc:  # noqa: BLE001 -- a picture that cannot be drawn is not a lost result
            tqdm.write(f"{prep.dataset} seed {seed}: {family.name}'s process figures failed: {error_text(exc)}")


def warm_up(dataset: str, cfg, device, cache_dir) -> tuple[dict | None, list[Path]]:
    """What every job of a dataset reads from the cache, made once before the jobs start (on every core this process
    has): the judge, the label-free readers, the text encoder and the judge's features of the real image sets; then
    the known-answer panel (bench/evaluate/panel.py), which only the driver needs. Returns (the panel, None where
    there is none; the cache files the jobs read: what a job on another machine needs, bench/core/executor.py). A
    judge below its accuracy floor stops here; each job then records its entries as failed."""
    with noting_cache() as used:
        with stage("data and judge"):
            prep = prepare(dataset, cfg, device, cache_dir)
        if prep.failure is None:
            with stage("text encoder"):
                shared = train_shared(prep, cfg, device)
            with stage("evaluation set (prompts, reference features)"):
                eval_set(prep, shared.text, cfg, 0, device)
    if prep.failure is not None:
        return None, sorted(used)
    with stage("known-answer panel"), distributed.main_first():  # [ddp] rank 0 computes and caches it
        return calibration_panel(prep, shared.text, cfg, device), sorted(used)


# ---------------------------------------------------------------- `gvd sample`


def sample_from_checkpoint(path: Path, family: Family, prompt: str, n: int, *, seed: int, device,
                           sampler: str | None = None, knob: float | None = None) -> tuple[torch.Tensor, int]:
    """n images for one prompt from a family's checkpoint (its text encoder inside). Unknown prompt words raise
    ValueError naming them. sampler: another "name:steps" for a family that samples with a solver; knob: its knob's
    value (default: the tuned value the run scored)."""
    states, meta = load_checkpoint(Path(path))
    text = TextModels.load(states, meta, device)
    trained = family.load_image(states, meta, device, text)
    if sampler is not None:
        if not hasattr(trained.sampler, "sampler"):
            raise ValueError(f"the {family.name} family draws without a solver; --sampler and --steps do not apply")
        trained.sampler.sampler = sampler
    captions = [prompt] * n
    encoded = text.encode(captions, strict=True)
    value = knob if knob is not None else meta.get("knob") if meta.get("knob") is not None else (
        family.knob.neutral if family.knob else 1.0)
    prompts_ = _prompts_of(captions, encoded, sample_seeds(seed, n))
    with autocast(device, meta.get("amp", False)):  # the arithmetic the run sampled in
        images, nfe = family.sample_image(trained, prompts_, value)
    check_images(family.name, images, n)
    return images.float(), nfe


def _prompts_of(captions: list[str], encoded: tuple, seeds: torch.Tensor) -> Prompts:
    """User prompts: no class label (-1) to read."""
    return Prompts(captions, torch.full((len(captions),), -1), encoded, seeds, torch.arange(len(captions)))
