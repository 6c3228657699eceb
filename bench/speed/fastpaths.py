"""Fast paths for sampling: each one a function and a switch in `FastPaths`, each checked by tests/test_fastpaths.py
to give the same samples as the plain path within the tolerance of its dtype.

    switch         function                  device      what it saves
    bf16           autocast_denoiser         CUDA (CPU)  half the bytes per activation; tensor-core matmuls
    channels_last  channels_last_denoiser    CUDA, CPU   layout transposes around cuDNN / oneDNN convolutions
    compile        compile_denoiser          CUDA, CPU   Python and dispatch overhead; fused elementwise kernels
    cuda_graph     cuda_graph_sampler        CUDA        every kernel launch of a whole sampling loop, replayed at once
                   cuda_graph_denoiser       CUDA        the same for one network call (when the loop can't be captured)
    sdpa_backend   sdpa_denoiser             CUDA, CPU   the attention kernel: flash, memory-efficient, cuDNN, math

Already in place elsewhere, so not switches here (checked by the tests):
  - attention is F.scaled_dot_product_attention (models/unet.py, models/text.py), so flash / memory-efficient kernels
    are used wherever PyTorch has them;
  - the built-in datasets stay resident on the device and batches are indexed there (bench/imagebench.py: no
    DataLoader and no worker processes for small images);
  - the samplers build their noise-level grid and per-step timestep tensors before the loop (models/samplers.py
    `_grid`, `_t_batches`), so a step costs the network call plus a dozen elementwise ops and no host sync.

Every wrapper keeps the denoiser signature model(x, t, **kwargs) -> prediction, so they compose and go straight into
`models.samplers.guided` and the samplers.
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from models.samplers import sample

Denoiser = Callable[..., torch.Tensor]

SDPA_BACKENDS = ("auto", "math", "flash", "efficient", "cudnn")
DETERMINISTIC_SAMPLERS = ("ddim", "dpmpp2m", "euler", "heun")  # ddim only with eta = 0


@dataclass
class FastPaths:
    bf16: bool = True  # bf16 autocast of the denoiser on CUDA (ignored on the CPU, where it is slower)
    channels_last: bool = False  # NHWC memory layout for the UNet's convolutions and its input
    compile: bool = False  # torch.compile the denoiser (seconds to compile on a GPU, minutes on a CPU)
    cuda_graph: bool = False  # capture the whole sampling loop as one CUDA graph (static shapes; CUDA only)
    sdpa_backend: str = "auto"  # auto | math | flash | efficient | cudnn: the attention kernels SDPA may use

    def __post_init__(self):
        if self.sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(f"unknown sdpa_backend {self.sdpa_backend!r}; choose from {', '.join(SDPA_BACKENDS)}")


# ---------------------------------------------------------------- one wrapper per switch


def autocast_denoiser(model: Denoiser, device_type: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> Denoiser:
    """Run the network under autocast and hand the sampler a float32 prediction: the sampler's update arithmetic
    (differences of nearly equal numbers near t = 0) stays in float32. The weight-cast cache is off because a CUDA
    graph capture may not use it, and a network uses each weight once per call anyway."""

    def denoiser(x, t, **kwargs):
        with torch.autocast(device_type, dtype=dtype, cache_enabled=False):
            return model(x, t, **kwargs).float()

    return denoiser


def channels_last(module: nn.Module) -> nn.Module:
    """The module's 4-D weights in NHWC layout (in place; returns the module)."""
    return module.to(memory_format=torch.channels_last)


def channels_last_denoiser(model: nn.Module) -> Denoiser:
    """Convert the module and, on every call, its 4-D input to NHWC: convolutions then skip the layout transposes
    cuDNN / oneDNN would otherwise insert. The values are the same; the output keeps the NHWC layout."""
    channels_last(model)

    def denoiser(x, t, **kwargs):
        return model(x.contiguous(memory_format=torch.channels_last), t, **kwargs)

    return denoiser


def compile_denoiser(model: nn.Module, mode: str | None = None) -> Denoiser:
    """torch.compile with static shapes (a sampler calls the network with one shape throughout). The first call
    compiles; time it separately from the steady state."""
    return torch.compile(model, mode=mode, dynamic=False)


def _sdpa_backends(name: str):
    return {"math": [SDPBackend.MATH], "flash": [SDPBackend.FLASH_ATTENTION],
            "efficient": [SDPBackend.EFFICIENT_ATTENTION], "cudnn": [SDPBackend.CUDNN_ATTENTION]}[name]


def sdpa_context(name: str):
    """A context in which scaled_dot_product_attention may only use the named kernel ("auto": PyTorch chooses)."""
    if name not in SDPA_BACKENDS:
        raise ValueError(f"unknown sdpa_backend {name!r}; choose from {', '.join(SDPA_BACKENDS)}")
    if name == "auto":
        return contextlib.nullcontext()
    return sdpa_kernel(_sdpa_backends(name))


