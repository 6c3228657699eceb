"""`gvd speed --history FILE`: each benchmark over the revisions a `--record FILE` history holds, and where it changed.

The series of a benchmark is HEAD's median block time in each record, in the file's order (a CI job that records
every merge to main makes it the main branch's history), on the clock the records share; records of another machine,
preset, device, clock or thread count than the last record are left out and counted.

Change points: PELT (Killick, Fearnhead & Eckley 2012, "Optimal detection of changepoints with a linear computational
cost", JASA 107(500)) on the log times with a piecewise-constant mean (ruptures' "l2" cost), penalty 2 sigma^2 log n
(the BIC of a mean shift; sigma from the median absolute difference of neighbours, which a few shifts do not
inflate), each segment at least MIN_SIZE records. A change point is shown when the segments' medians differ by more
than the threshold. The library is ruptures (Truong, Oudre & Vayatis 2020, "Selective review of offline change point
detection methods", Signal Processing 167): maintained, numpy and scipy alone. Apache Otava (hunter's successor, the
E-divisive means of MongoDB's CI) was the first choice, but its release pins numpy 2.2 and scipy < 1.17, which this
project's own pins exclude.
"""

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display: set once, before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402 -- must follow the backend choice
import numpy as np  # noqa: E402

from bench.core.files import atomic_write  # noqa: E402
from bench.errors import UserError  # noqa: E402

MIN_SIZE = 2  # records per segment at least
SAME = ("preset", "device", "clock", "threads")  # what a record must share with the last one to be in its series
COLOURS = {"slower": "#c0392b", "faster": "#2e86c1", "no change": "#7f8c8d", "inconclusive": "#e67e22"}


class HistoryError(UserError):
    """An unreadable history or a missing extra: one line, exit status 2."""


def read_history(path: Path) -> tuple[list[dict], int]:
    """(the records comparable with the last one, in file order; how many others were left out)."""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        records = [json.loads(ln) for ln in lines]
    except (OSError, ValueError) as exc:
        raise HistoryError(f"--history {path}: not a readable `gvd speed --record` file ({type(exc).__name__})") \
            from None
    if not records or not all(isinstance(r, dict) and "benchmarks" in r for r in records):
        raise HistoryError(f"--history {path}: no `gvd speed --record` lines in it")
    last = records[-1]
    keep = [r for r in records if all(r.get(k) == last.get(k) for k in SAME)
            and r.get("machine", {}).get("host") == last.get("machine", {}).get("host")]
    return keep, len(records) - len(keep)


def penalty(signal: np.ndarray) -> float:
    """2 sigma^2 log n with sigma from neighbours' differences (MAD / 0.6745 / sqrt 2), never 0."""
    diffs = np.abs(np.diff(signal))
    sigma = float(np.median(diffs)) / 0.6745 / math.sqrt(2) if len(diffs) else 0.0
    return 2 * max(sigma, 1e-3) ** 2 * math.log(max(len(signal), 2))


def change_points(times: list[float], threshold: float) -> list[tuple[int, float]]:
    """[(index of the first record after the change, relative change of the median)] of one series."""
    try:
        import ruptures  # optional: the history extra (pip install -e ".[history]")
    except ImportError:
        raise HistoryError("change points need the history extra: pip install -e \".[history]\" (ruptures)") from None
    signal = np.log(np.asarray(times, dtype=float))
    if len(signal) < 2 * MIN_SIZE:
        return []
    ends = ruptures.Pelt(model="l2", min_size=MIN_SIZE, jump=1).fit(signal).predict(pen=penalty(signal))
    out, bounds = [], [0] + ends
    for a, b, c in zip(bounds, bounds[1:], bounds[2:]):
        change = math.exp(np.median(signal[b:c]) - np.median(signal[a:b])) - 1
        if abs(change) > threshold:
            out.append((b, change))
    return out


def _label(record: dict) -> str:
    head = record["head"]
    return (head.get("sha") or head.get("rev") or "?")[:8] + ("+" if head.get("dirty") else "")


def _series(records: list[dict]) -> dict[str, list[tuple[int, float, str]]]:
    """benchmark -> [(record index, HEAD's median seconds, answer)]."""
    out: dict = {}
    for i, r in enumerate(records):
        for name, b in r["benchmarks"].items():
            if b.get("head_s"):
                out.setdefault(name, []).append((i, b["head_s"], b.get("answer", "")))
    return out


def _figure(series: dict, points: dict, labels: list[str], out: Path) -> None:
    cols = min(3, len(series))
    rows = -(-len(series) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (name, pts) in zip(axes.flat, series.items()):
        x, y = [p[0] for p in pts], [p[1] * 1e3 for p in pts]
        ax.plot(x, y, color="#555555", lw=1)
        ax.scatter(x, y, c=[COLOURS.get(p[2], "#555555") for p in pts], s=18, zorder=3)
        for idx, change in points[name]:
            ax.axvline(idx - 0.5, color="#c0392b" if change > 0 else "#2e86c1", ls="--", lw=1)
            ax.annotate(f"{change:+.0%}", (idx - 0.5, max(y)), fontsize=7, ha="left", va="top")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("ms (HEAD)", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=60, fontsize=6)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.suptitle("gvd speed history: dots coloured by the gate's answer (red slower, blue faster, grey no change, "
                 "orange inconclusive); dashed: change points", fontsize=8)
    fig.tight_layout()
    path = Path(out)
    tmp = path.with_name(path.name + ".part.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    atomic_write(path, tmp.read_bytes())
    tmp.unlink()


def draw_history(path: Path, out: Path, threshold: float) -> str:
    """Write the figure to `out` and return the table gvd speed --history prints."""
    records, dropped = read_history(path)
    series = _series(records)
    points = {name: [(pts[i][0], change) for i, change in change_points([p[1] for p in pts], threshold)]
              for name, pts in series.items()}  # as record indices
    labels = [_label(r) for r in records]
    _figure(series, points, labels, out)
    lines = [f"{len(records)} records of {records[-1]['machine'].get('host')} (preset {records[-1]['preset']}, "
             f"{records[-1]['device']}, clock {records[-1]['clock']})"
             + (f"; {dropped} of other machines or settings left out" if dropped else ""), "",
             "| benchmark | records | first ms | last ms | change points (PELT, beyond the threshold) |",
             "|---|---|---|---|---|"]
    for name, pts in series.items():
        found = ", ".join(f"at {labels[i]}: {c:+.1%}" for i, c in points[name]) or "none"
        lines.append(f"| {name} | {len(pts)} | {pts[0][1] * 1e3:.3g} | {pts[-1][1] * 1e3:.3g} | {found} |")
    lines += ["", "| record | revision | base | load | answer (exit) |", "|---|---|---|---|---|"]
    for i, r in enumerate(records):
        lines.append(f"| {i} | {labels[i]} | {(r['base'].get('sha') or r['base'].get('rev') or '?')[:8]} | "
                     f"{r['load']['start'][0]:.1f} | {r.get('exit')} |")
    return "\n".join(lines) + f"\n\nwrote {out}\n"
