"""One benchmark per hypergradient strategy config: the time of one full bilevel step
(`BilevelTrainer.step`: forward at θ, ∇θ, α-gradient, θ update, α update) on the real RSSM world model.

`benchmark.extra_info` of each also holds:
* peak memory: CUDA `torch.cuda.max_memory_allocated` (reset before the build) in this process; CPU the
  peak-RSS delta of a fresh `python -m benchmarks.memory` process building the config and running a few
  steps (see benchmarks/memory.py for why a fresh process; all measured before the first timing);
* fidelity vs the exact one-step unrolled hypergradient: cosine and norm ratio of the α-gradient at
  the same θ, α, batch and sampling noise (n/a for `none`/`naive`, which have no α);
* the mean phase times of the trainer's own metrics (`time_<phase>` for `bilevel.trainer.PHASES`).

    python -m pytest benchmarks/test_hypergrad.py --benchmark-enable --bench-size tiny -q
"""

from __future__ import annotations

import gc

import pytest
import torch

from benchmarks.common import CONFIGS, alpha_grad_fidelity, build, machine
from benchmarks.memory import measure_subprocess
from bilevel.trainer import PHASE_METRICS as PHASES


@pytest.mark.parametrize("config", list(CONFIGS))
def test_hypergrad(benchmark, bench_opts, cpu_memory, config):
    o = bench_opts
    dev = torch.device(o.device)
    cuda = dev.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        cuda_base = torch.cuda.memory_allocated(dev)
    bench = build(o.size, config, dev)
    bench.step()  # warm-up: optimiser state, lazy initialisation, first-call overheads
    bench.sync()

    phases: dict[str, list[float]] = {k: [] for k in PHASES}

    def step() -> None:
        m = bench.step()
        for k in PHASES:
            phases[k].append(m[k])
        bench.sync()  # trainer.step syncs its phases; this makes the end of the call exact too

    benchmark.group = f"hypergrad-{o.size}-{dev.type}"
    benchmark(step)

    info = benchmark.extra_info
    info.update(config=config, size=o.size, device=str(dev), kind="hypergrad", **CONFIGS[config])
    info.update({f"{k}_mean_s": sum(v) / len(v) for k, v in phases.items() if v})
    info["machine"] = machine(dev)
    if o.memory:
        if cuda:
            info["peak_mem_mb"] = (torch.cuda.max_memory_allocated(dev) - cuda_base) / 2**20
            info["mem_method"] = "cuda max_memory_allocated (in process, reset before build)"
        else:
            mem = cpu_memory.get(config) or measure_subprocess(config, o.size, o.device, steps=o.mem_steps)
            info["peak_mem_mb"] = mem["peak_mb"]
            info["step_peak_mem_mb"] = mem["step_peak_mb"]
            info["mem_method"] = f"fresh-process ru_maxrss delta over build + {o.mem_steps} steps"
    if o.fidelity:
        fid = alpha_grad_fidelity(o.size, config, o.device)
        info.update(fid)
        if fid["cosine_vs_unroll1"] is not None:
            assert fid["cosine_vs_unroll1"] == fid["cosine_vs_unroll1"], "NaN α-gradient"
