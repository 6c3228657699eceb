"""Run by tests/test_distributed.py under `torchrun --standalone --nproc_per_node=2` (gloo, CPU).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py checks OUT_DIR
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py fail OUT_DIR

`checks`: each check computes its distributed answer and the one-process reference (the same computation in one
process on the global batch or on all N rows, `distributed.solo()`), and rank 0 writes the numbers the tests assert
on to OUT_DIR/checks.json. `fail`: rank 1 raises while rank 0 waits in a collective; the run must end at once.
"""

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from bench.core import distributed
from bench.core.guard import Interrupted, hold_signals, stop_on_signals
from bench.core.rundir import RunDir
from bench.core.seeding import sample_seeds
from bench.evaluate.metrics import fid
from bench.families import BUILT_IN, Trained
from bench.run.mixtures import draw_points
from bench.train.loops import GANTrainConfig, train_gan
from bench.train.state import TrainState
from models.dcgan import DCGANConfig, Discriminator, Generator
from models.mlp import MLPConfig, MLPGenerator
from models.text import clip_loss

B = 8  # global batch


def flat_grads(module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.parameters()])


def all_ranks(x: torch.Tensor) -> torch.Tensor:
    """(world, *x.shape): x of every rank."""
    out = [torch.empty_like(x) for _ in range(distributed.world())]
    torch.distributed.all_gather(out, x.contiguous())
    return torch.stack(out)


def d_loss_grads(make_d, x, cond, wrapped: bool) -> torch.Tensor:
    """Gradient of a BatchNorm discriminator's mean logit over x (this rank's rows when wrapped)."""
    torch.manual_seed(0)
    D = make_d()
    net = distributed.wrap(distributed.sync_batchnorm(D), torch.device("cpu")) if wrapped else D
    rows = distributed.local_rows if wrapped else (lambda t: t)
    net(rows(x), rows(cond)).square().mean().backward()
    return flat_grads(D)


def check_gradients() -> dict:
    """DCGAN D (BatchNorm synchronised) and a CLIP loss over the gathered batch: the gradient after one DDP
    backward, on every rank, against the one-process gradient on the global batch."""
    cfg = DCGANConfig(resolution=8, channels=3, z_dim=4, width=4, cond_dim=4)
    g = torch.Generator().manual_seed(1)
    x, cond = torch.randn(B, 3, 8, 8, generator=g), torch.randn(B, 4, generator=g)
    ddp = d_loss_grads(lambda: Discriminator(cfg), x, cond, wrapped=True)
    with distributed.solo():
        ref = d_loss_grads(lambda: Discriminator(cfg), x, cond, wrapped=False)
    # CLIP: two linear embedders, the loss over the global batch from the gathered embeddings
    text_in, image_in = torch.randn(B, 6, generator=g), torch.randn(B, 5, generator=g)
    groups = torch.tensor([0, 1, 2, 0, 1, 3, 4, 2])

    def clip_grads(wrapped: bool) -> torch.Tensor:
        torch.manual_seed(0)
        pair = torch.nn.Linear(6, 4), torch.nn.Linear(5, 4)  # text and image embedders, as text encoder and tower
        t_net, i_net = (distributed.wrap(m, torch.device("cpu")) if wrapped else m for m in pair)
        rows = distributed.local_rows if wrapped else (lambda t: t)
        gather = distributed.gather_batch if wrapped else (lambda t: t)
        t, i = gather(t_net(rows(text_in))), gather(i_net(rows(image_in)))
        clip_loss(t, i, torch.tensor(10.0), groups).backward()
        return torch.cat([flat_grads(m) for m in pair])

    clip_ddp = clip_grads(True)
    with distributed.solo():
        clip_ref = clip_grads(False)
    return {
        "d_rank_spread": float((all_ranks(ddp) - ddp).abs().max()),
        "d_vs_one_process": float((ddp - ref).abs().max()),
        "d_grad_scale": float(ref.abs().max()),
        "clip_rank_spread": float((all_ranks(clip_ddp) - clip_ddp).abs().max()),
        "clip_vs_one_process": float((clip_ddp - clip_ref).abs().max()),
        "clip_grad_scale": float(clip_ref.abs().max()),
    }


DCGAN = DCGANConfig(resolution=8, channels=3, z_dim=4, width=4, cond_dim=0)
DATA = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(2))


def dcgan_run(wrapped: bool, steps: int, state_path: Path | None = None, signal_at: int | None = None):
    """train_gan of a BatchNorm DCGAN on DATA (under DDP when wrapped). With state_path, it resumes from and saves to
    that state; signal_at: rank 1 alone sends itself SIGTERM when that step starts. Returns (G, its EMA) flattened,
    the history and the steps this call took."""
    torch.manual_seed(0)
    G, D = Generator(DCGAN), Discriminator(DCGAN)
    if wrapped:
        G, D = (distributed.wrap(distributed.sync_batchnorm(m), torch.device("cpu")) for m in (G, D))
    gen, taken = torch.Generator().manual_seed(3), []

    def real(step):
        taken.append(step)
        if step == signal_at and distributed.rank() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return DATA[distributed.local_rows(torch.randint(64, (B,), generator=gen))], None

    def latent(n):
        return distributed.local_rows(torch.randn(distributed.global_size(n), DCGAN.z_dim, generator=gen))

    state = TrainState(state_path, 100, {"train": gen}) if state_path is not None else None
    result = train_gan(G, D, real, latent, GANTrainConfig(), steps, progress=False, state=state)
    flat = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (result.model, result.ema)]
    return *flat, result.history, taken


