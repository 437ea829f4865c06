"""The HER2 segmentation network (PyTorch; training only).

A small encoder-decoder sized for real time on a 2-core CPU and a Jetson:
three stride-2 stages (1/2, 1/4, 1/8), nearest-neighbour upsampling and
skip concatenations, logits at half resolution (the runtime upsamples them).
Plain Conv-BN-ReLU blocks only, so the Q/DQ INT8 graph stays friendly to both
ONNX Runtime and TensorRT.
"""

from __future__ import annotations

import torch
from torch import nn

from appliance.inference.manifest import InputSpec

CLASSES = ("background", "tumour_nucleus", "other_nucleus", "membrane")
OUTPUT_STRIDE = 2
# The model's input contract, shared by training, quantisation and the manifest: three
# stride-2 stages need sides that are multiples of 8; the runtime resamples every field
# into the band of working scales below (MeasureConfig's defaults).
INPUT_SPEC = InputSpec(name="image", mean=(0.75, 0.70, 0.78), std=(0.20, 0.22, 0.18),
                       multiple_of=8, um_per_px_range=(0.5, 1.0))


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Her2Net(nn.Module):
    """Encoder-decoder: (N, 3, H, W) normalised RGB → (N, 4, H/2, W/2) class logits."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w1, w2, w3 = width, width * 2, width * 3
        self.stem = nn.Sequential(_block(3, w1, stride=2), _block(w1, w1))  # 1/2
        self.down2 = nn.Sequential(_block(w1, w2, stride=2), _block(w2, w2))  # 1/4
        self.down3 = nn.Sequential(  # 1/8; dilation widens the view to whole cells and nests
            _block(w2, w3, stride=2), _block(w3, w3), _block(w3, w3, dilation=2)
        )
        self.up2 = _block(w3 + w2, w2)
        self.up1 = _block(w2 + w1, w1)
        self.head = nn.Conv2d(w1, len(CLASSES), 1)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.stem(x)
        s2 = self.down2(s1)
        s3 = self.down3(s2)
        u2 = self.up2(torch.cat([self.upsample(s3), s2], dim=1))
        u1 = self.up1(torch.cat([self.upsample(u2), s1], dim=1))
        return self.head(u1)
