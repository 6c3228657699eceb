"""metrics.csv: one flat row per run entry, its columns read from the metric table (bench/evaluate/table.py)."""

from bench.evaluate import table


def metric_rows(results: dict) -> list[dict]:
    """dataset, model, seed, status, role, then every metric of the table the entry has (at the neutral knob), then
    the tuned knob's value and metrics (tuned_<key>), then the train record's scalars (train_<key>)."""
    rows = []
    for run in results["runs"]:
        row = {k: run.get(k) for k in ("dataset", "model", "seed", "status", "role")}
        row.update({m.key: v for m in table.METRICS if (v := table.value(run, m)) is not None})
        if run.get("tuned"):
            row["tuned_value"] = run["tuned"].get("value")
            row.update({f"tuned_{m.key}": v for m in table.METRICS
                        if m.where()[0] == "metrics" and (v := table.value(run, m, "tuned")) is not None})
        row.update({f"train_{k}": v for k, v in (run.get("train") or {}).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
        rows.append(row)
    return rows