def check_train_step() -> dict:
    """Two train_gan steps of a BatchNorm DCGAN under DDP vs in one process: the generator's weights afterwards."""
    ddp, ema, hist, _ = dcgan_run(True, 2)
    with distributed.solo():
        ref, ema_ref, ref_hist, _ = dcgan_run(False, 2)
    return {"g_rank_spread": float((all_ranks(ddp) - ddp).abs().max()),
            "g_vs_one_process": float((ddp - ref).abs().max()),
            "ema_rank_spread": float((all_ranks(ema) - ema).abs().max()),
            "ema_vs_one_process": float((ema - ema_ref).abs().max()),
            "loss_vs_one_process": max(abs(a[k] - b[k]) for a, b in zip(hist, ref_hist) for k in ("g_loss", "d_loss"))}


def check_resume(out: Path) -> dict:
    """Six DDP steps, SIGTERM reaching rank 1 alone during step 3: both ranks stop after that step (they agree on the
    signal each step) and rank 0 writes the state. Resumed under DDP, G and its EMA equal one unbroken DDP training's;
    resumed in one process from the same file (another world size), they equal it to float rounding."""
    unbroken, unbroken_ema, _, _ = dcgan_run(True, 6)
    path, stopped = out / "resume" / "gan.safetensors", False
    try:
        with stop_on_signals(), hold_signals():  # as the suite trains: a signal waits for the step's end
            dcgan_run(True, 6, path, signal_at=3)
    except Interrupted:
        stopped = True
    distributed.barrier()
    solo_path = out / "resume" / f"solo{distributed.rank()}.safetensors"
    shutil.copy(path, solo_path)  # each rank's own copy: a one-process loop writes its state
    with safe_open(str(path), "pt") as f:
        saved_at = json.loads(f.metadata()["train_state"])["steps_done"]
    resumed, resumed_ema, _, taken = dcgan_run(True, 6, path)
    with distributed.solo():
        one, _, _, one_taken = dcgan_run(False, 6, solo_path)
    everyone = [None] * distributed.world()
    torch.distributed.all_gather_object(everyone, stopped)
    gap = max((resumed - unbroken).abs().max(), (resumed_ema - unbroken_ema).abs().max())
    return {"stopped": everyone, "saved_at": saved_at, "resumed_vs_unbroken": float(gap), "taken": taken,
            "one_process_taken": one_taken,
            "one_process_resume_vs_unbroken": float((one - unbroken).abs().max())}


def check_shards() -> dict:
    """For several N (below, at and above the world size, odd and even): every rank's block of rows, gathered."""
    out = {}
    for n in (1, 2, 5, 32, 101):
        block = torch.arange(n)[distributed.shard(n)]
        blocks = [None] * distributed.world()
        torch.distributed.all_gather_object(blocks, block.tolist())
        gathered = distributed.gather_rows(block.double()[:, None] * torch.ones(1, 3, dtype=torch.float64), n)
        out[str(n)] = {"blocks": blocks, "gathered": gathered[:, 0].long().tolist(), "shape": list(gathered.shape)}
    return out


def check_fid() -> dict:
    """Samples of a 2D generator drawn sharded by per-sample seed and gathered, against the same samples drawn in one
    process; FID on the gathered features (rank 0, float64) against FID on one process's."""
    torch.manual_seed(0)
    G = MLPGenerator(MLPConfig(width=16, depth=2)).eval()
    seeds = sample_seeds(0, 301)
    family, trained = BUILT_IN["gan"], Trained(G, {"status": "ok"}, {})
    points, _ = draw_points(family, trained, "G", seeds)
    with distributed.solo():  # one process, all N at once
        one, _ = family.sample_mixture(trained, seeds, "G")
    real = np.random.default_rng(0).normal(size=(400, 2))
    feats = np.concatenate([points.double().numpy(), points.double().numpy() ** 2], 1)  # (N, 4) features
    mine = feats[distributed.shard(len(feats))]
    gathered = distributed.gather_rows(mine, len(feats))
    real_feats = np.concatenate([real, real**2], 1)
    distributed_fid = distributed.on_main(lambda: fid(real_feats, gathered))
    one_feats = np.concatenate([one.double().numpy(), one.double().numpy() ** 2], 1)
    return {"samples_max_diff": float((points - one).abs().max()), "num_gathered": len(gathered),
            "fid_distributed": distributed_fid, "fid_one_process": fid(real_feats, one_feats)}


def check_files(out: Path) -> dict:
    """Both ranks write through a RunDir of their own (and save_checkpoint): only rank 0's folder may exist."""
    run = RunDir(out / f"rank{distributed.rank()}")
    run.write_results({"rank": distributed.rank()})
    run.save_checkpoint("ring8", 0, "gan", {"m": torch.nn.Linear(2, 2)}, {"rank": distributed.rank()})
    run.save_grid("shapes", 0, "gan", torch.zeros(4, 3, 8, 8))
    distributed.barrier()
    return {"written": sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())}


def checks(out: Path) -> None:
    with distributed.session(torch.device("cpu")):
        result = {"world": distributed.world(), "gradients": check_gradients(), "train_step": check_train_step(),
                  "shards": check_shards(), "fid": check_fid(), "files": check_files(out),
                  "resume": check_resume(out),
                  "average": distributed.average({"step": 3, "loss": float(distributed.rank())})}
        if distributed.is_main():
            (out / "checks.json").write_text(json.dumps(result))


def fail(out: Path) -> None:
    with distributed.session(torch.device("cpu")):
        if distributed.rank() == 1:
            raise RuntimeError("injected failure")
        torch.distributed.all_reduce(torch.ones(1))  # waits for rank 1, which never comes


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"checks": checks, "fail": fail}[sys.argv[1]](Path(sys.argv[2]))
