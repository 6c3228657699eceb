"""The `gvd` command (also `python -m bench`).

  gvd run [--preset NAME] [--out DIR] [--device auto|cpu|cuda] [--seeds 0 1 2] [--steps N] [--set key=value ...]
          [--force]               --out holds another run: move it to <out>.old-<timestamp> first
  gvd run --resume RUN_DIR      continue a stopped run (its finished entries kept, the rest rerun)
  gvd report RUN_DIR            rebuild report.md / report.html from RUN_DIR/results.json
  gvd compare RUN RUN+ [--fail-on fid:+5%]  runs or throughput files side by side, deltas against the first
  gvd datasets                  list the built-in datasets
  gvd presets                   list the named presets

Bad input gets one line on stderr naming the problem and exit status 2; nothing is written before the input is checked.
"""

import argparse
import math
import os
import sys
from pathlib import Path

import torch

from bench.config import (
    DEFAULT_PRESET,
    PRESETS,
    ConfigError,
    apply_override,
    preset,
    set_steps,
    validate,
)
from bench.core import distributed
from bench.core.guard import Interrupted
from bench.core.results import load_results
from bench.core.rundir import RunDir, save_grid, write_json
from bench.data.images import DataError, load_image_dataset
from bench.data.inception import load_cleanfid_backbone
from bench.data.mixtures import list_datasets
from bench.families.bundle import ImageModels
from bench.report.build import write_report
from bench.report.compare import CompareError, run_compare
from bench.report.speed import throughput_table
from bench.run.images import sample_from_checkpoint
from bench.run.preflight import (
    PreflightError,
    check_finite,
    check_output_file,
    check_sample_count,
    check_writable_dir,
    claim_run_dir,
)
from bench.run.resume import load_run
from bench.run.study import StudyConfig, run_study, validate_study
from bench.run.suite import default_workers, resolve_device, run_suite
from bench.speed.scaling import ddp_throughput, scaling_table
from bench.speed.throughput import image_throughput
from models.samplers import SAMPLERS


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UserError(message)


def _run_config(args) -> tuple:
    """(config, run folder, previous results or None) from the flags, or from the run folder under --resume."""
    if args.resume:
        given = [f for f, v in (("--preset", args.preset), ("--seeds", args.seeds), ("--steps", args.steps),
                                ("--set", args.set), ("--out", args.out), ("--force", args.force)) if v]
        if given:
            raise UserError(f"--resume continues a run with its own config.json; drop {', '.join(given)}")
        cfg, previous = load_run(Path(args.resume))
        return cfg, Path(args.resume), previous
    cfg = preset(args.preset or DEFAULT_PRESET)
    if args.seeds is not None:
        cfg.seeds = list(args.seeds)
    if args.steps is not None:
        set_steps(cfg, args.steps)
    for assignment in args.set or []:
        apply_override(cfg, assignment)
    return cfg, Path(args.out) if args.out else Path("reports") / cfg.name, None


def _cmd_run(args) -> None:
    cfg, out, previous = _run_config(args)
    if args.inception_weights:
        if cfg.images is None:
            raise UserError("--inception-weights needs a preset with the image benchmark")
        cfg.images.inception_weights = args.inception_weights
    validate(cfg)
    check_writable_dir(out)
    if cfg.images is not None:  # read every image dataset now, so a bad folder fails before anything is written
        for name in cfg.images.datasets:
            load_image_dataset(name, cfg.images.num_train, cfg.images.resolution, seed=0)
        if cfg.images.inception_weights:  # a bad file fails now, not after the 2D training
            load_cleanfid_backbone(cfg.images.inception_weights)
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1")
    _check_batches(cfg)
    if previous is None and int(os.environ.get("RANK", "0")) == 0:  # under torchrun rank 0 owns the folder
        if (archive := claim_run_dir(out, args.force)) is not None:
            print(f"moved the run that was in {out} to {archive}")
    with distributed.session(device) as device:  # [ddp] under torchrun: join the process group, leave it cleanly
        results = run_suite(cfg, out, device, workers=args.workers or default_workers(device), previous=previous)
        main = distributed.is_main()
    bad = [r for r in results["runs"] if r["status"] != "ok"]
    if main:
        print(f"wrote {out}/report.html ({len(results['runs'])} runs, {len(bad)} not ok)")


