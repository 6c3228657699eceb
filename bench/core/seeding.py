"""Per-sample random numbers: sample i gets the same noise whatever the batch it is drawn in.

A GAN-vs-diffusion comparison is fair only if both models are scored on the same seeds, and a sampler regression is
only visible if the same seed gives the same image. Drawing from one global generator per batch breaks both: change the
batch size and every image changes. EDM's stacked generators (Karras et al. 2022, generate.py) solve this with one
torch.Generator per image; that costs one Python call per image per step, which is too slow for 2,500 samples and
1,000 DDPM steps. Here the noise is a pure function of (seed, step, element): a counter-based generator built from the
SplitMix64 finaliser (Steele et al. 2014) and the Box-Muller transform, vectorised over the batch.
"""

import math

import torch

_MASK_LOW = [(1 << (64 - s)) - 1 for s in range(65)]  # masks that turn torch's arithmetic >> into a logical shift


def _as_int64(u: int) -> int:
    """An unsigned 64-bit constant as the signed int64 torch stores (multiplication wraps modulo 2^64 either way)."""
    return u - (1 << 64) if u >= 1 << 63 else u


_GOLDEN = _as_int64(0x9E3779B97F4A7C15)
_MIX1 = _as_int64(0xBF58476D1CE4E5B9)
_MIX2 = _as_int64(0x94D049BB133111EB)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    return (x >> s) & _MASK_LOW[s]


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 output function of a 64-bit counter (int64 tensors wrap on overflow)."""
    x = x * 1 + _GOLDEN
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def _uniform(bits: torch.Tensor) -> torch.Tensor:
    """The top 53 bits as a float64 in (0, 1] (never 0, so log is finite)."""
    return (_shr(bits, 11).double() + 1.0) * 2.0**-53


def per_sample_randn(seeds: torch.Tensor, shape: tuple[int, ...], stream: int = 0) -> torch.Tensor:
    """Standard normal noise of shape (len(seeds), *shape), float32, on the CPU.

    Row i depends only on (seeds[i], stream), never on the other rows, so it is the same in any batch. Use a different
    `stream` for each independent draw of the same sample (the initial noise, each stochastic sampler step, ...).
    """
    n = math.prod(shape)
    seeds = seeds.to(torch.int64).reshape(-1, 1)  # (B, 1)
    element = torch.arange(n, dtype=torch.int64).reshape(1, -1)  # (1, n)
    # One key per (seed, stream); two counters per element for the two uniforms of Box-Muller.
    key = _splitmix64(_splitmix64(seeds) ^ _as_int64((stream * 0x2545F4914F6CDD1D) % (1 << 64)))  # (B, 1)
    u1 = _uniform(_splitmix64(key + 2 * element))  # (B, n)
    u2 = _uniform(_splitmix64(key + 2 * element + 1))
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)  # Box & Muller 1958
    return z.float().reshape(len(seeds), *shape)


def sample_seeds(run_seed: int, num_samples: int) -> torch.Tensor:
    """The per-sample seeds of an evaluation: sample i of run seed s always has the same seed."""
    return torch.arange(num_samples, dtype=torch.int64) + run_seed * 1_000_003


def noise_fn(seeds: torch.Tensor, shape: tuple[int, ...], device: torch.device | str = "cpu"):
    """The `noise(k)` callable the samplers take: fresh per-sample noise for the k-th stochastic step."""
    return lambda k: per_sample_randn(seeds, shape, stream=k + 1).to(device)


def batch_stream(n: int, batch_size: int, seed: int):
    """The real-data stream of one training seed: step k's batch indices (batch_size of range(n), with replacement)
    come from a generator seeded by (seed, k) alone. Every family that trains on the same data at the same batch
    size draws the same batches at the same steps, whatever else it draws (its noise comes from its own generators),
    and a resumed training needs no saved stream state."""
    def indices(step: int) -> torch.Tensor:
        key = int(_splitmix64(torch.tensor([seed * 1_000_003 + step], dtype=torch.int64))[0])  # (seed, step) -> key
        return torch.randint(n, (batch_size,), generator=torch.Generator().manual_seed(key & (2**63 - 1)))
    return indices

