"""The `gvd` command (also `python -m bench`).

  gvd run [--preset NAME] [--out DIR] [--device auto|cpu|cuda] [--seeds 0 1 2] [--steps N] [--set key=value ...]
          [--dataset NAME ...] [--family NAME=MODULE:FACTORY ...] [--workers N]
          [--executor local|ray [--address HOST:PORT]] [--force]
  gvd run --resume RUN_DIR [--seeds 0 1 2 3] [--trust-family-code]   continue a stopped run (its finished entries
                                               kept, the rest rerun), or add seeds to a run
  gvd sample RUN_DIR --prompt TEXT [--model FAMILY] [--trust-family-code]   images from a trained image run
  gvd sample RUN_DIR --scored [--out DIR|F.npz]       the images the run scored, for gvd score or any other tool
  gvd score SAMPLES REFERENCE [--captions FILE]        samples from any generator scored by the suite's protocol
  gvd report RUN_DIR            rebuild report.md / report.html from RUN_DIR/results.json
  gvd compare RUN RUN+ [--fail-on fid:+5%]  runs or throughput files side by side, deltas against the first, PASS/FAIL
  gvd calibrate [--preset NAME]  the known-answer panel: what each metric reads on generators with known defects
  gvd speed BASE [HEAD] [--budget S] [--against FILE] [--record FILE]   is HEAD slower than BASE? (exit 1, 3: unsure)
  gvd speed --history FILE      each benchmark over the recorded revisions, with change points
  gvd throughput | study stability | metrics | datasets | presets | --version

Bad input gets one line on stderr naming the problem and exit status 2; nothing is written before the input is checked.
A file that cannot be written (a full disk) is one line naming it, exit status 1. A run folder's config.json may name
a module of a user's family: it is imported only when the user passes that --family again or --trust-family-code
(gvd report and gvd compare never import it). Each subcommand imports its own stack when it runs, so `gvd --help`,
`gvd presets` and `gvd datasets` answer without loading torch; the imports inside the command functions below are
there for that reason.
"""

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path

from bench import catalog
from bench.core.guard import Interrupted
from bench.errors import UserError, WorkerLost

DEVICE_HELP = "where to compute: auto (default: CUDA when there is a GPU, else the CPU), cpu or cuda"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UserError(message)


def version() -> str:
    """The installed distribution's version (the source tree's, when run from one without installing)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("gan-vs-diffusion")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _Version(argparse.Action):
    """--version, read only when asked (no metadata scan on every command)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print gvd's version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"gvd {version()} (python {sys.version.split()[0]})")
        parser.exit()


def _device(name: str):
    from bench.core.distributed import resolve_device  # the run stack: torch

    try:
        return resolve_device(name)
    except RuntimeError as exc:
        raise UserError(str(exc)) from None


def _run_config(args) -> tuple:
    """(config, run folder, previous results or None) from the flags, or from the run folder under --resume."""
    from bench.config import apply_override, preset, set_steps
    from bench.run.resume import add_seeds, load_run

    if args.resume:
        given = [f for f, v in (("--preset", args.preset), ("--steps", args.steps), ("--set", args.set),
                                ("--out", args.out), ("--force", args.force), ("--dataset", args.dataset)) if v]
        if given:
            raise UserError(f"--resume continues a run with its own config.json (only --seeds may add seeds); drop "
                            f"{', '.join(given)}")
        cfg, previous = load_run(Path(args.resume))
        trusted_family_code(cfg.user_families, args.family, args.trust_family_code, f"--resume {args.resume}")
        if args.seeds is not None:
            add_seeds(cfg, list(args.seeds), Path(args.resume))
        return cfg, Path(args.resume), previous
    cfg = preset(args.preset or catalog.DEFAULT_PRESET)
    if args.seeds is not None:
        cfg.seeds = list(args.seeds)
    if args.steps is not None:
        set_steps(cfg, args.steps)
    for assignment in args.set or []:
        apply_override(cfg, assignment)
    if args.dataset:
        _use_datasets(cfg, args.dataset, args.set or [])
    from bench.families import absolute_spec, check_names

    check_names(args.family or [])  # before the names join the preset's list (a clash is not "named twice")
    for spec in args.family or []:  # a user's family: it runs beside the preset's, through the same protocol
        cfg.user_families.append(absolute_spec(spec))  # a file's path absolute: found again from any folder
        cfg.families.append(spec.partition("=")[0])
    return cfg, Path(args.out) if args.out else Path("reports") / cfg.name, None


def trusted_family_code(recorded: list[str], given: list[str] | None, trust: bool, what: str) -> list[str]:
    """The family specs of a run folder that this command may import: a folder can be shared or edited, so its
    config.json's modules run only when the user names them again (`--family`, the same specs) or says
    --trust-family-code. UserError names the module it would have run."""
    from bench.families import absolute_spec

    again = [absolute_spec(s) for s in given or []]
    if given and sorted(again) != sorted(recorded):
        raise UserError(f"{what}: --family {' '.join(given)} is not the run's own ({' '.join(recorded) or 'none'}); "
                        "give the families it ran with")
    if recorded and not (given or trust):
        raise UserError(f"{what}: the run imports family code from its config.json ({', '.join(recorded)}); pass "
                        f"--trust-family-code (or the same --family again) to run it")
    return list(recorded)


