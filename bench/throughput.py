"""Throughput: what an image costs to train and to draw, for the GAN and the diffusion model, measured honestly.

A GAN draws an image in one forward pass; a latent diffusion model spends NFE network evaluations (twice the batch
under classifier-free guidance) and a VAE decode. `image_throughput` builds fresh networks from an ImageBenchConfig
(speed does not depend on trained weights) and measures, per model:

  - training images/s at the preset's batch size, through the harness's own loops (bench/train.py: one D and one G
    Adam step for the GAN; one AdamW step plus EMA for the UNet; the VAE step as in bench/imagebench.py);
  - sampling images/s at a batch, and the latency of one image alone (batch 1), at NFE 1 (GAN) and at each NFE of
    `nfes` for the diffusion model, with and without guidance, VAE decode included;
  - FLOPs per image (torch.utils.flop_counter: matmuls, convolutions and attention, the usual convention; elementwise
    ops are not counted), parameters, achieved TFLOP/s and MFU against a matrix-product peak measured in the same
    process (bf16 on CUDA, float32 on the CPU), and on CUDA the peak memory (max_memory_allocated).

Method (`measure`): warm-up calls first, then repeats; on CUDA each repeat is timed with CUDA events after the device
is idle, on the CPU with perf_counter; the median is reported (and the minimum kept). Text encodings are computed once
before timing: both models read the same frozen encoder, whose cost per caption is its own row.

With a time budget (`budget_s`), a sampling loop that would not fit is not run: its time is estimated as
NFE x (one measured network call + the sampler's own per-step cost) + one VAE decode, and its row says "estimated".
The sampler's own per-step cost is measured exactly by running the loop with the network replaced by a constant
(`sampler_overhead`): everything but the network.
"""

import copy
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.fastpaths import FastPaths, fast_denoiser, fast_sampler
from models.dcgan import DCGANConfig, Discriminator, Generator
from models.diffusion import alphas_cumprod
from models.mlp import num_params
from models.samplers import guided, sample
from models.text import BOS, PAD, TextConfig, TextEncoder
from models.unet import UNet, UNetConfig
from models.vae import KLAutoencoder, VAEConfig, vae_loss

SCHEMA = "gan-vs-diffusion/throughput/v1"


# ---------------------------------------------------------------- timing


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], *, warmup: int = 2, repeats: int = 5, device) -> dict:
    """Time fn(): `warmup` untimed calls, then `repeats` timed ones. Returns {"median_s", "min_s", "repeats",
    "timer", "peak_memory_bytes"}; peak memory is CUDA's max_memory_allocated over the timed calls (None on the CPU).

    CUDA work is asynchronous: each timed call starts on an idle device and is bracketed by CUDA events, so the
    time is the device's wall time from the first kernel to the last (launch gaps included)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    if cuda:
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)  # ms -> s
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats,
            "timer": "cuda events" if cuda else "perf_counter",
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else None}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of fn (forward and, if fn runs it, backward), as torch.utils.flop_counter counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(device, dtype: torch.dtype | None = None, n: int | None = None) -> dict:
    """The achieved FLOP/s of a large square matrix product, the denominator of MFU: bf16 8192^2 on CUDA, float32
    1024^2 on the CPU (big enough to saturate the cores, small enough to take a second)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    n = n or (8192 if cuda else 1024)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    m = measure(lambda: a @ b, warmup=3, repeats=10, device=device)
    return {"dtype": str(dtype).removeprefix("torch."), "n": n, "tflops": 2 * n**3 / m["min_s"] / 1e12}


def versions(device) -> dict:
    from bench.results import versions as base

    out = base()
    device = torch.device(device)
    if device.type == "cuda":
        out.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   device_name=torch.cuda.get_device_name(device))
    return out


