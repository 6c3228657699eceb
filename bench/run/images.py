"""The image benchmark: a conditional DCGAN and a text-conditioned latent diffusion model on one captioned dataset.

Data flow for one (dataset, seed), in three stages that each return a small dataclass:

    prepare:  real images + captions --> judge (frozen classifier: mode labels + features; cached across runs)
    train:    text encoder, CLIP pre-trained then frozen: shared by both models (a fair comparison)
              GAN:       DCGAN G(z, pooled text), projection D                   } same examples seen per model step
              diffusion: KL-VAE, then UNet on scaled latents with cross-attention }
    evaluate: the same prompts and per-sample seeds for both --> samples --> judge --> metrics
    record:   run entries for results.json; histories, checkpoint and sample grids through the RunDir

Every model is trained from the seed; the data and the judge do not depend on it (the judge trains once per dataset
config and is cached), so seeds measure training variance only. The networks are wired in bench/image_models.py.
"""

import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from bench.config import ImageBenchConfig, parse_sampler
from bench.core import distributed
from bench.core.guard import error_text, failed_status, hold_signals
from bench.core.results import failed_entry
from bench.core.rundir import RunDir
from bench.core.seeding import sample_seeds
from bench.data.images import ImageData, load_splits, split_record
from bench.data.inception import Backbone, inception_backbone, inception_metrics
from bench.data.judge import Judge, judge_failure, load_or_train_judge
from bench.evaluate.images import (
    COND_THRESHOLD,
    FAMILIES,
    KNOBS,
    NEUTRAL,
    TUNING_RULE,
    EvalSet,
    FamilyEval,
    eval_set,
    evaluate_family,
    score,
    unavailable_metrics,
)
from bench.evaluate.protocol import feature_protocols
from bench.evaluate.stability import stability, steps_to_threshold
from bench.families.bundle import (
    ImageModels,
    encode_captions,
    encode_latents,
    network_configs,
    new_text_encoder,
    schedule,
)
from bench.speed.throughput import training_flops_per_image
from bench.train.loops import (
    TrainResult,
    autocast,
    checkpoint_interval,
    drop_captions,
    initial_weight_share,
    train_diffusion,
    train_gan,
    vae_step,
)
from bench.train.state import NO_STATE, StateFiles, steps_to_run
from models.dcgan import Discriminator, Generator
from models.mlp import num_params
from models.text import Tokenizer, clip_loss
from models.unet import UNet
from models.vae import KLAutoencoder, latent_scale_factor, psnr


def _cosine_opt(params, lr: float, steps: int):
    opt = torch.optim.Adam(params, lr=lr)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Index batches drawn uniformly with replacement from a seeded generator (data resident on the device)."""
    return lambda step: torch.randint(n, (batch_size,), generator=generator)


# ---------------------------------------------------------------- stage 1: data and judge


@dataclass
class Prepared:
    dataset: str
    data: ImageData  # the training split: the generators, the VAE, the text encoder and the judge train on it
    test: ImageData  # the test split: the reference of every metric and the judge's accuracy
    judge: Judge | None  # None for data without classes (no labels to train one on)
    inception: Backbone | None  # Inception-v3 (the extra's file or clean-fid's), when asked for and present
    inception_missing: str | None  # why Inception metrics were asked for and cannot be had
    cache_dir: Path  # where judges and reference features are cached
    failure: str | None = None  # why the run cannot go on (a judge below its accuracy floor)


def prepare(dataset: str, cfg: ImageBenchConfig, device: torch.device, cache_dir) -> Prepared:
    """The dataset's fixed train/test split (it does not vary with the seed), its judge (fitted on train, measured on
    test; cached by the splits' content) and Inception if asked for."""
    data, test = load_splits(dataset, cfg.num_train, cfg.num_test, cfg.resolution)
    data_key = {"dataset": dataset, "num_train": cfg.num_train, "num_test": cfg.num_test, "resolution": cfg.resolution}
    judge = None
    if data.num_modes >= 2:
        with distributed.main_first():  # [ddp] rank 0 trains and caches the judge; the others read the cache
            judge = load_or_train_judge(data, test, data_key, cfg.judge, str(cache_dir), device=str(device))
    inception, inception_missing = inception_backbone(cfg.inception_weights, cfg.inception, str(device))
    if inception_missing:
        tqdm.write(f"{dataset}: no Inception metrics: {inception_missing}")
    failure = judge_failure(dataset, judge) if judge is not None else None
    return Prepared(dataset, data, test, judge, inception, inception_missing, Path(cache_dir), failure)


