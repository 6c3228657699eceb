"""Throughput: what an image costs to train and to draw, for the GAN and the diffusion model, measured honestly.

A GAN draws an image in one forward pass; a latent diffusion model spends NFE network evaluations (twice the batch
under classifier-free guidance) and a VAE decode. `image_throughput` builds fresh networks from an ImageBenchConfig
(speed does not depend on trained weights) and measures, per model:

  - training images/s at the preset's batch size, through the harness's own loops (bench/train.py: one D and one G
    Adam step for the GAN; one AdamW step plus EMA for the UNet; bench/train.py's vae_step for the VAE);
  - sampling images/s at a batch, and the latency of one image alone (batch 1), at NFE 1 (GAN) and at each NFE of
    `nfes` for the diffusion model, with and without guidance, VAE decode included;
  - FLOPs per image (torch.utils.flop_counter: matmuls, convolutions and attention, the usual convention; elementwise
    ops are not counted), parameters, achieved TFLOP/s and MFU against the matrix-product peak of the row's own
    precision measured in the same process (float32, and bf16 where the device has it), and on CUDA the peak memory
    (max_memory_allocated).

Every row computes in the arithmetic `gvd run` uses (bench/train/loops.autocast: bf16 autocast when cfg.amp and the
device has bf16 instructions, CPU included); on CUDA the sampling rows follow FastPaths.bf16 instead.

Timing, FLOP counting and the matmul peak are bench/timing.py's (warm-up first, the median of the repeats, CUDA events
on a GPU). Text encodings are computed once before timing: both models read the same frozen encoder, whose cost per
caption is its own row. The table and report blocks of the result are bench/report_throughput.py's.

With a time budget (`budget_s`) the whole measurement keeps to it, give or take one call's misjudged cost and the
fixed part it cannot skip (building the networks, counting FLOPs, the matmul peak at the start, the network calls
every estimate rests on, one training step per network): each further measurement runs only when the cost the
earlier ones predict for it fits the time left; otherwise its row carries that prediction and says so in "how":

  - a guided network call (both halves in one call of twice the batch): twice the unguided call at the same batch,
    which is always measured, as are the text encoder, the generator and the VAE decode ("estimated");
  - a whole sampling loop: NFE x (one network call + the sampler's own per-step cost) + one VAE decode
    ("estimated"); the sampler's own per-step cost is measured exactly by running the loop with the network
    replaced by a constant (`sampler_overhead`): everything but the network;
  - a training step is always run once at the preset's batch (the warm-up, which gives its cost); when no timed
    repeat fits, that one step is the row ("measured: one step, its setup included").

`progress` (a callable taking one line) hears each stage as it starts, with the seconds spent and the budget: `gvd
throughput` prints them, so a long measurement is never silent.
"""

import contextlib
import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from bench.config import parse_sampler
from bench.core.files import versions
from bench.core.results import THROUGHPUT_SCHEMA
from bench.families.diffusion import conditioned
from bench.families.text import build_networks
from bench.speed.fastpaths import FastPaths, fast_denoiser, fast_sampler
from bench.speed.timing import matmul_peak, measure, peak_rss_mb, sync
from bench.train.loops import (
    adam,
    autocast,
    bf16_supported,
    count_flops,
    drop_captions,
    precision,
    train_diffusion,
    train_gan,
    vae_step,
)
from models.diffusion import alphas_cumprod
from models.mlp import num_params
from models.samplers import sample
from models.text import BOS, PAD, TextConfig

# ---------------------------------------------------------------- models and inputs, as the harness builds them


GUIDED_SCALE = 3.0  # the guided rows' scale: any s != 1 costs the same (both halves of the batch, every step)
VOCAB_SIZE = 64  # placeholder words of the timed text encoder: more than the built-in captions use (about 20)


LIVE_ACTIVATIONS = 8  # activations of a level's width alive at once in a forward (blocks, attention, skips): generous


