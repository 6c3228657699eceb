"""Mid-training state of a training loop, saved at an interval, at the end and on SIGINT / SIGTERM, and restored on
`gvd run --resume`.

Everything the next step depends on: the networks, the EMA copy, the optimisers and learning-rate schedules, the
random generators (data stream, latents / noise, and torch's global generator), the steps done, the history so far and
the metric-over-training snapshots. One safetensors file: tensors in the body, the rest as JSON in the metadata (no
pickle). A loop restored from it takes exactly the steps it would have taken without the interruption, so on the CPU
the final weights and metrics are the same as those of one unbroken run.

A loop uses it in one line: `for step in steps_to_run(steps, state, parts, history, ...)` after building its
optimisers, where `parts` names every object with state_dict / load_state_dict (modules, optimisers, schedulers). The
generator restores the saved state first and yields only the steps still to do; after each step it saves the state
when one is due: every `every` steps, after the last step (so a resumed run skips a finished training whose entry is
not yet in results.json; suite.py removes the states of recorded entries), and when SIGINT / SIGTERM arrived during
the step. The caller holds signals around its trainings (bench/guard.hold_signals), so a signal waits for the step's
end and the saved weights, optimisers and generators are all of one step.

[ddp] Every rank holds the same state (DDP's averaged gradients, generators kept in step with one process), so rank 0
alone writes it and every rank restores from the same file; the ranks agree on a signal each step (any rank's signal
stops them all after the same step).
"""

import copy
import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from tqdm.auto import tqdm

from bench.core import distributed
from bench.core.files import save_tensors
from bench.core.guard import Interrupted, pending_signal, take_pending


class Snapshot(NamedTuple):
    step: int  # steps done
    raw: nn.Module  # eval-mode copy of the trained network (G, or the denoiser)
    ema: nn.Module  # eval-mode copy of its EMA


def snapshot(module: nn.Module) -> nn.Module:
    """A frozen eval-mode copy (BatchNorm on its running statistics, as the final model samples)."""
    return copy.deepcopy(distributed.unwrap(module)).eval().requires_grad_(False)  # [ddp] the network, not DDP


