"""Each fast path gives the same samples as the plain path within the tolerance of its dtype (on the CPU where the
path exists there; CUDA-only paths skip with the reason), and the sampler loop adds nothing per step but a handful of
elementwise ops (its bookkeeping is precomputed)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from bench.speed.fastpaths import (
    FastPaths,
    autocast_denoiser,
    channels_last_denoiser,
    compile_denoiser,
    cuda_graph_denoiser,
    cuda_graph_sampler,
    fast_denoiser,
    fast_sampler,
    sdpa_context,
    sdpa_denoiser,
)
from bench.train.loops import adam, ema_update
from models.diffusion import alphas_cumprod
from models.samplers import guided, sample
from models.unet import UNet, UNetConfig

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA graphs and CUDA autocast need a CUDA device; none here")


def _unet(device="cpu") -> UNet:
    """A small text-conditioned UNet whose zero-initialised output layers are randomised, so its output is not 0."""
    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=4, channels=(16, 32), layers_per_block=1, attention=(False, True), context_dim=16,
                     heads=2, groups=4)
    unet = UNet(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet.to(device)


def _inputs(batch=4, device="cpu"):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    ctx = torch.randn(batch, 6, 16, generator=g)
    mask = torch.ones(batch, 6, dtype=torch.bool)
    mask[:, 4:] = False  # padded captions, as the text encoder makes them
    return x.to(device), {"context": ctx.to(device), "context_mask": mask.to(device)}


def _sample(model, x, kwargs, steps=5, name="dpmpp2m"):
    alpha_bar = alphas_cumprod("scaled_linear", 1000).float().to(x.device)
    bound = lambda x_, t: model(x_, t, **kwargs)
    return sample(name, bound, x, alpha_bar, steps, prediction="v")[0]


def _rel_err(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@torch.no_grad()
def test_channels_last_same_samples_in_float32():
    unet = _unet()
    x, kw = _inputs()
    ref_out, ref = unet(x, torch.full((4,), 500.0), **kw), _sample(unet, x, kw)
    fast = channels_last_denoiser(_unet())
    assert _unet().conv_in.weight.is_contiguous()  # a fresh module is NCHW ...
    out = fast(x, torch.full((4,), 500.0), **kw)
    assert out.is_contiguous(memory_format=torch.channels_last)  # ... the fast path really runs NHWC
    assert _rel_err(out, ref_out) < 1e-5
    assert _rel_err(_sample(fast, x, kw), ref) < 1e-5


@torch.no_grad()
def test_bf16_autocast_same_samples_within_bf16_tolerance():
    # the wrapper is device-agnostic: CPU autocast exercises it here; on CUDA the same code runs on tensor cores
    unet = _unet()
    x, kw = _inputs()
    ref = _sample(unet, x, kw)
    fast = autocast_denoiser(unet, "cpu")
    out = fast(x, torch.full((4,), 500.0), **kw)
    assert out.dtype == torch.float32  # the sampler's arithmetic stays in float32
    got = _sample(fast, x, kw)
    err = _rel_err(got, ref)
    assert 0 < err < 3e-2  # bf16 has 8 bits of mantissa (rel. 2^-8 = 4e-3 per op); nonzero: it really ran in bf16


@needs_cuda
@torch.no_grad()
def test_bf16_autocast_on_cuda_same_samples():
    unet = _unet("cuda")
    x, kw = _inputs(device="cuda")
    ref = _sample(unet, x, kw)
    assert _rel_err(_sample(autocast_denoiser(unet, "cuda"), x, kw), ref) < 3e-2


def test_unet_attention_goes_through_sdpa():
    """The UNet's attention is F.scaled_dot_product_attention (so flash / memory-efficient kernels apply): one self
    and one cross call per Transformer block (1 attending down layer, 2 up layers, the middle)."""
    calls = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.scaled_dot_product_attention:
                calls.append(func)
            return func(*args, **(kwargs or {}))

    unet = _unet()
    x, kw = _inputs()
    with torch.no_grad(), Spy():
        unet(x, torch.full((4,), 500.0), **kw)
    assert len(calls) == 2 * (1 + 2 + 1)


@torch.no_grad()
def test_sdpa_backends_agree():
    unet = _unet()
    x, kw = _inputs()
    t = torch.full((4,), 500.0)
    with sdpa_context("math"):
        ref = unet(x, t, **kw)
    assert _rel_err(sdpa_denoiser(unet, "auto")(x, t, **kw), ref) < 1e-5
    try:
        flash = sdpa_denoiser(unet, "flash")(x, t, **kw)
    except RuntimeError as exc:  # no flash kernel for these inputs on this build
        pytest.skip(f"no flash SDPA kernel here: {str(exc).splitlines()[0]}")
    assert _rel_err(flash, ref) < 1e-5


def test_fastpaths_config_checks_its_backend():
    with pytest.raises(ValueError, match="sdpa_backend"):
        FastPaths(sdpa_backend="fastest")


@torch.no_grad()
def test_fast_denoiser_defaults_are_exact_on_cpu():
    """bf16 is a CUDA switch: on the CPU the default FastPaths is the plain network, bit for bit."""
    unet = _unet()
    x, kw = _inputs()
    t = torch.full((4,), 500.0)
    assert torch.equal(fast_denoiser(unet, FastPaths(), "cpu")(x, t, **kw), unet(x, t, **kw))
    run = fast_sampler("dpmpp2m", lambda x_, t_: unet(x_, t_, **kw), x, alphas_cumprod("scaled_linear", 1000).float(),
                       5, FastPaths(), prediction="v")
    assert torch.equal(run(x)[0], _sample(unet, x, kw))


def test_cuda_graphs_refuse_what_they_cannot_replay():
    x, _ = _inputs()
    alpha_bar = alphas_cumprod("scaled_linear", 1000).float()
    model = lambda x_, t: x_
    with pytest.raises(ValueError, match="deterministic"):
        cuda_graph_sampler("ddpm", model, x, alpha_bar, 5)
    with pytest.raises(ValueError, match="deterministic"):
        cuda_graph_sampler("ddim", model, x, alpha_bar, 5, eta=1.0)
    with pytest.raises(ValueError, match="CUDA"):
        cuda_graph_sampler("dpmpp2m", model, x, alpha_bar, 5)
    with pytest.raises(ValueError, match="CUDA"):
        cuda_graph_denoiser(model, x, torch.zeros(4))


@needs_cuda
@torch.no_grad()
def test_cuda_graph_sampler_same_samples():
    unet = _unet("cuda")
    x, kw = _inputs(device="cuda")
    alpha_bar = alphas_cumprod("scaled_linear", 1000).float().cuda()
    model = guided(unet, 3.0, kw, {k: v.flip(0) for k, v in kw.items()})
    ref = sample("dpmpp2m", model, x, alpha_bar, 10, prediction="v")[0]
    run = cuda_graph_sampler("dpmpp2m", model, torch.zeros_like(x), alpha_bar, 10, prediction="v")
    got, nfe = run(x)
    assert nfe == 10
    assert _rel_err(got, ref) < 1e-5
    assert _rel_err(run(2 * x)[0], sample("dpmpp2m", model, 2 * x, alpha_bar, 10, prediction="v")[0]) < 1e-5


@needs_cuda
@torch.no_grad()
def test_cuda_graph_denoiser_same_samples():
    unet = _unet("cuda")
    x, kw = _inputs(device="cuda")
    ref = _sample(unet, x, kw)
    graphed = cuda_graph_denoiser(unet, x, torch.zeros(4, device="cuda"), **kw)
    assert _rel_err(_sample(lambda x_, t, **_: graphed(x_, t), x, {}), ref) < 1e-5


@pytest.mark.slow
@torch.no_grad()
def test_compiled_denoiser_same_samples():
    """torch.compile takes a minute or more on a CPU, hence slow."""
    unet = _unet()
    x, kw = _inputs()
    ref = _sample(unet, x, kw)
    assert _rel_err(_sample(compile_denoiser(unet), x, kw), ref) < 1e-4


# ---------------------------------------------------------------- the sampler loop's own cost


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def _ops_between_network_calls(steps: int, guidance: bool) -> tuple[list[str], int]:
    """The tensor ops a dpmpp2m loop runs from its first network call to its last, with a network that costs
    nothing (it returns a constant and leaves a marker), and the number of calls."""
    x, kw = _inputs()
    alpha_bar = alphas_cumprod("scaled_linear", 1000).float()
    const = torch.randn(8 if guidance else 4, 4, 8, 8)
    with _OpCounter() as counter:

        def net(x_, t, **_):
            counter.ops.append("NETWORK")
            return const

        model = guided(net, 3.0, kw, kw) if guidance else (lambda x_, t: net(x_, t))
        sample("dpmpp2m", model, x, alpha_bar, steps, prediction="v")
    first, last = counter.ops.index("NETWORK"), len(counter.ops) - 1 - counter.ops[::-1].index("NETWORK")
    return counter.ops[first:last], counter.ops.count("NETWORK")


@pytest.mark.parametrize("guidance", [False, True])
def test_sampler_loop_adds_only_a_few_elementwise_ops_per_step(guidance):
    """No per-step bookkeeping: the grid and the timestep tensors are made before the loop and nothing syncs with
    the host. A step is the x0 conversion (6 ops for v-prediction), the multistep combination and the update (6),
    plus for guidance the batched call's two cats, a split and the combination u + s (c - u)."""
    between, calls = _ops_between_network_calls(20, guidance)
    assert calls == 20
    ops = [op for op in between if op != "NETWORK"]
    assert len(ops) / (calls - 1) <= (18 if guidance else 12), sorted(set(ops))
    assert set(ops) <= {"mul", "sub", "add", "cat", "split"}  # elementwise maths only: no alloc, copy or sync


