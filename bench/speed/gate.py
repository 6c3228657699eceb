"""`gvd speed BASE [HEAD]`: is HEAD slower than BASE? Decided on the machine at hand, however loaded.

How (README: Is HEAD slower?):
  1. each git revision is checked out in its own temporary worktree (HEAD left out: the working tree as it is);
  2. Options.processes timed processes per revision (bench/speed/probe.py): the tool's benchmark definitions, timer
     and counters, the revision's models/; all build the same seeded networks; the first of each side counts (exact
     counters) and times an estimate that sizes the blocks;
  3. rounds: in each, every benchmark runs one block of k calls on BASE's side and one on HEAD's, back to back in a
     random order, each in one of its side's processes drawn at random, so the load of that moment falls on both
     and a process's own lasting speed (its memory layout) is averaged over; a block's value is its fastest call on
     the clock (CPU: the process's CPU time, which waiting for a core does not advance; CUDA: events);
  4. after each round from the MIN_ROUNDS-th on, each benchmark's paired blocks give the ratio HEAD/BASE with its
     95% interval and a rank test's p (bench/speed/rankstats.py); a benchmark is settled once it has an answer,
     and the rounds go on for the rest until the budget is spent.

Exit status: 0 no regression, 1 a regression (a benchmark slower, or with --fail-on-counters a counter changed),
2 bad input, 3 inconclusive. `--against FILE` compares HEAD with the blocks saved by an earlier `--out FILE` of the
same machine instead of timing BASE now: the weaker mode (the load then and now differ; nothing cancels it).
"""
import contextlib
import datetime
import json
import math
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from bench.config import ConfigError, parse_sampler, preset
from bench.core.files import json_safe
from bench.data.registry import dataset_info
from bench.errors import UserError
from bench.speed.probe import counter_changes
from bench.speed.rankstats import Comparison, compare_paired, compare_unpaired
from models.samplers import SAMPLERS

SCHEMA = "gan-vs-diffusion/speed/v1"
TOOL_ROOT = Path(__file__).resolve().parents[2]  # the tool's own root: its bench/ times every revision
MIN_ROUNDS = 8  # rounds before a benchmark may be settled (the signed-rank interval needs 6 pairs at 95%)
GUIDANCE = 3.0  # the guided benchmarks' scale: any s != 1 costs the same (both halves of the batch)
CLOCKS = {"cpu": "process CPU time (time.process_time)", "wall": "wall time (time.perf_counter)",
          "device": "CUDA events"}


class SpeedError(UserError):
    """Bad input to gvd speed, or a revision that cannot run the benchmarks: one line, exit status 2."""


@dataclass
class Options:
    """The settings of one `gvd speed` run, as the CLI parsed them."""

    budget: float = 120.0  # seconds of interleaved timing
    threshold: float = 0.05  # a change within +-threshold is "no change"
    preset: str = "quick"  # whose image networks (and sampler steps) are timed
    device: str = "cpu"
    threads: int = 1  # torch threads of each timed process
    clock: str = "cpu"  # cpu | wall on the CPU; CUDA always times with events
    block_s: float = 0.1  # target seconds of one block (k calls); a longer call is a block alone
    processes: int = 2  # timed processes per revision, blocks spread over them at random (module docstring)
    inject: float = 0.0  # HEAD's UNet forward slowed by this fraction (calibration only)
    seed: int = 0  # the order of the rounds
    level: float = 0.95  # the interval's coverage
    p_level: float = 0.05  # the rank test's level for slower / faster


@dataclass
class Side:
    """One of the two revisions compared."""

    name: str  # BASE | HEAD
    rev: str  # as the user gave it ("" = the working tree)
    sha: str | None = None
    dirty: bool = False  # the working tree differs from its commit
    root: Path | None = None  # where its models/ is read from

    def label(self) -> str:
        if not self.rev:
            return f"working tree ({self.sha[:10] if self.sha else 'no commit'}{', modified' if self.dirty else ''})"
        return f"{self.rev} ({self.sha[:10]})" if self.sha and self.rev != self.sha else (self.sha or self.rev)[:10]

    def record(self) -> dict:
        return {"rev": self.rev or "working tree", "sha": self.sha, "dirty": self.dirty}


# ---------------------------------------------------------------- git


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise SpeedError("gvd speed compares git revisions and needs git on PATH") from None


