"""Turn saved pytest-benchmark JSON (`--benchmark-json=FILE`) into a markdown table and a bar chart.

    python -m benchmarks.report [FILE.json ...] [--out-dir benchmarks/results]

With no file, every `benchmarks/results/*.json` is read. Prints the markdown to stdout and writes
`<out-dir>/latest.md` and `<out-dir>/latest.png`. One table per (size, device):

    config | median ms | IQR ms | peak mem MB | cosine vs unroll-1 | rel norm | ratio vs none

plus the interleaved ratios of `test_train_step.py` (TEMPO/none whole train step, approx/unroll-1) and
the machine they ran on (CPU model, torch version, device, threads).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import sys
from collections.abc import Iterable
from typing import Any

from benchmarks.common import RESULTS_DIR, cpu_model

Row = dict[str, Any]


def load(paths: Iterable[str]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """[(machine_info, benchmark)] over all files, in file order; a `benchmarks.compare_commits` result is one
    benchmark of kind 'commits'."""
    out = []
    for p in paths:
        with open(p) as f:
            data = json.load(f)
        if "speedup_b_over_a" in data:
            out.append(({}, {"name": os.path.basename(p), "extra_info": {"kind": "commits", **data}}))
            continue
        mi = data.get("machine_info", {}) or {}
        for b in data.get("benchmarks", []):
            out.append((mi, b))
    return out


def _config_name(b: dict[str, Any]) -> str:
    ei = b.get("extra_info", {}) or {}
    if "config" in ei:
        return str(ei["config"])
    name = str(b.get("name", "?"))
    return name[name.index("[") + 1:name.rindex("]")] if "[" in name and name.endswith("]") else name


def _group_key(b: dict[str, Any]) -> tuple[str, str]:
    ei = b.get("extra_info", {}) or {}
    return str(ei.get("size", "?")), str(ei.get("device", "?"))


def hypergrad_rows(benchmarks: list[tuple[dict, dict]]) -> dict[tuple[str, str], list[Row]]:
    """Rows of the per-strategy table, grouped by (size, device); ratio vs the `none` row of the group."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for _, b in benchmarks:
        ei = b.get("extra_info", {}) or {}
        if ei.get("kind") in ("ratio", "precision", "commits"):
            continue
        st = b.get("stats", {}) or {}
        groups.setdefault(_group_key(b), []).append({
            "name": _config_name(b),
            "median_ms": 1e3 * float(st["median"]) if "median" in st else math.nan,
            "iqr_ms": 1e3 * float(st["iqr"]) if "iqr" in st else math.nan,
            "rounds": st.get("rounds"),
            "peak_mem_mb": ei.get("peak_mem_mb"),
            "cosine": ei.get("cosine_vs_unroll1"),
            "rel_norm": ei.get("rel_norm_vs_unroll1"),
            "ratio_vs_none": None,
        })
    for rows in groups.values():
        base = next((r["median_ms"] for r in rows if r["name"] == "none"), None)
        for r in rows:
            if base:
                r["ratio_vs_none"] = r["median_ms"] / base
    return groups


def ratio_rows(benchmarks: list[tuple[dict, dict]]) -> list[Row]:
    rows = []
    for _, b in benchmarks:
        ei = b.get("extra_info", {}) or {}
        if ei.get("kind") != "ratio":
            continue
        rows.append({
            "what": ei.get("what", b.get("name")), "a": ei.get("a"), "b": ei.get("b"),
            "size": ei.get("size"), "device": ei.get("device"), "rounds": ei.get("rounds"),
            "median_a_ms": 1e3 * ei["median_a_s"] if "median_a_s" in ei else None,
            "median_b_ms": 1e3 * ei["median_b_s"] if "median_b_s" in ei else None,
            "time_ratio": ei.get("time_ratio"), "goal_time_ratio": ei.get("goal_time_ratio"),
            "mem_ratio": ei.get("mem_ratio"), "goal_mem_ratio": ei.get("goal_mem_ratio"),
            "peak_mem_a_mb": ei.get("peak_mem_a_mb"), "peak_mem_b_mb": ei.get("peak_mem_b_mb"),
        })
    return rows


