"""`gvd throughput` under torchrun: images/s per GPU (per process) and in total, and the scaling efficiency.

Weak scaling, as DDP is used: every process keeps the per-process batch B (`--batch`), so W processes train on a global
batch of W x B. For each model, first one process alone (rank 0, the others waiting at a barrier) measures B-image
steps without DDP; then all W processes run the same steps together, wrapped in DistributedDataParallel with
synchronised BatchNorm, through the harness's own loops (bench/train.py), gradient all-reduce and logged-number
averaging included. A step ends on every rank together (DDP synchronises the gradients), so the total is
W x B x steps / (the slowest rank's time) and

    scaling efficiency = total images/s / (W x one process's images/s)      (1 = perfect linear scaling).

Sampling is measured the same way on the evaluation's sharding (each process draws its block of the per-sample seeds;
no communication but the final gather). Wall-clock times with perf_counter after a device sync; a warm-up step first.
"""

import time
from functools import partial

import torch

from bench.core import distributed
from bench.core.seeding import sample_seeds
from bench.families import Prompts, Trained, diffusion, gan
from bench.families.diffusion import LatentDiffusion
from bench.families.text import build_networks, network_configs
from bench.speed.throughput import GUIDED_SCALE, sync
from bench.train.images import schedule
from bench.train.loops import train_diffusion, train_gan
from models.dcgan import Discriminator, Generator
from models.text import Tokenizer
from models.unet import UNet


def _inputs(cfg, cfgs: dict, batch: int, channels: int, device) -> dict:
    """Random images, latents and text encodings of one batch (speed does not depend on the values)."""
    g = torch.Generator().manual_seed(0)
    res, vae, text = cfg.resolution, cfgs["vae"], cfgs["text"]
    side = res // vae.factor
    return {"images": (torch.rand(batch, channels, res, res, generator=g) * 2 - 1).to(device),
            "pooled": torch.randn(batch, text.embed_dim, generator=g).to(device),
            "latents": torch.randn(batch, vae.latent_channels, side, side, generator=g).to(device),
            "states": torch.randn(batch, text.max_len, text.width, generator=g).to(device),
            "mask": torch.ones(batch, text.max_len, dtype=torch.bool, device=device)}


def _train_steps(model: str, cfg, cfgs: dict, x: dict, steps: int, device) -> float:
    """Seconds of `steps` training steps of fresh networks (DDP-wrapped when a process group is active)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    if model == "gan":
        G, D = (distributed.wrap(distributed.sync_batchnorm(m.to(device)), device)
                for m in (Generator(cfgs["dcgan"]), Discriminator(cfgs["dcgan"])))

        def latent(n):
            return torch.randn(n, cfgs["dcgan"].z_dim, generator=gen).to(device)

        def run(k):
            train_gan(G, D, lambda step: (x["images"], x["pooled"]), latent, cfg.gan, k, progress=False)
    else:
        unet = distributed.wrap(UNet(cfgs["unet"]).to(device), device)
        alpha_bar = schedule(cfg.diffusion, device)

        def run(k):
            batch = {"context": x["states"], "context_mask": x["mask"]}
            train_diffusion(unet, lambda step: (x["latents"], batch), alpha_bar, cfg.diffusion.prediction,
                            cfg.diffusion_train, k, gen, progress=False)
    run(1)  # warm-up: allocator growth, autotuning, DDP's bucket rebuild after its first step
    sync(device)
    distributed.barrier()
    t0 = time.perf_counter()
    run(steps)
    sync(device)
    return time.perf_counter() - t0


def _samplers(cfg, nets: dict, x: dict) -> dict:
    """The built-in image families' Trained records around fresh networks, as their sample functions read them."""
    empty = (x["states"][:1], x["mask"][:1])
    return {"gan": Trained(nets["G"], {"status": "ok"}, {}),
            "diffusion": Trained(LatentDiffusion(nets["vae"], nets["unet"], cfg.diffusion, cfg.sampler, empty),
                                 {"status": "ok"}, {})}


