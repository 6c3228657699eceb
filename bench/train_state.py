"""Mid-training state of a training loop, saved at an interval and restored on `gvd run --resume`.

Everything the next step depends on: the networks, the EMA copy, the optimisers and learning-rate schedules, the
random generators (data stream, latents / noise, and torch's global generator), the steps done, the history so far and
the metric-over-training snapshots. One safetensors file: tensors in the body, the rest as JSON in the metadata (no
pickle). A loop restored from it takes exactly the steps it would have taken without the interruption, so on the CPU
the final weights and metrics are the same as those of one unbroken run.

A loop uses it in three lines: `start = state.restore(parts, history, snapshots)` after building its optimisers,
`range(start, steps)`, and `state.step_done(step + 1, parts, history, snapshots)` at the end of each step. `parts`
names every object with state_dict / load_state_dict (modules, optimisers, schedulers).
"""

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from bench.train import Snapshot, snapshot


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


class TrainState:
    """The resumable state of one training loop at `path`, saved every `every` steps (0 = never)."""

    def __init__(self, path: Path, every: int, generators: dict[str, torch.Generator]):
        self.path, self.every, self.generators = Path(path), every, generators

    def save(self, steps_done: int, parts: dict, history: list, snapshots: list) -> None:
        tensors: dict = {}
        meta = {"steps_done": steps_done, "history": history,
                "parts": {name: _flatten(p.state_dict(), f"part/{name}", tensors) for name, p in parts.items()},
                "snapshots": [[s.step, _flatten(s.raw.state_dict(), f"snap/{s.step}/raw", tensors),
                               _flatten(s.ema.state_dict(), f"snap/{s.step}/ema", tensors)] for s in snapshots or []]}
        tensors["rng/torch"] = torch.get_rng_state()
        for name, g in self.generators.items():
            tensors[f"rng/{name}"] = g.get_state()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"train_state": json.dumps(meta)})
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def restore(self, parts: dict, history: list, snapshots: list, raw: str, ema: str) -> int:
        """Load the saved state into parts, history and snapshots (Snapshot(step, copy of parts[raw], copy of
        parts[ema])); return the steps done (0 when there is no usable state file: the loop starts from the
        beginning)."""
        try:
            with safe_open(str(self.path), "pt") as f:
                meta = json.loads((f.metadata() or {})["train_state"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 -- a safetensors handle
        except (OSError, SafetensorError, KeyError, json.JSONDecodeError):
            return 0
        for name, p in parts.items():
            p.load_state_dict(_unflatten(meta["parts"][name], tensors))
        history.extend(meta["history"])
        for step, raw_state, ema_state in meta["snapshots"] if snapshots is not None else []:
            copies = snapshot(parts[raw]), snapshot(parts[ema])
            for copy, state in zip(copies, (raw_state, ema_state)):
                copy.load_state_dict(_unflatten(state, tensors))
            snapshots.append(Snapshot(step, *copies))
        torch.set_rng_state(tensors["rng/torch"])
        for name, g in self.generators.items():
            g.set_state(tensors[f"rng/{name}"])
        return meta["steps_done"]

    def step_done(self, steps_done: int, parts: dict, history: list, snapshots: list) -> None:
        if self.every > 0 and steps_done % self.every == 0:
            self.save(steps_done, parts, history, snapshots)

    def clear(self) -> None:
        """The training finished: its final checkpoint replaces the state."""
        self.path.unlink(missing_ok=True)