# ---------------------------------------------------------------- stage 2: training


def caption_groups(data: ImageData) -> torch.Tensor:
    """Ids of what each caption says (its template fields), so that captions saying the same thing in different
    words count as matches in the CLIP loss rather than as negatives."""
    if data.fields is None:
        return data.labels
    keys = [json.dumps(f, sort_keys=True) for f in data.fields]
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return torch.tensor([index[k] for k in keys])


@dataclass
class Trained:
    models: ImageModels  # G and the UNet are the sampling weights: their EMAs (one rule for both families)
    raw: dict[str, nn.Module]  # "gan", "diffusion": the trained networks themselves, scored beside the EMAs
    ema_decay: dict[str, float]  # "gan", "diffusion": the configured EMA decays
    histories: dict[str, list[dict]]  # "text", "gan", "vae", "diffusion": per-step rows
    status: dict[str, dict]  # "gan", "diffusion": {"status": "ok"} or {"status": "diverged", "diverged_at_step"}
    seconds: dict[str, float]  # wall time of each training: "text", "gan", "vae", "diffusion"
    budget: dict  # the budget axis and the GAN's step count on it (budget_plan)
    snapshots: dict[str, list] = field(default_factory=dict)  # "gan", "diffusion": [Snapshot(step, raw, ema)]


STATE_PARTS = ("text", "gan", "vae", "diffusion")  # the state files of one image (dataset, seed): one per training


