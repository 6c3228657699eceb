"""The `gvd` command (also `python -m bench`).

  gvd run [--preset NAME] [--out DIR] [--device auto|cpu|cuda] [--seeds 0 1 2] [--steps N] [--set key=value ...]
  gvd report RUN_DIR            rebuild report.md / report.html from RUN_DIR/results.json
  gvd compare RUN_DIR RUN_DIR+  summary metrics of several runs side by side, with deltas against the first
  gvd datasets                  list the built-in datasets
  gvd presets                   list the named presets

Bad input gets one line on stderr naming the problem and exit status 2; nothing is written before the input is checked.
"""

import argparse
import math
import sys
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UserError(message)


def _cmd_run(args) -> None:
    from bench.config import ConfigError, apply_override, preset, validate
    from bench.suite import default_workers, resolve_device, run_suite

    cfg = preset(args.preset)
    if args.seeds is not None:
        cfg.seeds = list(args.seeds)
    if args.steps is not None and cfg.mixtures is not None:
        cfg.mixtures.steps = args.steps
    for assignment in args.set or []:
        apply_override(cfg, assignment)
    if args.inception_weights:
        if not Path(args.inception_weights).is_file():
            raise UserError(f"--inception-weights {args.inception_weights}: no such file")
        if cfg.images is None:
            raise UserError("--inception-weights needs a preset with the image benchmark")
        cfg.images.inception_weights = args.inception_weights
    validate(cfg)
    out = Path(args.out) if args.out else Path("reports") / cfg.name
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {out} exists and is not a folder")
    if cfg.images is not None:  # read every image dataset now, so a bad folder fails before anything is written
        from bench.images import load_image_dataset

        for name in cfg.images.datasets:
            load_image_dataset(name, cfg.images.num_train, cfg.images.resolution, seed=0)
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1")
    results = run_suite(cfg, out, device, workers=args.workers or default_workers(device))
    bad = [r for r in results["runs"] if r["status"] != "ok"]
    print(f"wrote {out}/report.html ({len(results['runs'])} runs, {len(bad)} not ok)")


def _cmd_report(args) -> None:
    from bench.report import write_report
    from bench.results import load_results

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


def _cmd_compare(args) -> None:
    from bench.results import load_results, summarise

    summaries = []
    for d in args.run_dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise UserError(f"{d} has no results.json (is it a run folder?)")
        try:
            summaries.append({(s["dataset"], s["model"]): s for s in summarise(load_results(path))})
        except ValueError as exc:
            raise UserError(str(exc).splitlines()[0]) from None
    keys = [k for k in summaries[0] if all(k in s for s in summaries[1:])]
    if not keys:
        raise UserError("the runs share no (dataset, model) pair to compare")
    metrics = ["modes", "hq_fraction", "reverse_kl", "kl", "fid", "kid", "precision", "recall", "density",
               "coverage", "cond_accuracy"]
    names = [Path(d).name for d in args.run_dirs]
    print("| dataset | model | metric | " + " | ".join(names) + " | " + " | ".join(f"Δ {n}" for n in names[1:]) + " |")
    print("|" + "---|" * (3 + 2 * len(names) - 1))
    for key in keys:
        for m in metrics:
            if all(m in s[key] for s in summaries):
                vals = [s[key][m][0] for s in summaries]
                cells = [f"{v:.4g} ± {s[key][m][1]:.2g}" for v, s in zip(vals, summaries)]
                deltas = [f"{v - vals[0]:+.4g}" for v in vals[1:]]
                print(f"| {key[0]} | {key[1]} | {m} | " + " | ".join(cells + deltas) + " |")


def _cmd_sample(args) -> None:
    from bench.imagebench import sample_from_checkpoint, save_grid
    from bench.suite import load_checkpoint, resolve_device
    from models.samplers import SAMPLERS

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder")
    if args.n < 1:
        raise UserError("--n must be at least 1")
    if args.sampler is not None and args.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {args.sampler!r}; choose from {', '.join(SAMPLERS)}")
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be at least 1")
    pattern = f"{args.dataset or '*'}_seed{'*' if args.seed is None else args.seed}_{args.model}.safetensors"
    found = sorted((run_dir / "checkpoints").glob(pattern))
    if not found:
        raise UserError(f"{run_dir} has no image checkpoint matching checkpoints/{pattern} (was the run an image run?)")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a .png file name")
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    states, config = load_checkpoint(found[0])
    try:
        images, nfe = sample_from_checkpoint(states, config, args.prompt, args.n, seed=args.sample_seed,
                                             sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                                             device=device)
    except ValueError as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    save_grid(out, images, nrow=max(1, math.ceil(math.sqrt(args.n))))
    print(f"wrote {out}: {args.n} images of {args.prompt!r} from {found[0].name} ({nfe} network evaluations)")


def _cmd_throughput(args) -> None:
    from bench.config import preset
    from bench.results import write_json
    from bench.suite import resolve_device
    from bench.throughput import image_throughput, throughput_table

    cfg = preset(args.preset).images
    if cfg is None:
        raise UserError(f"preset {args.preset!r} has no image benchmark to measure; try --preset quick")
    if args.batch < 1:
        raise UserError("--batch must be at least 1")
    if args.budget <= 0:
        raise UserError("--budget must be positive (seconds)")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    T = cfg.diffusion.num_steps
    nfes = sorted(set(args.nfe or [n for n in (10, 20, 50, 1000) if n < T] + [min(T, 1000)]))
    if nfes[0] < 1 or nfes[-1] > T:
        raise UserError(f"--nfe values must be in 1..{T} (the preset's diffusion steps)")
    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        raise UserError(f"--out {out}: give a .json file name in an existing folder")
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    channels = 1 if cfg.datasets[0] == "digits" else 3  # the first dataset's; every other built-in one is RGB
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    result = image_throughput(cfg, device, channels=channels, nfes=tuple(nfes), batch=args.batch,
                              budget_s=args.budget)
    result["preset"] = args.preset
    print(f"gvd throughput: preset {args.preset}, {result['device']}, {result['seconds']:.0f} s\n")
    print(throughput_table(result))
    if out is not None:
        write_json(out, result)
        print(f"wrote {out}")