def _check_batches(cfg) -> None:
    """[ddp] Under torchrun every global batch must split evenly over the processes (checked before anything runs)."""
    sizes = {}
    if cfg.mixtures is not None:
        sizes["mixtures.batch_size"] = cfg.mixtures.batch_size
    if cfg.images is not None:
        sizes.update({f"images.{k}": getattr(cfg.images, k) for k in ("batch_size", "vae_batch_size",
                                                                       "text_batch_size")})
    try:
        distributed.check_batches(sizes, distributed.planned_world())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _cmd_report(args) -> None:
    run_dir = Path(args.run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no results.json (is it a run folder?)")
    try:
        results = load_results(path)
    except ValueError as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    write_report(run_dir, results)
    print(f"wrote {run_dir}/report.md and {run_dir}/report.html")


def _cmd_compare(args) -> int:
    """bench/compare.py does the work; a bad input or --fail-on spec is a UserError (exit 2), a regression exit 1."""
    try:
        code, failures, markdown = run_compare(args.run_dirs, args.fail_on or [], args.out, args.setting)
    except CompareError as exc:
        raise UserError(str(exc)) from None
    print(markdown, end="")
    for line in failures:
        print(f"gvd compare: {line}", file=sys.stderr)
    return code


def _find_checkpoint(run: RunDir, dataset: str | None, seed: int | None) -> tuple[Path, dict]:
    """The image checkpoint of a run for (dataset, seed); the first one when they are not given."""
    found = [(p, c) for p, c in run.checkpoints() if "tokenizer" in c
             and (dataset is None or dataset in (c.get("dataset"), p.name.partition("_seed")[0]))
             and (seed is None or c.get("seed") == seed)]
    if not found:
        what = " ".join(x for x in (dataset and f"dataset {dataset}", seed is not None and f"seed {seed}") if x)
        raise UserError(f"{run.root} has no image checkpoint{' for ' + what if what else ''} (was it an image run?)")
    return found[0]


def _load_models(path: Path, device) -> tuple:
    """ImageModels.load, with any way a damaged or foreign checkpoint can fail as one line naming the file."""
    try:
        return ImageModels.load(path, device)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 -- SafetensorError, TypeError, KeyError, shape mismatches ...
        raise UserError(f"{path}: not a readable image checkpoint ({type(exc).__name__})") from None


def _cmd_sample(args) -> None:
    run = RunDir(args.run_dir)
    if not run.root.is_dir():
        raise UserError(f"{run.root} is not a folder")
    check_sample_count(args.n)
    check_finite(args.guidance, "--guidance", low=0)
    if args.sampler is not None and args.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {args.sampler!r}; choose from {', '.join(SAMPLERS)}")
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be at least 1")
    out = Path(args.out)
    check_output_file(out, ".png")
    try:
        device = resolve_device(args.device)
        path, _ = _find_checkpoint(run, args.dataset, args.seed)
        models, meta = _load_models(path, device)
        images, nfe = sample_from_checkpoint(models, meta, args.prompt, args.n, model=args.model,
                                             seed=args.sample_seed, sampler=args.sampler, steps=args.steps,
                                             guidance=args.guidance)
    except (RuntimeError, ValueError) as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    save_grid(out, images, nrow=max(1, math.ceil(math.sqrt(args.n))))
    print(f"wrote {out}: {args.n} images of {args.prompt!r} from {path.name} ({args.model}, {nfe} network evaluations)")


def _cmd_throughput(args) -> None:
    cfg = preset(args.preset).images
    if cfg is None:
        raise UserError(f"preset {args.preset!r} has no image benchmark to measure; try --preset quick")
    if args.batch < 1:
        raise UserError("--batch must be at least 1")
    check_finite(args.budget, "--budget", low=0, strict=True)
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    T = cfg.diffusion.num_steps
    nfes = sorted(set(args.nfe or [n for n in (10, 20, 50, 1000) if n < T] + [min(T, 1000)]))
    if nfes[0] < 1 or nfes[-1] > T:
        raise UserError(f"--nfe values must be in 1..{T} (the preset's diffusion steps)")
    out = Path(args.out) if args.out else None
    if out is not None:
        check_output_file(out, ".json")
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    channels = 1 if cfg.datasets[0] == "digits" else 3  # the first dataset's; every other built-in one is RGB
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if distributed.launched():  # [ddp] under torchrun: images/s per GPU and in total, scaling efficiency
        return _throughput_ddp(args, cfg, device, channels, out)
    result = image_throughput(cfg, device, channels=channels, nfes=tuple(nfes), batch=args.batch,
                              budget_s=args.budget)
    result["preset"] = args.preset
    print(f"gvd throughput: preset {args.preset}, {result['device']}, {result['seconds']:.0f} s\n")
    print(throughput_table(result))
    if out is not None:
        write_json(out, result)
        print(f"wrote {out}")


def _throughput_ddp(args, cfg, device, channels: int, out: Path | None) -> None:
    """[ddp] `gvd throughput` under torchrun (bench/scaling.py): per-GPU batch = the preset's batch size."""
    with distributed.session(device) as device:
        samples = max(args.batch, distributed.world())
        result = ddp_throughput(cfg, device, channels=channels, batch=cfg.batch_size, samples=samples)
        main = distributed.is_main()
    if main:
        result["preset"] = args.preset
        print(f"gvd throughput: preset {args.preset}, {result['world_size']} processes, {result['device']}\n")
        print(scaling_table(result))
        if out is not None:
            write_json(out, result)
            print(f"wrote {out}")


def _cmd_datasets(args) -> None:
    for name, desc in list_datasets().items():
        print(f"{name:16s} {desc}")


def _cmd_presets(args) -> None:
    for name, (_, desc) in PRESETS.items():
        print(f"{name:8s} {desc}" + ("  [default]" if name == DEFAULT_PRESET else ""))


def _cmd_study(args) -> None:
    """gvd study stability: K configurations x S seeds per family on the 2D mixtures (bench/study.py)."""
    study = StudyConfig()
    for name in ("k", "seeds", "steps", "datasets"):
        if getattr(args, name) is not None:
            setattr(study, name, getattr(args, name))
    for assignment in args.set or []:
        apply_override(study, assignment)
    validate_study(study)
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} exists and is not a folder")
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    if args.report_only and not (out / "runs").is_dir():
        raise UserError(f"{out} has no runs/ folder: no study to report")
    record = run_study(study, out, device, workers=args.workers or default_workers(device), train=not args.report_only)
    converged = {f: sum(r["family"] == f and r["outcome"] == "converged" for r in record["runs"])
                 for f in ("gan", "diffusion")}
    print(f"wrote {out}/study.html ({len(record['runs'])} runs; converged: GAN {converged['gan']}, "
          f"diffusion {converged['diffusion']})")


