"""Parameter report: how many parameters a model has and how many are trainable, per module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ParameterReport:
    """Counts of parameters (elements). per_module: top-level child -> (total, trainable)."""

    total_params: int
    trainable_params: int
    per_module: dict[str, tuple[int, int]]

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "trainable_percent": round(self.trainable_percent, 4),
            "per_module": {
                name: {
                    "total_params": total,
                    "trainable_params": trainable,
                    "trainable_percent": round(100.0 * trainable / total, 4) if total else 0.0,
                }
                for name, (total, trainable) in self.per_module.items()
            },
        }

    def format_table(self) -> str:
        lines = [f"{'module':<14}{'total':>12}{'trainable':>12}{'%':>8}"]
        for name, (total, trainable) in self.per_module.items():
            percent = 100.0 * trainable / total if total else 0.0
            lines.append(f"{name:<14}{total:>12,}{trainable:>12,}{percent:>8.2f}")
        lines.append(
            f"{'all':<14}{self.total_params:>12,}{self.trainable_params:>12,}"
            f"{self.trainable_percent:>8.2f}"
        )
        return "\n".join(lines)


def _counts(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def parameter_report(model: nn.Module) -> ParameterReport:
    """Counts of `model` as it is now (call `freeze_backbones` first for the PEFT numbers)."""
    total, trainable = _counts(model)
    per_module = {name: _counts(child) for name, child in model.named_children()}
    return ParameterReport(total, trainable, {k: v for k, v in per_module.items() if v[0]})