def _use_datasets(cfg, names: list[str], assignments: list[str]) -> None:
    """--dataset NAME ...: the image datasets of the run, as --set images.datasets='[...]' would set them."""
    from bench.config import apply_override

    if cfg.images is None:
        raise UserError(f"--dataset: preset {cfg.name!r} has no image benchmark; try --preset quick or smoke")
    if any(a.partition("=")[0].strip() == "images.datasets" for a in assignments):
        raise UserError("give --dataset or --set images.datasets, not both")
    apply_override(cfg, "images.datasets=" + json.dumps(list(dict.fromkeys(names))))


def _check_inputs(cfg, args) -> None:
    """Everything that can fail on the user's input, before anything is written: the config, the datasets (a
    folder is read now), the Inception file, the families (a user's module is imported now), the batch sizes."""
    from bench.config import validate
    from bench.core import distributed
    from bench.data.inception import load_cleanfid_backbone
    from bench.data.registry import dataset_info
    from bench.families import resolve

    if args.inception_weights:
        if cfg.images is None:
            raise UserError("--inception-weights needs a preset with the image benchmark")
        cfg.images.inception_weights = args.inception_weights
    validate(cfg)
    if cfg.images is not None:
        for name in cfg.images.datasets:
            dataset_info(name, check=True, resolution=cfg.images.resolution)
        if cfg.images.inception_weights:  # a bad file fails now, not after the 2D training
            load_cleanfid_backbone(cfg.images.inception_weights)
    resolve(cfg.families, cfg.user_families)
    if cfg.images is not None and cfg.images.budget == "compute" and cfg.images.budget_reference not in cfg.families:
        raise UserError(f"images.budget_reference: {cfg.images.budget_reference!r} is not a family of this run "
                        f"({', '.join(cfg.families)})")
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1")
    sizes = {"mixtures.batch_size": cfg.mixtures.batch_size} if cfg.mixtures is not None else {}
    if cfg.images is not None:
        sizes.update({f"images.{k}": getattr(cfg.images, k) for k in ("batch_size", "vae_batch_size",
                                                                       "text_batch_size")})
    try:  # [ddp] under torchrun every global batch must split evenly over the processes
        distributed.check_batches(sizes, distributed.planned_world())
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _rank0() -> bool:
    """Rank 0 of a torchrun launch (from its environment, before any process group), or a process on its own: the one
    that owns the run folder and speaks for the others."""
    return int(os.environ.get("RANK", "0")) == 0


def _executor(args, device):
    """--executor, --workers and --address as an Executor (bench/core/executor.py), checked before anything is
    written: without the ray extra, --executor ray is one line naming it."""
    from bench.core import distributed
    from bench.core.executor import choose

    executor = choose(args.executor, device, args.workers, args.address)
    if executor.kind == "ray" and distributed.launched():
        raise UserError("--executor ray schedules the job list on a cluster; torchrun runs one training over several "
                        "processes: use one or the other")
    return executor


def _cmd_run(args) -> int | None:
    from bench.core import distributed
    from bench.core.executor import session
    from bench.run.preflight import check_fresh, check_writable_dir, forget_unstarted_run, run_lock
    from bench.run.suite import run_suite

    cfg, out, previous = _run_config(args)
    _check_inputs(cfg, args)  # every check on the input before the folder, its lock or config.json exist
    check_writable_dir(out)
    if previous is None:
        check_fresh(out, args.force)
    device = _device(args.device)
    executor = _executor(args, device)
    study = str(_study_dir(args.study)) if args.study else None
    # one gvd run per folder: a second --resume, a second --force while one runs, are refused
    with session(executor), run_lock(out, _rank0(), fresh=previous is None, force=args.force) as archive:
        if archive is not None:
            print(f"moved the run that was in {out} to {archive}")
        try:
            with distributed.session(device) as device:  # [ddp] under torchrun: join the process group, leave cleanly
                results = run_suite(cfg, out, device, workers=executor.workers, previous=previous, study=study,
                                    executor=executor)
                main = distributed.is_main()
        except UserError:
            if previous is None and _rank0():  # bad input found only by the work: the corrected rerun is welcome
                forget_unstarted_run(out)
            raise
    bad = [r for r in results["runs"] if r["status"] != "ok"]
    if not main:
        return None
    if not results["stages"]["report"]["written"]:  # the reason is on stderr already; claim only what was written
        print(f"wrote {out}/results.json ({len(results['runs'])} runs, {len(bad)} not ok); no report: "
              f"`gvd report {out}` builds it")
        return 1
    print(f"wrote {out}/report.html ({len(results['runs'])} runs, {len(bad)} not ok)")
    return None