def _flatten(obj, prefix: str, tensors: dict):
    """A state_dict as JSON with its tensors moved into `tensors` (dict keys kept with their types, so an
    optimiser's integer parameter ids come back as integers)."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _flatten(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _unflatten(obj, tensors: dict):
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict):
        return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


STATE_SAVES = 10  # a training's state is saved this many times at most on its interval, then after its last step



class TrainState:
    """The resumable state of one training loop at `path`, saved every `every` steps (0 = never)."""

    def __init__(self, path: Path, every: int, generators: dict[str, torch.Generator]):
        self.path, self.every, self.generators = Path(path), every, generators
        self.seconds_before = 0.0  # training seconds spent before the resume (saved with the state)
        self.io_seconds = 0.0  # this process's seconds spent saving and restoring (not training)
        self._started = time.perf_counter()

    def seconds(self) -> float:
        """Training seconds so far: the time before the resume included, the state's own I/O left out."""
        return self.seconds_before + time.perf_counter() - self._started - self.io_seconds

    def offset(self) -> float:
        """What to add to a wall time measured around the training in this process to get its training seconds:
        the time before the resume, less the state's I/O (a state is larger for bigger networks, so counting its
        writes would charge the diffusion side more than the GAN for the same work)."""
        return self.seconds_before - self.io_seconds

    def save(self, steps_done: int, parts: dict, history: list, snapshots: list) -> None:
        if not distributed.is_main():  # [ddp] every rank holds the same state: rank 0 writes it
            return
        t0 = time.perf_counter()
        tensors: dict = {}
        meta = {"steps_done": steps_done, "history": history, "seconds": self.seconds(),
                "parts": {name: _flatten(distributed.unwrap(p).state_dict(), f"part/{name}", tensors)
                          for name, p in parts.items()},  # [ddp] the network's keys, whatever the world size
                "snapshots": [[s.step, _flatten(s.raw.state_dict(), f"snap/{s.step}/raw", tensors),
                               _flatten(s.ema.state_dict(), f"snap/{s.step}/ema", tensors)] for s in snapshots or []]}
        tensors["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # noise drawn on the device (the VAE's)
            tensors["rng/cuda"] = torch.cuda.get_rng_state()
        for name, g in self.generators.items():
            tensors[f"rng/{name}"] = g.get_state()
        try:
            save_tensors(self.path, tensors, metadata={"train_state": json.dumps(meta)})
        finally:
            self.io_seconds += time.perf_counter() - t0

    def restore(self, parts: dict, history: list, snapshots: list, raw: str, ema: str) -> int:
        """Load the saved state into parts, history and snapshots (Snapshot(step, copy of parts[raw], copy of
        parts[ema])); return the steps done (0 when there is no readable state file: the loop starts from the
        beginning). A readable state that does not fit the networks (saved by another version) raises, naming the
        file, rather than train on from a mix of the saved and the fresh weights."""
        t0 = time.perf_counter()
        try:
            with safe_open(str(self.path), "pt") as f:
                meta = json.loads((f.metadata() or {})["train_state"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 -- a safetensors handle
        except (OSError, SafetensorError, KeyError, json.JSONDecodeError, RecursionError):  # unreadable: start over
            return 0
        try:
            for name, p in parts.items():
                distributed.unwrap(p).load_state_dict(_unflatten(meta["parts"][name], tensors))
        except (RuntimeError, KeyError, ValueError) as exc:
            why = " ".join(str(exc).split()[:24])  # torch's message, on one line
            raise RuntimeError(f"{self.path}: the saved training state does not fit this training ({why}); remove "
                               "the file to train from the start") from None
        history.extend(meta["history"])
        for step, raw_state, ema_state in meta["snapshots"] if snapshots is not None else []:
            copies = snapshot(parts[raw]), snapshot(parts[ema])
            for net, state in zip(copies, (raw_state, ema_state)):
                net.load_state_dict(_unflatten(state, tensors))
            snapshots.append(Snapshot(step, *copies))
        torch.set_rng_state(tensors["rng/torch"])
        if "rng/cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng/cuda"])
        for name, g in self.generators.items():
            g.set_state(tensors[f"rng/{name}"])
        self.seconds_before, self._started = meta.get("seconds", 0.0), t0
        self.io_seconds += time.perf_counter() - t0
        return meta["steps_done"]

    def step_done(self, steps_done: int, parts: dict, history: list, snapshots: list, last: bool = False) -> None:
        """Save when due: every `every` steps, and after the last step (`last`)."""
        if last or (self.every > 0 and steps_done % self.every == 0):
            self.save(steps_done, parts, history, snapshots)


class StateFiles:
    """The states of the trainings of one run entry, one file per part ("gan", "vae", "diffusion", ...): path_of(part)
    names it. Without path_of there is no state (the loops neither restore nor save). Scoped to a family, a part
    other than the family's own name is filed as "<family>-<part>" ("diffusion-vae"), so the states of one family's
    trainings can be found, and removed, without touching another's."""

    def __init__(self, path_of=None, family: str | None = None):
        self.path_of, self.family, self.opened = path_of, family, {}

    def scoped(self, family: str) -> "StateFiles":
        """The same files, named for one family's trainings."""
        return StateFiles(self.path_of, family)

    def open(self, part: str, steps: int, generators: dict[str, torch.Generator]) -> TrainState | None:
        """The TrainState of one training of `steps` steps (None without path_of); generators: the loop's own."""
        if self.path_of is None:
            return None
        every = max(1, math.ceil(steps / STATE_SAVES))  # at most STATE_SAVES saves on the interval
        name = part if self.family in (None, part) else f"{self.family}-{part}"
        self.opened[part] = TrainState(self.path_of(name), every, generators)
        return self.opened[part]

    def offset(self, part: str) -> float:
        """TrainState.offset of `part` (0 without a state)."""
        return self.opened[part].offset() if part in self.opened else 0.0


NO_STATE = StateFiles()  # trainings that neither resume nor save (outside a run folder)


def steps_to_run(steps: int, state: TrainState | None, parts: dict, history: list, snapshots: list | None = None,
                 raw: str | None = None, ema: str | None = None, desc: str = "", progress: bool = True):
    """The steps a training loop still has to take (all of range(steps) without a state), with a progress bar; with
    a state, restored first and saved after each step as due (module docstring). A signal held during a step
    (bench/core/guard.hold_signals, entered by the caller around its trainings) stops the loop when the step ends: the
    state is saved, then Interrupted raised. raw / ema: the parts a Snapshot copies (restore)."""
    start = state.restore(parts, history, snapshots, raw, ema) if state is not None else 0
    if state is not None and not (isinstance(start, int) and 0 <= start <= steps and len(history) == start):
        raise RuntimeError(f"{state.path}: the saved state claims {start!r} steps done of {steps}, with a history of "
                           f"{len(history)} steps (edited, or another training's); remove it to train from the start")
    if distributed.agree(start) != -distributed.agree(-start):  # [ddp] ranks that restored different steps
        raise RuntimeError(f"{desc}: the ranks restored different steps (is state/ on a disk every node sees?)")
    if start and progress and distributed.is_main():
        tqdm.write(f"{desc}: restored from {state.path.name} at step {start} of {steps}")
    stop = distributed.agree(pending_signal())  # held between two trainings: stop before a step, nothing new to save
    if stop:
        raise take_pending() if pending_signal() else Interrupted(stop)
    bar = tqdm(range(start, steps), desc=desc, leave=False, mininterval=1.0, disable=not progress, initial=start,
               total=steps)
    for step in bar:
        yield step
        stop = distributed.agree(pending_signal())  # [ddp] a signal on any rank stops every rank here
        if state is not None:
            state.step_done(step + 1, parts, history, snapshots, last=step + 1 == steps or stop > 0)
        if stop:
            bar.close()
            raise take_pending() if pending_signal() else Interrupted(stop)