def _add_compare_parser(sub) -> None:
    """`gvd compare` (bench/compare.py)."""
    cmp_ = sub.add_parser("compare", help="runs (or throughput files) side by side, deltas against the first; "
                                          "--fail-on gates a change")
    cmp_.add_argument("run_dirs", nargs="+", metavar="RUN", help="run folders, or `gvd throughput --out` JSON files")
    cmp_.add_argument("--fail-on", action="append", metavar="METRIC:±AMOUNT[%]",
                      help="exit 1 when METRIC moves the worse way (+: rising, -: falling) by more than AMOUNT "
                           "against the first input, e.g. fid:+5%%, cond_accuracy:-0.02 (repeatable)")
    cmp_.add_argument("--out", help="folder for compare.md / compare.html (default: the first input's folder)")
    cmp_.add_argument("--setting", default="neutral", choices=["neutral", "tuned"],
                      help="which knob setting of the image runs to compare (default neutral)")
    cmp_.set_defaults(func=_cmd_compare)




def _add_study(sub) -> None:
    study = sub.add_parser("study", help="studies over many runs").add_subparsers(dest="study", required=True,
                                                                                     parser_class=_Parser)
    stab = study.add_parser("stability", help="GAN vs diffusion over a random hyperparameter search and seeds (2D)")
    stab.add_argument("--out", default="reports/study-stability",
                      help="study folder (default reports/study-stability)")
    stab.add_argument("--k", type=int, help="configurations drawn per family (default 7)")
    stab.add_argument("--seeds", type=int, help="training seeds per configuration (default 2)")
    stab.add_argument("--steps", type=int, help="training steps of every run (default 2000, the toy preset's)")
    stab.add_argument("--workers", type=int, help="runs at once, one process each (default: one per CPU core)")
    stab.add_argument("--datasets", nargs="+", help="2D mixtures (default ring8 grid25)")
    stab.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    stab.add_argument("--report-only", action="store_true",
                      help="rebuild study.md / study.html from the runs finished so far; train nothing")
    stab.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="override a study field, e.g. --set hq_threshold=0.8 --set sampler=ddim:50 (repeatable)")
    stab.set_defaults(func=_cmd_study)


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="train + evaluate + report")
    run.add_argument("--preset", help=f"named config (default {DEFAULT_PRESET}; see `gvd presets`)")
    run.add_argument("--out", help="run folder (default reports/<preset>)")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--seeds", type=int, nargs="+", help="training seeds, e.g. --seeds 0 1 2")
    run.add_argument("--steps", type=int,
                     help="training steps of every model: 2D models, GAN, UNet, VAE and text encoder "
                          "(overrides the preset)")
    run.add_argument("--inception-weights", metavar="PATH",
                     help="clean-fid's TorchScript Inception file: adds Inception FID/KID "
                          "(and scores class-less folders)")
    run.add_argument("--workers", type=int,
                     help="2D runs at once, one process each (default: one per CPU core; 1 on CUDA)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override one config field, e.g. --set mixtures.gan.lr=1e-4 (repeatable)")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue a stopped run: keep its finished entries, run the rest on, each training from its "
                          "last saved state (state/)")
    run.add_argument("--force", action="store_true",
                     help="--out holds another run: move it to <out>.old-<timestamp> and start afresh")
    run.set_defaults(func=_cmd_run)