def _cmd_report(args) -> None:
    from bench.core.results import load_results
    from bench.report.build import write_report

    run_dir = Path(args.run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no results.json (is it a run folder?)")
    try:
        results = load_results(path)
    except ValueError as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    if args.study:
        results["study"] = str(_study_dir(args.study))
    write_report(run_dir, results)
    print(f"wrote {run_dir}/report.md and {run_dir}/report.html")


def _study_dir(path: str) -> Path:
    """--study DIR: a `gvd study stability` folder whose study.json the verdict shows beside its stability row."""
    if not (Path(path) / "study.json").is_file():
        raise UserError(f"--study {path}: no study.json there (a `gvd study stability --out` folder)")
    return Path(path).absolute()


def _cmd_compare(args) -> int:
    """bench/report/compare.py does the work; a bad input or --fail-on spec is exit 2, a regression exit 1."""
    from bench.report.compare import run_compare

    code, failures, markdown, verdict = run_compare(args.run_dirs, args.fail_on or [], args.out, args.setting,
                                                    args.include_calibration)
    if not args.quiet:
        print(markdown, end="")
    for line in failures:
        print(f"gvd compare: {line}", file=sys.stderr)
    print(verdict)
    return code


def _find_checkpoint(run, family: str, dataset: str | None, seed: int | None) -> tuple[Path, dict]:
    """The image checkpoint of a family in a run for (dataset, seed); the first one when they are not given."""
    found = [(p, c) for p, c in run.checkpoints() if c.get("family") == family and "tokenizer" in c
             and (dataset is None or dataset in (c.get("dataset"), p.name.partition("_seed")[0]))
             and (seed is None or c.get("seed") == seed)]
    if not found:
        what = " ".join(x for x in (dataset and f"dataset {dataset}", seed is not None and f"seed {seed}") if x)
        raise UserError(f"{run.root} has no image checkpoint of {family}{' for ' + what if what else ''} (was it an "
                        "image run, and did that family train?)")
    return found[0]


def _sample_family(run, name: str, args):
    """The family a `gvd sample` asks for: a built-in one (nothing of the run folder's imported), or a user's
    recorded in the run's config, imported only when the user names it again (--family) or trusts the folder."""
    from bench.families import BUILT_IN, FamilyError, resolve
    from bench.run.resume import load_run

    if name in BUILT_IN:
        return _sampled(BUILT_IN[name], name)
    specs = load_run(run.root)[0].user_families if (run.root / "config.json").is_file() else []
    mine = [s for s in specs if s.partition("=")[0] == name]
    if not mine:
        raise UserError(f"{run.root} ran no family {name!r}")
    try:
        trusted_family_code(mine, args.family, args.trust_family_code, f"gvd sample --model {name}")
        family = resolve([name], mine)[0]
    except FamilyError as exc:
        raise UserError(str(exc)) from None
    return _sampled(family, name)


def _sampled(family, name: str):
    if family.load_image is None:
        raise UserError(f"the {name} family keeps no checkpoint to sample from")
    return family


def _cmd_sample(args) -> None:
    from bench.core.rundir import RunDir, save_grid
    from bench.run.images import sample_from_checkpoint
    from bench.run.preflight import check_finite, check_output_file, check_sample_count
    from models.samplers import SAMPLERS

    run = RunDir(args.run_dir)
    if not run.root.is_dir():
        raise UserError(f"{run.root} is not a folder")
    if args.scored:
        return _sample_scored(args, run)
    if args.prompt is None:
        raise UserError("--prompt is required (or --scored: the images the run scored)")
    args.n = 16 if args.n is None else args.n
    check_sample_count(args.n)
    check_finite(args.guidance, "--guidance", low=0)
    if args.sampler is not None and args.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {args.sampler!r}; choose from {', '.join(SAMPLERS)}")
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be at least 1")
    out = Path(args.out)
    check_output_file(out, ".png")
    device = _device(args.device)
    family = _sample_family(run, args.model, args)
    try:
        path, meta = _find_checkpoint(run, args.model, args.dataset, args.seed)
    except ValueError as exc:  # a checkpoint whose header cannot be read
        raise UserError(str(exc).splitlines()[0]) from None
    spec = _sampler_spec(meta, args.sampler, args.steps)
    try:
        images, nfe = sample_from_checkpoint(path, family, args.prompt, args.n, seed=args.sample_seed, device=device,
                                             sampler=spec, knob=args.guidance)
    except ValueError as exc:  # an unknown prompt word, a sampler the family cannot use
        raise UserError(str(exc).splitlines()[0]) from None
    except Exception as exc:  # noqa: BLE001 -- SafetensorError, KeyError, shape mismatches: a damaged checkpoint
        raise UserError(f"{path}: not a readable image checkpoint ({type(exc).__name__})") from None
    save_grid(out, images, nrow=max(1, math.ceil(math.sqrt(args.n))), min_side=MIN_GRID_SIDE)
    print(f"wrote {out}: {args.n} images of {args.prompt!r} from {path.name} ({args.model}, {nfe} network "
          "evaluations)")


MIN_GRID_SIDE = 512  # `gvd sample`'s grid is enlarged (nearest neighbour) to at least this many pixels a side


def _sample_scored(args, run) -> None:
    """gvd sample RUN --scored: the images the run scored for one family, dataset and seed (bench/run/score.py),
    as a folder with class sub-folders and metadata.csv, or a .npz: what `gvd score` (or any other tool) reads."""
    from bench.core.results import load_results
    from bench.run.preflight import check_output_file, check_writable_dir
    from bench.run.resume import load_run
    from bench.run.score import save_samples, scored_samples

    other = [f for f, v in (("--prompt", args.prompt), ("--sampler", args.sampler), ("--steps", args.steps),
                            ("--guidance", args.guidance), ("--n", args.n)) if v is not None]
    if other:
        raise UserError(f"--scored draws the run's own prompts, sampler and sample count; drop {', '.join(other)}")
    out = Path(args.out if args.out != "samples.png" else "scored-samples")
    if out.suffix == ".npz":
        check_output_file(out, ".npz")
    else:
        check_writable_dir(out)
        if out.is_dir() and any(out.iterdir()):
            raise UserError(f"--out {out} is a folder that is not empty; give a new one (or a .npz file)")
    cfg, _ = load_run(run.root)
    if cfg.images is None or not (run.root / "results.json").is_file():
        raise UserError(f"{run.root} has no image benchmark results to draw the scored images of")
    dataset = args.dataset or cfg.images.datasets[0]
    seed = cfg.seeds[0] if args.seed is None else args.seed
    path, _ = _find_checkpoint(run, args.model, dataset, seed)
    family = _sample_family(run, args.model, args)
    entry = next((r for r in load_results(run.root / "results.json")["runs"] if r["model"] == args.model
                  and r["dataset"] == dataset and r["seed"] == seed), None)
    samples = scored_samples(path, family, cfg, dataset, seed, _device(args.device))
    names = _class_names(dataset, cfg.images)
    save_samples(out, samples, names)
    n = entry["metrics"].get("num_samples") if entry else None
    print(f"wrote {out}: the {len(samples.images)} images {args.model} was scored on ({dataset}, seed {seed}"
          + (f"; its entry scored {n:.0f}" if n is not None else "") + ")")


def _class_names(dataset: str, cfg) -> list[str]:
    from bench.data.images import load_splits

    return load_splits(dataset, 16, 1, cfg.resolution)[0].class_names


def _sampler_spec(meta: dict, sampler: str | None, steps: int | None) -> str | None:
    """The "name:steps" `gvd sample` asks for (the run's own where a part is not given), or None: the run's."""
    if sampler is None and steps is None:
        return None
    name, _, default_steps = (meta.get("sampler") or "dpmpp2m:20").partition(":")
    return f"{sampler or name}:{steps or default_steps}"


def _cmd_throughput(args) -> None:
    from bench.config import preset
    from bench.core import distributed
    from bench.core.files import write_json
    from bench.data.registry import dataset_info
    from bench.run.preflight import check_finite, check_output_file
    from bench.speed.summary import throughput_table
    from bench.speed.throughput import image_throughput, machine_problem

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
    device = _device(args.device)
    channels = dataset_info(cfg.datasets[0]).channels
    if problem := machine_problem(cfg, channels, device, args.batch, args.threads):
        raise UserError(problem)
    if args.threads is not None:
        import torch  # the speed stack already loaded it

        torch.set_num_threads(args.threads)
    if distributed.launched():  # [ddp] under torchrun: images/s per GPU and in total, scaling efficiency
        return _throughput_ddp(args, cfg, device, channels, out)
    result = image_throughput(cfg, device, channels=channels, nfes=tuple(nfes), batch=args.batch,
                              budget_s=args.budget, progress=_say("gvd throughput"))
    result["preset"] = args.preset
    print(f"gvd throughput: preset {args.preset}, {result['device']}, {result['seconds']:.0f} s\n")
    print(throughput_table(result))
    if out is not None:
        write_json(out, result)
        print(f"wrote {out}")


def _say(who: str):
    """A progress printer: each line on stderr as it comes (stdout keeps the result alone)."""
    return lambda line: print(f"{who}: {line}", file=sys.stderr, flush=True)


def _throughput_ddp(args, cfg, device, channels: int, out: Path | None) -> None:
    """[ddp] `gvd throughput` under torchrun (bench/speed/scaling.py): per-GPU batch = the preset's batch size."""
    from bench.core import distributed
    from bench.core.files import write_json
    from bench.speed.scaling import ddp_throughput, scaling_table

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


def _cmd_calibrate(args) -> int | None:
    """gvd calibrate: the known-answer panel of a preset's image datasets (bench/evaluate/panel.py), printed alone;
    exit 1 when an instrument misses a defect it is named after."""
    from bench.config import apply_override, preset, validate
    from bench.core.files import write_json
    from bench.data.registry import dataset_info
    from bench.report.render import to_markdown
    from bench.report.tables import panel_blocks, panel_failures
    from bench.run.images import warm_up
    from bench.run.preflight import check_output_file
    from bench.run.suite import cache_dir

    cfg = preset(args.preset or catalog.DEFAULT_PRESET)
    for assignment in args.set or []:
        apply_override(cfg, assignment)
    validate(cfg)
    if cfg.images is None or not cfg.images.panel_seeds:
        raise UserError(f"preset {cfg.name!r} has no image benchmark (or images.panel_seeds is 0): nothing to "
                        "calibrate")
    for name in cfg.images.datasets:
        dataset_info(name, check=True)
    out = Path(args.out) if args.out else None
    if out is not None:
        check_output_file(out, ".json")
    device = _device(args.device)
    panels = {d: p for d in cfg.images.datasets if (p := warm_up(d, cfg.images, device, cache_dir())[0]) is not None}
    if not panels:
        raise UserError("no dataset of this preset has a judge and held-out images to build the panel from")
    failed = []
    for dataset, panel in panels.items():
        print(to_markdown(panel_blocks({"panel": panels}, dataset)))
        failed += [f"{dataset}: {f}" for f in panel_failures(panel)]
    if out is not None:
        write_json(out, panels)
        print(f"wrote {out}")
    for line in failed:
        print(f"gvd calibrate: {line}", file=sys.stderr)
    return 1 if failed else None


def _speed_options(args):
    """gvd speed's flags checked (one line, exit 2, before anything runs) and turned into bench/speed/gate Options."""
    from bench.run.preflight import check_finite, check_output_file
    from bench.speed.gate import Options, SpeedError

    check_finite(args.budget, "--budget", low=0, strict=True)
    check_finite(args.threshold, "--threshold", low=0, strict=True)
    check_finite(args.inject, "--inject", low=0)
    if args.threshold >= 50:
        raise SpeedError(f"--threshold is in percent and must be below 50, got {args.threshold:g}")
    if args.inject >= 1:
        raise SpeedError(f"--inject is a fraction of the UNet forward's time, below 1 (0.1 = 10%), got {args.inject:g}")
    if args.threads < 1:
        raise SpeedError("--threads must be at least 1")
    if args.inject and (args.against or args.record):
        raise SpeedError("--inject calibrates the interleaved gate: it goes with neither --against nor --record")
    if args.out:
        check_output_file(Path(args.out), ".json")
    if args.record:
        check_output_file(Path(args.record), ".jsonl", "--record")
    device = _device(args.device).type
    return Options(budget=args.budget, threshold=args.threshold / 100, preset=args.preset, device=device,
                   threads=args.threads, clock="device" if device == "cuda" else args.clock, inject=args.inject,
                   seed=args.seed)


def _cmd_speed(args) -> int:
    """bench/speed/gate.py does the work: exit 0 no regression, 1 a regression, 2 bad input, 3 inconclusive."""
    if args.history:
        return _speed_history(args)
    from bench.core.files import write_json
    from bench.core.guard import stop_on_signals
    from bench.speed.gate import append_record, report, speed_run

    opts = _speed_options(args)
    try:
        with stop_on_signals():  # Ctrl-C or SIGTERM: the processes stop and the worktrees go before the exit
            result = speed_run(args.revisions, opts, Path(args.against) if args.against else None)
    except Interrupted as stop:
        print(f"gvd speed: interrupted ({stop}); nothing written", file=sys.stderr)
        return stop.exit_code
    code, text = report(result, opts, args.fail_on_counters)
    print(text, end="")
    if args.out:
        write_json(Path(args.out), result)
        print(f"wrote {args.out}")
    if args.record:
        append_record(Path(args.record), result)
        print(f"appended to {args.record}")
    return code


def _speed_history(args) -> int:
    from bench.run.preflight import check_output_file
    from bench.speed.gate import SpeedError
    from bench.speed.history import draw_history

    if args.revisions or args.against or args.record or args.inject:
        raise SpeedError("--history draws a recorded file: give no revisions, --against, --record or --inject")
    path = Path(args.history)
    out = Path(args.out) if args.out else path.with_suffix(".png")
    check_output_file(out, ".png")
    print(draw_history(path, out, args.threshold / 100), end="")
    return 0


def _cmd_score(args) -> None:
    """gvd score SAMPLES REFERENCE: samples made anywhere scored by the suite's protocol (bench/run/score.py)."""
    from bench.run.preflight import check_writable_dir
    from bench.run.score import markdown, score, write_score

    out = Path(args.out) if args.out else None
    if out is not None:
        check_writable_dir(out)
    overrides = list(args.set or []) + ([f"images.resolution={args.resolution}"] if args.resolution else [])
    result = score(args.samples, args.reference, captions=args.captions, preset=args.preset, overrides=overrides,
                   device=_device(args.device), seed=args.seed, inception_weights=args.inception_weights or "",
                   progress=_say("gvd score"))
    print(markdown(result), end="")
    if out is not None:
        paths = write_score(out, result)
        print(f"wrote {' and '.join(map(str, paths))}")


def _cmd_metrics(args) -> None:
    """gvd metrics: every metric of the metric table (bench/evaluate/table.py) with its definition, direction and
    source."""
    from bench.evaluate import table

    unknown = [k for k in args.keys if table.metric(k) is None]
    if unknown:
        raise UserError(f"unknown metric {', '.join(map(repr, unknown))}; choose from "
                        f"{', '.join(m.key for m in table.METRICS)}")
    for m in table.METRICS:
        if args.keys and m.key not in args.keys:
            continue
        where = " and ".join("2D" if b == "mixture" else "images" for b in m.benchmarks)
        verdict = f"; in the verdict: {m.aspect}" if m.aspect else ""
        print(f"{m.key}: {m.label}. {table.direction(m).capitalize()}; {where}"
              f"{' with classes' if m.needs == 'labels' else ''}{verdict}.")
        print(f"    {table.definition(m)}")
        print(f"    Source: {table.CITATIONS[m.key]}\n")


def _cmd_datasets(args) -> None:
    for name, desc in catalog.dataset_names().items():
        print(f"{name:20s} {desc}")


def _cmd_presets(args) -> None:
    for name, desc in catalog.PRESETS.items():
        print(f"{name:8s} {desc}" + ("  [default]" if name == catalog.DEFAULT_PRESET else ""))


def _cmd_study(args) -> None:
    """gvd study stability: K configurations x S seeds per family on the 2D mixtures (bench/run/study.py)."""
    from bench.config import apply_override
    from bench.core.executor import session
    from bench.run.preflight import check_writable_dir
    from bench.run.study import StudyConfig, run_study, validate_study

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
    check_writable_dir(out)  # before any training: `--out FILE/sub` is one line, not a traceback after the runs
    device = _device(args.device)
    executor = _executor(args, device)
    if args.report_only and not (out / "runs").is_dir():
        raise UserError(f"{out} has no runs/ folder: no study to report")
    with session(executor) if not args.report_only else contextlib.nullcontext():  # nothing to run: no Ray
        record = run_study(study, out, device, workers=executor.workers, train=not args.report_only,
                           executor=executor)
    converged = {}
    for r in record["runs"]:
        converged[r["family"]] = converged.get(r["family"], 0) + (r["outcome"] == "converged")
    print(f"wrote {out}/study.html ({len(record['runs'])} runs; converged: "
          + ", ".join(f"{f} {n}" for f, n in converged.items()) + ")")


def _add_compare(sub) -> None:
    cmp_ = sub.add_parser("compare", help="runs (or throughput files) side by side, deltas against the first; "
                                          "--fail-on gates a change")
    cmp_.add_argument("run_dirs", nargs="+", metavar="RUN", help="run folders, or `gvd throughput --out` JSON files")
    cmp_.add_argument("--fail-on", action="append", metavar="METRIC:±AMOUNT[%]",
                      help="exit 1 when METRIC moves the worse way (+: rising, -: falling) by more than AMOUNT "
                           "against the first input, e.g. fid:+5%%, cond_accuracy:-0.02 (repeatable)")
    cmp_.add_argument("--out", help="folder for compare.md / compare.html (default: the first input's folder)")
    cmp_.add_argument("--setting", default="neutral", choices=["neutral", "tuned"],
                      help="which knob setting of the image runs to compare (default neutral)")
    cmp_.add_argument("--include-calibration", action="store_true",
                      help="let --fail-on gate the calibration rows (held-out real, copier) too; by default it gates "
                           "the model rows only")
    cmp_.add_argument("--quiet", action="store_true",
                      help="print only the last line, PASS or FAIL (regressions still go to stderr; compare.md is "
                           "written as always)")
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
    stab.add_argument("--workers", type=int, help="runs at once, one process each (default: one per CPU core, or "
                                                  "one per GPU with CUDA); with --executor ray: the CPUs of the Ray "
                                                  "that gvd starts")
    _add_executor(stab)
    stab.add_argument("--datasets", nargs="+", help="2D mixtures (default ring8 grid25)")
    stab.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                      help="where to compute: cpu (default: the 2D runs are too small for a GPU), auto or cuda")
    stab.add_argument("--report-only", action="store_true",
                      help="rebuild study.md / study.html from the runs finished so far; train nothing")
    stab.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="override a study field, e.g. --set hq_threshold=0.8 --set sampler=ddim:50 (repeatable)")
    stab.set_defaults(func=_cmd_study)


