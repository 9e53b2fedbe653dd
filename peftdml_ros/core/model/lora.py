"""Parameter-efficient fine-tuning: LoRA for Conv2d/Linear, bottleneck adapters, freezing, merge.

LoRA (Hu et al.) adds a low-rank update to a frozen layer: y = W x + (alpha / r) * B A x, with A a
rank-r "down" layer and B an "up" layer initialised to zero, so a fresh LoRA layer computes exactly
the frozen layer. For a k x k convolution A is a k x k conv to r channels with the base layer's
stride and padding and B is a 1 x 1 conv, so the update folds into the base kernel exactly
(`merge_lora`): delta_W[o, i, :, :] = scale * sum_r B[o, r] * A[r, i, :, :].

Adapters are residual bottlenecks (1 x 1 conv or linear down, ReLU, up; the up layer starts at
zero so a fresh adapter is the identity). They stay in the merged model (they are nonlinear).
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import nn

from peftdml_ros.core.errors import ConfigError


class LoRAConv2d(nn.Module):
    """A frozen-able Conv2d plus a rank-`rank` update. Input/output as the base conv."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float) -> None:
        super().__init__()
        if base.groups != 1:
            raise ConfigError("LoRAConv2d wraps groups=1 convolutions only; use a dense conv")
        self.base = base
        self.lora_down = nn.Conv2d(
            base.in_channels,
            rank,
            kernel_size=cast(tuple[int, int], base.kernel_size),
            stride=cast(tuple[int, int], base.stride),
            padding=cast(tuple[int, int], base.padding),
            dilation=cast(tuple[int, int], base.dilation),
            bias=False,
        )
        self.lora_up = nn.Conv2d(rank, base.out_channels, kernel_size=1, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=5**0.5)
        nn.init.zeros_(self.lora_up.weight)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x) + self.scale * self.lora_up(self.lora_down(x))
        return out

    def merged(self) -> nn.Conv2d:
        """A plain Conv2d computing the same function (a new module; self is unchanged)."""
        conv = copy.deepcopy(self.base)
        up = self.lora_up.weight[:, :, 0, 0]  # [out, r]
        down = self.lora_down.weight.flatten(1)  # [r, in * kh * kw]
        delta = (up @ down).reshape(conv.weight.shape) * self.scale
        with torch.no_grad():
            conv.weight.add_(delta)
        return conv


class LoRALinear(nn.Module):
    """A frozen-able Linear plus a rank-`rank` update. Input/output as the base layer."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.lora_down = nn.Linear(base.in_features, rank, bias=False)
        self.lora_up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=5**0.5)
        nn.init.zeros_(self.lora_up.weight)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x) + self.scale * self.lora_up(self.lora_down(x))
        return out

    def merged(self) -> nn.Linear:
        linear = copy.deepcopy(self.base)
        with torch.no_grad():
            linear.weight.add_((self.lora_up.weight @ self.lora_down.weight) * self.scale)
        return linear


class Adapter2d(nn.Module):
    """Residual bottleneck on a [B, C, H, W] feature map: x + up(relu(down(x)))."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, bottleneck, kernel_size=1)
        self.up = nn.Conv2d(bottleneck, channels, kernel_size=1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)  # type: ignore[arg-type]  # bias=True above

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.up(torch.relu(self.down(x)))
        return out


class Adapter1d(nn.Module):
    """Residual bottleneck on [..., C] features."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(channels, bottleneck)
        self.up = nn.Linear(bottleneck, channels)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)  # type: ignore[arg-type]  # bias=True above

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.up(torch.relu(self.down(x)))
        return out


def lora_conv(
    in_channels: int,
    out_channels: int,
    rank: int,
    alpha: float,
    kernel_size: int = 3,
    stride: int = 1,
) -> LoRAConv2d:
    """A k x k conv with 'same' padding (for stride 1) wrapped with LoRA."""
    base = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2)
    nn.init.kaiming_normal_(base.weight, nonlinearity="relu")
    nn.init.zeros_(base.bias)  # type: ignore[arg-type]  # bias=True above
    return LoRAConv2d(base, rank, alpha)


def lora_linear(in_features: int, out_features: int, rank: int, alpha: float) -> LoRALinear:
    base = nn.Linear(in_features, out_features)
    nn.init.kaiming_normal_(base.weight, nonlinearity="relu")
    nn.init.zeros_(base.bias)
    return LoRALinear(base, rank, alpha)


# Modules whose parameters stay trainable after `freeze_backbones`, besides LoRA factors and
# adapters, carry this attribute set to True (projection heads, fusion, detection head).
PEFT_TRAINABLE_ATTR = "peft_trainable"


def mark_trainable(module: nn.Module) -> nn.Module:
    """Mark a module as part of the PEFT-trainable set (see `freeze_backbones`)."""
    setattr(module, PEFT_TRAINABLE_ATTR, True)
    return module


def freeze_backbones(model: nn.Module) -> None:
    """PEFT mode: freeze everything except LoRA factors, adapters and marked modules."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, (LoRAConv2d, LoRALinear)):
            for parameter in (*module.lora_down.parameters(), *module.lora_up.parameters()):
                parameter.requires_grad_(True)
        elif isinstance(module, (Adapter2d, Adapter1d)) or getattr(
            module, PEFT_TRAINABLE_ATTR, False
        ):
            for parameter in module.parameters():
                parameter.requires_grad_(True)


def unfreeze_all(model: nn.Module) -> None:
    """Full fine-tuning: every parameter trainable."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)


def merge_lora(model: nn.Module) -> nn.Module:
    """A copy of `model` with every LoRA layer folded into a plain Conv2d/Linear (for export).

    The copy computes the same function (to float rounding) and has no LoRA branches; `model`
    itself is unchanged.
    """
    merged = copy.deepcopy(model)
    _replace_lora(merged)
    return merged


def _replace_lora(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, (LoRAConv2d, LoRALinear)):
            setattr(module, name, child.merged())
        else:
            _replace_lora(child)