def train_text_encoder(data: ImageData, tokenizer: Tokenizer, cfg: ImageBenchConfig, cfgs: dict, device, seed: int,
                       progress=True, states: StateFiles = NO_STATE):
    """CLIP pre-training (Radford et al. 2021): a text transformer and an image tower pulled together on matching
    (caption, image) pairs. Returns (frozen encoder, history); the tower is dropped. states: where it resumes from
    and saves to (bench/train_state.py), as every training below."""
    torch.manual_seed(seed)
    text, tower = (distributed.wrap(m.to(device), device) for m in new_text_encoder(cfgs))  # [ddp]
    tokens = tokenizer.encode(data.captions, cfg.text.max_len).to(device)
    groups = caption_groups(data).to(device)
    images = data.images.to(device)  # resident on the device, like the tokens (no CPU indexing per step)
    opt, sched = _cosine_opt(list(text.parameters()) + list(tower.parameters()), cfg.text_lr, cfg.text_steps)
    data_gen = torch.Generator().manual_seed(seed)
    draw = _batches(len(tokens), cfg.text_batch_size, data_gen)
    history, parts = [], {"text": text, "tower": tower, "opt": opt, "sched": sched}
    state = states.open("text", cfg.text_steps, {"data": data_gen})
    for step in steps_to_run(cfg.text_steps, state, parts, history, desc="text encoder (CLIP)", progress=progress):
        idx = draw(step).to(device)
        mine = distributed.local_rows(idx)  # [ddp] this rank's rows; the loss contrasts the whole global batch
        with autocast(device, cfg.amp):
            _, pooled, _ = text(tokens[mine])
            pooled, image_emb = (distributed.gather_batch(e.float()) for e in (pooled, tower(images[mine])))
            loss = clip_loss(pooled, image_emb, distributed.unwrap(tower).logit_scale.exp(), groups[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append({"step": step, "loss": loss.item()})
    return distributed.unwrap(text).eval().requires_grad_(False), history


def train_dcgan(images: torch.Tensor, pooled: torch.Tensor, cfg: ImageBenchConfig, cfgs: dict, device, seed: int,
                progress=True, steps: int | None = None, states: StateFiles = NO_STATE):
    """Conditional DCGAN on the shared frozen text embedding. Returns (TrainResult of G, D, snapshots):
    Snapshot(step, copy of G, copy of its EMA) at cfg.eval_checkpoints evenly spaced steps."""
    torch.manual_seed(seed)
    G, D = Generator(cfgs["dcgan"]).to(device), Discriminator(cfgs["dcgan"]).to(device)
    # [ddp] BatchNorm over the global batch, then DDP (both no-ops in one process; bench/distributed.py)
    G, D = (distributed.wrap(distributed.sync_batchnorm(m), device) for m in (G, D))
    gen = torch.Generator().manual_seed(seed + 1)
    draw = _batches(len(images), cfg.batch_size, gen)

    def real_batch(step):
        idx = distributed.local_rows(draw(step)).to(device)  # [ddp] this rank's rows of the global batch
        return images[idx], pooled[idx]

    def latent(n):  # [ddp] n is this rank's share: draw the global batch's latents, keep its rows
        z = torch.randn(distributed.global_size(n), cfgs["dcgan"].z_dim, generator=gen)
        return distributed.local_rows(z).to(device)

    snapshots: list = []
    with autocast(device, cfg.amp):
        steps = cfg.steps if steps is None else steps  # the compute budget gives the GAN its own step count
        result = train_gan(G, D, real_batch, latent, cfg.gan, steps, desc="DCGAN", progress=progress,
                           snapshot_every=checkpoint_interval(steps, cfg.eval_checkpoints), snapshots=snapshots,
                           state=states.open("gan", steps, {"train": gen}))
    result.model.eval()
    return result, distributed.unwrap(D).eval(), snapshots  # [ddp] the networks, not their DDP wrappers


def train_vae(images: torch.Tensor, cfg: ImageBenchConfig, cfgs: dict, device, seed: int, progress=True,
              states: StateFiles = NO_STATE):
    """KL autoencoder (Rombach et al. 2022), then its latent scale factor = 1 / std of the training latents.
    Returns (frozen VAE, history)."""
    torch.manual_seed(seed)
    vae = KLAutoencoder(cfgs["vae"]).to(device)
    net = distributed.wrap(vae, device)  # [ddp] what trains; vae stays the network itself
    side = vae.cfg.resolution // vae.cfg.factor
    latent_shape = (vae.cfg.latent_channels, side, side)  # of one posterior sample
    opt, sched = _cosine_opt(vae.parameters(), cfg.vae_lr, cfg.vae_steps)
    data_gen = torch.Generator().manual_seed(seed + 2)
    draw = _batches(len(images), cfg.vae_batch_size, data_gen)
    history, parts = [], {"vae": net, "opt": opt, "sched": sched}
    state = states.open("vae", cfg.vae_steps, {"data": data_gen})  # the posterior noise: torch's generator, saved
    for step in steps_to_run(cfg.vae_steps, state, parts, history, desc="VAE", progress=progress):
        x = images[distributed.local_rows(draw(step)).to(device)]  # [ddp] this rank's rows of the global batch
        # [ddp] the posterior sample's noise, drawn for the global batch as vae(x) would draw it in one process
        noise = distributed.local_rows(torch.randn((cfg.vae_batch_size, *latent_shape), device=device))
        loss, stats = vae_step(net, opt, x, cfg.amp, noise=noise)
        sched.step()
        history.append(distributed.average({"step": step, "loss": loss.item(), **stats}))  # [ddp] global means
    vae.eval().requires_grad_(False)
    vae.scale_factor.fill_(latent_scale_factor(encode_latents(vae, images[:2048])))
    return vae, history


def train_unet(latents: torch.Tensor, text: tuple, uncond: tuple, cfg: ImageBenchConfig, cfgs: dict, device,
               seed: int, progress=True, states: StateFiles = NO_STATE):
    """The denoiser on scaled latents, cross-attending to the frozen text states (text = (states, mask) of every
    training caption); a random cfg.caption_dropout of the captions is replaced by the empty caption (uncond), so
    one network learns both halves of classifier-free guidance. Returns (TrainResult, snapshots)."""
    torch.manual_seed(seed)
    unet = distributed.wrap(UNet(cfgs["unet"]).to(device), device)  # [ddp]
    alpha_bar = schedule(cfg.diffusion, device)
    gen = torch.Generator().manual_seed(seed + 3)
    draw = _batches(len(latents), cfg.batch_size, gen)
    text_states, mask = text

    def batch(step):
        idx = draw(step).to(device)
        ctx, ctx_mask = drop_captions(text_states[idx], mask[idx], uncond, cfg.caption_dropout, gen)
        rows = distributed.local_rows  # [ddp] this rank's rows of the global batch
        return rows(latents[idx]), {"context": rows(ctx), "context_mask": rows(ctx_mask)}

    snapshots: list = []
    with autocast(device, cfg.amp):
        result = train_diffusion(unet, batch, alpha_bar, cfg.diffusion.prediction, cfg.diffusion_train, cfg.steps,
                                 gen, desc="UNet", progress=progress,
                                 snapshot_every=checkpoint_interval(cfg.steps, cfg.eval_checkpoints),
                                 snapshots=snapshots, state=states.open("diffusion", cfg.steps, {"train": gen}))
    unet.eval()
    return result, snapshots


def budget_plan(cfg: ImageBenchConfig, device, channels: int) -> dict:
    """The GAN's step count on the run's budget axis. "examples": cfg.steps, as the UNet. "compute": as many steps as
    give the GAN the diffusion side's training FLOPs, UNet and VAE together (per-image FLOPs of one training step of
    each network, counted with fresh networks as `gvd throughput` counts them; the text encoder on neither side)."""
    if cfg.budget == "examples":
        return {"axis": "examples", "gan_steps": cfg.steps}
    flops = training_flops_per_image(cfg, device, channels)
    target = flops["diffusion"] * cfg.steps * cfg.batch_size + flops["vae"] * cfg.vae_steps * cfg.vae_batch_size
    steps = max(1, round(target / (flops["gan"] * cfg.batch_size)))
    return {"axis": "compute", "gan_steps": steps, "target_flops": target, "flops_per_image": flops}


def _gan_part(images, pooled, cfg, cfgs, device, seed, progress, steps: int, states: StateFiles):
    """(TrainResult of G, D, snapshots, seconds) of the GAN; a GAN that raises is a failed GAN (untrained networks
    kept so the bundle can still be saved; the checkpoint lists the family as failed), never a failed diffusion run.
    The seconds include the training time before a resume (TrainState.offset)."""
    t0 = time.perf_counter()
    try:
        G, D, snaps = train_dcgan(images, pooled, cfg, cfgs, device, seed, progress, steps, states)
        return G, D, snaps, time.perf_counter() - t0 + states.offset("gan")
    except Exception as exc:  # noqa: BLE001 -- one family's fault is its own result
        G, D = Generator(cfgs["dcgan"]).to(device).eval(), Discriminator(cfgs["dcgan"]).to(device).eval()
        return TrainResult(G, G, [], failed_status(exc), cfg.gan.ema), D, [], time.perf_counter() - t0


def _diffusion_part(images, text, uncond, cfg, cfgs, device, seed, progress, states: StateFiles):
    """(vae, vae history, vae seconds, TrainResult of the UNet, snapshots, seconds) of the diffusion side; a VAE or
    UNet that raises fails the diffusion entry only. The seconds include the training time before a resume
    (TrainState.offset)."""
    t0, vae, vae_history, vae_seconds = time.perf_counter(), None, [], 0.0
    try:
        vae, vae_history = train_vae(images, cfg, cfgs, device, seed, progress, states)
        vae_seconds, t0 = time.perf_counter() - t0 + states.offset("vae"), time.perf_counter()
        latents = encode_latents(vae, images) * vae.scale_factor  # (N, c, h, w), unit variance
        unet, snaps = train_unet(latents, text, uncond, cfg, cfgs, device, seed, progress, states)
    except Exception as exc:  # noqa: BLE001 -- one family's fault is its own result
        vae = vae if vae is not None else KLAutoencoder(cfgs["vae"]).to(device).eval()
        net = UNet(cfgs["unet"]).to(device).eval()
        unet, snaps = TrainResult(net, net, [], failed_status(exc), cfg.diffusion_train.ema), []
    return vae, vae_history, vae_seconds, unet, snaps, time.perf_counter() - t0 + states.offset("diffusion")


def train_models(prep: Prepared, cfg: ImageBenchConfig, device, seed: int, progress=True,
                 states: StateFiles = NO_STATE) -> Trained:
    """The shared text encoder, then the GAN, then the VAE and the UNet; every training seeds itself, resumes from
    its state in `states` and saves it there. A family whose training raises is recorded as failed in
    Trained.status; the other goes on."""
    data, tokenizer = prep.data, Tokenizer.build(prep.data.captions)
    cfgs = network_configs(cfg, channels=data.images.shape[1], resolution=cfg.resolution, vocab_size=len(tokenizer))
    images = data.images.to(device)  # the whole dataset stays on the device: no DataLoader for small images
    seconds, histories, snapshots = {}, {}, {}
    t0 = time.perf_counter()
    text, histories["text"] = train_text_encoder(data, tokenizer, cfg, cfgs, device, seed, progress, states)
    seconds["text"] = time.perf_counter() - t0 + states.offset("text")
    text_states, pooled, mask = encode_captions(text, tokenizer, data.captions, device)
    empty_states, _, empty_mask = encode_captions(text, tokenizer, [""], device)  # CFG's unconditional input
    budget = budget_plan(cfg, device, data.images.shape[1])
    G, D, snapshots["gan"], seconds["gan"] = _gan_part(images, pooled, cfg, cfgs, device, seed, progress,
                                                       budget["gan_steps"], states)
    vae, histories["vae"], seconds["vae"], unet, snapshots["diffusion"], seconds["diffusion"] = _diffusion_part(
        images, (text_states, mask), (empty_states, empty_mask), cfg, cfgs, device, seed, progress, states)
    models = ImageModels(tokenizer=tokenizer, text=text, G=G.ema, D=D, vae=vae, unet=unet.ema,
                         diffusion=cfg.diffusion, device=torch.device(device), amp=cfg.amp)
    histories.update(gan=G.history, diffusion=unet.history)
    return Trained(models, {"gan": G.model, "diffusion": unet.model},
                   {"gan": G.ema_decay, "diffusion": unet.ema_decay}, histories,
                   {"gan": G.status, "diffusion": unet.status}, seconds, budget, snapshots)


# ---------------------------------------------------------------- stage 3: evaluation (bench/image_eval.py)


def vae_report(prep: Prepared, trained: Trained, ev: EvalSet, cfg: ImageBenchConfig) -> dict:
    """Reconstruction quality of the reference (test) images: PSNR and the share the judge still labels the same."""
    models = trained.models
    recon = models.decode_latents(models.encode_latents(ev.real.to(models.device)) * models.vae.scale_factor).cpu()
    judge = prep.judge
    same = float((judge.labels(recon) == judge.labels(ev.real)).float().mean()) if judge is not None else None
    return {"steps": cfg.vae_steps, "seconds": trained.seconds["vae"], "psnr": psnr(recon, ev.real),
            "recon_accuracy": same, "scale_factor": float(models.vae.scale_factor)}


def real_for_prompts(data: ImageData, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each prompt, a random real image of the prompted mode (the 'real' row of the sample grids)."""
    out = []
    for label in labels.tolist():
        pool = (data.labels == label).nonzero().flatten()
        out.append(data.images[pool[torch.randint(len(pool), (1,), generator=generator)]][0])
    return torch.stack(out)


# ---------------------------------------------------------------- stage 4: record


def _train_record(family: str, trained: Trained, cfg: ImageBenchConfig, vae_info: dict) -> dict:
    """Steps, examples seen, wall time and parameters of one family. The shared, frozen text encoder is counted on
    neither side (both families read it the same way); its own cost is recorded once, under text_encoder."""
    m, steps = trained.models, len(trained.histories[family])
    seconds = trained.seconds["gan"] if family == "gan" else trained.seconds["vae"] + trained.seconds["diffusion"]
    params = ({"G": num_params(m.G), "D": num_params(m.D)} if family == "gan"
              else {"vae": num_params(m.vae), "unet": num_params(m.unet)})
    extra = cfg.vae_steps * cfg.vae_batch_size if family == "diffusion" else 0  # the VAE's images, on top
    record = {"steps": steps, "examples_seen": steps * cfg.batch_size + extra, "seconds": seconds,
              "images_per_s": steps * cfg.batch_size / trained.seconds[family], "params": params,
              "params_total": sum(params.values()), **distributed.batch_record(cfg.batch_size),  # [ddp]
              "budget": trained.budget,
              "text_encoder": {"steps": cfg.text_steps, "seconds": trained.seconds["text"],
                               "params": num_params(m.text), "counted": "on neither side (shared, frozen)"}}
    return record if family == "gan" else {**record, "vae": vae_info}


def _setting_metrics(prep: Prepared, ev: EvalSet, setting, cfg: ImageBenchConfig, seed: int) -> dict:
    """Every metric of one knob setting's images (raises FloatingPointError on non-finite images)."""
    out = score(prep, ev, ev.scored, setting.images, fid_boot=cfg.fid_bootstrap, fid_counts=tuple(cfg.fid_counts),
                seed=seed)
    if prep.judge is not None:
        out["judge_accuracy"] = prep.judge.accuracy
    if ev.real_inception is not None and prep.judge is not None:  # beside the judge's, comparable with papers'
        out.update(inception_metrics(ev.real_inception, prep.inception.features(setting.images))[0])
    return out


def _metrics_record(prep: Prepared, ev: EvalSet, fam: FamilyEval, entry: dict, cfg: ImageBenchConfig, seed: int):
    """The neutral setting's metrics into entry["metrics"], the tuned one's into entry["tuned"]; unscorable
    (non-finite) samples make the entry diverged (or failed)."""
    try:
        entry["metrics"] = _setting_metrics(prep, ev, fam.neutral, cfg, seed)
        entry["metrics"].update({k: fam.memorisation[k] for k in ("near_copy_share", "c_t") if k in fam.memorisation})
        tuned = entry["metrics"] if fam.tuned is fam.neutral else _setting_metrics(prep, ev, fam.tuned, cfg, seed)
        entry["tuned"] = {"knob": KNOBS[entry["model"]], "value": fam.tuned.value, "rule": TUNING_RULE,
                          "nfe": fam.tuned.nfe, "metrics": {k: v for k, v in tuned.items() if k != "fid_curve"}}
    except (FloatingPointError, ValueError) as exc:  # a diverged model's NaN images cannot be scored
        entry["metrics"] = {"judge_accuracy": prep.judge.accuracy} if prep.judge is not None else {}
        nonfinite = isinstance(exc, FloatingPointError)  # describe(): the samples hold NaN or inf
        if nonfinite and entry["status"] == "ok":
            entry.update(status="diverged", diverged_at_step=None, diverged_in="sampling")
        elif not nonfinite:
            entry["status"] = "failed"
        entry["error"] = error_text(exc)


def _entry(prep: Prepared, trained: Trained, fam: FamilyEval, family: str, cfg: ImageBenchConfig, seed: int,
           vae_info: dict) -> dict:
    entry = {"dataset": prep.dataset, "model": family, "seed": seed, **trained.status[family],
             "knob": {"name": KNOBS[family], "neutral": NEUTRAL[family]},
             **({"sampler": cfg.sampler} if family == "diffusion" else {}),
             "train": _train_record(family, trained, cfg, vae_info)}
    entry["metrics_raw"] = fam.raw  # the raw network beside the EMA headline (one rule for both families)
    decay = trained.ema_decay[family]
    entry["ema"] = {"decay": decay, "initial_weight_share": initial_weight_share(len(trained.histories[family]),
                                                                                 decay)}
    entry["throughput"] = {"nfe": fam.neutral.nfe, "nfe_tuned": fam.tuned.nfe, "sample_seconds": fam.neutral.seconds,
                           "samples_per_s": len(fam.neutral.images) / fam.neutral.seconds}
    entry["memorisation"] = fam.memorisation
    entry["curve"] = fam.curve
    entry["sweep"] = {"knob": KNOBS[family], "prompts": "validation", "points": fam.validation}
    entry["stability"] = stability(trained.histories[family], family)
    if fam.curve and prep.judge is not None:
        entry["stability"].update(threshold=f"cond_accuracy >= {COND_THRESHOLD}",
                                  steps_to_threshold=steps_to_threshold(fam.curve, "cond_accuracy", COND_THRESHOLD))
    return entry


def record(prep: Prepared, trained: Trained, ev: EvalSet, fams: dict, cfg: ImageBenchConfig, seed: int,
           vae_info: dict) -> list[dict]:
    """The two run entries (gan, diffusion) of results.json."""
    description = f"{prep.dataset}: test split, {ev.reference['given']} of {len(prep.test.labels)} images"
    protocols = feature_protocols(ev.real, cfg.num_samples, description, inception=prep.inception,
                                  judge_net=prep.judge.net if prep.judge is not None else None)
    missing = unavailable_metrics(prep.judge is not None, prep.inception is not None, prep.inception_missing)
    entries = []
    for family in FAMILIES:
        status = trained.status[family]
        if family not in fams:  # its training or evaluation raised
            entries.append(failed_entry(prep.dataset, family, seed, status["error"], status.get("traceback")))
            continue
        entry = _entry(prep, trained, fams[family], family, cfg, seed, vae_info)
        _metrics_record(prep, ev, fams[family], entry, cfg, seed)
        entry["features"] = "judge" if prep.judge else "inception" if prep.inception is not None else None
        entry["splits"], entry["reference"] = split_record(prep.data, prep.test), ev.reference
        if missing is not None:
            entry["unavailable"] = missing
        entry["protocol"] = protocols  # how the feature metrics were computed, by feature family
        entries.append(entry)
    return entries


def write_outputs(run: RunDir, prep: Prepared, trained: Trained, ev: EvalSet, fams: dict, cfg: ImageBenchConfig,
                  seed: int) -> None:
    """Histories, the checkpoint of every network and the sample grids (real test images / GAN / diffusion, the
    same prompts; each family at its neutral and, when it differs, its tuned knob)."""
    for part, rows in trained.histories.items():
        run.write_history(prep.dataset, seed, part, rows)
    failed = [f for f in FAMILIES if trained.status[f]["status"] == "failed"]  # `gvd sample` refuses these
    trained.models.save(run.checkpoint_path(prep.dataset, seed, "models"),
                        {"dataset": prep.dataset, "seed": seed, "sampler": cfg.sampler,
                         "guidance": fams["diffusion"].tuned.value if "diffusion" in fams else 1.0, "failed": failed})
    generator = torch.Generator().manual_seed(30_000 + seed)
    run.save_grid(prep.dataset, seed, "real", real_for_prompts(prep.test, ev.scored.labels[:64], generator))
    for family in fams:
        run.save_grid(prep.dataset, seed, family, fams[family].neutral.images)
        if fams[family].tuned is not fams[family].neutral:
            run.save_grid(prep.dataset, seed, f"{family}_tuned", fams[family].tuned.images)
    run.write_prompts(prep.dataset, seed, ev.scored.captions[:64])


def _evaluate_families(prep, trained, ev, cfg) -> dict:
    """FamilyEval of every family that trained; a family whose evaluation raises is marked failed in trained.status
    (the other family's entry is untouched)."""
    fams = {}
    for family in FAMILIES:
        if trained.status[family]["status"] == "failed":
            continue
        try:
            fams[family] = evaluate_family(prep, trained, ev, cfg, family)
        except Exception as exc:  # noqa: BLE001 -- one family's fault is its own result
            trained.status[family] = failed_status(exc)
    return fams


def run_image_dataset(dataset: str, seed: int, cfg: ImageBenchConfig, device: torch.device, run: RunDir, cache_dir,
                      progress: bool = True) -> list[dict]:
    """Train and score both families on one image dataset for one seed. Returns the two run entries. A stage both
    families share (data, judge, text encoder, evaluation set) raises to the caller; a family's own training,
    evaluation or record failing marks that family's entry failed only."""
    prep = prepare(dataset, cfg, device, cache_dir)
    if prep.failure is not None:
        return [failed_entry(dataset, m, seed, prep.failure) for m in FAMILIES]
    with hold_signals():  # a signal stops the training under way when its step ends, with its state saved
        trained = train_models(prep, cfg, device, seed, progress, StateFiles(partial(run.state_path, dataset, seed)))
    ev = eval_set(prep, trained.models, cfg, seed)
    try:
        vae_info = vae_report(prep, trained, ev, cfg)
    except Exception as exc:  # noqa: BLE001 -- a report of the VAE, not a reason to lose the run
        vae_info = {"steps": cfg.vae_steps, "seconds": trained.seconds["vae"], "error": error_text(exc)}
    fams = _evaluate_families(prep, trained, ev, cfg)
    try:
        write_outputs(run, prep, trained, ev, fams, cfg, seed)
    except Exception as exc:  # noqa: BLE001 -- the entries below still carry the numbers
        tqdm.write(f"{dataset} seed {seed}: writing checkpoints or grids failed: {error_text(exc)}")
    return record(prep, trained, ev, fams, cfg, seed, vae_info)


# ---------------------------------------------------------------- `gvd sample`


def sample_from_checkpoint(models: ImageModels, meta: dict, prompt: str, n: int, *, model: str, seed: int,
                           sampler: str | None, steps: int | None, guidance: float | None) -> tuple[torch.Tensor, int]:
    """n images for one prompt from a saved run's models. Unknown prompt words raise ValueError naming them."""
    if model in meta.get("failed", []):
        raise ValueError(f"the {model} model of this run failed to train; its checkpoint holds untrained weights")
    states, pooled, mask = models.encode([prompt] * n, strict=True)
    seeds = sample_seeds(seed, n)
    if model == "gan":
        return models.sample_gan(pooled, seeds), 1
    default_name, default_steps = parse_sampler(meta["sampler"])
    return models.sample_diffusion(states, mask, seeds, sampler=sampler or default_name,
                                   steps=steps or default_steps,
                                   guidance=meta["guidance"] if guidance is None else guidance)