# ---------------------------------------------------------------- the training's fast paths (bench/train/loops.py)


def _adam_weights(fused: bool, weight_decay) -> torch.Tensor:
    """A small network after 30 Adam/AdamW steps on fixed batches, with torch's per-tensor loop or fused kernel."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.SiLU(), torch.nn.Linear(64, 16))
    options = {"lr": 1e-2, "betas": (0.5, 0.99)}
    if fused:
        opt = adam(net.parameters(), weight_decay=weight_decay, **options)
    elif weight_decay is None:
        opt = torch.optim.Adam(net.parameters(), foreach=False, **options)
    else:
        opt = torch.optim.AdamW(net.parameters(), weight_decay=weight_decay, foreach=False, **options)
    for step in range(30):
        x = torch.randn(32, 16, generator=torch.Generator().manual_seed(step))
        loss = (net(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()])


@pytest.mark.parametrize("weight_decay", [None, 0.05])
def test_the_fused_optimiser_makes_the_per_tensor_loops_update(weight_decay):
    """adam() (fused) against torch's plain per-tensor Adam / AdamW: the same weights after 30 steps up to float32
    rounding (the updates are ~1e-2; rounding ~1e-7)."""
    plain, fused = _adam_weights(False, weight_decay), _adam_weights(True, weight_decay)
    assert (plain - _adam_weights(False, None if weight_decay else 0.05)).abs().max() > 1e-3  # the decay acts
    torch.testing.assert_close(fused, plain, atol=2e-6, rtol=1e-5)


def test_the_foreach_ema_is_the_per_tensor_lerp():
    """ema_update (one foreach lerp) equals lerp_ per parameter bit for bit; buffers are copied."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))
    model[1].running_mean.fill_(0.3)
    ema, plain = copy.deepcopy(model), copy.deepcopy(model)
    for p in ema.parameters():
        p.data.normal_()
    plain.load_state_dict(ema.state_dict())
    ema_update(ema, model, 0.9)
    with torch.no_grad():
        for e, p in zip(plain.parameters(), model.parameters()):
            e.lerp_(p, 0.1)
    assert all(torch.equal(a, b) for a, b in zip(ema.parameters(), plain.parameters()))
    assert torch.equal(ema[1].running_mean, model[1].running_mean)
