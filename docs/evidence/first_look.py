"""Issue 10 §4: DreamerV2 vs TEMPO side by side on one proprioceptive DMC task, and TEMPO's weights.

    python docs/evidence/first_look.py RUNS_ROOT/walker_stand --out docs/evidence/walker_stand_first_look

RUNS_ROOT/<task>/<method>/<seed> are `python -m recipes.tempo` run directories. Writes `curves.png` (eval and
train return, world-model losses, the weight spread, and the correlation of the weights with the per-sample
V-VAML error over training), `summary.json`, and a copy of each run's `config.json` and `metrics.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def records(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    return out


def series(recs: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in recs if key in r and r[key] is not None and np.isfinite(r[key])]
    return (np.array([p[0] for p in pts]), np.array([p[1] for p in pts])) if pts else (np.zeros(0), np.zeros(0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("task_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = {m.name: sorted(p for p in m.iterdir() if (p / "metrics.jsonl").exists()) for m in args.task_dir.iterdir()}
    data = {m: {s.name: records(s) for s in seeds} for m, seeds in runs.items() if seeds}
    for m, seeds in runs.items():
        for s in seeds:
            dst = args.out / m / s.name
            dst.mkdir(parents=True, exist_ok=True)
            for f in ("config.json", "metrics.jsonl"):
                shutil.copy(s / f, dst / f)

    fig, ax = plt.subplots(2, 3, figsize=(15, 8))
    colors = {"dreamerv2": "tab:blue", "tempo": "tab:red"}
    summary: dict = {}
    for m, seeds in sorted(data.items()):
        c = colors.get(m, None)
        for seed, recs in seeds.items():
            x, y = series(recs, "eval_return")
            ax[0, 0].plot(x, y, "o-", color=c, label=f"{m} seed {seed}")
            x, y = series(recs, "train_return")
            ax[0, 1].plot(x, y, ".-", color=c, alpha=0.7, label=f"{m} seed {seed}")
            for key, style in (("wm/upper_loss", "-"), ("wm/lower_loss_unweighted", "--")):
                x, y = series(recs, key)
                ax[0, 2].plot(x, y, style, color=c, label=f"{m} {key.split('/')[1]}")
            last = recs[-1]
            evals = series(recs, "eval_return")[1]
            summary[f"{m}/{seed}"] = {
                "frames": last["step"], "updates": last.get("updates"),
                "eval_returns": [float(v) for v in evals], "last_eval": float(evals[-1]) if len(evals) else None,
                "mean_last_3_evals": float(np.mean(evals[-3:])) if len(evals) else None,
            }
            if m == "tempo":
                for key in ("wm/weight_std", "wm/weight_min", "wm/weight_max", "wm/weight_mean"):
                    x, y = series(recs, key)
                    ax[1, 0].plot(x, y, label=key.split("/")[1])
                x, y = series(recs, "wm/weight_upper_corr")
                ax[1, 1].plot(x, y, ".-", color=c)
                x2, y2 = series(recs, "wm/hypergrad_norm")
                ax[1, 2].semilogy(x2, y2, ".-", color=c)
                summary[f"{m}/{seed}"].update({
                    "weight_std": {"first": float(series(recs, "wm/weight_std")[1][0]),
                                   "last": float(series(recs, "wm/weight_std")[1][-1])},
                    "weight_range_last": [float(series(recs, "wm/weight_min")[1][-1]),
                                          float(series(recs, "wm/weight_max")[1][-1])],
                    "weight_upper_corr": {"mean": float(np.mean(y)) if len(y) else None,
                                          "last_5_mean": float(np.mean(y[-5:])) if len(y) else None,
                                          "fraction_positive": float(np.mean(y > 0)) if len(y) else None},
                })
    titles = ["eval return (policy mode)", "train return", "upper (V-VAML) and unweighted ELBO loss",
              "TEMPO weights: mean / std / min / max per batch", "corr(w, per-sample V-VAML error) per batch",
              "TEMPO hypergradient norm"]
    for a, t in zip(ax.flat, titles, strict=True):
        a.set_title(t, fontsize=10)
        a.set_xlabel("environment frames")
        a.grid(alpha=0.3)
    ax[1, 1].axhline(0, color="k", lw=0.8)
    ax[0, 2].set_yscale("log")
    for a in (ax[0, 0], ax[0, 1], ax[0, 2], ax[1, 0]):
        a.legend(fontsize=7)
    fig.suptitle(f"{args.task_dir.name} (dmc_state): DreamerV2 vs TEMPO, CPU, one seed each")
    fig.tight_layout()
    fig.savefig(args.out / "curves.png", dpi=110)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
