"""Several processes, one run: torchrun + DistributedDataParallel on PyTorch's own engine (torch.distributed).

    torchrun --standalone --nproc_per_node=N -m bench run ...                      one machine, N processes
    torchrun --nnodes=K --nproc_per_node=N --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT --rdzv_id=JOB -m bench run ...

Without WORLD_SIZE in the environment nothing here does anything: world() is 1, wrap() returns the module, shard(n) is
every row, gather_rows() returns its input, and the run is the one-process run of before, bit for bit.

Under torchrun (NCCL on CUDA, gloo on CPU, a process-group timeout of $GVD_DIST_TIMEOUT seconds, default 1800):
  - training: every network that trains is wrapped in DistributedDataParallel; every rank draws the same global batch
    (the same indices, latents, timesteps and noise from the same seeded generators) and keeps its own rows of it
    (local_rows). DDP averages the gradients of the per-rank mean losses; with equal shares the average of the
    shares' means is the mean over the global batch, so each optimizer step is the one-process step on the same
    examples (up to float summation order). BatchNorm is synchronised (sync_batchnorm): without it each rank would
    normalise by the statistics of its own share and the GAN would train on different numbers than in one process.
    Logged numbers are averaged over the ranks (average), so every rank logs, and decides divergence, alike.
  - evaluation: rank r draws the samples of its contiguous block of the per-sample seeds (shard); gather_rows
    concatenates the blocks in rank order, exactly N rows (no DistributedSampler padding, which would duplicate
    samples and bias FID); on_main computes the metrics once, on rank 0, and hands every rank the result.
  - files: rank 0 alone writes (bench/rundir.py asks is_main()); main_first lets rank 0 fill a cache the others read.
  - failure: session() turns an exception on any rank into one line naming the rank, and leaves the process group
    so that the others' pending collectives fail at once instead of waiting for the timeout; torchrun then stops the
    job and names the first failed rank.
"""

import contextlib
import os
import sys
import warnings
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bench.core.guard import Interrupted

# torch.distributed.nn's differentiable collectives warn that they will move to a private module; they are the public,
# documented autograd-aware all_reduce / all_gather until then.
warnings.filterwarnings("ignore", message="torch.distributed.nn.functional", category=FutureWarning)

TIMEOUT_ENV = "GVD_DIST_TIMEOUT"  # seconds a collective may wait for the other ranks
_solo = [0]  # depth of solo() blocks: inside one, this process computes as if it were alone


def active() -> bool:
    """A process group is up (and this process is not inside a solo() block)."""
    return dist.is_available() and dist.is_initialized() and not _solo[0]


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0 of the launch (also inside solo(): it decides who writes files)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@contextlib.contextmanager
def solo():
    """The block computes as one process would: no sharding, no DDP, no collectives (a speed measurement of one
    process while others do the same, or alone)."""
    _solo[0] += 1
    try:
        yield
    finally:
        _solo[0] -= 1


@contextlib.contextmanager
def alone():
    """Rank 0 runs the block as one process (solo) while the other ranks wait at a barrier; yields whether this
    rank runs it: `with alone() as mine: if mine: ...`."""
    with solo():
        yield is_main()
    barrier()


def resolve_device(name: str) -> torch.device:
    """The device of --device auto|cpu|cuda (auto: CUDA when torch sees one); RuntimeError when CUDA is asked for
    and absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def launched() -> bool:
    """Started by torchrun (or anything else that sets the env:// rendezvous variables)."""
    return "WORLD_SIZE" in os.environ


def init(device: torch.device) -> torch.device:
    """Join the process group torchrun described; returns this rank's device (cuda:LOCAL_RANK on GPUs)."""
    if not launched() or active():
        return device
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 1800)))
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return device


def shutdown() -> None:
    """Every rank at the barrier, then leave: gloo aborts a process that exits with the group still up."""
    if active():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: torch.device):
    """init ... shutdown around a command. An exception on one rank is printed with the rank, the group is left
    at once (the others' collectives then fail instead of hanging until the timeout), and it propagates. A signal
    (Interrupted: torchrun passes its SIGINT / SIGTERM to every rank) is no rank's failure: the group is left
    quietly and rank 0 says what it kept (bench/cli.py)."""
    device = init(device)
    try:
        yield device
    except BaseException as exc:
        if active():
            if not isinstance(exc, Interrupted):
                print(f"gvd: rank {rank()} of {world()} failed: {type(exc).__name__}: {exc}", file=sys.stderr,
                      flush=True)
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        raise
    shutdown()


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. trains and caches a judge); the others run it after, reading its cache."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def describe() -> dict:
    """What results.json records about the launch."""
    return {"world_size": world(), "backend": dist.get_backend() if active() else None}


# ---------------------------------------------------------------- data


