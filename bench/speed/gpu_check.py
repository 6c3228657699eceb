"""GPU check: our denoiser and DCGAN against their references, in one process, on one device.

    python -m bench.speed.gpu_check                          # CUDA if present; prints the tables and the targets
    python -m bench.speed.gpu_check --device cpu --preset smoke --batches 4 8 --no-compile     # a dry run of the code

1. The denoise step (one UNet forward with the text context) at the diffusers-comparison config -- widths
   64/128/128, two layers per level, cross-attention at the two higher resolutions, 8x8x4 latents, 16 context
   tokens of width 128 (8.75M parameters) -- for our UNet under each fast path of bench/fastpaths.py, and, when the
   optional `diffusers` package is installed (`pip install -e ".[peers]"`), for diffusers' UNet2DConditionModel
   built to the same widths, depth, attention placement, heads, norm groups and context size (the parameter counts
   are printed side by side), eager in float32 and bf16 autocast and compiled. The project's speed targets for this
   comparison: ours at least 3x faster than diffusers eager float32 at batch 64, and faster than diffusers compiled
   at batch 512.
2. A DCGAN training step of the harness (bench/train.py) against the plain PyTorch reference step (pytorch/examples
   dcgan/main.py) at the preset's GAN size and batch, both built by bench/throughput.py build_image_models and
   trained with the preset's optimiser settings (cfg.gan). Target: at least as fast.
3. The throughput suite (bench/throughput.py) for the preset's models, as `gvd throughput` prints it.

Timings: warm-up first, CUDA events on an idle device, the median of the repeats (bench/timing.py measure); MFU is
against a bf16 matrix product measured in the same process. Nothing here is a test: it prints what it measures and
says which targets were met.
"""

import argparse
import copy
import sys
from functools import partial

import torch
import torch.nn.functional as F

from bench.config import preset
from bench.core.distributed import resolve_device
from bench.core.files import versions, write_json
from bench.speed.fastpaths import (
    FastPaths,
    autocast_denoiser,
    channels_last_denoiser,
    compile_denoiser,
    cuda_graph_denoiser,
)
from bench.speed.summary import throughput_table
from bench.speed.throughput import build_image_models, image_throughput
from bench.speed.timing import matmul_peak, measure
from bench.train.loops import autocast, count_flops, train_gan
from models.mlp import num_params
from models.unet import UNet, UNetConfig

MATCHED = UNetConfig(in_channels=4, channels=(64, 128, 128), layers_per_block=2, attention=(True, True, False),
                     context_dim=128, heads=8, groups=32)
LATENT, TOKENS = (4, 8, 8), 16
# diffusers' UNet2DConditionModel at MATCHED, as measured on an H200 when the speed targets were set (ms per step)
REFERENCE_MS = {"diffusers eager fp32 @64": 17.6, "diffusers eager bf16 @512": 24.1,
                "diffusers compiled bf16 @512": 10.2}


def diffusers_unet(cfg: UNetConfig):
    """diffusers' UNet2DConditionModel built to our UNet's architecture, or None when diffusers is not installed.

    Level i of ours is a CrossAttn block when cfg.attention[i]; the middle is UNetMidBlock2DCrossAttn like ours; the
    transformer projections are linear (use_linear_projection) like ours; `attention_head_dim` is diffusers' (known
    misnamed) number of heads; the time embedding is 4x the first width in both."""
    try:  # an optional dependency (the `peers` extra): imported here so that the check runs without it
        from diffusers import UNet2DConditionModel
    except ImportError:
        return None
    return UNet2DConditionModel(
        sample_size=LATENT[1], in_channels=cfg.in_channels, out_channels=cfg.in_channels,
        block_out_channels=cfg.channels, layers_per_block=cfg.layers_per_block,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention)),
        mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=cfg.context_dim, attention_head_dim=cfg.heads,
        norm_num_groups=cfg.groups, use_linear_projection=True,
    )


def _inputs(batch: int, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *LATENT, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).float().to(device)
    ctx = torch.randn(batch, TOKENS, MATCHED.context_dim, generator=g).to(device)
    mask = (torch.arange(TOKENS) < 5).expand(batch, TOKENS).to(device)  # 5 real tokens, as a caption has
    return x, t, ctx, mask


def _diffusers_call(net, x, t, context, context_mask):
    """diffusers' UNet called with our denoiser signature."""
    return net(x, t, encoder_hidden_states=context, encoder_attention_mask=context_mask, return_dict=False)[0]


def _variants(ours, theirs, device, compile_: bool) -> dict:
    """name -> denoiser(x, t, ctx, mask). Ours through each fast path; diffusers eager and compiled."""
    cuda = device.type == "cuda"
    bf16 = partial(autocast_denoiser, device_type=device.type)
    out = {"ours eager fp32": ours}
    if cuda:
        out["ours eager bf16"] = bf16(ours)
        out["ours channels_last bf16"] = bf16(channels_last_denoiser(_copy(ours)))
    if compile_:
        compiled = compile_denoiser(ours)
        out["ours compiled bf16" if cuda else "ours compiled fp32"] = bf16(compiled) if cuda else compiled
    if theirs is not None:
        call = partial(_diffusers_call, theirs)
        out["diffusers eager fp32"] = call
        if cuda:
            out["diffusers eager bf16"] = bf16(call)
        if compile_:
            compiled_theirs = torch.compile(theirs, dynamic=False)
            call_c = partial(_diffusers_call, compiled_theirs)
            out["diffusers compiled bf16" if cuda else "diffusers compiled fp32"] = bf16(call_c) if cuda else call_c
    return out


