"""Throughput: the timer, the FLOP counts against closed forms, the fields of a tiny `gvd throughput` run, the budget
rule, the table and report blocks, and the quality-vs-cost figures drawn from whatever results.json holds."""

import dataclasses
import json
import time

import pytest
import torch
from torch import nn

from bench.cli import main
from bench.config import preset
from bench.report.speed import quality_cost_figures, reconciled, throughput_blocks
from bench.speed import gpu_check
from bench.speed.summary import throughput_table
from bench.speed.throughput import (
    ONE_STEP,
    _plan,
    _prepare,
    _train_inputs,
    bytes_per_image,
    image_throughput,
    machine_problem,
    measured_families,
    run_entry_throughput,
)
from bench.speed.timing import measure
from bench.train.loops import bf16_supported, count_flops, precision
from models.mlp import num_params
from models.unet import UNet

POSITIVE = ("seconds_per_batch", "images_per_s", "flops_per_image", "tflops", "mfu")


def test_measure_times_what_it_is_given():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)

    t0 = time.perf_counter()
    m = measure(fn, warmup=2, repeats=3, device="cpu")
    outer = time.perf_counter() - t0
    assert len(calls) == 5  # warm-up calls are made but not timed
    # a timed call lasts at least its sleep, and the three timed calls fit in the whole measure() (no clock limit:
    # a loaded machine stretches both sides alike)
    assert 0.01 <= m["min_s"] <= m["median_s"] and 3 * m["min_s"] <= outer
    assert m["repeats"] == 3 and m["timer"] == "perf_counter" and m["peak_memory_bytes"] is None


def test_flop_counts_match_closed_forms():
    lin, conv = nn.Linear(32, 16), nn.Conv2d(3, 8, 3, padding=1)
    assert count_flops(lambda: lin(torch.randn(5, 32))) == 2 * 5 * 32 * 16  # a multiply and an add per weight use
    assert count_flops(lambda: conv(torch.randn(2, 3, 10, 10))) == 2 * 2 * 8 * 10 * 10 * 3 * 3 * 3
    # forward + backward of a linear layer: dW and dx each cost as much as the forward
    x = torch.randn(5, 32, requires_grad=True)
    assert count_flops(lambda: lin(x).sum().backward()) == 3 * 2 * 5 * 32 * 16