def _cmd_datasets(args) -> None:
    from bench.data import list_datasets

    for name, desc in list_datasets().items():
        print(f"{name:16s} {desc}")


def _cmd_presets(args) -> None:
    from bench.config import DEFAULT_PRESET, PRESETS

    for name, (_, desc) in PRESETS.items():
        print(f"{name:8s} {desc}" + ("  [default]" if name == DEFAULT_PRESET else ""))


def _cmd_study(args) -> None:
    """gvd study stability: K configurations x S seeds per family on the 2D mixtures (bench/study.py)."""
    from bench.config import apply_override
    from bench.study import StudyConfig, run_study, validate_study
    from bench.suite import default_workers, resolve_device

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


def build_parser() -> argparse.ArgumentParser:
    from bench.config import DEFAULT_PRESET

    parser = _Parser(prog="gvd", description="Train a GAN and a diffusion model on the same data and compare them.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train + evaluate + report")
    run.add_argument("--preset", default=DEFAULT_PRESET, help=f"named config (default {DEFAULT_PRESET}; see `gvd presets`)")
    run.add_argument("--out", help="run folder (default reports/<preset>)")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--seeds", type=int, nargs="+", help="training seeds, e.g. --seeds 0 1 2")
    run.add_argument("--steps", type=int, help="training steps of every model (overrides the preset)")
    run.add_argument("--inception-weights", metavar="PATH",
                     help="clean-fid's TorchScript Inception file: adds Inception FID/KID (and scores class-less folders)")
    run.add_argument("--workers", type=int, help="2D runs at once, one process each (default: one per CPU core; 1 on CUDA)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override one config field, e.g. --set mixtures.gan.lr=1e-4 (repeatable)")
    run.set_defaults(func=_cmd_run)

    rep = sub.add_parser("report", help="rebuild report.md / report.html from a run folder")
    rep.add_argument("run_dir")
    rep.set_defaults(func=_cmd_report)

    cmp_ = sub.add_parser("compare", help="two or more runs side by side, with deltas against the first")
    cmp_.add_argument("run_dirs", nargs="+")
    cmp_.set_defaults(func=_cmd_compare)

    smp = sub.add_parser("sample", help="images for a prompt from a trained image run")
    smp.add_argument("run_dir")
    smp.add_argument("--model", choices=["diffusion", "gan"], default="diffusion")
    smp.add_argument("--prompt", required=True, help='e.g. "a large blue square" (words from the training captions)')
    smp.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    smp.add_argument("--sampler", help="diffusion sampler (default: the run's)")
    smp.add_argument("--steps", type=int, help="sampler steps (default: the run's)")
    smp.add_argument("--guidance", type=float, help="classifier-free guidance scale, 1 = none (default: the run's)")
    smp.add_argument("--dataset", help="which dataset's checkpoint, as named in checkpoints/ (default: the first)")
    smp.add_argument("--seed", type=int, help="which training seed's checkpoint (default: the first)")
    smp.add_argument("--sample-seed", type=int, default=0, help="seed of the samples (default 0)")
    smp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    smp.add_argument("--out", default="samples.png", help="output PNG (default samples.png)")
    smp.set_defaults(func=_cmd_sample)

    thr = sub.add_parser("throughput", help="images/s, latency, FLOPs and memory of the preset's image models")
    thr.add_argument("--preset", default=DEFAULT_PRESET, help=f"whose image configs to measure (default {DEFAULT_PRESET})")
    thr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    thr.add_argument("--batch", type=int, default=64, help="sampling batch size (default 64)")
    thr.add_argument("--nfe", type=int, nargs="+", help="diffusion NFEs (default 10 20 50 1000, up to the preset's T)")
    thr.add_argument("--budget", type=float, default=120.0,
                     help="seconds; sampling loops that do not fit are estimated from measured parts (default 120)")
    thr.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    thr.add_argument("--out", help="also write the full result as JSON to this file")
    thr.set_defaults(func=_cmd_throughput)

    study = sub.add_parser("study", help="studies over many runs").add_subparsers(dest="study", required=True,
                                                                                     parser_class=_Parser)
    stab = study.add_parser("stability", help="GAN vs diffusion over a random hyperparameter search and seeds (2D)")
    stab.add_argument("--out", default="reports/study-stability", help="study folder (default reports/study-stability)")
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

    sub.add_parser("datasets", help="list the built-in datasets").set_defaults(func=_cmd_datasets)
    sub.add_parser("presets", help="list the named presets").set_defaults(func=_cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    from bench.config import ConfigError
    from bench.images import DataError

    try:
        args = build_parser().parse_args(argv)
        if args.command == "compare" and len(args.run_dirs) < 2:
            raise UserError("compare needs at least two run folders")
        args.func(args)
    except (UserError, ConfigError, DataError) as exc:
        print(f"gvd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gvd: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