def _sample_seconds(model: str, trained: Trained, x: dict, n: int, device) -> float:
    """Seconds to draw this process's block of n evaluation samples (one warm-up sample first); the diffusion model
    guided, both halves of the batch, as `gvd throughput` measures it."""
    seeds = sample_seeds(0, n)
    prompts = Prompts([""] * n, torch.zeros(n, dtype=torch.long), (x["states"][:n], x["pooled"][:n], x["mask"][:n]),
                      seeds, torch.arange(n))
    family, knob = {"gan": (gan.FAMILY, 1.0), "diffusion": (diffusion.FAMILY, GUIDED_SCALE)}[model]

    def draw(part: slice):
        return family.sample_image(trained, prompts.rows(part), knob)

    draw(slice(0, 1))
    distributed.barrier()
    t0 = time.perf_counter()
    draw(distributed.shard(n))
    sync(device)
    return time.perf_counter() - t0


def scaling_row(model: str, stage: str, images: int, one: float, per_rank: list[float]) -> dict:
    """One row: `images` per process in `one` s alone and in per_rank s each when all run together."""
    w = len(per_rank)
    one_ips = images / one
    if stage == "sample":  # the N samples are split over the processes: each draws its block
        total, per_gpu = images / max(per_rank), [images / w / s for s in per_rank]
    else:  # every process trains on its own batch of `images`
        total, per_gpu = w * images / max(per_rank), [images / s for s in per_rank]
    return {"model": model, "stage": stage, "world_size": w, "one_process_images_per_s": one_ips,
            "per_gpu_images_per_s": per_gpu, "total_images_per_s": total,
            "scaling_efficiency": total / (w * one_ips), "seconds_one": one, "seconds_per_rank": per_rank}


def ddp_throughput(cfg, device, *, channels: int, batch: int, steps: int = 3, samples: int = 64) -> dict:
    """Training (per-process batch `batch`, `steps` steps) and sampling (`samples` images, sharded) of both
    families: one process alone, then every process together. Returns {"world_size", "device", "rows"}."""
    cfgs = network_configs(cfg, channels=channels, resolution=cfg.resolution, vocab_size=len(TOKENIZER))
    x = _inputs(cfg, cfgs, max(batch, samples), channels, device)
    x_train = {k: v[:batch] for k, v in x.items()}
    nets = build_networks(cfg, channels=channels, resolution=cfg.resolution, vocab_size=len(TOKENIZER), device=device)
    trained = _samplers(cfg, nets, x)
    rows = []
    for model in ("gan", "diffusion"):
        for stage in ("train", "sample"):
            measure = (partial(_train_steps, model, cfg, cfgs, x_train, steps, device) if stage == "train"
                       else partial(_sample_seconds, model, trained[model], x, samples, device))
            with distributed.alone() as mine:  # one process's speed, the others waiting
                one = measure() if mine else None
            one = distributed.on_main(partial(float, one or 0.0))  # every rank learns rank 0's baseline
            per_rank = distributed.per_rank(measure())
            rows.append(scaling_row(model, stage, batch * steps if stage == "train" else samples, one, per_rank))
    name = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    return {"world_size": distributed.world(), "device": name, "batch_per_gpu": batch, "train_steps": steps,
            "samples": samples, "rows": rows}


def scaling_table(result: dict) -> str:
    """The rows as a markdown table."""
    lines = ["| model | stage | 1 process img/s | per GPU img/s | total img/s | scaling efficiency |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        per = " / ".join(f"{v:.3g}" for v in r["per_gpu_images_per_s"])
        lines.append(f"| {r['model']} | {r['stage']} | {r['one_process_images_per_s']:.3g} | {per} | "
                     f"{r['total_images_per_s']:.3g} | {r['scaling_efficiency']:.2f} |")
    return "\n".join(lines)


TOKENIZER = Tokenizer.build(["a small red circle"])  # sampling reads random text states, not captions
