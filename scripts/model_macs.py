"""Multiply-adds per image of the backbones at the resolutions the presets use.

    python scripts/model_macs.py
"""

from __future__ import annotations

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

SETTINGS = [("tf_efficientnet_lite0", 64), ("tf_efficientnet_lite0", 80),
            ("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite2", 260)]


def macs(name: str, size: int) -> float:
    """GMACs of one forward pass on one image (torch's FlopCounterMode counts 2 per MAC)."""
    model = timm.create_model(name, num_classes=10).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() / 2e9


def main() -> None:
    print("| backbone | px | GMACs per image |\n|---|---:|---:|")
    for name, size in SETTINGS:
        print(f"| {name} | {size} | {macs(name, size):.3f} |")


if __name__ == "__main__":
    main()
