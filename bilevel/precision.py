"""Mixed precision for a training step: reduced-precision matmuls, float32 islands, loss scaling.

`Precision(device, mode)`, mode '32' | 'bf16' | '16' | 'auto':

* `autocast()`: the context forward passes run in (`torch.autocast` to bfloat16 or float16; nothing for '32').
  Matmuls and convolutions run in the reduced dtype; parameters and optimizer state stay float32. A model marks
  its float32 islands itself with `f32(x)` where a matmul's output enters distribution, loss or
  normalisation math (a no-op in float32): the distributions (sampling, log-probabilities, entropies, the
  truncated normal, whose `ndtri` has no bfloat16 kernel), KL terms, losses and their reductions, the inputs of
  Layer/BatchNorms, λ-returns and value normalisation.
* `float32(device)`: a block that runs in float32 whatever autocast surrounds it. `BilevelTrainer` computes the
  hypergradient in one: a finite difference of reduced-precision losses is rounding noise.
* float16 needs loss scaling (bfloat16 has float32's range): `bilevel.updater.loss_scaler(precision)` is the
  `torch.amp.GradScaler` of an update, and `bilevel.updater.Updater` scales, unscales, skips and counts.

The `Precision` a trainer is given is the one source of its precision: `BilevelTrainer` runs its forward pass in
it (whatever autocast surrounds the call) and reads `reduced` from it, not from the ambient autocast.

'auto' picks bfloat16 where it is native, else float32: on a CUDA device that supports it, and on a CPU with
AMX-bf16 or AVX512-bf16 (detected by oneDNN at run time; an emulated bf16 matmul is slower than float32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

Mode = Literal["auto", "32", "bf16", "16"]
MODES = ("auto", "32", "bf16", "16")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")


def cpu_flags() -> dict[str, bool]:
    """The bf16-relevant flags of this CPU (Linux /proc/cpuinfo; all False elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {f: f in flags for f in CPU_FLAGS}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def native_bf16(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve(mode: str, device: torch.device | str) -> str:
    """'auto' -> 'bf16' or '32' for this device; other modes checked and returned."""
    if mode not in MODES:
        raise ValueError(f"unknown precision {mode!r}; accepted: {list(MODES)}")
    if mode == "auto":
        return "bf16" if native_bf16(device) else "32"
    return mode


class Precision:
    def __init__(self, device: torch.device | str, mode: str = "32") -> None:
        self.device = torch.device(device)
        self.mode = resolve(mode, self.device)
        self.dtype = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}[self.mode]

    @property
    def reduced(self) -> bool:
        return self.mode != "32"

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.reduced:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def pinned(self) -> contextlib.AbstractContextManager:
        """`autocast()`, except that '32' is a float32 island: the block runs in this precision whatever autocast
        surrounds it (`BilevelTrainer`'s forward pass, whose precision the later phases rely on)."""
        return self.autocast() if self.reduced else float32(self.device)

    def __repr__(self) -> str:
        return f"Precision({self.device.type}, {self.mode})"


def f32(x: torch.Tensor) -> torch.Tensor:
    """The float32 island's cast: bfloat16/float16 -> float32; float32 and float64 (gradient checks) unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@contextlib.contextmanager
def float32(device: torch.device | str) -> Iterator[None]:
    """A float32 island for `device`'s type (disables any surrounding autocast)."""
    with torch.autocast(torch.device(device).type, enabled=False):
        yield
