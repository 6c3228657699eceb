"""The timed process of `gvd speed`: one per revision, started by bench/speed/gate.py, which asks it for blocks of
timed calls, alternating between the revisions.

The harness (this file: the benchmarks' definitions, the timer, the counters) is the tool's own; the code under test,
models/ (networks, samplers, guidance, losses), comes from the revision's worktree: the parent starts this module
with the tool on PYTHONPATH, and `prepare` puts the revision's root first on sys.path before anything imports
models (nothing here imports it at the top, and the revision's models/ is checked to be the one imported). The
benchmarks use only models/ APIs that every revision since the first image models has (models/unet.py, samplers.py,
vae.py, dcgan.py, layers.py, diffusion.py); a revision that lacks one is named in one line (MissingAPI).

Exact counters (`counters`), beside the clocks and independent of load: network passes per sample (rows through each
network over the samples made), the sampler's own NFE, FLOPs per sample (torch.utils.flop_counter's formulas, in the
same pass), aten ops by kind and the bytes of new tensor storage by dtype (a TorchDispatchMode below autograd,
backward included), and on CUDA the host-device synchronisations (torch.cuda.set_sync_debug_mode warnings).

Protocol, one JSON object per line: the parent sends the setup {"root", "spec", "device", "threads", "inject"} and
gets {"ready": {...}} or {"error": "..."}; then {"run": NAME, "k": K} -> {"wall": [...], "cpu": [...]} (seconds per
call; "device" too on CUDA); end of input ends the process.

`inject` > 0 slows every UNet forward of this process by that fraction of its own measured time (a busy wait on the
clock the gate reads): the known slowdown that measures the gate's power. Only `gvd speed --inject` sets it, and only
for HEAD's process.
"""

import gc
import importlib
import json
import os
import signal
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

ESTIMATE_S = 0.05  # seconds of timed calls per benchmark that size its blocks
SPIN_CHUNK = 200  # empty loop iterations between two readings of the clock in the injected wait


class MissingAPI(Exception):
    """The revision lacks something a benchmark calls: the message names it."""


@dataclass
class Bench:
    """One benchmark: a call of the revision's code with its inputs bound."""

    fn: Callable[[], object]
    samples: int  # images (or training examples) one call makes
    what: str  # one line for the table
    nets: dict = field(default_factory=dict)  # name -> module whose forward passes are counted
    grad: bool = False  # a training step (autograd on)


# ---------------------------------------------------------------- the revision's code


def _code(root: Path, module: str, attr: str):
    """module.attr from the revision's worktree, or MissingAPI naming what is missing."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise MissingAPI(f"the revision has no {module} ({exc})") from None
    if not Path(mod.__file__).resolve().is_relative_to(root.resolve()):
        raise MissingAPI(f"{module} was imported from {mod.__file__}, not from the revision's worktree {root}")
    if not hasattr(mod, attr):
        raise MissingAPI(f"the revision's {module} has no {attr}")
    return getattr(mod, attr)


def _make(cls, kwargs: dict, what: str):
    """cls(**kwargs), or MissingAPI when the revision's config has other fields."""
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise MissingAPI(f"the revision's {what} does not take the tool's settings ({exc})") from None


def _api(root: Path) -> dict:
    """Every name of models/ the benchmarks call, from the revision."""
    names = {"UNet": "models.unet", "UNetConfig": "models.unet", "KLAutoencoder": "models.vae",
             "VAEConfig": "models.vae", "Generator": "models.dcgan", "Discriminator": "models.dcgan",
             "DCGANConfig": "models.dcgan", "SAMPLERS": "models.samplers", "sample": "models.samplers",
             "guided": "models.samplers", "alphas_cumprod": "models.diffusion", "diffusion_loss": "models.diffusion",
             "gan_d_loss": "models.layers", "gan_g_loss": "models.layers"}
    return {name: _code(root, module, name) for name, module in names.items()}


# ---------------------------------------------------------------- the benchmarks