def precision_rows(benchmarks: list[tuple[dict, dict]]) -> list[Row]:
    """Rows of `test_train_step_precisions`: one per (size, device, precision)."""
    rows = []
    for _, b in benchmarks:
        ei = b.get("extra_info", {}) or {}
        if ei.get("kind") == "precision":
            rows += [{"size": ei.get("size"), "device": ei.get("device"), "rounds": ei.get("rounds"),
                      "gemm_gflops": ei.get("gemm_gflops_fp32"), **r} for r in ei.get("rows", [])]
    return rows


def _f(x: Any, fmt: str = "{:.1f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return fmt.format(x)


def machine_lines(benchmarks: list[tuple[dict, dict]]) -> list[str]:
    seen, lines = set(), []
    for mi, b in benchmarks:
        m = (b.get("extra_info", {}) or {}).get("machine") or {}
        cpu = m.get("cpu") or (mi.get("cpu") or {}).get("brand_raw") or mi.get("processor") or cpu_model()
        cores = m.get("cpu_count", (mi.get("cpu") or {}).get("count", "?"))
        parts: tuple[str, ...] = (f"CPU: {cpu}", f"cores: {cores}",
                 f"torch {m.get('torch', '?')}", f"device: {m.get('device', _group_key(b)[1])}"
                 + (f" ({m['gpu']})" if m.get("gpu") else ""),
                 f"torch threads: {m.get('torch_threads', '?')}",
                 f"python {m.get('python', mi.get('python_version', '?'))}")
        if "cpu_flags" in m:
            flags = [k for k, v in m["cpu_flags"].items() if v]
            parts += (f"CPU flags: {' '.join(flags) or 'none of ' + ' '.join(m['cpu_flags'])}",
                      f"native bf16: {m.get('native_bf16')}", f"torch CPU capability: {m.get('cpu_capability')}")
        line = ", ".join(parts)
        if line not in seen:
            seen.add(line)
            lines.append(f"- {line}")
    return lines


def render_markdown(benchmarks: list[tuple[dict, dict]]) -> str:
    out = ["# Benchmark results", ""]
    for (size, device), rows in hypergrad_rows(benchmarks).items():
        out += [f"## Bilevel step per strategy: size `{size}`, device `{device}`", "",
                "| config | median ms | IQR ms | rounds | peak mem MB | cosine vs unroll-1 | rel norm "
                "| ratio vs none |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            out.append(f"| {r['name']} | {_f(r['median_ms'])} | {_f(r['iqr_ms'])} | {_f(r['rounds'], '{}')} | "
                       f"{_f(r['peak_mem_mb'])} | {_f(r['cosine'], '{:.4f}')} | {_f(r['rel_norm'], '{:.3f}')} | "
                       f"{_f(r['ratio_vs_none'], '{:.2f}x')} |")
        out.append("")
    rr = ratio_rows(benchmarks)
    if rr:
        out += ["## Interleaved ratios (median of paired per-round ratios A/B)", "",
                "| what | size/device | A | B | rounds | A median ms | B median ms | time A/B | goal | "
                "peak mem A/B | goal |",
                "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rr:
            out.append(f"| {r['what']} | {r['size']}/{r['device']} | {r['a']} | {r['b']} | {_f(r['rounds'], '{}')} | "
                       f"{_f(r['median_a_ms'])} | {_f(r['median_b_ms'])} | {_f(r['time_ratio'], '{:.3f}')} | "
                       f"{_f(r['goal_time_ratio'], '<= {}')} | {_f(r['mem_ratio'], '{:.3f}')} | "
                       f"{_f(r['goal_mem_ratio'], '<= {}')} |")
        out.append("")
    pr = precision_rows(benchmarks)
    if pr:
        out += ["## Whole train step by precision and compile setting (all arms interleaved; speedups over float32 "
                "eager are medians of per-round ratios; GFLOP/s = matmul work per step / median time, against the "
                "machine's float32 matmul throughput)",
                "", "| size/device | precision | compile | rounds | DreamerV2 ms | speedup vs fp32 | TEMPO ms "
                "| speedup vs fp32 | TEMPO/DreamerV2 | GFLOP/step DV2 / TEMPO | GFLOP/s DV2 / TEMPO / matmul peak |",
                "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in pr:  # results from before run.compile and the FLOP counts lack those keys
            comp = "on" if r.get("compile") else "off"
            out.append(f"| {r['size']}/{r['device']} | {r['precision']} | {comp} | {_f(r['rounds'], '{}')} | "
                       f"{_f(r['none_ms'])} | {_f(r['speedup_none_vs_fp32'], '{:.2f}x')} | {_f(r['tempo_ms'])} | "
                       f"{_f(r['speedup_tempo_vs_fp32'], '{:.2f}x')} | {_f(r['tempo_over_none'], '{:.3f}')} | "
                       f"{_f(r.get('none_gflop'))} / {_f(r.get('tempo_gflop'))} | {_f(r.get('none_gflops'), '{:.0f}')}"
                       f" / {_f(r.get('tempo_gflops'), '{:.0f}')} / {_f(r.get('gemm_gflops'), '{:.0f}')} |")
        out.append("")
    commits = [b["extra_info"] for _, b in benchmarks if (b.get("extra_info") or {}).get("kind") == "commits"]
    if commits:
        out += ["## Two checkouts against each other (`benchmarks.compare_commits`, paired rounds)", "",
                "| size | config | A | B | rounds | A s/step | B s/step | speedup A/B |",
                "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for c in commits:
            out.append(f"| {c['size']} | {c['config']} | `{c['a']}` | `{c['b']}` | {c['rounds']} | "
                       f"{_f(statistics.median(c['times_a_s']), '{:.2f}')} | "
                       f"{_f(statistics.median(c['times_b_s']), '{:.2f}')} | {_f(c['speedup_b_over_a'], '{:.2f}x')} |")
        out.append("")
    out += ["## Machine", ""] + machine_lines(benchmarks) + [""]
    return "\n".join(out)


def plot(benchmarks: list[tuple[dict, dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = hypergrad_rows(benchmarks)
    n = max(len(groups), 1)
    fig, axes = plt.subplots(n, 1, figsize=(10, 3.2 * n + 0.8), squeeze=False)
    for ax, ((size, device), rows) in zip(axes[:, 0], groups.items(), strict=False):
        names = [r["name"] for r in rows]
        med = [r["median_ms"] for r in rows]
        iqr = [0.0 if math.isnan(r["iqr_ms"]) else r["iqr_ms"] / 2 for r in rows]
        colors = ["tab:gray" if r["name"] in ("none", "naive") else "tab:blue" if r["name"].startswith(
            ("approx", "betty-approx")) else "tab:orange" if r["name"].startswith("unroll") else "tab:green"
            for r in rows]
        ax.bar(range(len(rows)), med, yerr=iqr, color=colors, capsize=3)
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("median ms / bilevel step")
        ax.set_title(f"size {size}, device {device} (error bars: IQR/2)")
        for i, r in enumerate(rows):
            if r["ratio_vs_none"]:
                ax.annotate(f"{r['ratio_vs_none']:.2f}x", (i, med[i]), ha="center", va="bottom", fontsize=7)
    if not groups:
        axes[0, 0].text(0.5, 0.5, "no per-strategy benchmarks", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="*", help="pytest-benchmark JSON files (default: benchmarks/results/*.json)")
    p.add_argument("--out-dir", default=RESULTS_DIR)
    a = p.parse_args(argv)
    paths = a.json or sorted(glob.glob(os.path.join(RESULTS_DIR, "*.json")))
    if not paths:
        p.error(f"no JSON given and none in {RESULTS_DIR}")
    benchmarks = load(paths)
    md = render_markdown(benchmarks)
    md += "\nSources: " + ", ".join(os.path.relpath(x) for x in paths) + "\n"
    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, "latest.md"), "w") as f:
        f.write(md)
    plot(benchmarks, os.path.join(a.out_dir, "latest.png"))
    sys.stdout.write(md)
    return md


if __name__ == "__main__":
    main()