def _add_executor(parser) -> None:
    parser.add_argument("--executor", default="local", choices=["local", "ray"],
                        help="where the jobs run: local, this machine's process pool (default); ray, a Ray cluster "
                             "(pip install -e \".[ray]\"; README: Beyond one machine)")
    parser.add_argument("--address", metavar="HOST:PORT",
                        help="with --executor ray: the cluster to join (`ray start --head` prints it; auto: the one "
                             "running on this machine); default: gvd starts a Ray of its own here and stops it after")


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="train + evaluate + report")
    run.add_argument("--preset", help=f"named config (default {catalog.DEFAULT_PRESET}; see `gvd presets`)")
    run.add_argument("--out", help="run folder (default reports/<preset>)")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    run.add_argument("--seeds", type=int, nargs="+",
                     help="training seeds, e.g. --seeds 0 1 2; with --resume, the run's seeds and the ones to add "
                          "(only the new seeds train, the report is rebuilt over all)")
    run.add_argument("--dataset", action="extend", nargs="+", metavar="NAME",
                     help="the image datasets to run instead of the preset's, e.g. --dataset folder:my-images "
                          "(README: Your own images); repeatable, or several after one flag; the same as --set "
                          "images.datasets='[\"folder:my-images\"]'")
    run.add_argument("--steps", type=int,
                     help="training steps of every model: 2D models, GAN, UNet, VAE and text encoder "
                          "(overrides the preset)")
    run.add_argument("--inception-weights", metavar="PATH",
                     help="clean-fid's TorchScript Inception file: adds Inception FID/KID "
                          "(and scores class-less folders)")
    run.add_argument("--workers", type=int,
                     help="jobs at once (a 2D run, an image family on one dataset and seed), one process each "
                          "(default: one per CPU core, or one per GPU with CUDA, each pinned to its GPU); with "
                          "--executor ray: the CPUs of the Ray that gvd starts")
    _add_executor(run)
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override one config field, e.g. --set mixtures.gan.lr=1e-4 (repeatable)")
    run.add_argument("--family", action="append", metavar="NAME=MODULE:FACTORY",
                     help="run your own family beside the preset's: MODULE an importable module or a .py file, "
                          "FACTORY() returns a bench.families.Family (README: Your own family; repeatable)")
    run.add_argument("--trust-family-code", action="store_true",
                     help="with --resume: import the family modules the run's config.json names (a run folder can be "
                          "shared or edited, so its code runs only when you say so; or give the same --family again)")
    run.add_argument("--study", metavar="DIR",
                     help="a `gvd study stability` folder: its outcome shares stand beside the verdict's stability row "
                          "(default: RUN_DIR/study-stability when there is one)")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue a stopped run: keep its finished entries, run the rest on, each training from its "
                          "last saved state (state/); with --seeds, add seeds to a run")
    run.add_argument("--force", action="store_true",
                     help="--out holds another run: move it to <out>.old-<timestamp> and start afresh")
    run.set_defaults(func=_cmd_run)


