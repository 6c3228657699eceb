"""What `gvd throughput` prints (and the report shows): its measurement as table rows and the lines that say how it
was measured (bench/speed/throughput.py)."""


def _fmt(value, spec: str = "{:.3g}", scale: float = 1.0) -> str:
    return "n/a" if value is None else spec.format(value * scale if scale != 1.0 else value)


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    header = ["model", "stage", "steps", "NFE (network passes)", "guidance", "batch", "images/s", "ms per image alone",
              "GFLOP/image", "TFLOP/s", "MFU", "peak MB", "how"]
    rows = []
    for r in result["rows"]:
        guided = r["guidance"] is not None and r["guidance"] != 1
        passes = None if r["nfe"] is None else r["nfe"] * (2 if guided else 1)  # guidance runs both halves
        rows.append([r["model"], r["stage"], _fmt(r["nfe"], "{}"), _fmt(passes, "{}"), _fmt(r["guidance"], "{:g}"),
                     str(r["batch"]),
                     _fmt(r["images_per_s"], "{:,.4g}"), _fmt(r["latency_s"], "{:.3g}", 1e3),
                     _fmt(r["flops_per_image"], "{:.3g}", 1e-9), _fmt(r["tflops"], "{:.3g}"),
                     _fmt(r["mfu"], "{:.1%}"), _fmt(r["peak_memory_mb"], "{:,.0f}"), r["method"]])
    return header, rows


def summary_lines(result: dict) -> list[str]:
    peak, v = result["matmul_peak"], result["versions"]
    m = result["models"]
    load = result["load_average"]
    lines = [
        (f"Device {result['device']} ({result['threads']} threads of {result.get('cpu_count')} CPU cores; 1-minute "
         f"load average {load['start']:.1f} at the start, {load['end']:.1f} at the end: a load above the core count "
         f"means other processes shared them), sampling {result['dtype']['sample']}, training "
         f"{result['dtype']['train']}; {', '.join(f'{k} {val}' for k, val in v.items())}. Timer: {result['timer']}. "
         f"MFU is against a {peak['dtype']} {peak['n']}x{peak['n']} matrix product measured in the same process: "
         f"{peak['tflops']:.3g} TFLOP/s."),
        "Parameters: " + "; ".join(f"{name} " + " + ".join(f"{k} {n:,}" for k, n in spec["params"].items())
                                   for name, spec in m.items() if name != "text")
        + f"; shared text encoder {m['text']['params']:,}. FLOPs are matmuls, convolutions and attention "
        "(torch.utils.flop_counter), elementwise ops not counted; training FLOPs include the backward pass.",
    ]
    so = result["sampler_overhead"]
    parts = [f"{k}: {so[k]['sampler_step_s'] * 1e6:.0f} us per step = {so[k]['fraction_of_network']:.2%} of the "
             f"network call ({so[k]['network_step_s'] * 1e3:.3g} ms)" for k in ("unguided", "guided") if k in so]
    lines.append(f"Sampler loop overhead ({so['sampler']}, batch {so['batch']}, network replaced by a constant): "
                 + "; ".join(parts) + ".")
    return lines + list(result.get("notes", []))


def throughput_table(result: dict) -> str:
    """The Markdown table `gvd throughput` prints, with the device, versions and method lines under it."""
    header, rows = table_rows(result)
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(table) + "\n\n" + "\n".join(f"- {line}" for line in summary_lines(result)) + "\n"
