"""Task-aware upper losses for TEMPO: V-VAML (eq. 4), VaGraM adapted to latents, and a registry."""

from losses.registry import get_upper_loss, register, registered, upper_loss_class
from losses.upper import VVAML, UpperLoss, VaGraM, ValueNorm, evaluate_value

__all__ = [
    "VVAML",
    "UpperLoss",
    "VaGraM",
    "ValueNorm",
    "evaluate_value",
    "get_upper_loss",
    "register",
    "registered",
    "upper_loss_class",
]