def _add_sample(sub) -> None:
    smp = sub.add_parser("sample", help="images for a prompt from a trained image run")
    smp.add_argument("run_dir", metavar="RUN_DIR", help="a `gvd run` folder with image checkpoints")
    smp.add_argument("--model", default="diffusion", metavar="FAMILY",
                     help="which family's checkpoint: diffusion (default), gan, or a family of the run")
    smp.add_argument("--prompt", help='e.g. "a large blue square" (words from the training captions); required '
                                      "unless --scored")
    smp.add_argument("--n", type=int, help="number of images (default 16)")
    smp.add_argument("--sampler", help="diffusion sampler (default: the run's)")
    smp.add_argument("--steps", type=int, help="sampler steps (default: the run's)")
    smp.add_argument("--guidance", type=float,
                     help="the family's knob (diffusion: guidance scale, 1 = none; GAN: truncation psi); default: the "
                          "value the run tuned")
    smp.add_argument("--family", action="append", metavar="NAME=MODULE:FACTORY",
                     help="--model a family of your own: its spec again (the run's config.json names it, but a run "
                          "folder's code is run only when you name it)")
    smp.add_argument("--trust-family-code", action="store_true",
                     help="--model a family of your own: import the module the run's config.json names")
    smp.add_argument("--dataset", help="which dataset's checkpoint, e.g. shapes (default: the first)")
    smp.add_argument("--seed", type=int, help="which training seed's checkpoint (default: the first)")
    smp.add_argument("--sample-seed", type=int, default=0, help="seed of the samples (default 0)")
    smp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    smp.add_argument("--out", default="samples.png",
                     help="output PNG (default samples.png), enlarged to at least 512 pixels a side by repeating each "
                          "pixel (nearest neighbour); with --scored a new folder (default scored-samples) or a .npz")
    smp.add_argument("--scored", action="store_true",
                     help="instead of a prompt's grid, the images the run scored for --model, --dataset and --seed "
                          "(the same prompts and per-sample seeds): a folder with class sub-folders and "
                          "metadata.csv, or a .npz, for `gvd score` or any other tool")
    smp.set_defaults(func=_cmd_sample)


