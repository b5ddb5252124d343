"""Where one update's time goes, DreamerV2 against TEMPO, in interleaved rounds of one process.

    python -m benchmarks.breakdown --size dmc_small --threads 2 --rounds 5 \\
        --out benchmarks/results/breakdown_dmc_small_2threads.json

Each round runs the recipe's whole update (`Bench.train_step`, i.e. `Run.update`) once per method, alternating, and
splits it into the bilevel trainer's own phases (`wm/time_forward`: the forward pass; `wm/time_upper_grad`: ∇θ L_up;
`wm/time_lower_grad`: ∇θ L_low; `wm/time_hypergrad`: the α-gradient; `wm/time_lower_update` and
`wm/time_meta_update`: the two optimizer steps), the rest of the trainer's
step (its metrics: `step_metrics`), the actor-critic update (`agent.train_step`) and what `Run.update` adds around
them. Medians over rounds per part; the TEMPO - DreamerV2 difference per part says which part a speed-up of TEMPO's
overhead must come from. The first update of each method (warm-up) is not timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import CONFIGS, SIZES, TEMPO, Bench, build, machine, precision_fields, set_flush_denormal
from bilevel.trainer import PHASE_METRICS as PHASES


def _timing(fn: Callable[..., Any], out: dict[str, float], key: str) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        out[key] = time.perf_counter() - t0
        return result
    return wrapped


def parts_of_one_update(bench: Bench) -> dict[str, float]:
    """Seconds per part of one `Bench.train_step` (the parts sum to `total`)."""
    seen: dict[str, float] = {}
    bench.agent.train_step = _timing(type(bench.agent).train_step.__get__(bench.agent), seen, "actor_critic")
    bench.trainer.step = _timing(type(bench.trainer).step.__get__(bench.trainer), seen, "trainer")
    try:
        t0 = time.perf_counter()
        metrics = bench.train_step()
        total = time.perf_counter() - t0
    finally:
        del bench.agent.train_step, bench.trainer.step
    phases = {p: float(metrics.get(f"wm/{p}", 0.0)) for p in PHASES}
    return {**phases, "trainer_metrics": seen["trainer"] - sum(phases.values()), "actor_critic": seen["actor_critic"],
            "run_update_rest": total - seen["trainer"] - seen["actor_critic"], "total": total}


def measure(size: str, tempo: str, rounds: int, also: tuple[str, ...] = (), precision: str = "32",
            more_precisions: tuple[str, ...] = (), compile: bool = False) -> dict[str, Any]:
    """`also`: more TEMPO configs, timed in the same rounds (each its own arm, named by its config). Every arm runs
    in `precision` (a setting of `precision_fields`: '32', 'bf16', '16', 'auto', 'bf16/32', ...); each of
    `more_precisions` adds the same arms in that setting, named `<arm>@<setting>`, to the same rounds. `compile`:
    every arm with `run.compile` (compiled in the untimed warm-up)."""
    methods = {"dreamerv2": "none", "tempo": tempo, **{c: c for c in also}}
    suffix = {p: "" if i == 0 else f"@{p}" for i, p in enumerate((precision, *more_precisions))}
    arms = {m + sfx: (c, p) for p, sfx in suffix.items() for m, c in methods.items()}
    benches = {m: build(size, c, precision=p, compile=compile) for m, (c, p) in arms.items()}
    precisions = {m: bench.setting for m, bench in benches.items()}  # as resolved ('auto' -> 32 or bf16)
    for bench in benches.values():
        bench.train_step()  # warm-up
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in benches}
    for _ in range(rounds):
        for method, bench in benches.items():
            samples[method].append(parts_of_one_update(bench))
    for bench in benches.values():
        bench.close()
    median = {m: {k: statistics.median(s[k] for s in rows) for k in rows[0]} for m, rows in samples.items()}

    def paired(a: str, b: str) -> list[float]:  # per-round ratios of the two arms' totals
        return [x["total"] / y["total"] for x, y in zip(samples[a], samples[b], strict=True)]

    ratios = paired("tempo", "dreamerv2")
    return {"precisions": precisions, "median_s": median,
            "tempo_minus_dreamerv2_s": {k: median["tempo"][k] - median["dreamerv2"][k] for k in median["tempo"]},
            "tempo_over_dreamerv2": statistics.median(ratios), "ratios": ratios, "samples_s": samples,
            "also": {c: {"over_dreamerv2": statistics.median(paired(c, "dreamerv2")),
                         "over_tempo": statistics.median(paired(c, "tempo")), "ratios_over_tempo": paired(c, "tempo")}
                     for c in also},
            "settings": {p: {"tempo_over_dreamerv2": statistics.median(paired("tempo" + sfx, "dreamerv2" + sfx)),
                             **{f"{m}_over_first": statistics.median(paired(m + sfx, m)) for m in methods}}
                         for p, sfx in suffix.items() if sfx}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.breakdown", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="dmc_small", choices=sorted(SIZES))
    ap.add_argument("--tempo", default=TEMPO, help=f"the TEMPO strategy config (default {TEMPO})")
    ap.add_argument("--also", default="", help="more TEMPO configs, comma-separated, timed in the same rounds")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--precision", default="32",
                    help="every arm's precision setting (32, bf16, 16, auto, or P/W: the actor-critic at P, the world "
                         "model at W; default 32); comma-separated settings time every arm in each, interleaved")
    ap.add_argument("--compile", action="store_true", help="every arm with run.compile (compiled in the warm-up)")
    ap.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.rounds < 1:
        ap.error(f"--threads and --rounds must be >= 1, got {args.threads} and {args.rounds}")
    also = tuple(c for c in args.also.split(",") if c)
    unknown = [c for c in (args.tempo, *also) if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown config(s) {unknown}; accepted: {list(CONFIGS)}")
    settings = [p for p in args.precision.split(",") if p]
    try:
        for p in settings:
            precision_fields(p)
    except ValueError as e:
        ap.error(str(e))
    if not settings:
        ap.error("--precision names no setting")
    torch.set_num_threads(args.threads)
    set_flush_denormal(True)
    result = {"size": args.size, "tempo": args.tempo, "rounds": args.rounds, "precision": args.precision,
              "compile": args.compile, "machine": machine("cpu"),
              **measure(args.size, args.tempo, args.rounds, also, settings[0], tuple(settings[1:]), args.compile)}
    for method, parts in result["median_s"].items():
        print(method, " ".join(f"{k}={v * 1e3:.0f}ms" for k, v in parts.items()))
    print("tempo - dreamerv2", " ".join(f"{k}={v * 1e3:+.0f}ms" for k, v in result["tempo_minus_dreamerv2_s"].items()))
    print(f"tempo / dreamerv2 = {result['tempo_over_dreamerv2']:.3f}")
    for c, r in result["also"].items():
        print(f"{c}: / dreamerv2 = {r['over_dreamerv2']:.3f}, / tempo = {r['over_tempo']:.3f}")
    for p, r in result["settings"].items():
        print(f"@{p}: " + ", ".join(f"{k} = {v:.3f}" for k, v in r.items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