def _copy(module):
    return copy.deepcopy(module)


@torch.no_grad()
def denoise_step_table(device, batches=(64, 512), compile_: bool = True, repeats: int = 20) -> dict:
    """ms per denoise step for every variant at every batch, with TFLOP/s and MFU; errors are recorded, not raised."""
    torch.manual_seed(0)
    ours = UNet(MATCHED).to(device).eval().requires_grad_(False)
    theirs = diffusers_unet(MATCHED)
    if theirs is not None:
        theirs = theirs.to(device).eval().requires_grad_(False)
    peak = matmul_peak(device)
    x, t, ctx, mask = _inputs(2, device)
    flops = count_flops(lambda: ours(x, t, context=ctx, context_mask=mask)) / 2
    result = {"params": {"ours": num_params(ours), "diffusers": None if theirs is None else num_params(theirs)},
              "flops_per_image": flops, "matmul_peak": peak, "rows": [],
              "diffusers": "installed" if theirs is not None else "not installed: pip install -e '.[peers]'"}
    for name, fn in _variants(ours, theirs, torch.device(device), compile_).items():
        for b in batches:
            x, t, ctx, mask = _inputs(b, device)
            row = {"variant": name, "batch": b}
            try:
                m = measure(lambda fn=fn, x=x, t=t, c=ctx, k=mask: fn(x, t, context=c, context_mask=k),
                            warmup=3, repeats=repeats, device=device)
                row.update(ms=m["median_s"] * 1e3, tflops=flops * b / m["median_s"] / 1e12,
                           peak_memory_mb=None if m["peak_memory_bytes"] is None else m["peak_memory_bytes"] / 2**20)
                row["mfu"] = row["tflops"] / peak["tflops"]
            except Exception as exc:  # noqa: BLE001 -- a check reports what failed and goes on
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            result["rows"].append(row)
        if torch.device(device).type == "cuda" and name.startswith("ours") and "bf16" in name:
            result["rows"] += _graphed_rows(name, fn, batches, device, flops, peak, repeats)
    return result


def _graphed_rows(name, fn, batches, device, flops, peak, repeats) -> list:
    """The same variant with its forward captured as a CUDA graph (bench.speed.fastpaths.cuda_graph_denoiser)."""
    rows = []
    for b in batches:
        x, t, ctx, mask = _inputs(b, device)
        row = {"variant": f"{name} + CUDA graph", "batch": b}
        try:
            graphed = cuda_graph_denoiser(fn, x, t, context=ctx, context_mask=mask)
            m = measure(lambda graphed=graphed, x=x, t=t: graphed(x, t), warmup=3, repeats=repeats, device=device)
            row.update(ms=m["median_s"] * 1e3, tflops=flops * b / m["median_s"] / 1e12,
                       peak_memory_mb=m["peak_memory_bytes"] / 2**20)
            row["mfu"] = row["tflops"] / peak["tflops"]
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        rows.append(row)
    return rows


def dcgan_step_check(cfg, device, amp: bool) -> dict:
    """ms per training step: the harness's train_gan (1 step per call) vs the pytorch/examples reference step, the
    same G and D (build_image_models) with the same Adam settings (cfg.gan), under the same autocast."""
    torch.manual_seed(0)
    nets = build_image_models(cfg, 3, device)
    G, D = (nets[k].train().requires_grad_(True) for k in ("G", "D"))
    B = cfg.batch_size
    x = torch.rand(B, 3, cfg.resolution, cfg.resolution, device=device) * 2 - 1  # (B, 3, H, W) in [-1, 1]
    cond = torch.randn(B, G.cfg.cond_dim, device=device)

    def latent(n: int) -> torch.Tensor:
        return torch.randn(n, G.cfg.z_dim, device=device)

    def ours():
        with autocast(device, amp):
            train_gan(G, D, lambda step: (x, cond), latent, cfg.gan, 1, progress=False)

    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.gan.lr, betas=cfg.gan.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.gan.lr, betas=cfg.gan.betas)
    ones, zeros = torch.ones(B, device=device), torch.zeros(B, device=device)

    def reference():  # pytorch/examples dcgan/main.py, with our conditional G and D
        with autocast(device, amp):
            D.zero_grad()
            F.binary_cross_entropy_with_logits(D(x, cond).float(), ones).backward()
            fake = G(latent(B), cond)
            F.binary_cross_entropy_with_logits(D(fake.detach(), cond).float(), zeros).backward()
            opt_d.step()
            G.zero_grad()
            F.binary_cross_entropy_with_logits(D(fake, cond).float(), ones).backward()
            opt_g.step()

    m_ours = measure(ours, warmup=3, repeats=20, device=device)
    m_ref = measure(reference, warmup=3, repeats=20, device=device)
    return {"batch": B, "dtype": "bf16 autocast" if amp else "float32", "ours_ms": m_ours["median_s"] * 1e3,
            "reference_ms": m_ref["median_s"] * 1e3, "speedup": m_ref["median_s"] / m_ours["median_s"]}


