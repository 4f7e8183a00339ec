"""The PyTorch runner: a torchvision-layout ResNet returning c2..c5 (and logits) like the exported graph."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["TorchRunner"]


class TorchRunner:
    """A torchvision-compatible ResNet returning c2..c5 (and logits) like the exported graph.

    `channels_last` and `fp16` (autocast) are for CUDA timing; on CPU the module runs as it is.
    """

    def __init__(self, model: Any, *, device: str = "cpu", output_names: Sequence[str] = ("c2", "c3", "c4", "c5"),
                 channels_last: bool = False, fp16: bool = False) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.channels_last, self.fp16 = channels_last, fp16
        self.output_names = tuple(output_names)
        self.name = f"torch-{self.device.type}"

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        out = {}
        for i in range(1, 5):
            x = getattr(m, f"layer{i}")(x)
            out[f"c{i + 1}"] = x
        if "logits" in self.output_names:
            out["logits"] = m.fc(torch.flatten(m.avgpool(x), 1))
        return {k: out[k] for k in self.output_names}

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(next(iter(feed.values())))).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            out = self.forward(x)
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    def describe(self) -> dict[str, Any]:
        """`{"runtime": "torch", "version", "precision": fp32 or fp16 (autocast), "device"}`."""
        return {"runtime": "torch", "version": torch.__version__, "precision": "fp16" if self.fp16 else "fp32",
                "device": self.device.type}