def _add_sample(sub) -> None:
    smp = sub.add_parser("sample", help="images for a prompt from a trained image run")
    smp.add_argument("run_dir")
    smp.add_argument("--model", choices=["diffusion", "gan"], default="diffusion")
    smp.add_argument("--prompt", required=True, help='e.g. "a large blue square" (words from the training captions)')
    smp.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    smp.add_argument("--sampler", help="diffusion sampler (default: the run's)")
    smp.add_argument("--steps", type=int, help="sampler steps (default: the run's)")
    smp.add_argument("--guidance", type=float, help="classifier-free guidance scale, 1 = none (default: the run's)")
    smp.add_argument("--dataset", help="which dataset's checkpoint, e.g. shapes (default: the first)")
    smp.add_argument("--seed", type=int, help="which training seed's checkpoint (default: the first)")
    smp.add_argument("--sample-seed", type=int, default=0, help="seed of the samples (default 0)")
    smp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    smp.add_argument("--out", default="samples.png", help="output PNG (default samples.png)")
    smp.set_defaults(func=_cmd_sample)


def _add_throughput(sub) -> None:
    thr = sub.add_parser("throughput", help="images/s, latency, FLOPs and memory of the preset's image models")
    thr.add_argument("--preset", default=DEFAULT_PRESET,
                     help=f"whose image configs to measure (default {DEFAULT_PRESET})")
    thr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    thr.add_argument("--batch", type=int, default=64, help="sampling batch size (default 64)")
    thr.add_argument("--nfe", type=int, nargs="+", help="diffusion NFEs (default 10 20 50 1000, up to the preset's T)")
    thr.add_argument("--budget", type=float, default=120.0,
                     help="seconds; sampling loops that do not fit are estimated from measured parts (default 120)")
    thr.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    thr.add_argument("--out", help="also write the full result as JSON to this file")
    thr.set_defaults(func=_cmd_throughput)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gvd", description="Train a GAN and a diffusion model on the same data and compare them.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    rep = sub.add_parser("report", help="rebuild report.md / report.html from a run folder")
    rep.add_argument("run_dir")
    rep.set_defaults(func=_cmd_report)
    _add_compare_parser(sub)
    _add_sample(sub)
    _add_throughput(sub)
    _add_study(sub)
    sub.add_parser("datasets", help="list the built-in datasets").set_defaults(func=_cmd_datasets)
    sub.add_parser("presets", help="list the named presets").set_defaults(func=_cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code = args.func(args)  # None, or an exit status (gvd compare: 1 on a regression)
    except (UserError, ConfigError, DataError, PreflightError) as exc:
        print(f"gvd: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"gvd: interrupted ({stop}); finished runs are in results.json, `gvd run --resume` continues",
              file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("gvd: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