def shard(n: int) -> slice:
    """This rank's contiguous block of n rows: blocks are disjoint, in rank order, and cover 0..n-1 exactly
    (sizes differ by at most one)."""
    r, w = rank(), world()
    return slice(r * n // w, (r + 1) * n // w)


def local_rows(x: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a globally drawn training batch (the global batch must split evenly: equal shares are
    what makes DDP's average of per-rank means the global mean)."""
    if world() == 1:
        return x
    if len(x) % world():
        raise ValueError(f"a batch of {len(x)} does not split evenly over {world()} processes")
    return x[shard(len(x))]


def global_size(local: int) -> int:
    """The global batch size of a local share (what a generator must draw to stay in step with one process)."""
    return local * world()


def gather_batch(x: torch.Tensor) -> torch.Tensor:
    """The global batch from every rank's equal share, in rank order, differentiably (torch.distributed.nn): for a
    loss that couples the rows of a batch (CLIP's contrastive loss) and is computed whole on every rank. The backward
    pass sums the ranks' gradients into each share, world() times one rank's; DDP's average divides by world() again,
    so each step is the one-process step."""
    return x if world() == 1 else torch.cat(dist_nn.all_gather(x))


def batch_record(global_batch: int) -> dict:
    """Batch sizes for entry["train"]: per process (per GPU) and global."""
    return {"world_size": world(), "batch_per_rank": global_batch // world(), "batch_global": global_batch}


def planned_world() -> int:
    """The world size torchrun announced (before init), else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_batches(sizes: dict[str, int], world_size: int) -> None:
    """ValueError naming the first batch size that does not split evenly over world_size processes."""
    for name, size in sizes.items():
        if size % world_size:
            raise ValueError(f"{name} = {size} does not split evenly over {world_size} processes (torchrun "
                             f"--nproc_per_node x --nnodes); choose a multiple of {world_size}")


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(x, n: int):
    """Every rank's block (a tensor or an array, rows of a shard(n)) concatenated in rank order on every rank:
    exactly n rows, nothing padded left in. Returns the type and device it was given."""
    if world() == 1:
        return x
    as_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(x)) if as_numpy else x
    home = t.device
    t = t.to(_comm_device())
    sizes = [(r + 1) * n // world() - r * n // world() for r in range(world())]
    if len(t) != sizes[rank()]:
        raise ValueError(f"rank {rank()} holds {len(t)} rows, its shard of {n} is {sizes[rank()]}")
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    out = torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(home)
    return out.numpy() if as_numpy else out


def sample_sharded(draw, n: int):
    """draw(rows: slice) -> (samples of those rows, extra) on this rank's shard of n; returns (all n samples, extra).
    A rank whose block is empty (n < world) draws row 0 and keeps none of it, so `extra` (the NFE) is still known."""
    rows = shard(n)
    samples, extra = draw(rows if rows.stop > rows.start else slice(0, 1))
    return gather_rows(samples[: rows.stop - rows.start], n), extra


def per_rank(value: float) -> list[float]:
    """A number of every rank, in rank order (a per-GPU timing)."""
    if world() == 1:
        return [float(value)]
    return gather_rows(torch.tensor([float(value)], dtype=torch.float64), world()).tolist()


def on_main(fn):
    """fn() computed once, on rank 0; every rank returns its result (or raises its exception)."""
    if world() == 1:
        return fn()
    box = [None]
    if is_main():
        try:
            box[0] = (True, fn())
        except Exception as exc:  # noqa: BLE001 -- handed to every rank, raised there
            box[0] = (False, exc)
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    ok, value = box[0]
    if not ok:
        raise value
    return value


def agree(value: int) -> int:
    """The largest of every rank's value (a signal that reached one rank stops every rank after the same step)."""
    if world() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def average(row: dict, skip=("step",)) -> dict:
    """A logged row with its numbers averaged over the ranks (losses are per-share means: their average is the
    global batch's mean). Numbers already equal on every rank (gradient norms after DDP's all-reduce, the learning
    rate) come back unchanged."""
    if world() == 1:
        return row
    keys = [k for k, v in row.items() if k not in skip and isinstance(v, (int, float))]
    values = torch.tensor([float(row[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(values)
    return {**row, **dict(zip(keys, (values / world()).tolist()))}


# ---------------------------------------------------------------- models


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around a module that trains (the module itself in one process)."""
    if world() == 1:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d over the global batch on CPU processes (torch's SyncBatchNorm runs on GPUs only).

    Training mode: mean and biased variance over every rank's rows (two differentiable all-reduces, so the backward
    pass carries each rank's share of the gradient through the statistics, as torch.nn.SyncBatchNorm does); the
    running statistics are updated with the unbiased variance, as nn.BatchNorm2d (Ioffe & Szegedy 2015, Alg. 1-2).
    Evaluation mode, or one process: nn.BatchNorm2d itself. Same parameters and buffers, so checkpoints load into
    nn.BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world() > 1):
            return super().forward(x)
        dtype, x = x.dtype, x.float()  # the statistics in float32 whatever autocast feeds in (bf16 on the CPU)
        dims = [0, 2, 3]
        count = x.numel() // x.shape[1] * world()  # equal shares: rows x pixels on every rank
        mean = dist_nn.all_reduce(x.sum(dims)) / count  # (C,)
        centred = x - mean[None, :, None, None]
        var = dist_nn.all_reduce((centred * centred).sum(dims)) / count  # (C,) biased, as BN normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * count / max(count - 1, 1), m)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None] if self.affine else y
        return y.to(dtype)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """BatchNorm2d layers synchronised over the ranks: torch.nn.SyncBatchNorm on GPUs, GlooSyncBatchNorm on CPUs.
    The module itself in one process."""
    if world() == 1:
        return module
    if dist.get_backend() == "nccl":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats).to(next(child.buffers()).device)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            sync_batchnorm(child)
    return module