def sdpa_denoiser(model: Denoiser, name: str) -> Denoiser:
    """Every call runs with attention restricted to one SDPA kernel; PyTorch raises if it cannot use it."""

    def denoiser(x, t, **kwargs):
        with sdpa_context(name):
            return model(x, t, **kwargs)

    return denoiser


def _require_cuda(x: torch.Tensor, what: str) -> None:
    if x.device.type != "cuda":
        raise ValueError(f"{what} needs CUDA tensors (CUDA graphs exist only on CUDA), got device {x.device}")


def _warm_up_on_side_stream(fn: Callable[[], object], times: int = 3) -> None:
    """Run fn a few times on a side stream before capture, as torch.cuda.graph's documentation requires: lazy
    initialisation, cuDNN autotuning and allocator growth must not happen inside the capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(times):
            fn()
    torch.cuda.current_stream().wait_stream(side)


@torch.no_grad()
def cuda_graph_denoiser(model: Denoiser, x_example: torch.Tensor, t_example: torch.Tensor, **kwargs) -> Denoiser:
    """One network call captured as a CUDA graph, replayed for every step. Shapes are static: x and t must have
    x_example's and t_example's shapes, and kwargs (text context, mask) are fixed at capture and kept alive here.

    Returns denoiser(x, t) -> prediction (a fresh tensor, so the sampler may keep it across steps)."""
    _require_cuda(x_example, "cuda_graph_denoiser")
    static_x, static_t = x_example.clone(), t_example.clone()
    _warm_up_on_side_stream(lambda: model(static_x, static_t, **kwargs))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = model(static_x, static_t, **kwargs)

    def denoiser(x, t, **_):
        static_x.copy_(x)
        static_t.copy_(t)
        graph.replay()
        return static_out.clone()

    return denoiser


@torch.no_grad()
def cuda_graph_sampler(name: str, model: Denoiser, x_example: torch.Tensor, alpha_bar: torch.Tensor, steps: int,
                       **opts) -> Callable[[torch.Tensor], tuple[torch.Tensor, int]]:
    """A whole deterministic sampling loop (`models.samplers.sample(name, ...)`) captured as one CUDA graph: the
    grid is computed once on the host at capture, so each replay is NFE network calls and the update arithmetic with
    no Python and no launch overhead. Returns run(x_T) -> (x0, nfe); x_T must have x_example's shape.

    Only deterministic samplers qualify (a stochastic step would replay the same noise every time); model must not
    synchronise with the host (no .item(), no host copies), which holds for the UNet and `guided`.
    """
    if name not in DETERMINISTIC_SAMPLERS or opts.get("eta", 0.0) != 0.0:
        raise ValueError(f"cuda_graph_sampler needs a deterministic sampler ({', '.join(DETERMINISTIC_SAMPLERS)}; "
                         f"ddim with eta=0), got {name!r} {opts}")
    _require_cuda(x_example, "cuda_graph_sampler")
    alpha_bar = alpha_bar.cpu()  # the grid is host bookkeeping: no device-to-host copy may happen during capture
    static_x = x_example.clone()
    _warm_up_on_side_stream(lambda: sample(name, model, static_x, alpha_bar, steps, **opts), times=2)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, nfe = sample(name, model, static_x, alpha_bar, steps, **opts)

    def run(x_T: torch.Tensor) -> tuple[torch.Tensor, int]:
        static_x.copy_(x_T)
        graph.replay()
        return static_out.clone(), nfe

    return run


# ---------------------------------------------------------------- the switches together


def fast_denoiser(unet: nn.Module, fast: FastPaths, device) -> Denoiser:
    """The UNet wrapped by every switched-on per-call fast path (all but cuda_graph, which works on the whole loop:
    see fast_sampler). Order: layout, then compile (so the compiled graph sees NHWC), then attention kernel and
    autocast outside (the compiled code records the autocast state it runs under)."""
    device = torch.device(device)
    model: Denoiser = channels_last_denoiser(unet) if fast.channels_last else unet
    if fast.compile:
        model = compile_denoiser(model)
    if fast.sdpa_backend != "auto":
        model = sdpa_denoiser(model, fast.sdpa_backend)
    if fast.bf16 and device.type == "cuda":
        model = autocast_denoiser(model, "cuda")
    return model


def fast_sampler(name: str, model: Denoiser, x_example: torch.Tensor, alpha_bar: torch.Tensor, steps: int,
                 fast: FastPaths, **opts) -> Callable[[torch.Tensor], tuple[torch.Tensor, int]]:
    """run(x_T) -> (x0, nfe): the captured loop when fast.cuda_graph is on (CUDA only), else the plain sampler."""
    if fast.cuda_graph:
        return cuda_graph_sampler(name, model, x_example, alpha_bar, steps, **opts)
    return lambda x_T: sample(name, model, x_T, alpha_bar, steps, **opts)