def test_budget_plan():
    assert _plan(0.01, None) == (2, 5)
    assert _plan(5.0, None) == (1, 3)  # a long call warms itself up
    soon = time.perf_counter() + 100.0  # a quarter of it (25 s) may be spent, however slowly this test runs
    assert _plan(1000.0, soon) is None  # does not fit: the caller estimates instead
    assert _plan(0.001, soon) == (2, 5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny `gvd throughput` run (smoke preset, batch 2, NFE 1 and 3) written to JSON."""
    out = tmp_path_factory.mktemp("thr") / "throughput.json"
    rc = main(["throughput", "--preset", "smoke", "--device", "cpu", "--batch", "2", "--nfe", "1", "3",
               "--budget", "30", "--out", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def test_tiny_run_has_every_field_positive(tiny):
    assert tiny["schema"] == "gan-vs-diffusion/throughput/v1"
    arithmetic = precision("cpu", True)  # the smoke preset's amp, as `gvd run` trains and samples
    assert tiny["device"] == "cpu" and tiny["dtype"] == {"train": arithmetic, "sample": arithmetic}
    assert set(tiny["matmul_peaks"]) == ({"float32", "bfloat16"} if bf16_supported("cpu") else {"float32"})
    assert {"python", "torch", "numpy"} <= set(tiny["versions"])
    assert tiny["matmul_peak"]["tflops"] > 0
    seen = {(r["model"], r["stage"], r["nfe"], r["guidance"]) for r in tiny["rows"]}
    assert seen == {("text", "encode", None, None), ("gan", "sample", 1, None),
                    ("diffusion", "sample", 1, 1.0), ("diffusion", "sample", 1, 3.0),
                    ("diffusion", "sample", 3, 1.0), ("diffusion", "sample", 3, 3.0),
                    ("gan", "train", None, None), ("diffusion", "train", None, None), ("vae", "train", None, None)}
    for r in tiny["rows"]:
        for key in POSITIVE:
            assert r[key] > 0, (r["model"], r["stage"], key)
        if r["stage"] == "sample":
            assert r["latency_s"] > 0
        assert r["peak_memory_mb"] is None  # measured on CUDA only, and said so
    assert any("CUDA only" in n for n in tiny["notes"])
    for model in ("gan", "diffusion"):
        assert all(n > 0 for n in tiny["models"][model]["params"].values())
    assert tiny["train_batch"] == preset("smoke").images.batch_size
    for key in ("unguided", "guided"):
        assert 0 < tiny["sampler_overhead"][key]["sampler_step_s"]
        assert 0 < tiny["sampler_overhead"][key]["fraction_of_network"]


def test_tiny_run_flops_add_up(tiny):
    """Sampling FLOPs per image = NFE x network calls per step x one call + one decode; guidance doubles the calls."""
    d = tiny["models"]["diffusion"]
    for r in tiny["rows"]:
        if r["model"] == "diffusion" and r["stage"] == "sample":
            calls = 2 if r["guidance"] != 1.0 else 1
            expect = r["nfe"] * calls * d["flops_per_network_call_per_image"] + d["flops_per_decode"]
            assert r["flops_per_image"] == pytest.approx(expect)
    gan = next(r for r in tiny["rows"] if r["model"] == "gan" and r["stage"] == "sample")
    assert gan["flops_per_image"] == tiny["models"]["gan"]["flops_per_image"]
    # one training step is forward + backward: more than the forward alone
    gan_train = next(r for r in tiny["rows"] if r["model"] == "gan" and r["stage"] == "train")
    assert gan_train["flops_per_image"] > 2 * gan["flops_per_image"]


def test_run_entry_summary(tiny):
    s = run_entry_throughput(tiny, "diffusion")
    assert s["train_images_per_s"] > 0 and s["params"] == tiny["models"]["diffusion"]["params"]
    assert [(r["nfe"], r["guidance"]) for r in s["sampling"]] == [(1, 1.0), (1, 3.0), (3, 1.0), (3, 3.0)]
    assert run_entry_throughput(tiny, "gan")["sampling"][0]["nfe"] == 1


def test_the_rows_of_a_familys_networks_are_no_families(tiny):
    """The diffusion family's VAE and text encoder have rows of their own ("vae", "text"); the families a run entry
    can be given speeds of are the two whose sampling the rows measure (a family named "vae" crashed the run)."""
    assert {"vae", "text"} <= {r["model"] for r in tiny["rows"]}
    assert measured_families(tiny) == {"gan", "diffusion"}


def test_table_and_blocks(tiny):
    table = throughput_table(tiny)
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + len(tiny["rows"])  # header + one line per row
    assert "Sampler loop overhead" in table and "MFU is against" in table
    blocks = throughput_blocks(tiny, [("figures/x.png", "what x shows")])
    assert blocks[0] == ("h2", "Throughput")
    tables = [b for b in blocks if b[0] == "table"]
    assert len(tables) == 1 and all(len(row) == len(tables[0][1]) for row in tables[0][2])
    assert blocks[-1] == ("img", "figures/x.png", "what x shows")
    assert all(b[0] in ("h2", "p", "table", "img") for b in blocks)


def test_tiny_budget_estimates_the_loops_and_says_so():
    cfg = preset("smoke").images
    torch.manual_seed(0)
    r = image_throughput(cfg, "cpu", nfes=(50,), batch=2, budget_s=1e-3)
    loops = [row for row in r["rows"] if row["model"] == "diffusion" and row["stage"] == "sample"]
    assert [row["method"] for row in loops] == ["estimated", "estimated"]
    assert any("estimated" in n for n in r["notes"])
    # the estimate is NFE x (measured network call + measured sampler step) + measured decode
    for row, key in zip(loops, ("unguided", "guided")):
        cost = r["sampler_overhead"][key]
        expect = 50 * (cost["network_step_s"] + cost["sampler_step_s"]) + r["models"]["diffusion"]["decode_s"]["batch"]
        assert row["seconds_per_batch"] == pytest.approx(expect)
    train = [row for row in r["rows"] if row["stage"] == "train"]  # always measured: one step at the preset's batch
    assert [(row["batch"], row["method"], row["repeats"]) for row in train] == [(16, ONE_STEP, 1)] * 3
    assert all(row["images_per_s"] > 0 for row in train) and any(ONE_STEP in n for n in r["notes"])


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_training_rows_drop_the_configured_fraction_of_captions(p):
    """The UNet's training batch drops cfg.caption_dropout of its captions, as the image benchmark does (and the
    GAN's condition is never dropped)."""
    cfg = dataclasses.replace(preset("smoke").images, caption_dropout=p, batch_size=400)
    b = _prepare(cfg, torch.device("cpu"), 3, 4, None, seed=0)
    inputs = _train_inputs(b, 3)
    dropped = (inputs["ctx"] == b.uncond[0]).all(dim=(1, 2)) & (inputs["ctx_mask"] == b.uncond[1]).all(dim=1)
    assert len(dropped) == 400 and abs(dropped.float().mean().item() - p) <= 5 * (p * (1 - p) / 400) ** 0.5
    kept = inputs["ctx"][~dropped]
    assert all(any(torch.equal(c, s) for s in b.states) for c in kept[:8])  # the others are the prompts' states
    assert torch.equal(inputs["cond"], b.pooled.repeat(100, 1))


@pytest.mark.parametrize("argv, message", [
    (["--preset", "toy"], "no image benchmark"),
    (["--preset", "nope"], "unknown preset"),
    (["--preset", "smoke", "--batch", "0"], "--batch"),
    (["--preset", "smoke", "--nfe", "0"], "--nfe"),
    (["--preset", "smoke", "--budget", "0"], "--budget"),
    (["--preset", "smoke", "--threads", "0"], "--threads"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(["throughput", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--batch", "1000000000"], "--batch 1000000000 needs about"),
    (["--threads", "100000"], "--threads 100000: this machine gives this process"),
])
def test_batch_and_threads_are_bounded_by_the_machine(argv, message, tmp_path, capsys):
    """The reliability round's --batch 1e9 (an allocation of 128 GB attempted) and --threads 100000 (libgomp out of
    memory): one line naming the most this machine allows, exit 2, no --out written, no torch threads changed."""
    threads = torch.get_num_threads()
    out = tmp_path / "t.json"
    assert main(["throughput", "--preset", "smoke", "--device", "cpu", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "use at most" in err and len(err.splitlines()) == 1, err
    assert not out.exists() and torch.get_num_threads() == threads
    most = int(err.rsplit(" ", 1)[1])  # the bound it names is one the machine takes: one more is refused
    flag = argv[0]
    assert machine_problem(preset("smoke").images, 3, torch.device("cpu"), *(
        (most, None) if flag == "--batch" else (1, most))) is None
    assert machine_problem(preset("smoke").images, 3, torch.device("cpu"), *(
        (most + most // 100 + 1, None) if flag == "--batch" else (1, most + 1))) is not None


def test_memory_per_image_covers_the_largest_activation():
    """bytes_per_image (an estimate) is at least the largest single activation per image that a guided UNet call
    and the VAE decoder actually produce (forward hooks on every module, an independent count)."""
    cfg = preset("smoke").images
    b = _prepare(cfg, torch.device("cpu"), 3, 2, None, 0)
    sizes = []
    hook = lambda m, i, o: sizes.append(o.numel() * o.element_size() / len(o)) if torch.is_tensor(o) else None  # noqa: E731
    handles = [m.register_forward_hook(hook) for net in (b.nets["unet"], b.nets["vae"]) for m in net.modules()]
    with torch.no_grad():
        x = torch.cat([b.x_T, b.x_T])  # both halves of a guided call
        b.nets["unet"](x, torch.cat([b.t_mid, b.t_mid]), context=torch.cat([b.states, b.states]),
                       context_mask=torch.cat([b.mask, b.mask]))
        b.nets["vae"].decode(b.x_T)
    for h in handles:
        h.remove()
    assert sizes and bytes_per_image(cfg, 3) >= 2 * max(sizes)  # per image: two halves of the guided batch


def test_out_must_be_a_file(tmp_path, capsys):
    assert main(["throughput", "--preset", "smoke", "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err


# ---------------------------------------------------------------- quality vs cost


def _results(with_sweep: bool) -> dict:
    runs = []
    for seed in (0, 1):
        runs.append({"dataset": "shapes", "model": "gan", "seed": seed, "status": "ok",
                     "train": {"steps": 100, "seconds": 10.0},
                     "metrics": {"fid": 30.0 + seed, "num_samples": 100},
                     "throughput": {"nfe": 1, "sample_seconds": 0.1, "samples_per_s": 1000.0},
                     "curve": [{"step": 50, "fid": 60.0}, {"step": 100, "fid": 30.0}]})
        entry = {"dataset": "shapes", "model": "diffusion", "seed": seed, "status": "ok", "sampler": "dpmpp2m:20",
                 "train": {"steps": 100, "seconds": 50.0, "vae": {"seconds": 20.0}},
                 "metrics": {"fid": 10.0 + seed, "num_samples": 100},
                 "throughput": {"nfe": 20, "sample_seconds": 2.0, "samples_per_s": 50.0}}
        if with_sweep:
            entry["by_sampler"] = {f"{s}:{n}": {"fid": 40.0 / n, "nfe": n, "sample_seconds": n / 10}
                                   for s in ("ddim", "dpmpp2m") for n in (5, 10, 20)}
            for m in entry["by_sampler"].values():
                m["num_samples"] = 100
        runs.append(entry)
    runs.append({"dataset": "ring8", "model": "diffusion", "seed": 0, "status": "ok", "train": {"steps": 10,
                 "seconds": 1.0}, "metrics": {"reverse_kl": 0.1},
                 "by_sampler": {"ddpm:1000": {"reverse_kl": 0.05, "nfe": 1000, "sample_seconds": 3.0,
                                              "samples_per_s": 800.0}}})
    runs.append({"dataset": "grid25", "model": "gan", "seed": 0, "status": "failed", "train": {}, "metrics": {}})
    return {"runs": runs}


@pytest.mark.parametrize("with_sweep", [False, True])
def test_quality_cost_figures(tmp_path, with_sweep):
    drawn = quality_cost_figures(tmp_path, _results(with_sweep))
    paths, captions = [p for p, _ in drawn], dict(drawn)
    assert paths == ["figures/shapes_quality_vs_sampling.png", "figures/shapes_quality_vs_training_time.png",
                     "figures/ring8_quality_vs_sampling.png", "figures/ring8_quality_vs_training_time.png"]
    for p in paths:
        assert (tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not captions[p].endswith(".png") and captions[p].startswith(p.split("/")[1].split("_")[0] + ":")
    # scored at one NFE per family, shapes has no quality-vs-NFE curve to draw: the caption says why
    one_setting = "at the one sampler setting this benchmark scores" in captions[paths[0]]
    assert one_setting != with_sweep and ("against the network evaluations" in captions[paths[0]]) == with_sweep


def _loop(nfe: int, guidance: float, per_image_s: float, method: str) -> dict:
    """A throughput sampling row of batch 64 whose loop costs per_image_s per image and step."""
    return {"model": "diffusion", "stage": "sample", "nfe": nfe, "guidance": guidance, "batch": 64,
            "images_per_s": 1 / (per_image_s * nfe), "latency_s": per_image_s * nfe * 4, "method": method,
            "flops_per_image": 1e9 * nfe, "tflops": 1e-3 * nfe * 1e9 / 1e12 / (per_image_s * nfe), "mfu": 0.01}


def test_estimated_rows_follow_the_measured_loops():
    """The throughput stage's estimate of a loop that did not fit its budget came from an isolated network call and
    read faster than the measured loops (the example: NFE 50 guided at 683 ms alone, below NFE 50 unguided measured
    at 1,041 ms). The report re-estimates it from the measured loops of the same guidance, linear in NFE: an estimate
    that continues the measured line exactly (a loop cost linear in NFE here), never below a measured row."""
    rows = [_loop(10, 3.0, 2e-3, "measured"), _loop(20, 3.0, 2e-3, "measured"),
            {**_loop(50, 3.0, 2e-3, "estimated"), "images_per_s": 100.0, "latency_s": 0.05}]
    fixed = {r["nfe"]: r for r in reconciled({"rows": rows})["rows"]}
    assert fixed[50]["method"] == "estimated from the measured loops"
    assert fixed[50]["images_per_s"] == pytest.approx(1 / (2e-3 * 50))  # the measured line continued
    assert fixed[50]["latency_s"] == pytest.approx(2e-3 * 50 * 4)
    assert fixed[50]["images_per_s"] < fixed[20]["images_per_s"] and fixed[50]["latency_s"] > fixed[20]["latency_s"]
    assert fixed[10] == rows[0] and fixed[20] == rows[1]  # measured rows stay as measured
    # one measured loop only: proportional to it; none: the estimate stands
    alone = reconciled({"rows": [rows[1], rows[2]]})["rows"][1]
    assert alone["images_per_s"] == pytest.approx(rows[1]["images_per_s"] * 20 / 50)
    assert reconciled({"rows": [rows[2]]})["rows"][0] == rows[2]


def test_quality_cost_figures_skip_what_is_not_there(tmp_path):
    assert quality_cost_figures(tmp_path, {"runs": []}) == []
    bare = {"runs": [{"dataset": "shapes", "model": "gan", "seed": 0, "status": "ok", "train": {}, "metrics": {},
                      "throughput": {}}]}
    assert quality_cost_figures(tmp_path, bare) == []
    assert not (tmp_path / "figures").exists()


# ---------------------------------------------------------------- the GPU check, on the CPU


def test_gpu_check_matched_config_and_targets():
    # diffusers' UNet2DConditionModel at the comparison config has 8.8M parameters; ours at the same architecture too
    assert 8.7e6 < num_params(UNet(gpu_check.MATCHED)) < 8.8e6
    theirs = gpu_check.diffusers_unet(gpu_check.MATCHED)
    if theirs is not None:  # with the optional `peers` extra installed: the same architecture, parameter for parameter
        assert num_params(theirs) == num_params(UNet(gpu_check.MATCHED))
    step = {"rows": [{"variant": "ours eager fp32", "batch": 64, "ms": 5.0},
                     {"variant": "ours compiled bf16", "batch": 64, "ms": 4.0},
                     {"variant": "diffusers eager fp32", "batch": 64, "ms": 17.6},
                     {"variant": "ours compiled bf16", "batch": 512, "ms": 11.0},
                     {"variant": "diffusers compiled bf16", "batch": 512, "ms": 10.2},
                     {"variant": "diffusers eager bf16", "batch": 512, "error": "OutOfMemoryError"}]}
    lines = gpu_check.targets(step, [{"dtype": "float32", "batch": 128, "ours_ms": 2.0, "reference_ms": 2.5,
                                      "speedup": 1.25}])
    assert lines[0].startswith("[met]") and "4.40x" in lines[0]  # best of ours at 64 is 4.0 ms: 17.6 / 4.0
    assert lines[1].startswith("[MISSED]")  # 11.0 ms is not faster than 10.2 ms
    assert lines[2].startswith("[met]") and "1.25x" in lines[2]
    assert gpu_check.targets({"rows": []}, [])[0].startswith("[not measured]")


def test_gpu_check_runs_on_the_cpu():
    step = gpu_check.denoise_step_table("cpu", (2,), compile_=False, repeats=1)
    assert [r["variant"] for r in step["rows"]][:1] == ["ours eager fp32"] and step["rows"][0]["ms"] > 0
    dcgan = gpu_check.dcgan_step_check(preset("smoke").images, torch.device("cpu"), amp=False)
    assert dcgan["ours_ms"] > 0 and dcgan["reference_ms"] > 0