def repository(where: Path) -> Path:
    """The top of the git repository holding `where`."""
    proc = _git(where, "rev-parse", "--show-toplevel")
    if proc.returncode != 0:
        raise SpeedError(f"{where} is not inside a git repository (gvd speed compares git revisions: run it in the "
                         "project's checkout)")
    return Path(proc.stdout.strip())


def resolve(repo: Path, side: Side) -> Side:
    """The side with its commit (and, for the working tree, whether it is modified) looked up."""
    if not side.rev:
        head = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no").stdout.strip())
        return replace(side, sha=head.stdout.strip() or None, dirty=dirty, root=repo)
    if side.rev.startswith("-"):
        raise SpeedError(f"unknown revision {side.rev!r}")
    proc = _git(repo, "rev-parse", "--verify", "--quiet", f"{side.rev}^{{commit}}")
    if proc.returncode != 0:
        raise SpeedError(f"unknown revision {side.rev!r} in {repo} (git rev-parse finds no commit of that name)")
    return replace(side, sha=proc.stdout.strip())


@contextlib.contextmanager
def checked_out(repo: Path, sides: list[Side]):
    """Each side that names a commit checked out in its own temporary worktree (one per commit), removed after."""
    tmp = Path(tempfile.mkdtemp(prefix="gvd-speed-"))
    made: dict[str, Path] = {}
    try:
        out = []
        for side in sides:
            if side.rev and side.sha not in made:
                path = tmp / side.sha[:12]
                proc = _git(repo, "worktree", "add", "--detach", "--quiet", str(path), side.sha)
                if proc.returncode != 0:
                    raise SpeedError(f"git worktree add {side.rev} failed: {proc.stderr.strip().splitlines()[-1]}")
                made[side.sha] = path
            out.append(replace(side, root=made[side.sha]) if side.rev else side)
        yield out
    finally:
        for path in made.values():
            _git(repo, "worktree", "remove", "--force", str(path))
        shutil.rmtree(tmp, ignore_errors=True)
        _git(repo, "worktree", "prune")


# ---------------------------------------------------------------- what is timed


def bench_spec(name: str, seed: int = 0) -> dict:
    """The sizes the timed processes build from, in plain JSON: the preset's image networks with the shapes of its
    first dataset filled in, its schedule and sampler steps; batch 8 for the network calls (and the GAN's sample), one
    image for the sampler loops (the latency of one image), batch 32 for the training steps."""
    try:
        img = preset(name).images
    except ConfigError as exc:
        raise SpeedError(str(exc)) from None
    if img is None:
        raise SpeedError(f"preset {name!r} has no image networks to time; try --preset quick")
    channels = dataset_info(img.datasets[0]).channels or 3
    text = img.text
    nets = {"unet": replace(img.unet, in_channels=img.vae.latent_channels, context_dim=text.width),
            "vae": replace(img.vae, in_channels=channels, resolution=img.resolution),
            "dcgan": replace(img.dcgan, resolution=img.resolution, channels=channels, cond_dim=text.embed_dim)}
    return {**{k: json.loads(json.dumps(asdict(v))) for k, v in nets.items()},
            "schedule": img.diffusion.schedule, "num_steps": img.diffusion.num_steps,
            "prediction": img.diffusion.prediction, "steps": parse_sampler(img.sampler)[1], "guidance": GUIDANCE,
            "batch": 8, "loop_batch": 1, "train_batch": 32, "tokens": text.max_len, "width": text.width,
            "embed": text.embed_dim, "resolution": img.resolution, "gan_loss": img.gan.loss, "gan_lr": img.gan.lr,
            "gan_betas": list(img.gan.betas), "unet_lr": img.diffusion_train.lr,
            "unet_betas": list(img.diffusion_train.betas), "seed": seed, "samplers": sorted(SAMPLERS)}


# ---------------------------------------------------------------- the timed processes


class Child:
    """One timed process (bench/speed/probe.py) for one revision, spoken to in JSON lines."""

    def __init__(self, side: Side, setup: dict, threads: int):
        self.side = side
        self.log = tempfile.TemporaryFile(mode="w+")  # its stderr, for the line that says why it failed
        env = {**os.environ, "PYTHONPATH": str(TOOL_ROOT), "OMP_NUM_THREADS": str(threads),
               "MKL_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.speed.probe"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=TOOL_ROOT)
        self.send(setup)

    def send(self, msg: dict) -> None:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.seek(0)
            last = ([ln for ln in self.log.read().splitlines() if ln.strip()] or ["no message"])[-1]
            raise SpeedError(f"{self.side.name} {self.side.label()}: the timed process ended "
                             f"(status {self.proc.returncode}): {last[:300]}")
        reply = json.loads(line)
        if "error" in reply:
            raise SpeedError(f"{self.side.name} {self.side.label()}: {reply['error']}")
        return reply

    def block(self, name: str, k: int) -> dict:
        self.send({"run": name, "k": k})
        return self.receive()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@contextlib.contextmanager
