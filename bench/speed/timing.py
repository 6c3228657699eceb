"""Timing primitives: how long a call takes, how many FLOPs it does, what the device can do, what it ran on.

Method (`measure`): warm-up calls first, then repeats; on CUDA each repeat is timed with CUDA events after the device
is idle, on the CPU with perf_counter; the median is reported (and the minimum kept). FLOPs are counted by
torch.utils.flop_counter (matmuls, convolutions and attention, the usual convention; elementwise ops are not
counted). MFU is measured against `matmul_peak`, a large matrix product timed in the same process.

Used by the throughput suite (bench/throughput.py), the GPU check (bench/gpu_check.py) and nothing else; the report
side (bench/report_throughput.py) only reads what they return.
"""

import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch


def sync(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU, where every call is synchronous)."""
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


def peak_rss_mb() -> float:
    """The process's peak resident set so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