def _slowed(forward: Callable, fraction: float, clock: Callable[[], float], cuda: bool) -> Callable:
    """forward followed by a busy wait of `fraction` of the time it took on `clock` (the injected slowdown). The wait
    reads the clock every SPIN_CHUNK empty iterations (a few microseconds): reading the CPU clock, a system call, at
    every iteration undershot (the quick preset's UNet forward, one process: 9.5% for 10% asked; chunked: 10.2%)."""

    def slow(*args, **kwargs):
        t0 = clock()
        out = forward(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        stop = t0 + (clock() - t0) * (1 + fraction)
        while clock() < stop:
            for _ in range(SPIN_CHUNK):
                pass
        return out

    return slow


def _inputs(spec: dict, unet_cfg, device) -> dict:
    """Seeded inputs shaped as the harness feeds the networks: latents, a mid-schedule t, text states with 5 real
    tokens and the empty caption's (BOS alone), pooled text, latent codes."""
    g = torch.Generator().manual_seed(spec["seed"])
    B, L, W = spec["batch"], spec["tokens"], spec["width"]
    side = spec["resolution"] // 2 ** (len(spec["vae"]["channels"]) - 1)
    tokens = torch.arange(L)
    return {k: v.to(device) for k, v in {
        "x": torch.randn(B, unet_cfg.in_channels, side, side, generator=g),  # (B, C, h, w)
        "t": torch.full((B,), spec["num_steps"] / 2),  # (B,)
        "ctx": torch.randn(B, L, W, generator=g), "mask": (tokens < 5).expand(B, L).clone(),  # (B, L, W), (B, L)
        "u_ctx": torch.randn(1, L, W, generator=g).expand(B, L, W).clone(), "u_mask": (tokens < 1).expand(B, L).clone(),
        "pooled": torch.randn(B, spec["embed"], generator=g),  # (B, E)
        "z": torch.randn(B, spec["dcgan"]["z_dim"], generator=g),  # (B, z_dim)
    }.items()}


def _sampling(api: dict, spec: dict, nets: dict, inp: dict, alpha_bar) -> dict:
    """The denoising kernel, a guided step, each sampler's whole loop (one image, guided, the preset's steps), the
    VAE decode and the GAN's one pass."""
    unet, s, n = nets["unet"], spec["guidance"], spec["loop_batch"]
    cond, uncond = {"context": inp["ctx"], "context_mask": inp["mask"]}, {"context": inp["u_ctx"],
                                                                          "context_mask": inp["u_mask"]}
    guided = api["guided"](unet, s, cond, uncond)
    one = api["guided"](unet, s, *({k: v[:n] for k, v in c.items()} for c in (cond, uncond)))
    B, x = spec["batch"], inp["x"]
    out = {"unet_forward": Bench(lambda: unet(x, inp["t"], **cond), B, f"UNet forward, batch {B}", {"unet": unet}),
           "guided_step": Bench(lambda: guided(x, inp["t"]), B, f"guided UNet step (scale {s:g}), batch {B}",
                                {"unet": unet})}
    for name in [m for m in spec["samplers"] if m in api["SAMPLERS"]]:
        out[f"sample_{name}"] = Bench(
            lambda name=name: api["sample"](name, one, x[:n], alpha_bar, spec["steps"], prediction=spec["prediction"]),
            n, f"{name}:{spec['steps']} guided loop, batch {n}", {"unet": unet})
    latents = x[:, : nets["vae"].cfg.latent_channels]
    out["vae_decode"] = Bench(lambda: nets["vae"].decode(latents), B, f"VAE decode, batch {B}")
    out["gan_sample"] = Bench(lambda: nets["G"](inp["z"], inp["pooled"]), B, f"DCGAN generator, batch {B}",
                              {"G": nets["G"]})
    return out


def _training(api: dict, spec: dict, cfgs: dict, inp: dict, alpha_bar, device) -> dict:
    """One step of each family, written against models/ alone (the harness's loops moved between revisions): the GAN
    as Goodfellow et al.'s algorithm 1 with k = 1 (a D step on a detached fake batch, a G step on a fresh one), the
    UNet as the DDPM simple loss on latents with the text context (Ho et al. 2020, eq. 14), each with Adam(W)."""
    n = spec["train_batch"]
    G, D = api["Generator"](cfgs["dcgan"]).to(device), api["Discriminator"](cfgs["dcgan"]).to(device)
    unet = api["UNet"](cfgs["unet"]).to(device)
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=spec["gan_lr"], betas=spec["gan_betas"]) for m in (G, D))
    opt_u = torch.optim.AdamW(unet.parameters(), lr=spec["unet_lr"], betas=spec["unet_betas"])
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    res = spec["resolution"]
    real = (torch.rand(n, spec["dcgan"]["channels"], res, res, generator=g) * 2 - 1).to(device)  # (n, C, R, R)
    reps = -(-n // spec["batch"])
    cond = inp["pooled"].repeat(reps, 1)[:n]
    x0 = inp["x"].repeat(reps, 1, 1, 1)[:n]
    ctx = {"context": inp["ctx"].repeat(reps, 1, 1)[:n], "context_mask": inp["mask"].repeat(reps, 1)[:n]}
    z = lambda: torch.randn(n, spec["dcgan"]["z_dim"], device=device)
    loss = spec["gan_loss"]

    def gan_step():
        with torch.no_grad():
            fake = G(z(), cond)
        d_loss = api["gan_d_loss"](D(real, cond), D(fake, cond), loss)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = api["gan_g_loss"](D(G(z(), cond), cond), loss)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

    def unet_step():
        l2 = api["diffusion_loss"](unet, x0, alpha_bar, spec["prediction"], **ctx)
        opt_u.zero_grad(set_to_none=True)
        l2.backward()
        opt_u.step()

    return {"gan_train_step": Bench(gan_step, n, f"GAN step (D + G, Adam), batch {n}", {"G": G, "D": D}, grad=True),
            "diffusion_train_step": Bench(unet_step, n, f"UNet step (AdamW), batch {n}", {"unet": unet}, grad=True)}


def benchmarks(spec: dict, root: Path, device: torch.device) -> dict[str, Bench]:
    """Every benchmark of the revision at `root`, by name, on fresh seeded networks (speed does not depend on trained
    weights)."""
    api = _api(root)
    torch.manual_seed(spec["seed"])
    cfgs = {"unet": _make(api["UNetConfig"], spec["unet"], "UNetConfig"),
            "vae": _make(api["VAEConfig"], spec["vae"], "VAEConfig"),
            "dcgan": _make(api["DCGANConfig"], spec["dcgan"], "DCGANConfig")}
    frozen = {"unet": api["UNet"](cfgs["unet"]), "vae": api["KLAutoencoder"](cfgs["vae"]),
              "G": api["Generator"](cfgs["dcgan"])}
    nets = {k: m.to(device).eval().requires_grad_(False) for k, m in frozen.items()}
    inp = _inputs(spec, cfgs["unet"], device)
    alpha_bar = api["alphas_cumprod"](spec["schedule"], spec["num_steps"]).float().to(device)
    return {**_sampling(api, spec, nets, inp, alpha_bar), **_training(api, spec, cfgs, inp, alpha_bar, device)}


def inject_slowdown(benches: dict[str, Bench], fraction: float, device: torch.device) -> None:
    """Slow every UNet forward of these benchmarks by `fraction` of its own time (module docstring)."""
    for b in benches.values():
        unet = b.nets.get("unet")
        if unet is not None and "forward" not in vars(unet):  # each network once
            unet.forward = _slowed(unet.forward, fraction, _clock(device), device.type == "cuda")


# ---------------------------------------------------------------- exact counters


FLOPS = {**flop_registry,  # the CPU's flash attention: the same q, k, v arguments as CUDA's, the same formula
         torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
             flop_registry[torch.ops.aten._scaled_dot_product_flash_attention],
         torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
             flop_registry[torch.ops.aten._scaled_dot_product_flash_attention_backward]}


class OpTally(TorchDispatchMode):
    """Counts every aten op that runs below autograd (forward and backward), the bytes of every new tensor storage an
    op returns (by dtype; outputs that alias an input, views and in-place ops, allocate nothing) and the FLOPs of
    matmuls, convolutions and attention by torch.utils.flop_counter's formulas (elementwise ops count 0, the usual
    convention)."""

    def __init__(self):
        super().__init__()
        self.ops, self.bytes, self.allocs, self.flops = Counter(), Counter(), 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops[str(func)] += 1
        if func.overloadpacket in FLOPS:
            self.flops += FLOPS[func.overloadpacket](*args, **kwargs, out_val=out)
        seen = {t.untyped_storage().data_ptr() for t in _tensors((*args, *kwargs.values()))}
        for t in _tensors(out if isinstance(out, (list, tuple)) else (out,)):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                self.bytes[str(t.dtype).removeprefix("torch.")] += t.untyped_storage().nbytes()
                self.allocs += 1
        return out


def _tensors(items) -> list[torch.Tensor]:
    """The tensors among an op's arguments or outputs: given alone, or in a list or tuple (aten.cat's inputs, split's
    outputs); aten ops nest no deeper."""
    out = []
    for x in items:
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, (list, tuple)):
            out += [y for y in x if isinstance(y, torch.Tensor)]
    return out