def _add_score(sub) -> None:
    sco = sub.add_parser("score", help="score a folder or .npz of samples from any generator against a reference, by "
                                       "the suite's protocol, beside held-out real images and a copier")
    sco.add_argument("samples", metavar="SAMPLES",
                     help="a folder of images (class sub-folders named like the reference's classes; a "
                          "metadata.csv / .jsonl of captions), or a .npz with `images` (N, C, H, W) in [-1, 1] or "
                          "(N, H, W, C) uint8, and optionally `labels` and `captions`")
    sco.add_argument("reference", metavar="REFERENCE",
                     help="a built-in image dataset (e.g. shapes: its fixed test split) or a folder (folder:PATH or "
                          "a path: its fixed seeded test split)")
    sco.add_argument("--captions", metavar="FILE",
                     help="each sample's prompt: for a folder a metadata.csv / .jsonl (file_name, text), for a .npz a "
                          "text file of one caption per line in order; gives prompt accuracy and intra-class FID")
    sco.add_argument("--preset", default=catalog.DEFAULT_PRESET,
                     help=f"whose image protocol (resolution, split sizes, readers) to score by (default "
                          f"{catalog.DEFAULT_PRESET}): the same as a run of that preset")
    sco.add_argument("--resolution", type=int, help="the reference's image side (default: the preset's); the "
                                                    "same as --set images.resolution=N")
    sco.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override one field of the preset, e.g. --set images.num_test=5000 (repeatable)")
    sco.add_argument("--inception-weights", metavar="PATH",
                     help="clean-fid's TorchScript Inception file: adds Inception FID/KID/PRDC")
    sco.add_argument("--seed", type=int, default=0,
                     help="seed of the calibration rows' draws and FID's resampling (default 0, as a run's seed 0)")
    sco.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    sco.add_argument("--out", metavar="DIR", help="also write score.json and score.md into this folder")
    sco.set_defaults(func=_cmd_score)