def _peak_rss_mb() -> float:
    """The process's peak resident set so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


# ---------------------------------------------------------------- models and inputs, as the harness builds them


def build_image_models(cfg, channels: int, device) -> dict:
    """Fresh text encoder, DCGAN, VAE and UNet wired as bench/imagebench.py wires them (GAN conditioned on the pooled
    text embedding, UNet cross-attending to the token states on the VAE's latents)."""
    text = TextEncoder(TextConfig(**asdict(cfg.text)))
    dcfg = DCGANConfig(**{**asdict(cfg.dcgan), "resolution": cfg.resolution, "channels": channels,
                          "cond_dim": cfg.text.embed_dim})
    vcfg = VAEConfig(**{**asdict(cfg.vae), "in_channels": channels, "resolution": cfg.resolution})
    ucfg = UNetConfig(**{**asdict(cfg.unet), "in_channels": vcfg.latent_channels, "context_dim": cfg.text.width})
    nets = {"text": text, "G": Generator(dcfg), "D": Discriminator(dcfg), "vae": KLAutoencoder(vcfg),
            "unet": UNet(ucfg)}
    return {k: m.to(device).eval().requires_grad_(False) for k, m in nets.items()}


def caption_tokens(n: int, text_cfg: TextConfig, generator: torch.Generator, words: int = 4) -> torch.Tensor:
    """(n, max_len) token ids shaped like the built-in captions ("a small red circle"): BOS, `words` word ids, PAD."""
    tokens = torch.full((n, text_cfg.max_len), PAD, dtype=torch.long)
    tokens[:, 0] = BOS
    k = min(words, text_cfg.max_len - 1)
    tokens[:, 1 : 1 + k] = torch.randint(3, text_cfg.vocab_size, (n, k), generator=generator)
    return tokens


def _denoiser(unet, states, mask, uncond, scale: float | None):
    """The network as the harness samples it (bench/imagebench.py): bound to the text, or guided (one batched call on
    the conditional and unconditional halves, Ho & Salimans 2021)."""
    n = len(states)
    cond = {"context": states, "context_mask": mask}
    if scale is None:
        return lambda x, t: unet(x, t, **cond)
    u = {"context": uncond[0].expand(n, -1, -1), "context_mask": uncond[1].expand(n, -1)}
    return guided(unet, scale, cond, u)


# ---------------------------------------------------------------- budget


def _plan(est_s: float, deadline: float | None, share: float = 0.25) -> tuple[int, int] | None:
    """(warmup, repeats) for a measurement whose one call costs about est_s: (2, 5) for calls under a second, (1, 3)
    for longer ones (a long loop warms itself up), fewer when the budget is short; None when even one timed call
    would not fit in `share` of the time left. The networks are already warm when loops are timed."""
    ladder = [(2, 5), (1, 3), (1, 1), (0, 1)] if est_s < 1.0 else [(1, 3), (1, 1), (0, 1)]
    if deadline is None:
        return ladder[0]
    left = max(deadline - time.perf_counter(), 0.0) * share
    return next(((w, r) for w, r in ladder if (w + r) * est_s <= left), None)


def _adaptive(fn: Callable[[], object], deadline, device, share: float = 0.05) -> dict:
    """measure() with its repeats cut to fit the budget: the first call (a warm-up in any case) gives the cost."""
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
        return {"median_s": est_s, "min_s": est_s, "repeats": 0, "peak_memory_bytes": None}, False
    return measure(make_fn(), warmup=plan[0], repeats=plan[1], device=device), True


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


@torch.no_grad()
def image_throughput(cfg, device, *, channels: int = 3, nfes=(10, 20, 50, 1000), batch: int = 64,
                     budget_s: float | None = None, fast: FastPaths | None = None, seed: int = 0) -> dict:
    """Measure both image models of an ImageBenchConfig on `device` (see the module docstring). Returns a JSON-able
    dict: {"schema", "device", "dtype", "versions", "threads", "batch", "train_batch", "matmul_peak", "models",
    "rows", "sampler_overhead", "notes", "seconds"}; each row is one (model, stage, NFE, guidance) measurement.

    budget_s caps the wall time, roughly: the network calls, the training steps and the FLOP counts are always
    measured; whole sampling loops only when they fit. `fast` switches on bench/fastpaths.py's sampling fast paths
    for the diffusion rows (default: none, i.e. float32 as `gvd run` samples)."""
    device = torch.device(device)
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    deadline = None if budget_s is None else t_start + budget_s
    cuda = device.type == "cuda"
    fast = fast or FastPaths(bf16=False)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    nets = build_image_models(cfg, channels, device)
    text, G, D, vae, unet = (nets[k] for k in ("text", "G", "D", "vae", "unet"))
    peak_start = matmul_peak(device)

    # --- inputs: the text encodings once (shared by both models), latents, noise
    tokens = caption_tokens(batch, cfg.text, gen).to(device)
    states, pooled, mask = text(tokens)  # (B, L, W), (B, E), (B, L)
    u_states, _, u_mask = text(caption_tokens(1, cfg.text, gen, words=0).to(device))  # "" = BOS alone
    uncond = (u_states, u_mask)  # (1, L, W), (1, L)
    f = vae.cfg.factor
    latent_shape = (vae.cfg.latent_channels, cfg.resolution // f, cfg.resolution // f)
    alpha_bar = alphas_cumprod(cfg.diffusion.schedule, cfg.diffusion.num_steps).float().to(device)
    sampler, pred, scale = cfg.sampler.partition(":")[0], cfg.diffusion.prediction, float(cfg.guidance)
    z = torch.randn(batch, G.cfg.z_dim, device=device)
    x_T = torch.randn(batch, *latent_shape, device=device)
    t_mid = torch.full((batch,), cfg.diffusion.num_steps / 2, device=device)

    # --- FLOPs per image, counted at batch 2 (the same per image at any batch for these networks)
    f_text = count_flops(lambda: text(tokens[:2])) / 2
    f_gen = count_flops(lambda: G(z[:2], pooled[:2])) / 2
    f_unet = count_flops(lambda: unet(x_T[:2], t_mid[:2], context=states[:2], context_mask=mask[:2])) / 2
    f_dec = count_flops(lambda: vae.decode(x_T[:2])) / 2

    rows = [_row("text", "encode", _adaptive(lambda: text(tokens), deadline, device), batch=batch, flops=f_text,
                 what="frozen text encoder, once per prompt (shared)")]
    lat = _adaptive(lambda: G(z[:1], pooled[:1]), deadline, device)["median_s"]
    rows.append(_row("gan", "sample", _adaptive(lambda: G(z, pooled), deadline, device), batch=batch, flops=f_gen,
                     nfe=1, latency=lat, what="G(z, text)"))

    # --- diffusion: one network call, the decode and the sampler's own cost; then whole loops, cheapest first
    net = fast_denoiser(unet, fast, device)
    dtype = "bf16 autocast" if fast.bf16 and cuda else "float32"
    decode = {n: _adaptive(partial(vae.decode, x_T[:n]), deadline, device)["median_s"] for n in (batch, 1)}
    guidance = {"unguided": None, "guided": scale}

    def denoiser(n: int, s: float | None):
        return _denoiser(net, states[:n], mask[:n], uncond, s)

    def loop(n: int, nfe: int, s: float | None):
        run = fast_sampler(sampler, denoiser(n, s), x_T[:n], alpha_bar, nfe, fast, prediction=pred)
        return lambda: vae.decode(run(x_T[:n])[0])

    step, overhead = {}, {}
    for label, s in guidance.items():
        for n in (batch, 1):
            step[label, n] = _adaptive(partial(denoiser(n, s), x_T[:n], t_mid[:n]), deadline, device)
        overhead[label] = _sampler_cost(sampler, pred, x_T, alpha_bar, states, mask, uncond, s, device, deadline)
        overhead[label]["network_step_s"] = step[label, batch]["median_s"]
        overhead[label]["fraction_of_network"] = overhead[label]["sampler_step_s"] / step[label, batch]["median_s"]
    for nfe in nfes:
        for label, s in guidance.items():
            per_step = overhead[label]["sampler_step_s"]
            est = nfe * (step[label, batch]["median_s"] + per_step) + decode[batch]
            est_1 = nfe * (step[label, 1]["median_s"] + per_step) + decode[1]
            timing, measured = _measured_or_estimated(partial(loop, batch, nfe, s), est, deadline, device)
            if not measured:  # the loop's peak is the network call's (the decode's is smaller)
                timing["peak_memory_bytes"] = step[label, batch]["peak_memory_bytes"]
            latency, lat_measured = _measured_or_estimated(partial(loop, 1, nfe, s), est_1, deadline, device,
                                                           share=0.1)
            method = ("estimated" if not measured else "measured" if lat_measured
                      else "measured (batch-1 latency estimated)")
            rows.append(_row("diffusion", "sample", timing, batch=batch, nfe=nfe, guidance=1.0 if s is None else s,
                            flops=nfe * (2 if s else 1) * f_unet + f_dec, latency=latency["median_s"], method=method,
                            dtype=dtype, what=f"{sampler}:{nfe} + VAE decode"))

    # --- training at the preset's batch size
    rows += _training_rows(cfg, nets, channels, device, deadline, pooled, states, mask, uncond, alpha_bar)

    # the MFU denominator: the better of two measurements, at the start and at the end (a busy moment lowers one)
    peak = max(peak_start, matmul_peak(device), key=lambda p: p["tflops"])
    for r in rows:
        r["mfu"] = r["tflops"] / peak["tflops"]
    notes = []
    if fast.cuda_graph:
        notes.append("the diffusion sampling loops replay a captured CUDA graph (bench/fastpaths.cuda_graph_sampler)")
    if any(r["method"] != "measured" for r in rows):
        notes.append("'estimated' rows did not fit the time budget: NFE x (measured network call + measured sampler "
                     "cost per step) + measured VAE decode")
    load_end = os.getloadavg()[0]
    if not cuda and max(load_start, load_end) >= (os.cpu_count() or 1):
        notes.append("the machine was busy (load average >= the core count): CPU timings with several threads are "
                     "unreliable under oversubscription (threads wait for each other); `--threads 1` is steadier")
    if not cuda:
        notes.append(f"peak memory is measured on CUDA only (max_memory_allocated); not measured on the CPU "
                     f"(this process's peak RSS: {_peak_rss_mb():.0f} MB)")
    amp = bool(cfg.amp) and cuda
    return {
        "schema": SCHEMA,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "device_type": device.type,
        "dtype": {"train": "bf16 autocast" if amp else "float32", "sample": dtype},
        "versions": versions(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": {"start": load_start, "end": load_end},  # 1-minute; other processes' share
        "batch": batch,
        "train_batch": cfg.batch_size,
        "timer": "CUDA events, median of repeats" if cuda else "perf_counter, median of repeats",
        "matmul_peak": peak,
        "models": {
            "gan": {"params": {"G": num_params(G), "D": num_params(D)}, "flops_per_image": f_gen},
            "diffusion": {"params": {"unet": num_params(unet), "vae": num_params(vae)}, "sampler": sampler,
                          "guidance": scale, "flops_per_network_call_per_image": f_unet, "flops_per_decode": f_dec,
                          "decode_s": {"batch": decode[batch], "one": decode[1]}},
            "text": {"params": num_params(text), "flops_per_caption": f_text},
        },
        "rows": rows,
        "sampler_overhead": {"sampler": sampler, "batch": batch, **overhead},
        "notes": notes,
        "seconds": time.perf_counter() - t_start,
    }


def _training_rows(cfg, nets, channels, device, deadline, pooled, states, mask, uncond, alpha_bar) -> list:
    """Training images/s at the preset's batch size: the GAN and the UNet through bench/train.py's own loops (so the
    logging and gradient-norm bookkeeping of `gvd run` are included), the VAE step as bench/imagebench.py writes it,
    under the same autocast as the harness (bf16 on CUDA when cfg.amp). Each timed call runs `k` steps; per-call
    setup (optimisers, the EMA copy) is amortised over them."""
    from bench.train import train_diffusion, train_gan

    B, k, res = cfg.batch_size, 2, cfg.resolution
    amp = bool(cfg.amp) and device.type == "cuda"
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    dtype = "bf16 autocast" if amp else "float32"
    reps = -(-B // len(pooled))
    cond, ctx, ctx_mask = pooled.repeat(reps, 1)[:B], states.repeat(reps, 1, 1)[:B], mask.repeat(reps, 1)[:B]
    train = lambda m: copy.deepcopy(m).train().requires_grad_(True)
    G, D, vae, unet = train(nets["G"]), train(nets["D"]), train(nets["vae"]), train(nets["unet"])
    images = torch.rand(B, channels, res, res, device=device) * 2 - 1  # (B, C, H, W) in [-1, 1]
    latents = torch.randn(B, vae.cfg.latent_channels, res // vae.cfg.factor, res // vae.cfg.factor, device=device)
    drop = (torch.arange(B, device=device) % 10) == 0  # 10% of the captions replaced by "", as the harness does
    ctx = torch.where(drop[:, None, None], uncond[0], ctx)
    ctx_mask = torch.where(drop[:, None], uncond[1], ctx_mask)
    vae_opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)

    def gan_steps(n, steps=k):
        with torch.enable_grad(), autocast():
            train_gan(G, D, lambda step: (images[:n], cond[:n]), lambda m: torch.randn(m, G.cfg.z_dim, device=device),
                      cfg.gan, steps, progress=False)

    def unet_steps(n, steps=k):
        batch = lambda step: (latents[:n], {"context": ctx[:n], "context_mask": ctx_mask[:n]})
        with torch.enable_grad(), autocast():
            train_diffusion(unet, batch, alpha_bar, cfg.diffusion.prediction, cfg.diffusion_train, steps,
                            torch.Generator().manual_seed(0), progress=False)

    def vae_steps(n, steps=k):
        with torch.enable_grad():
            for _ in range(steps):
                with autocast():
                    recon, mean, logvar = vae(images[:n])
                    loss, _ = vae_loss(recon.float(), images[:n], mean.float(), logvar.float(), vae.cfg.kl_weight)
                vae_opt.zero_grad(set_to_none=True)
                loss.backward()
                vae_opt.step()

    out = []
    for model, fn, n, what in (("gan", gan_steps, B, "one D + one G Adam step + EMA (bench/train.py train_gan)"),
                               ("diffusion", unet_steps, B, "UNet AdamW step + EMA (bench/train.py train_diffusion)"),
                               ("vae", vae_steps, min(B, cfg.vae_batch_size), "VAE Adam step (diffusion stage 1)")):
        flops = count_flops(lambda fn=fn: fn(2, 1)) / 2
        t0 = time.perf_counter()
        fn(n, 1)  # the first call at full size: allocator growth, autotuning; and the cost estimate
        sync(device)
        est = k * (time.perf_counter() - t0)
        timing, _ = _measured_or_estimated(lambda fn=fn, n=n: lambda: fn(n), est, deadline, device, share=0.3,
                                           must=True)
        per_step = {**timing, "median_s": timing["median_s"] / k, "min_s": timing["min_s"] / k}
        out.append(_row(model, "train", per_step, batch=n, flops=flops, dtype=dtype, what=what))
    return out


# ---------------------------------------------------------------- tables and report blocks


def _fmt(value, spec: str = "{:.3g}", scale: float = 1.0) -> str:
    return "n/a" if value is None else spec.format(value * scale if scale != 1.0 else value)


def _table(result: dict) -> tuple[list[str], list[list[str]]]:
    header = ["model", "stage", "NFE", "guidance", "batch", "images/s", "ms per image alone", "GFLOP/image",
              "TFLOP/s", "MFU", "peak MB", "how"]
    rows = []
    for r in result["rows"]:
        rows.append([r["model"], r["stage"], _fmt(r["nfe"], "{}"), _fmt(r["guidance"], "{:g}"), str(r["batch"]),
                     _fmt(r["images_per_s"], "{:,.4g}"), _fmt(r["latency_s"], "{:.3g}", 1e3),
                     _fmt(r["flops_per_image"], "{:.3g}", 1e-9), _fmt(r["tflops"], "{:.3g}"),
                     _fmt(r["mfu"], "{:.1%}"), _fmt(r["peak_memory_mb"], "{:,.0f}"), r["method"]])
    return header, rows


def _summary_lines(result: dict) -> list[str]:
    peak, v = result["matmul_peak"], result["versions"]
    m = result["models"]
    load = result["load_average"]
    lines = [
        (f"Device {result['device']} ({result['threads']} threads of {result.get('cpu_count')} CPU cores; 1-minute "
        f"load average {load['start']:.1f} at the start, {load['end']:.1f} at the end: a load above the core count "
        f"means other processes shared them), sampling {result['dtype']['sample']}, training "
        f"{result['dtype']['train']}; {', '.join(f'{k} {val}' for k, val in v.items())}. Timer: {result['timer']}. "
        f"MFU is against a {peak['dtype']} {peak['n']}x{peak['n']} matrix product measured in the same process: "
        f"{peak['tflops']:.3g} TFLOP/s."),
        "Parameters: GAN " + " + ".join(f"{k} {n:,}" for k, n in m["gan"]["params"].items()) + "; diffusion "
        + " + ".join(f"{k} {n:,}" for k, n in m["diffusion"]["params"].items())
        + f"; shared text encoder {m['text']['params']:,}. FLOPs are matmuls, convolutions and attention "
        "(torch.utils.flop_counter), elementwise ops not counted; training FLOPs include the backward pass.",
    ]
    so = result["sampler_overhead"]
    parts = [f"{k}: {so[k]['sampler_step_s'] * 1e6:.0f} us per step = {so[k]['fraction_of_network']:.2%} of the "
             f"network call ({so[k]['network_step_s'] * 1e3:.3g} ms)" for k in ("unguided", "guided") if k in so]
    lines.append(f"Sampler loop overhead ({so['sampler']}, batch {so['batch']}, network replaced by a constant): "
                 + "; ".join(parts) + ".")
    return lines + list(result.get("notes", []))


def throughput_table(result: dict) -> str:
    """The Markdown table `gvd throughput` prints, with the device, versions and method lines under it."""
    header, rows = _table(result)
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(table) + "\n\n" + "\n".join(f"- {line}" for line in _summary_lines(result)) + "\n"


def throughput_blocks(result: dict, figures: list[str] | tuple = ()) -> list:
    """Report blocks (bench/report.py's format) for a throughput result, plus any quality-vs-cost figures."""
    header, rows = _table(result)
    blocks = [("h2", "Throughput"),
              ("p", ("Fresh networks of this run's configs (speed does not depend on the weights). Sampling: images/s "
                    f"at batch {result['batch']} and the time of one image alone (batch 1), VAE decode included for "
                    "the diffusion model; guidance runs the conditional and unconditional halves in one batch. "
                    f"Training: images/s at batch {result['train_batch']} through the harness's own training loops. "
                    "Warm-up calls first; the median of the repeats.")),
              ("table", header, rows)]
    blocks += [("p", line) for line in _summary_lines(result)]
    blocks += [("img", path, path) for path in figures]
    return blocks


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


# ---------------------------------------------------------------- quality against cost


def _quality_key(runs: list[dict]) -> tuple[str, str] | None:
    """FID where the runs have it (images), else reverse KL (2D mixtures); lower is better for both."""
    for key, label in (("fid", "FID (judge features)"), ("reverse_kl", "reverse KL")):
        if any(isinstance(r.get("metrics", {}).get(key), (int, float)) for r in runs):
            return key, label
    return None


def _sampling_points(run: dict, key: str) -> list[tuple[str, float, float, float | None]]:
    """(sampler name, NFE, quality, seconds per image) of a run: every sampler in by_sampler, else the headline."""
    out = []
    per = run.get("by_sampler") or {run.get("sampler") or run["model"]: {**run.get("metrics", {}),
                                                                          **run.get("throughput", {})}}
    for label, m in per.items():
        if not isinstance(m.get(key), (int, float)) or m.get("nfe") is None:
            continue
        ips = m.get("samples_per_s")
        if not ips and m.get("sample_seconds") and m.get("num_samples"):
            ips = m["num_samples"] / m["sample_seconds"]
        out.append((str(label).partition(":")[0], float(m["nfe"]), float(m[key]), 1.0 / ips if ips else None))
    return out


def _training_points(run: dict, key: str) -> list[tuple[float, float]]:
    """(training wall seconds, quality) along a run's metric-over-training curve, else its final point. Curve points
    without their own "seconds" are placed at step x (seconds per step), after any VAE stage."""
    train = run.get("train") or {}
    total, steps = train.get("seconds"), train.get("steps")
    if not total:
        return []
    offset = (train.get("vae") or {}).get("seconds", 0.0)
    points = []
    for c in run.get("curve") or []:
        if isinstance(c.get(key), (int, float)):
            sec = c.get("seconds")
            if sec is None and steps and c.get("step") is not None:
                sec = offset + c["step"] * (total - offset) / steps
            if sec is not None:
                points.append((float(sec), float(c[key])))
    final = run.get("metrics", {}).get(key)
    if isinstance(final, (int, float)):
        points.append((float(total), float(final)))
    return sorted(points)


def quality_cost_figures(run_dir, results: dict) -> list[str]:
    """Per dataset: quality vs NFE and vs sampling seconds per image (one line per diffusion sampler, the GAN as one
    point), and quality vs training wall time for both models. Uses whatever results.json holds (FID for image
    runs, reverse KL for 2D runs; sampler sweeps in "by_sampler", metric-over-training in "curve"); a dataset with
    nothing to plot is skipped. Returns the PNG paths relative to run_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    paths = []
    ok = [r for r in results.get("runs", []) if r.get("status") in ("ok", "diverged")]
    for dataset in dict.fromkeys(r["dataset"] for r in ok):
        runs = [r for r in ok if r["dataset"] == dataset]
        quality = _quality_key(runs)
        if quality is None:
            continue
        key, label = quality
        by_curve: dict[tuple[str, str], dict[float, list]] = {}
        for r in runs:
            for name, nfe, q, spi in _sampling_points(r, key):
                by_curve.setdefault((r["model"], name), {}).setdefault(nfe, []).append((q, spi))
        slug = dataset.replace(":", "-").replace("/", "-")
        if by_curve:
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
            for (model, name), pts in by_curve.items():
                nfe = sorted(pts)
                q = [statistics.mean(p[0] for p in pts[n]) for n in nfe]
                spi = [statistics.mean(p[1] for p in pts[n]) if all(p[1] for p in pts[n]) else None for n in nfe]
                gan = {"marker": "*", "markersize": 12, "ls": "none", "c": "C3"}
                style = gan if model == "gan" else {"marker": "o"}
                text = "GAN (1 forward)" if model == "gan" else f"diffusion, {name}"
                axes[0].plot(nfe, q, label=text, **style)
                have = [(s, v) for s, v in zip(spi, q) if s]
                if have:
                    axes[1].plot([s * 1e3 for s, _ in have], [v for _, v in have], label=text, **style)
            axes[0].set(xscale="log", xlabel="network evaluations per image (NFE)", ylabel=label,
                        title="quality vs NFE")
            axes[1].set(xscale="log", xlabel="sampling ms per image (at the evaluation batch)", ylabel=label,
                        title="quality vs sampling cost")
            for ax in axes:
                if ax.has_data():
                    ax.legend(fontsize=7)
            fig.suptitle(f"{dataset}: lower is better; mean over seeds", fontsize=9)
            fig.tight_layout()
            paths.append(_save(fig, run_dir, f"figures/{slug}_quality_vs_sampling.png"))
        train_pts = {(r["model"], r["seed"]): _training_points(r, key) for r in runs}
        if any(train_pts.values()):
            fig, ax = plt.subplots(figsize=(5, 3.4))
            for (model, seed), pts in train_pts.items():
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", c="C3" if model == "gan" else "C0",
                            label=f"{model}, seed {seed}")
            ax.set(xlabel="training wall time (s; diffusion includes its VAE)", ylabel=label,
                   title=f"{dataset}: quality vs training time")
            ax.legend(fontsize=7)
            fig.tight_layout()
            paths.append(_save(fig, run_dir, f"figures/{slug}_quality_vs_training_time.png"))
    return paths


def _save(fig, run_dir: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(run_dir / name, dpi=100)
    plt.close(fig)
    return name