def _call(b: Bench):
    with torch.enable_grad() if b.grad else torch.no_grad():
        return b.fn()


def _syncs(b: Bench, device: torch.device) -> int | None:
    """Host-device synchronisations of one call on CUDA (PyTorch warns at each one in sync debug mode); None on the
    CPU, where there is no device to wait for."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _call(b)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def counters(b: Bench, device) -> dict:
    """The exact counters of one call of b (call it once before, so lazily built state is not counted): rows through
    each network per sample (forward pre-hooks), the sampler's NFE (what it returns), and OpTally's counts."""
    rows = Counter()
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: rows.update({name: len(args[0])}))
             for name, m in b.nets.items()]
    try:
        with OpTally() as tally:
            out = _call(b)
    finally:
        for h in hooks:
            h.remove()
    nfe = out[1] if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], int) else None
    return {"samples": b.samples, "nfe": nfe, "passes_per_sample": {n: rows[n] / b.samples for n in b.nets},
            "flops_per_sample": tally.flops / b.samples, "ops": sum(tally.ops.values()),
            "ops_by_kind": dict(sorted(tally.ops.items())), "alloc_bytes": sum(tally.bytes.values()),
            "allocs": tally.allocs, "alloc_bytes_by_dtype": dict(sorted(tally.bytes.items())),
            "host_syncs": _syncs(b, torch.device(device))}


def _delta(before: dict, after: dict) -> str:
    """The keys whose count moved, largest moves first: "aten.add.Tensor +12, aten.mul.Tensor -1"."""
    moves = {k: after.get(k, 0) - before.get(k, 0) for k in before.keys() | after.keys()}
    moved = sorted(((k, v) for k, v in moves.items() if v), key=lambda kv: (-abs(kv[1]), kv[0]))
    return ", ".join(f"{k} {v:+,}" for k, v in moved[:6]) + (f", {len(moved) - 6} more" if len(moved) > 6 else "")


def counter_changes(base: dict, head: dict) -> list[str]:
    """Every counter that differs between two `counters` results, exactly, one line each ([] when none does)."""
    out = []
    for key, label in (("nfe", "NFE"), ("flops_per_sample", "FLOPs per sample"), ("allocs", "allocations"),
                       ("host_syncs", "host-device syncs")):
        if base.get(key) != head.get(key):
            out.append(f"{label} {base.get(key)} -> {head.get(key)}")
    passes_b, passes_h = base.get("passes_per_sample", {}), head.get("passes_per_sample", {})
    for net in sorted(passes_b.keys() | passes_h.keys()):
        if passes_b.get(net) != passes_h.get(net):
            out.append(f"{net} passes per sample {passes_b.get(net)} -> {passes_h.get(net)}")
    if base.get("ops_by_kind") != head.get("ops_by_kind"):
        out.append(f"aten ops {base.get('ops')} -> {head.get('ops')} "
                   f"({_delta(base.get('ops_by_kind', {}), head.get('ops_by_kind', {}))})")
    if base.get("alloc_bytes_by_dtype") != head.get("alloc_bytes_by_dtype"):
        out.append(f"bytes allocated {base.get('alloc_bytes'):,} -> {head.get('alloc_bytes'):,} "
                   f"({_delta(base.get('alloc_bytes_by_dtype', {}), head.get('alloc_bytes_by_dtype', {}))})")
    return out


# ---------------------------------------------------------------- timing


def _clock(device: torch.device) -> Callable[[], float]:
    """The clock the injected slowdown waits on: this process's CPU time (the gate's clock on the CPU), wall time on
    CUDA (where the gate reads CUDA events)."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def run_block(b: Bench, k: int, device: torch.device) -> dict:
    """k timed calls: wall (perf_counter) and CPU (process_time: every thread of this process) seconds per call; on
    CUDA also the device's seconds between events recorded around the call."""
    cuda = device.type == "cuda"
    wall, cpu, dev = [], [], []
    with torch.enable_grad() if b.grad else torch.no_grad():
        for _ in range(k):
            if cuda:
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            w0, c0 = time.perf_counter(), time.process_time()
            b.fn()
            if cuda:
                end.record()
                end.synchronize()
                dev.append(start.elapsed_time(end) / 1e3)  # ms -> s
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    return {"wall": wall, "cpu": cpu, **({"device": dev} if cuda else {})}


