"""Task-aware upper losses for TEMPO: V-VAML (eq. 4), VaGraM adapted to latents, and a registry."""

from losses.base import UpperLoss, ValueNorm, evaluate_value
from losses.registry import check_upper_loss, get_upper_loss, register, registered, upper_loss_class
from losses.upper import VVAML, VaGraM

__all__ = [
    "VVAML",
    "UpperLoss",
    "VaGraM",
    "ValueNorm",
    "check_upper_loss",
    "evaluate_value",
    "get_upper_loss",
    "register",
    "registered",
    "upper_loss_class",
]