def _best_ours(ms: dict, batch: int) -> tuple[str, float] | None:
    """(variant, ms) of our fastest variant at this batch, or None when none was measured."""
    return min(((v, m) for (v, b), m in ms.items() if b == batch and v.startswith("ours")), key=lambda p: p[1],
               default=None)


def targets(step: dict, dcgan: list[dict]) -> list[str]:
    """The speed targets (module docstring), each with the numbers it was judged on."""
    ms = {(r["variant"], r["batch"]): r["ms"] for r in step["rows"] if "ms" in r}
    lines = []
    for b, ref, factor in ((64, "diffusers eager fp32", 3.0), (512, "diffusers compiled bf16", 1.0)):
        best = _best_ours(ms, b)
        theirs = ms.get((ref, b))
        if best is None or theirs is None:
            lines.append(f"[not measured] ours >= {factor:g}x faster than {ref} at batch {b}")
            continue
        ok = theirs / best[1] >= factor if factor > 1 else best[1] < theirs
        lines.append(f"[{'met' if ok else 'MISSED'}] ours ({best[0]}, {best[1]:.2f} ms) vs {ref} ({theirs:.2f} ms) at "
                     f"batch {b}: {theirs / best[1]:.2f}x (target {'>=' if factor > 1 else '>'} {factor:g}x)")
    for d in dcgan:
        lines.append(f"[{'met' if d['speedup'] >= 1 else 'MISSED'}] DCGAN training step ({d['dtype']}, batch "
                     f"{d['batch']}): ours {d['ours_ms']:.2f} ms vs reference {d['reference_ms']:.2f} ms "
                     f"= {d['speedup']:.2f}x (target >= 1x)")
    return lines


def _print_step_table(step: dict) -> None:
    print(f"Denoise step, matched config {MATCHED.channels} x{MATCHED.layers_per_block}, "
          f"attention {MATCHED.attention}: "
          f"parameters ours {step['params']['ours']:,}, diffusers {step['params']['diffusers'] or 'n/a'} "
          f"({step['diffusers']}); {step['flops_per_image'] / 1e9:.3g} GFLOP per image; "
          f"{step['matmul_peak']['dtype']} matmul peak {step['matmul_peak']['tflops']:.3g} TFLOP/s")
    print("| variant | batch | ms / step | TFLOP/s | MFU | peak MB |\n|---|---|---|---|---|---|")
    for r in step["rows"]:
        if "ms" in r:
            mem = "n/a" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:,.0f}"
            print(f"| {r['variant']} | {r['batch']} | {r['ms']:.3f} | {r['tflops']:.3g} | {r['mfu']:.1%} | {mem} |")
        else:
            print(f"| {r['variant']} | {r['batch']} | failed: {r['error']} | | | |")
    print("diffusers numbers measured on an H200 when the targets were set: "
          + ", ".join(f"{k} {v} ms" for k, v in REFERENCE_MS.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.speed.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--preset", default="full", help="whose DCGAN and image models to measure (default full)")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 512], help="denoise-step batches (default 64 512)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (minutes on a CPU)")
    p.add_argument("--budget", type=float, default=120.0, help="seconds for the throughput suite (default 120)")
    p.add_argument("--out", help="write everything measured as JSON here")
    args = p.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    cfg = preset(args.preset).images
    if cfg is None:
        print(f"gpu_check: preset {args.preset!r} has no image benchmark", file=sys.stderr)
        return 2
    if device.type != "cuda":
        print("gpu_check: no CUDA device: a dry run on the CPU (no CUDA graphs, no bf16, float32 throughout)\n")
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
          + ", ".join(f"{k} {v}" for k, v in versions(device).items()) + "\n")
    step = denoise_step_table(device, tuple(args.batches), compile_=not args.no_compile)
    _print_step_table(step)
    amps = [False, True] if device.type == "cuda" else [False]
    dcgan = [dcgan_step_check(cfg, device, amp) for amp in amps]
    print()
    thr = image_throughput(cfg, device, budget_s=args.budget, batch=max(args.batches[0], 1))
    print("Throughput as `gvd run` samples (float32):\n" + throughput_table(thr))
    if device.type == "cuda":  # the same with the sampling fast paths: bf16 autocast and the loop as one CUDA graph
        fast = image_throughput(cfg, device, budget_s=args.budget, batch=max(args.batches[0], 1),
                                fast=FastPaths(bf16=True, cuda_graph=True))
        print("Throughput with bf16 autocast and CUDA-graph sampling loops:\n" + throughput_table(fast))
        thr = {"plain": thr, "fast": fast}
    print("Targets:\n" + "\n".join(targets(step, dcgan)))
    if args.out:
        write_json(args.out, {"denoise_step": step, "dcgan": dcgan, "throughput": thr, "targets": targets(step, dcgan)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