def _estimate(b: Bench, device) -> dict:
    """Timed calls until ESTIMATE_S seconds have passed (one call may be enough); their fastest on each clock sizes
    the blocks."""
    times = run_block(b, 1, device)
    while sum(times["wall"]) < ESTIMATE_S:
        for clock, more in run_block(b, 1, device).items():
            times[clock] += more
    return {clock: min(v) for clock, v in times.items()}


def prepare(setup: dict) -> tuple[dict, dict]:
    """(benchmarks, the ready message) for a setup message: the revision's code first on sys.path, threads set,
    networks built, each benchmark called once, counted (if asked) and timed for an estimate."""
    root = Path(setup["root"]).resolve()
    if "models" in sys.modules:
        raise MissingAPI("models was imported before the revision's root was put on sys.path")
    sys.path.insert(0, str(root))
    torch.set_num_threads(setup["threads"])
    device = torch.device(setup["device"])
    benches = benchmarks(setup["spec"], root, device)
    ready = {}
    for name, b in benches.items():
        if b.grad:  # lazily built state (the optimiser's moments) is neither counted nor timed
            _call(b)
        if setup.get("count", True):  # the first process of each side: the others only time
            ready[name] = {"what": b.what, "counters": counters(b, device), "estimate": _estimate(b, device)}
        else:
            _call(b)
            ready[name] = {"what": b.what, "counters": None, "estimate": None}
    if setup.get("inject"):  # after the counters (the busy wait runs no op, but they stay the code's own)
        inject_slowdown(benches, setup["inject"], device)
    samplers = sorted(importlib.import_module("models.samplers").SAMPLERS)
    return benches, {"benchmarks": ready, "samplers": samplers, "torch": torch.__version__,
                     "models": str(Path(sys.modules["models"].__file__).parent)}


def serve(setup: dict, requests, reply: Callable[[dict], None]) -> None:
    """Answer the setup, then every {"run", "k"} request, until the requests end."""
    try:
        benches, ready = prepare(setup)
    except MissingAPI as exc:
        reply({"error": str(exc)})
        return
    reply({"ready": ready})
    gc.collect()
    gc.freeze()  # the networks and inputs live for the whole run: no collector pass walks them mid-block
    device = torch.device(setup["device"])
    for line in requests:
        msg = json.loads(line)
        try:
            reply(run_block(benches[msg["run"]], int(msg["k"]), device))
        except Exception as exc:  # noqa: BLE001 -- the revision's code failed: the parent names it and stops
            reply({"error": f"{msg['run']} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
            return


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the group: the parent stops us
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the code under test prints goes to stderr, not into the protocol

    def reply(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")

    setup = json.loads(sys.stdin.readline())
    serve(setup, sys.stdin, reply)


if __name__ == "__main__":
    main()