def children(sides: list[Side], spec: dict, opts: Options):
    """{side: its opts.processes started timed processes} (HEAD's with the injected slowdown, if any; the first of
    each side counts), closed after."""
    started: dict[str, list[Child]] = {}
    try:
        for i in range(opts.processes):
            for side in sides:
                setup = {"root": str(side.root), "spec": spec, "device": opts.device, "threads": opts.threads,
                         "inject": opts.inject if side.name == "HEAD" else 0.0, "count": i == 0}
                started.setdefault(side.name, []).append(Child(side, setup, opts.threads))
        yield started
    finally:
        for child in (c for group in started.values() for c in group):
            child.close()


# ---------------------------------------------------------------- rounds


def block_value(times: dict, clock: str) -> float:
    """A block's value: its fastest call on the clock. Other processes only ever add time to a call (evicted caches,
    cycles taken), so the fastest of k identical calls is the least disturbed one."""
    return min(times[clock])


@dataclass
class Timing:
    """The blocks of every benchmark as the rounds make them."""

    plan: dict  # benchmark -> k calls per block
    blocks: dict = field(default_factory=dict)  # benchmark -> side -> [block value]
    walls: dict = field(default_factory=dict)  # benchmark -> side -> [wall seconds of the block]
    calls: dict = field(default_factory=dict)  # benchmark -> side -> [[each call's seconds on the clock] per block]
    procs: dict = field(default_factory=dict)  # benchmark -> side -> [which of the side's processes ran the block]
    rounds: dict = field(default_factory=dict)  # benchmark -> rounds made
    settled: dict = field(default_factory=dict)  # benchmark -> Comparison, once answered
    seconds: float = 0.0

    def add(self, name: str, side: str, times: dict, clock: str, proc: int = 0) -> None:
        self.blocks.setdefault(name, {}).setdefault(side, []).append(block_value(times, clock))
        self.walls.setdefault(name, {}).setdefault(side, []).append(sum(times["wall"]))
        self.calls.setdefault(name, {}).setdefault(side, []).append(times[clock])
        self.procs.setdefault(name, {}).setdefault(side, []).append(proc)


def plan_blocks(estimates: dict, clock: str, block_s: float) -> dict:
    """k per benchmark: as many calls as make about block_s seconds on the clock, at least one."""
    return {name: max(1, round(block_s / max(est[clock], 1e-6))) for name, est in estimates.items()}


def one_round(pending: list[str], procs: dict, timing: Timing, clock: str, rng: random.Random) -> None:
    """Every pending benchmark once on each side, in a random order of benchmarks and, per benchmark, of sides, each
    block in one of the side's processes drawn at random."""
    for name in rng.sample(pending, len(pending)):
        for side in rng.sample(sorted(procs), len(procs)):
            i = rng.randrange(len(procs[side]))
            timing.add(name, side, procs[side][i].block(name, timing.plan[name]), clock, i)
        timing.rounds[name] = timing.rounds.get(name, 0) + 1


def round_cost(timing: Timing, name: str) -> float:
    """Mean wall seconds one round of a benchmark takes (its blocks on every side)."""
    walls = timing.walls.get(name, {})
    return sum(statistics.fmean(v) for v in walls.values()) if walls else 0.0


def run_rounds(procs: dict, timing: Timing, opts: Options, judge) -> None:
    """Rounds until every benchmark is settled or the next round would pass the budget (two rounds at least).
    judge(name) -> Comparison or None says whether a benchmark is settled."""
    rng = random.Random(opts.seed)
    start = time.perf_counter()
    bar = tqdm(total=round(opts.budget), desc="gvd speed", unit="s", leave=False, file=sys.stderr)
    made = 0
    try:
        while pending := [n for n in timing.plan if n not in timing.settled]:
            spent = time.perf_counter() - start
            cost = sum(round_cost(timing, n) for n in pending)
            if made >= 2 and spent + cost > opts.budget:
                break
            one_round(pending, procs, timing, opts.clock, rng)
            made += 1
            for name in pending:
                if timing.rounds[name] >= MIN_ROUNDS and (verdict := judge(name)) is not None:
                    timing.settled[name] = verdict
            bar.n = min(round(time.perf_counter() - start), bar.total)
            bar.set_postfix_str(f"round {made}, {len(timing.settled)}/{len(timing.plan)} settled")
    finally:
        bar.close()
        timing.seconds = time.perf_counter() - start