def bytes_per_image(cfg, channels: int) -> int:
    """The memory one image of the sampling batch needs at the costliest point of the rows, an estimate on the
    generous side (float32): the guided UNet call (both halves) at its widest level, with its attention maps, and the
    VAE decoder at its widest level, each LIVE_ACTIVATIONS activations deep."""
    side = cfg.resolution // cfg.vae.factor  # the latent's side
    levels = [(c, side // 2**i, a) for i, (c, a) in enumerate(zip(cfg.unet.channels, cfg.unet.attention))]
    unet = max(c * s * s + (cfg.unet.heads * s**4 if a else 0) for c, s, a in levels)
    decoder = max(c * (cfg.resolution // 2**i) ** 2 for i, c in enumerate(cfg.vae.channels))
    return 4 * (LIVE_ACTIVATIONS * (2 * unet + decoder) + channels * cfg.resolution**2)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for the measurement: the GPU's free memory, or the machine's available memory (Linux
    MemAvailable); None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_problem(cfg, channels: int, device: torch.device, batch: int, threads: int | None) -> str | None:
    """Why `gvd throughput --batch / --threads` cannot run on this machine (one line), or None: more threads than
    usable cores (libgomp runs out of memory creating 100,000), or a batch whose estimated memory exceeds what is
    available (--batch 1000000000 tried to allocate 128 GB)."""
    cores = usable_cores()
    if threads is not None and threads > cores:
        return f"--threads {threads}: this machine gives this process {cores} cores; use at most --threads {cores}"
    free, per_image = available_bytes(device), bytes_per_image(cfg, channels)
    if free is not None and batch * per_image > free:
        return (f"--batch {batch} needs about {batch * per_image / 2**30:.3g} GiB ({per_image / 2**20:.3g} MiB per "
                f"image, estimated) and {device.type} has {free / 2**30:.3g} GiB available: use at most --batch "
                f"{max(1, free // per_image)}")
    return None


def build_image_models(cfg, channels: int, device) -> dict:
    """Fresh networks of an ImageBenchConfig through the one wiring (bench/image_models.py), frozen, by name: text,
    G, D, vae, unet. Speed does not depend on trained weights or on which words the vocabulary holds."""
    return build_networks(cfg, channels=channels, resolution=cfg.resolution, vocab_size=VOCAB_SIZE, device=device)


def caption_tokens(n: int, text_cfg: TextConfig, generator: torch.Generator, words: int = 4) -> torch.Tensor:
    """(n, max_len) token ids shaped like the built-in captions ("a small red circle"): BOS, `words` word ids, PAD."""
    tokens = torch.full((n, text_cfg.max_len), PAD, dtype=torch.long)
    tokens[:, 0] = BOS
    k = min(words, text_cfg.max_len - 1)
    tokens[:, 1 : 1 + k] = torch.randint(3, text_cfg.vocab_size, (n, k), generator=generator)
    return tokens


def _denoiser(unet, states, mask, uncond, scale: float | None):
    """The network as the harness samples it (bench/families/diffusion.py conditioned): bound to the text, or guided
    (one batched call on the conditional and unconditional halves, Ho & Salimans 2021). scale None: unguided."""
    n = len(states)
    cond = {"context": states, "context_mask": mask}
    u = {"context": uncond[0].expand(n, -1, -1), "context_mask": uncond[1].expand(n, -1)}
    return conditioned(unet, 1.0 if scale is None else scale, cond, u)


# ---------------------------------------------------------------- budget


def _fits(seconds: float, deadline: float | None, share: float) -> bool:
    """Whether `seconds` fit in `share` of the time left before the deadline (always, without one)."""
    return deadline is None or seconds <= max(deadline - time.perf_counter(), 0.0) * share


def _plan(est_s: float, deadline: float | None, share: float = 0.25) -> tuple[int, int] | None:
    """(warmup, repeats) for a measurement whose one call costs about est_s: (2, 5) for calls under a second, (1, 3)
    for longer ones (a long loop warms itself up), fewer when the budget is short; None when even one timed call
    would not fit in `share` of the time left. The networks are already warm when loops are timed."""
    ladder = [(2, 5), (1, 3), (1, 1), (0, 1)] if est_s < 1.0 else [(1, 3), (1, 1), (0, 1)]
    if deadline is None:
        return ladder[0]
    left = max(deadline - time.perf_counter(), 0.0) * share
    return next(((w, r) for w, r in ladder if (w + r) * est_s <= left), None)


def _adaptive(fn: Callable[[], object], deadline, device, share: float = 0.05, prior: float | None = None) -> dict:
    """measure() with its repeats cut to fit the budget: the first call (a warm-up in any case) gives the cost.
    prior: the cost a cheaper measurement predicts for one call; when even one call would not fit `share` of the
    time left, fn is not called and the timing is that prediction (repeats 0: "estimated")."""
    if prior is not None and _plan(prior, deadline, share) is None:
        return _estimate(prior)
    t0 = time.perf_counter()
    fn()
    sync(device)
    warmup, repeats = _plan(time.perf_counter() - t0, deadline, share) or (0, 1)
    return measure(fn, warmup=max(warmup - 1, 0), repeats=repeats, device=device)


def _measured_or_estimated(make_fn: Callable[[], Callable], est_s: float, deadline, device, share: float = 0.25,
                           must: bool = False) -> tuple[dict, bool]:
    """(timing, measured?): make_fn() is built and timed when it fits the budget (always when `must`), else the
    timing is the estimate est_s. make_fn is only called when it will be timed (a CUDA-graph capture costs time)."""
    plan = _plan(est_s, deadline, share) or ((0, 1) if must else None)
    if plan is None:
        return _estimate(est_s), False
    return measure(make_fn(), warmup=plan[0], repeats=plan[1], device=device), True


def _estimate(seconds: float) -> dict:
    """A timing that was predicted, not measured (repeats 0)."""
    return {"median_s": seconds, "min_s": seconds, "repeats": 0, "peak_memory_bytes": None}


def _how(timing: dict) -> str:
    return "measured" if timing["repeats"] else "estimated"



def _sampler_cost(sampler: str, prediction: str, x_T, alpha_bar, states, mask, uncond, scale, device, deadline=None,
                  nfe: int = 20) -> dict:
    """The sampling loop with the network replaced by a constant: exactly what the sampler (and the guidance
    wrapper) adds per step beyond the network call. Returns {"sampler_step_s", "nfe"}."""
    const = torch.randn((1 if scale is None else 2) * len(x_T), *x_T.shape[1:], device=x_T.device)
    null = _denoiser(lambda x, t, **kw: const, states, mask, uncond, scale)
    m = _adaptive(lambda: sample(sampler, null, x_T, alpha_bar, nfe, prediction=prediction), deadline, device)
    return {"sampler_step_s": m["median_s"] / nfe, "nfe": nfe}


def _row(model: str, stage: str, timing: dict, *, batch: int, flops: float, nfe=None,
         guidance=None, latency=None, method: str = "measured", dtype: str = "float32", what: str = "") -> dict:
    ips = batch / timing["median_s"]
    tflops = flops * ips / 1e12
    peak_mem = timing.get("peak_memory_bytes")
    return {"model": model, "stage": stage, "what": what, "nfe": nfe, "guidance": guidance, "batch": batch,
            "seconds_per_batch": timing["median_s"], "min_seconds_per_batch": timing["min_s"],
            "repeats": timing["repeats"], "images_per_s": ips, "latency_s": latency, "flops_per_image": flops,
            "tflops": tflops, "mfu": None, "dtype": dtype, "method": method,
            "peak_memory_mb": None if peak_mem is None else peak_mem / 2**20}


# ---------------------------------------------------------------- the measurement


@dataclass
class _Bench:
    """What every measurement of one image_throughput call shares: the networks and their inputs, built once."""

    cfg: object  # the ImageBenchConfig measured
    device: torch.device
    nets: dict  # build_image_models' frozen networks: text, G, D, vae, unet
    batch: int  # the sampling batch
    deadline: float | None  # perf_counter() time to be done by; None = no budget
    tokens: torch.Tensor  # (B, L) caption token ids
    states: torch.Tensor  # (B, L, W) text-encoder token states: the UNet's context
    pooled: torch.Tensor  # (B, E) pooled text embedding: the GAN's condition
    mask: torch.Tensor  # (B, L) real-token mask
    uncond: tuple  # the empty caption: states (1, L, W), mask (1, L)
    z: torch.Tensor  # (B, z_dim) GAN latents
    x_T: torch.Tensor  # (B, C, h, w) diffusion starting noise, the VAE's latent shape
    t_mid: torch.Tensor  # (B,) a mid-schedule timestep for one network call
    alpha_bar: torch.Tensor  # (T,) the training schedule
    sampler: str  # the headline sampler's name (cfg.sampler without its step count)
    progress: Callable[[str], None] | None = None  # hears each stage as it starts
    budget_s: float | None = None
    t_start: float = 0.0

    def say(self, what: str) -> None:
        if self.progress is not None:
            spent = time.perf_counter() - self.t_start
            self.progress(f"{spent:4.0f} s" + (f" of {self.budget_s:.0f}" if self.budget_s else "") + f": {what}")


def _prepare(cfg, device: torch.device, channels: int, batch: int, deadline, seed: int) -> _Bench:
    """Fresh networks and inputs: the text encodings once (shared by both models), latents, noise."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    nets = build_image_models(cfg, channels, device)
    text, vae = nets["text"], nets["vae"]
    tokens = caption_tokens(batch, text.cfg, gen).to(device)
    states, pooled, mask = text(tokens)  # (B, L, W), (B, E), (B, L)
    u_states, _, u_mask = text(caption_tokens(1, text.cfg, gen, words=0).to(device))  # "" = BOS alone
    f = vae.cfg.factor
    latent_shape = (vae.cfg.latent_channels, cfg.resolution // f, cfg.resolution // f)
    return _Bench(cfg=cfg, device=device, nets=nets, batch=batch, deadline=deadline, tokens=tokens, states=states,
                  pooled=pooled, mask=mask, uncond=(u_states, u_mask),
                  z=torch.randn(batch, nets["G"].cfg.z_dim, device=device),
                  x_T=torch.randn(batch, *latent_shape, device=device),
                  t_mid=torch.full((batch,), cfg.diffusion.num_steps / 2, device=device),
                  alpha_bar=alphas_cumprod(cfg.diffusion.schedule, cfg.diffusion.num_steps).float().to(device),
                  sampler=parse_sampler(cfg.sampler)[0])


def _flops(b: _Bench) -> dict:
    """FLOPs per image of each network call, counted at batch 2 (the same per image at any batch for these
    networks): the text encoder per caption, G, one UNet call, one VAE decode."""
    n = b.nets
    return {"text": count_flops(lambda: n["text"](b.tokens[:2])) / 2,
            "gan": count_flops(lambda: n["G"](b.z[:2], b.pooled[:2])) / 2,
            "unet": count_flops(lambda: n["unet"](b.x_T[:2], b.t_mid[:2], context=b.states[:2],
                                                  context_mask=b.mask[:2])) / 2,
            "decode": count_flops(lambda: n["vae"].decode(b.x_T[:2])) / 2}


def _forward_rows(b: _Bench, flops: dict) -> list[dict]:
    """The frozen text encoder per prompt (shared by both models) and the GAN's one forward pass per image."""
    text, G = b.nets["text"], b.nets["G"]
    b.say("text encoder and GAN generator calls")
    rows = [_row("text", "encode", _adaptive(partial(text, b.tokens), b.deadline, b.device), batch=b.batch,
                 flops=flops["text"], what="frozen text encoder, once per prompt (shared)")]
    lat = _adaptive(partial(G, b.z[:1], b.pooled[:1]), b.deadline, b.device)["median_s"]
    rows.append(_row("gan", "sample", _adaptive(partial(G, b.z, b.pooled), b.deadline, b.device), batch=b.batch,
                     flops=flops["gan"], nfe=1, latency=lat, what="G(z, text)"))
    return rows


def _loop(b: _Bench, net, n: int, nfe: int, scale: float | None, fast: FastPaths) -> Callable[[], object]:
    """One whole sampling call of n images, VAE decode included, ready to time (a CUDA graph is captured here)."""
    model = _denoiser(net, b.states[:n], b.mask[:n], b.uncond, scale)
    run = fast_sampler(b.sampler, model, b.x_T[:n], b.alpha_bar, nfe, fast, prediction=b.cfg.diffusion.prediction)
    return lambda: b.nets["vae"].decode(run(b.x_T[:n])[0])


def _network_costs(b: _Bench, net, guidance: dict) -> tuple[dict, dict]:
    """({(label, n): timing of one network call at batch n}, {label: the sampler's own cost per step}) for label in
    guidance ("unguided": None, "guided": scale) and n in (1, batch): the unguided calls always (every estimate rests
    on them), a guided one when twice the unguided call's cost (both halves in one call) fits the budget."""
    step, overhead = {}, {}
    for label, s in guidance.items():
        b.say(f"one UNet call, {label}")
        for n in (1, b.batch):
            call = partial(_denoiser(net, b.states[:n], b.mask[:n], b.uncond, s), b.x_T[:n], b.t_mid[:n])
            prior = None if s is None else 2 * step["unguided", n]["median_s"]
            step[label, n] = _adaptive(call, b.deadline, b.device, prior=prior)
        overhead[label] = _sampler_cost(b.sampler, b.cfg.diffusion.prediction, b.x_T, b.alpha_bar, b.states, b.mask,
                                        b.uncond, s, b.device, b.deadline)
        overhead[label]["network_step_s"] = step[label, b.batch]["median_s"]
        overhead[label]["fraction_of_network"] = overhead[label]["sampler_step_s"] / step[label, b.batch]["median_s"]
    return step, overhead


def _diffusion_parts(b: _Bench, fast: FastPaths) -> tuple:
    """What every diffusion row is built from: the network (with its fast paths), one call of it and the sampler's
    own cost per step, the VAE decode. Returns (net, step, overhead, {n: decode seconds})."""
    net = fast_denoiser(b.nets["unet"], fast, b.device)
    b.say("one VAE decode")
    decode = {n: _adaptive(partial(b.nets["vae"].decode, b.x_T[:n]), b.deadline, b.device)["median_s"]
              for n in (b.batch, 1)}
    step, overhead = _network_costs(b, net, {"unguided": None, "guided": GUIDED_SCALE})
    return net, step, overhead, decode


def _diffusion_rows(b: _Bench, flops: dict, nfes, fast: FastPaths, dtype: str, parts: tuple) -> list:
    """Whole sampling loops, cheapest first, measured when they fit the budget and estimated otherwise from the
    parts (_diffusion_parts)."""
    net, step, overhead, decode = parts
    guidance = {"unguided": None, "guided": GUIDED_SCALE}
    rows = []
    for nfe in nfes:
        b.say(f"diffusion sampling loops at NFE {nfe}")
        for label, s in guidance.items():
            per_step = overhead[label]["sampler_step_s"]
            est = nfe * (step[label, b.batch]["median_s"] + per_step) + decode[b.batch]
            est_1 = nfe * (step[label, 1]["median_s"] + per_step) + decode[1]
            timing, measured = _measured_or_estimated(partial(_loop, b, net, b.batch, nfe, s, fast), est,
                                                      b.deadline, b.device)
            if not measured:  # the loop's peak is the network call's (the decode's is smaller)
                timing["peak_memory_bytes"] = step[label, b.batch]["peak_memory_bytes"]
            latency, lat_measured = _measured_or_estimated(partial(_loop, b, net, 1, nfe, s, fast), est_1,
                                                           b.deadline, b.device, share=0.1)
            method = ("estimated" if not measured else "measured" if lat_measured
                      else "measured (batch-1 latency estimated)")
            rows.append(_row("diffusion", "sample", timing, batch=b.batch, nfe=nfe, guidance=1.0 if s is None else s,
                             flops=nfe * (2 if s else 1) * flops["unet"] + flops["decode"],
                             latency=latency["median_s"], method=method, dtype=dtype,
                             what=f"{b.sampler}:{nfe} + VAE decode"))
    return rows


def _notes(fast: FastPaths, rows: list[dict], cuda: bool, load: dict) -> list[str]:
    """What a reader of the table must know about how this run was measured."""
    notes = []
    if fast.cuda_graph:
        notes.append("the diffusion sampling loops replay a captured CUDA graph (bench/fastpaths.cuda_graph_sampler)")
    if any(r["method"] == "estimated" for r in rows):
        notes.append("'estimated' rows did not fit the time budget: a sampling loop is NFE x (one network call + the "
                     "measured sampler cost per step) + one VAE decode; a guided network call that did not fit either "
                     "is twice the unguided one (both halves in one call of twice the batch)")
    if any(r["method"] == ONE_STEP for r in rows):
        notes.append(f"a training row '{ONE_STEP}' had no time left for timed repeats: its time is its warm-up "
                     "step's, the per-call setup (optimisers, EMA copy) included, so its images/s is a little low; a "
                     "larger --budget times it properly")
    if not cuda and max(load["start"], load["end"]) >= (os.cpu_count() or 1):
        notes.append("the machine was busy (load average >= the core count): CPU timings with several threads are "
                     "unreliable under oversubscription (threads wait for each other); `--threads 1` is steadier")
    if not cuda:
        notes.append(f"peak memory is measured on CUDA only (max_memory_allocated); not measured on the CPU "
                     f"(this process's peak RSS: {peak_rss_mb():.0f} MB)")
    return notes


def _models(b: _Bench, flops: dict, decode: dict) -> dict:
    """Parameters and FLOPs per model, and the diffusion model's sampler, guidance and decode time."""
    n = b.nets
    return {
        "gan": {"params": {"G": num_params(n["G"]), "D": num_params(n["D"])}, "flops_per_image": flops["gan"]},
        "diffusion": {"params": {"unet": num_params(n["unet"]), "vae": num_params(n["vae"])}, "sampler": b.sampler,
                      "guidance": GUIDED_SCALE, "flops_per_network_call_per_image": flops["unet"],
                      "flops_per_decode": flops["decode"], "decode_s": {"batch": decode[b.batch], "one": decode[1]}},
        "text": {"params": num_params(n["text"]), "flops_per_caption": flops["text"]},
    }


def _arithmetic(cfg, device: torch.device, fast: FastPaths) -> tuple[str, Callable]:
    """(dtype label, a context factory) of the sampling rows: as `gvd run` samples (the harness's arithmetic,
    bench/train/loops.autocast); on CUDA the bf16 fast path."""
    if device.type == "cuda":
        return "bf16 autocast" if fast.bf16 else "float32", contextlib.nullcontext
    return precision(device, cfg.amp), partial(autocast, device, cfg.amp)


@torch.no_grad()
def image_throughput(cfg, device, *, channels: int = 3, nfes=(10, 20, 50, 1000), batch: int = 64,
                     budget_s: float | None = None, fast: FastPaths | None = None, seed: int = 0,
                     progress: Callable[[str], None] | None = None) -> dict:
    """Measure both image models of an ImageBenchConfig on `device` (see the module docstring). Returns a JSON-able
    dict: {"schema", "device", "dtype", "versions", "threads", "batch", "train_batch", "matmul_peak", "models",
    "rows", "sampler_overhead", "notes", "seconds"}; each row is one (model, stage, NFE, guidance) measurement.

    budget_s caps the wall time (the module docstring says how); progress hears each stage. `fast` switches on
    bench/fastpaths.py's sampling fast paths for the diffusion rows (default: none, i.e. float32 as `gvd run`
    samples)."""
    device = torch.device(device)
    t_start = time.perf_counter()
    load = {"start": os.getloadavg()[0]}  # 1-minute; other processes' share
    cuda = device.type == "cuda"
    fast = fast or FastPaths(bf16=False)
    b = _prepare(cfg, device, channels, batch, None if budget_s is None else t_start + budget_s, seed)
    b.progress, b.budget_s, b.t_start = progress, budget_s, t_start
    b.say("the matmul peak (the MFU denominator)")
    peak_start, peak_s = _peaks(device), time.perf_counter() - t_start
    b.say("FLOP counts of every network")
    flops = _flops(b)
    dtype, arithmetic = _arithmetic(cfg, device, fast)
    with arithmetic():  # the parts every row is built from first; then training; then the loops that fit
        rows = _forward_rows(b, flops)
        parts = _diffusion_parts(b, fast)
    training = _training_rows(b, channels)
    with arithmetic():
        rows += _diffusion_rows(b, flops, nfes, fast, dtype, parts) + training
    _, _, overhead, decode = parts
    # the MFU denominator: the matmul peak of the precision a row computes in, the better of two measurements, at
    # the start and at the end (a busy moment lowers one), the second when it fits the budget
    b.say("the matmul peak again")
    end = _peaks(device) if _fits(peak_s, b.deadline, 1.0) else peak_start
    peaks = {k: max(p, end[k], key=lambda q: q["tflops"]) for k, p in peak_start.items()}
    for r in rows:
        r["mfu"] = r["tflops"] / peaks[peak_key(r["dtype"])]["tflops"]
    peak = peaks[peak_key(_train_dtype(cfg, device))]
    load["end"] = os.getloadavg()[0]
    return {
        "schema": THROUGHPUT_SCHEMA,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "device_type": device.type,
        "dtype": {"train": _train_dtype(cfg, device), "sample": dtype},
        "versions": versions(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": load,
        "batch": batch,
        "train_batch": cfg.batch_size,
        "timer": "CUDA events, median of repeats" if cuda else "perf_counter, median of repeats",
        "matmul_peak": peak,  # of the training precision
        "matmul_peaks": peaks,  # by dtype: float32, and bfloat16 where the device has bf16 arithmetic
        "models": _models(b, flops, decode),
        "rows": rows,
        "sampler_overhead": {"sampler": b.sampler, "batch": batch, **overhead},
        "notes": _notes(fast, rows, cuda, load),
        "seconds": time.perf_counter() - t_start,
    }


# ---------------------------------------------------------------- training steps, through the harness's own loops


def _train_dtype(cfg, device: torch.device) -> str:
    return precision(device, bool(cfg.amp))


def _peaks(device) -> dict:
    """The matmul peak of each precision a row can compute in: float32 always, bfloat16 where the device has it."""
    out = {"float32": matmul_peak(device, torch.float32)}
    if bf16_supported(device):
        out["bfloat16"] = matmul_peak(device, torch.bfloat16)
    return out


def peak_key(dtype: str) -> str:
    """The matmul peak a row's (or a training's) precision is measured against: "bfloat16" or "float32"."""
    return "bfloat16" if dtype.startswith("bf16") else "float32"


def _trainable(module: torch.nn.Module) -> torch.nn.Module:
    """A training copy of a frozen network (the measured networks stay as they were)."""
    return copy.deepcopy(module).train().requires_grad_(True)


def _train_inputs(b: _Bench, channels: int) -> dict:
    """Batches at the preset's training batch size: images in [-1, 1], latents, and the text of the sampling batch
    repeated, with cfg.caption_dropout of the UNet's captions replaced by "" as the harness does (drop_captions)."""
    cfg, device = b.cfg, b.device
    B, res, f = cfg.batch_size, cfg.resolution, b.nets["vae"].cfg.factor
    reps = -(-B // len(b.pooled))
    ctx, ctx_mask = drop_captions(b.states.repeat(reps, 1, 1)[:B], b.mask.repeat(reps, 1)[:B], b.uncond,
                                  cfg.caption_dropout, torch.Generator().manual_seed(0))
    return {"images": torch.rand(B, channels, res, res, device=device) * 2 - 1,  # (B, C, H, W)
            "latents": torch.randn(B, b.nets["vae"].cfg.latent_channels, res // f, res // f, device=device),
            "cond": b.pooled.repeat(reps, 1)[:B],  # (B, E)
            "ctx": ctx, "ctx_mask": ctx_mask}  # (B, L, W), (B, L)


def _same_batch(x, extra, step: int):
    """A training loop's batch function that returns the same (x, extra) at every step."""
    return x, extra


def _gaussian(dim: int, device, n: int) -> torch.Tensor:
    return torch.randn(n, dim, device=device)  # (n, dim)


def _gan_steps(G, D, b: _Bench, inputs: dict, n: int, steps: int) -> None:
    """`steps` steps of bench/train.py train_gan (one D and one G Adam step each) on the first n images."""
    real = partial(_same_batch, inputs["images"][:n], inputs["cond"][:n])
    with torch.enable_grad(), autocast(b.device, b.cfg.amp):
        train_gan(G, D, real, partial(_gaussian, G.cfg.z_dim, b.device), b.cfg.gan, steps, progress=False)


def _unet_steps(unet, b: _Bench, inputs: dict, n: int, steps: int) -> None:
    """`steps` steps of bench/train.py train_diffusion (AdamW, one-cycle schedule, EMA) on the first n latents."""
    batch = partial(_same_batch, inputs["latents"][:n], {"context": inputs["ctx"][:n],
                                                          "context_mask": inputs["ctx_mask"][:n]})
    with torch.enable_grad(), autocast(b.device, b.cfg.amp):
        train_diffusion(unet, batch, b.alpha_bar, b.cfg.diffusion.prediction, b.cfg.diffusion_train, steps,
                        torch.Generator().manual_seed(0), progress=False)


def _vae_steps(vae, opt, b: _Bench, inputs: dict, n: int, steps: int) -> None:
    """`steps` VAE optimiser steps (bench/train.py vae_step, as the harness trains the VAE) on the first n images."""
    with torch.enable_grad():
        for _ in range(steps):
            vae_step(vae, opt, inputs["images"][:n], b.cfg.amp)


ONE_STEP = "measured: one step, its setup included (no time for more)"


def _train_row(model: str, steps_fn, n: int, what: str, b: _Bench, k: int = 2, share: float = 0.3) -> dict:
    """steps_fn(n, steps) timed at batch n, `k` steps per timed call (per-call setup such as the optimisers and the
    EMA copy amortised over them): the first call at full size (one step) warms up (allocator growth, autotuning) and
    gives the cost estimate; then timed, with fewer repeats when the budget is short. When not even one timed call
    fits `share` of the time left, the warm-up step itself is the row (its per-call setup included: an over-estimate
    of a step), and the row says so. FLOPs counted at batch 2."""
    b.say(f"{model} training step (batch {n})")
    flops = count_flops(partial(steps_fn, 2, 1)) / 2
    first = _once(partial(steps_fn, n, 1), b.device)
    timing, measured = _measured_or_estimated(lambda: partial(steps_fn, n, k), k * first, b.deadline, b.device,
                                              share=share)
    if measured:
        timing = {**timing, "median_s": timing["median_s"] / k, "min_s": timing["min_s"] / k}
    else:
        timing = {"median_s": first, "min_s": first, "repeats": 1, "peak_memory_bytes": None}
    return _row(model, "train", timing, batch=n, flops=flops, dtype=_train_dtype(b.cfg, b.device), what=what,
                method="measured" if measured else ONE_STEP)


def _once(fn: Callable[[], object], device) -> float:
    """Seconds of one call of fn (the device's queued work included)."""
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def _train_steps(b: _Bench, inputs: dict) -> dict:
    """One training-step function per network, steps_fn(n, steps): the GAN (D + G), the UNet, the VAE."""
    G, D, vae, unet = (_trainable(b.nets[k]) for k in ("G", "D", "vae", "unet"))
    vae_opt = adam(vae.parameters(), lr=b.cfg.vae_lr)  # as the harness trains it
    return {"gan": partial(_gan_steps, G, D, b, inputs), "diffusion": partial(_unet_steps, unet, b, inputs),
            "vae": partial(_vae_steps, vae, vae_opt, b, inputs)}


def training_flops_per_image(cfg, device, channels: int) -> dict:
    """FLOPs of one training step per image of each network ("gan": one D + one G step, "diffusion": the UNet,
    "vae"), counted as the throughput rows count them (forward + backward, at batch 2), with fresh networks."""
    b = _prepare(cfg, torch.device(device), channels, 2, None, 0)
    with torch.enable_grad():
        return {k: count_flops(partial(fn, 2, 1)) / 2 for k, fn in _train_steps(b, _train_inputs(b, channels)).items()}


def _training_rows(b: _Bench, channels: int) -> list[dict]:
    """Training images/s at the preset's batch size: the GAN and the UNet through bench/train.py's own loops (so the
    logging and gradient-norm bookkeeping of `gvd run` are included), the VAE through bench/train.py's vae_step,
    under the harness's autocast (bf16 on CUDA when cfg.amp)."""
    steps, B = _train_steps(b, _train_inputs(b, channels)), b.cfg.batch_size
    return [
        _train_row("gan", steps["gan"], B, "one D + one G Adam step (bench/train.py train_gan)", b),
        _train_row("diffusion", steps["diffusion"], B, "UNet AdamW step + EMA (bench/train.py train_diffusion)", b),
        _train_row("vae", steps["vae"], min(B, b.cfg.vae_batch_size),
                   "VAE Adam step (diffusion stage 1; bench/train.py vae_step)", b),
    ]


# ---------------------------------------------------------------- the per-run summary for results.json


# The families whose models the rows measure; the "vae" and "text" rows are the diffusion family's own networks, not
# families, so a row's label is never read as a family's name (a user's family may be called anything else).
FAMILIES = ("gan", "diffusion")


def measured_families(result: dict) -> set[str]:
    """The families a throughput result has rows of (what run_entry_throughput can summarise)."""
    return {r.get("model") for r in result.get("rows", []) if isinstance(r, dict)} & set(FAMILIES)


def run_entry_throughput(result: dict, model: str) -> dict:
    """The compact per-model throughput of a results.json run entry ("gan" or "diffusion")."""
    mine = [r for r in result["rows"] if r["model"] == model]
    train = next((r for r in mine if r["stage"] == "train"), None)
    keep = ("nfe", "guidance", "batch", "images_per_s", "latency_s", "flops_per_image", "tflops", "mfu",
            "peak_memory_mb", "method")
    return {"device": result["device"], "dtype": result["dtype"], "params": result["models"][model]["params"],
            "train_images_per_s": train["images_per_s"] if train else None,
            "train_batch": train["batch"] if train else None,
            "train_flops_per_image": train["flops_per_image"] if train else None,
            "sampling": [{k: r[k] for k in keep} for r in mine if r["stage"] == "sample"]}