def _add_throughput(sub) -> None:
    thr = sub.add_parser("throughput", help="images/s, latency, FLOPs and memory of the preset's image models")
    thr.add_argument("--preset", default=catalog.DEFAULT_PRESET,
                     help=f"whose image configs to measure (default {catalog.DEFAULT_PRESET})")
    thr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    thr.add_argument("--batch", type=int, default=64,
                     help="sampling batch size (default 64; at most what the available memory holds, estimated)")
    thr.add_argument("--nfe", type=int, nargs="+", help="diffusion NFEs (default 10 20 50 1000, up to the preset's T)")
    thr.add_argument("--budget", type=float, default=120.0,
                     help="seconds the whole measurement may take (default 120): the cheap parts first, then each "
                          "costlier one only when the cost they predict fits; what does not fit is estimated from "
                          "measured parts, or (training) measured at a smaller batch, and its row says so")
    thr.add_argument("--threads", type=int,
                     help="torch CPU threads (default: torch's, one per core; at most the cores this process may use)")
    thr.add_argument("--out", help="also write the full result as JSON to this file")
    thr.set_defaults(func=_cmd_throughput)


def _add_speed(sub) -> None:
    spd = sub.add_parser("speed", help="is HEAD slower than BASE? both revisions timed interleaved on this machine, "
                                       "with exact counters (exit 1 slower, 3 inconclusive)")
    spd.add_argument("revisions", nargs="*", metavar="REV",
                     help="BASE [HEAD]: git revisions (HEAD left out: the working tree); `HEAD HEAD` is the A/A test")
    spd.add_argument("--budget", type=float, default=120.0,
                     help="seconds of interleaved timing (default 120; at least two rounds run)")
    spd.add_argument("--threshold", type=float, default=5.0,
                     help="percent: a ratio whose interval lies within +-threshold is 'no change' (default 5)")
    spd.add_argument("--preset", default=catalog.DEFAULT_PRESET,
                     help=f"whose image networks and sampler steps are timed (default {catalog.DEFAULT_PRESET})")
    spd.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="(default cpu)")
    spd.add_argument("--threads", type=int, default=1, help="torch threads of each timed process (default 1)")
    spd.add_argument("--clock", default="cpu", choices=["cpu", "wall"],
                     help="CPU runs: the processes' CPU time (default; waiting for a core does not count) or wall "
                          "time (counts waits too, and every other process's load); CUDA runs use CUDA events")
    spd.add_argument("--against", metavar="FILE",
                     help="compare HEAD with a result saved by --out on this machine instead of timing BASE now "
                          "(weaker: the load then and now differ)")
    spd.add_argument("--fail-on-counters", action="store_true",
                     help="exit 1 when any exact counter changed (NFE, network passes, FLOPs, aten ops, allocations)")
    spd.add_argument("--record", metavar="FILE.jsonl", help="append this result to a history file")
    spd.add_argument("--history", metavar="FILE.jsonl",
                     help="draw each benchmark over the recorded revisions with its change points (needs the "
                          "history extra) and print the table; no timing")
    spd.add_argument("--out", metavar="FILE",
                     help="write the full result (every block, every counter) as JSON; with --history: the PNG "
                          "(default FILE.png beside the history)")
    spd.add_argument("--inject", type=float, default=0.0, metavar="FRACTION",
                     help="calibration: slow HEAD's UNet forward by this fraction of its own time (0.1 = 10%%) in the "
                          "timed process, to measure the gate's power")
    spd.add_argument("--seed", type=int, default=0, help="seed of the random order within rounds (default 0)")
    spd.set_defaults(func=_cmd_speed)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gvd", description="Train a GAN and a diffusion model on the same data and compare them.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)
    rep = sub.add_parser("report", help="rebuild report.md / report.html from a run folder")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="a `gvd run` folder (its results.json)")
    rep.add_argument("--study", metavar="DIR", help="a `gvd study stability` folder to show beside the verdict's "
                                                   "stability row (default: RUN_DIR/study-stability, if any)")
    rep.set_defaults(func=_cmd_report)
    _add_compare(sub)
    _add_sample(sub)
    _add_throughput(sub)
    _add_speed(sub)
    _add_score(sub)
    _add_study(sub)
    cal = sub.add_parser("calibrate", help="the known-answer panel: what each instrument reads on generators with one "
                                           "known defect each (cached; also in every run's report)")
    cal.add_argument("--preset", help=f"whose image datasets and sample count (default {catalog.DEFAULT_PRESET})")
    cal.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override one config field, e.g. --set images.num_samples=500 (repeatable)")
    cal.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help=DEVICE_HELP)
    cal.add_argument("--out", help="also write the panels as JSON to this file")
    cal.set_defaults(func=_cmd_calibrate)
    met = sub.add_parser("metrics", help="every metric with its definition, which way is better and its source")
    met.add_argument("keys", nargs="*", metavar="KEY",
                     help="only these metrics, e.g. fid_lf copy_excess (default: all)")
    met.set_defaults(func=_cmd_metrics)
    sub.add_parser("datasets", help="list the built-in datasets").set_defaults(func=_cmd_datasets)
    sub.add_parser("presets", help="list the named presets").set_defaults(func=_cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code = args.func(args)  # None, or an exit status (gvd compare: 1 on a regression)
    except UserError as exc:
        print(f"gvd: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write that failed (bench/core/files.py WriteError names the file): nothing is claimed
        where = "" if type(exc).__name__ == "WriteError" else f"{exc.filename or ''}: "
        print(f"gvd: error: {where}{exc.strerror if where else exc}; what was written before it is kept",
              file=sys.stderr)
        return 1
    except WorkerLost as exc:
        print(f"gvd: error: {exc}", file=sys.stderr)  # it says what was kept and how to go on
        return 1
    except Interrupted as stop:
        if _rank0():  # under torchrun every rank is stopped: rank 0 speaks for them
            print(f"gvd: interrupted ({stop}); finished runs are in results.json, `gvd run --resume` continues",
                  file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("gvd: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