# ---------------------------------------------------------------- the answer


def machine() -> dict:
    """What the timings were made on (a saved baseline must match it)."""
    model = platform.processor()
    with contextlib.suppress(OSError):
        model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), model)
    return {"host": socket.gethostname(), "cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def exit_code(result: dict, fail_on_counters: bool) -> int:
    """0 no regression, 1 a regression, 3 inconclusive."""
    answers = [b["answer"] for b in result["benchmarks"].values()]
    if "slower" in answers or (fail_on_counters and any(b["counter_changes"] for b in result["benchmarks"].values())):
        return 1
    return 3 if "inconclusive" in answers else 0


def summarise(name: str, timing: Timing, comparison: Comparison, counters: dict, what: str) -> dict:
    """One benchmark's entry of the result."""
    blocks = timing.blocks[name]
    base = blocks.get("BASE", [])
    return {"what": what, "k": timing.plan[name], "rounds": timing.rounds.get(name, 0),
            "base_s": statistics.median(base) if base else None, "head_s": statistics.median(blocks["HEAD"]),
            **asdict(comparison), "counters": counters,
            "counter_changes": counter_changes(counters["BASE"], counters["HEAD"]),
            "blocks": blocks, "calls": timing.calls.get(name, {}), "procs": timing.procs.get(name, {}),
            "round_s": round_cost(timing, name)}


def _more(result: dict, opts: Options) -> str:
    """What would decide the inconclusive benchmarks: more rounds (and seconds), or nothing at this threshold."""
    need, stuck, seconds = {}, [], 0.0
    for name, b in result["benchmarks"].items():
        if b["answer"] != "inconclusive":
            continue
        if b["rounds_needed"] is None:
            stuck.append(f"{name} {b['ratio']:.3f}")
        else:
            need[name] = b["rounds_needed"] - b["n"]
            seconds += need[name] * b["round_s"]
    out = []
    if need:
        out.append(f"about {max(need.values())} more rounds ({seconds:.0f} s) would decide "
                   f"{', '.join(need)}: rerun with --budget {math.ceil((opts.budget + seconds) * 1.2)}")
    if stuck:
        out.append(f"{', '.join(stuck)} sit on the +-{opts.threshold:.0%} threshold itself: no budget decides them "
                   "at this threshold")
    return "; ".join(out)


# ---------------------------------------------------------------- the table


def _ms(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.3g}"


def table(result: dict) -> str:
    """The Markdown table of a result and the lines under it."""
    rows = ["| benchmark | what | k | BASE ms | HEAD ms | HEAD/BASE [95% interval] | p (rank test) | rounds | answer "
            "| counters |", "|" + "---|" * 10]
    for name, b in result["benchmarks"].items():
        interval = ("[n/a]" if not math.isfinite(b["low"]) or not math.isfinite(b["high"])
                    else f"[{b['low']:.3f}, {b['high']:.3f}]")
        rows.append(f"| {name} | {b['what']} | {b['k']} | {_ms(b['base_s'])} | {_ms(b['head_s'])} | "
                    f"{b['ratio']:.3f} {interval} | {b['p']:.2g} | {b['n']} | {b['answer']} | "
                    f"{'changed' if b['counter_changes'] else 'same'} |")
    lines = [f"- {name}: {change}" for name, b in result["benchmarks"].items() for change in b["counter_changes"]]
    counted = ("Counters that changed (exact: network passes, NFE, FLOPs, aten ops, allocations"
               + (", host-device syncs" if result["device"] == "cuda" else "; host-device syncs are counted on "
                  "CUDA only") + "):")
    out = "\n".join(rows) + "\n\n" + (counted + "\n" + "\n".join(lines) if lines else
                                      "Counters: identical in every benchmark (exact, whatever the load).") + "\n"
    for name, why in result.get("untimed", {}).items():
        out += f"- {name}: not timed ({why})\n"
    return out


# ---------------------------------------------------------------- one run


def _judge(timing: Timing, opts: Options, paired: bool):
    """judge(name) -> the benchmark's Comparison when it has an answer (not inconclusive), else None."""

    def judge(name: str):
        c = comparison(timing, name, opts, paired)
        return None if c.answer == "inconclusive" else c

    return judge


def comparison(timing: Timing, name: str, opts: Options, paired: bool) -> Comparison:
    """A benchmark's answer from its blocks so far (the settled one once settled)."""
    if name in timing.settled:
        return timing.settled[name]
    blocks = timing.blocks[name]
    compare = compare_paired if paired else compare_unpaired
    return compare(blocks["BASE"], blocks["HEAD"], threshold=opts.threshold, level=opts.level,
                   p_level=opts.p_level)


def _common(ready: dict) -> tuple[list[str], dict]:
    """(the benchmarks both sides have, in BASE's order; {benchmark: why it is not timed} for the others)."""
    base, head = ready["BASE"]["benchmarks"], ready["HEAD"]["benchmarks"]
    both = [n for n in base if n in head]
    untimed = {n: f"only in {'BASE' if n in base else 'HEAD'}" for n in base.keys() ^ head.keys()}
    return both, untimed


def baseline_file(path: Path, opts: Options) -> dict:
    """A saved `gvd speed --out` result to compare against: readable, ours, of this machine and these settings."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SpeedError(f"--against {path}: not a readable gvd speed result ({type(exc).__name__})") from None
    if not isinstance(saved, dict) or saved.get("schema") != SCHEMA:
        raise SpeedError(f"--against {path}: not a `gvd speed --out` file (schema {SCHEMA} expected)")
    here = machine()
    if {k: saved["machine"].get(k) for k in ("host", "cpu", "cores")} != {k: here[k] for k in ("host", "cpu", "cores")}:
        raise SpeedError(f"--against {path} was measured on {saved['machine'].get('host')} "
                         f"({saved['machine'].get('cpu')}), not on this machine: a baseline is per machine")
    for key in ("preset", "device", "threads", "clock"):
        if saved.get(key) != getattr(opts, key):
            raise SpeedError(f"--against {path} was measured with {key} {saved.get(key)!r}, this run uses "
                             f"{getattr(opts, key)!r}")
    if saved.get("inject"):
        raise SpeedError(f"--against {path} is a calibration run with an injected slowdown, not a baseline")
    return saved


def _measure(sides: list[Side], spec: dict, opts: Options, saved: dict | None) -> tuple[Timing, dict, dict]:
    """Start the processes, plan the blocks and run the rounds. Returns (timing, {side: ready message}, untimed)."""
    with children(sides, spec, opts) as procs:
        ready = {side: [c.receive()["ready"] for c in group][0] for side, group in procs.items()}
        if saved is None:
            names, untimed = _common(ready)
            plan = plan_blocks({n: ready["BASE"]["benchmarks"][n]["estimate"] for n in names}, opts.clock,
                               opts.block_s)
        else:  # the saved blocks were medians of the saved k calls: the same k, or they are other numbers
            ready["BASE"] = {"benchmarks": {n: {"what": b["what"], "counters": b["counters"]["HEAD"]}
                                            for n, b in saved["benchmarks"].items()}}
            names, untimed = _common(ready)
            plan = {n: saved["benchmarks"][n]["k"] for n in names}
        timing = Timing(plan)
        if saved is not None:
            for n in names:
                timing.blocks[n] = {"BASE": list(saved["benchmarks"][n]["blocks"]["HEAD"])}
        run_rounds(procs, timing, opts, _judge(timing, opts, paired=saved is None))
    return timing, ready, untimed


def speed_run(revisions: list[str], opts: Options, against: Path | None = None) -> dict:
    """Time HEAD against BASE (or against a saved result) and return the result (see `table`, `exit_code`)."""
    repo = repository(Path.cwd())
    saved = baseline_file(against, opts) if against is not None else None
    names = ["HEAD"] if saved is not None else ["BASE", "HEAD"]
    if len(revisions) > len(names) or len(revisions) < len(names) - 1:
        want = "[HEAD] with --against" if saved is not None else "BASE [HEAD]"
        raise SpeedError(f"gvd speed takes {want}, got {len(revisions)} revisions: {' '.join(revisions) or 'none'}")
    given = revisions + [""] * (len(names) - len(revisions))
    sides = [resolve(repo, Side(name, rev)) for name, rev in zip(names, given)]
    spec = bench_spec(opts.preset, opts.seed)
    load_start = load_average()
    with checked_out(repo, sides) as sides:
        timing, ready, untimed = _measure(sides, spec, opts, saved)
    load_end = load_average()
    benchmarks = {}
    for name in timing.plan:
        counters = {s: ready[s]["benchmarks"][name]["counters"] for s in ("BASE", "HEAD")}
        benchmarks[name] = summarise(name, timing, comparison(timing, name, opts, saved is None), counters,
                                     ready["HEAD"]["benchmarks"][name]["what"])
    base = saved["head"] if saved is not None else sides[0].record()
    return {"schema": SCHEMA, "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "mode": "against a saved baseline" if saved is not None else "interleaved",
            "against": str(against) if against is not None else None,
            "base": base, "head": sides[-1].record(), "machine": machine(), "torch": ready["HEAD"]["torch"],
            "load": {"start": load_start, "end": load_end}, **asdict(opts), "rounds": max(timing.rounds.values()),
            "seconds": timing.seconds, "benchmarks": benchmarks, "untimed": untimed,
            "labels": {"base": sides[0].label() if saved is None else f"saved {against}", "head": sides[-1].label()}}


# ---------------------------------------------------------------- what is printed and recorded


def header(result: dict) -> str:
    """What was compared, how, and under which load."""
    load = result["load"]
    lines = [f"gvd speed: BASE {result['labels']['base']} vs HEAD {result['labels']['head']}; preset "
             f"{result['preset']} on {result['device']}, {result['threads']} thread(s); clock: "
             f"{CLOCKS[result['clock']]}",
             f"{result['rounds']} rounds in {result['seconds']:.0f} s; load average (1 min) {load['start'][0]:.1f} -> "
             f"{load['end'][0]:.1f} on {result['machine']['cores']} cores; no change = within "
             f"+-{result['threshold']:.0%}, {result['level']:.0%} intervals, rank test p < {result['p_level']:g}"]
    if result["mode"] != "interleaved":
        lines.append(f"WEAKER MODE: against the saved baseline {result['against']} ({result['base']['rev']}, "
                     "measured earlier): the load then and now differ and nothing cancels it; `gvd speed BASE HEAD` "
                     "times both now")
    if result["inject"]:
        lines.append(f"CALIBRATION: HEAD's UNet forward slowed by {result['inject']:.0%} of its own time "
                     "(--inject); not a measurement of the code")
    return "\n".join(lines) + "\n"


def answer_line(result: dict, code: int, opts: Options) -> str:
    """The one-line answer and exit status."""
    by = {}
    for name, b in result["benchmarks"].items():
        by.setdefault(b["answer"], []).append(f"{name} {b['ratio'] - 1:+.1%}")
    changed = [n for n, b in result["benchmarks"].items() if b["counter_changes"]]
    if code == 1:
        parts = [f"slower: {', '.join(by['slower'])}"] if "slower" in by else []
        if changed and result.get("fail_on_counters"):
            parts.append(f"counters changed: {', '.join(changed)}")
        return f"Answer: {'; '.join(parts)} (exit 1)"
    if code == 3:
        return f"Answer: inconclusive: {_more(result, opts)} (exit 3)"
    said = ", ".join(f"{len(v)} {k}" for k, v in sorted(by.items()))
    return f"Answer: no regression ({said}) (exit 0)"


def report(result: dict, opts: Options, fail_on_counters: bool) -> tuple[int, str]:
    """(exit status, the text gvd speed prints)."""
    result["fail_on_counters"] = fail_on_counters
    code = exit_code(result, fail_on_counters)
    result["exit"] = code
    return code, header(result) + "\n" + table(result) + "\n" + answer_line(result, code, opts) + "\n"


def record_entry(result: dict) -> dict:
    """One line of a --record history: the revisions, machine, load and per benchmark the ratio, its interval, the
    answer, both medians and HEAD's counters (ops by kind left out)."""
    keep = ("ratio", "low", "high", "p", "answer", "n", "base_s", "head_s")
    return {"created": result["created"], "base": result["base"], "head": result["head"], "mode": result["mode"],
            "machine": result["machine"], "load": result["load"], "preset": result["preset"],
            "device": result["device"], "clock": result["clock"], "threads": result["threads"],
            "inject": result["inject"], "exit": result["exit"],
            "benchmarks": {n: {**{k: b[k] for k in keep},
                               "counters": {k: v for k, v in b["counters"]["HEAD"].items() if k != "ops_by_kind"}}
                           for n, b in result["benchmarks"].items()}}


def append_record(path: Path, result: dict) -> None:
    """Append the result's line to a JSON-lines history (one short write: a reader sees whole lines)."""
    with open(path, "a") as f:
        f.write(json.dumps(json_safe(record_entry(result))) + "\n")
