"""The HEp-2 cell classifier (PyTorch; training only) and its ONNX export.

Input: normalised cell crops (N, 2, 64, 64) from appliance/assays/hep2/crops.py (signal,
cell mask). Three heads on one shared trunk: the cell's pattern (17 classes, patterns.NAMES
order), its mitotic state (interphase / metaphase plate stained / plate unstained; the
plate is what separates AC-1 from AC-4/5), and which regions of the cell stain (four
independent yes / no logits, patterns.REGIONS order: a compound cell stains two). The
region head is fitted after the rest, on the trunk's frozen features
(tools/train_hep2.fit_region_head). Plain Conv-BN-ReLU blocks, global mean and max
pooling and linear heads only, so the Q/DQ INT8 graph stays friendly to ONNX Runtime and
TensorRT. Its size is ``width``: at 16, 82 k weights and about 17 M multiply-adds a cell;
at 24 (hep2-cells-v2 to v4), 181 k and about 38 M; at 32 (hep2-cells-v5, and the shipped v6),
320 k and about 67 M: still hundreds of cells a second on a Pi-class CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from appliance.assays.hep2.patterns import NAMES, REGIONS
from appliance.assays.hep2.types import MITOSIS_CLASSES

INPUT_NAME = "crops"
PATTERN_OUTPUT = "pattern_logits"
MITOSIS_OUTPUT = "mitosis_logits"
REGION_OUTPUT = "region_logits"
CROP_PX = 64
IN_CHANNELS = 2


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Hep2Net(nn.Module):
    """(N, 2, 64, 64) crops -> ((N, 17) pattern, (N, 3) mitosis, (N, 4) region logits)."""

    def __init__(self, width: int = 16, max_pool: bool = True) -> None:
        super().__init__()
        w1, w2, w3, w4 = width, width * 2, width * 3, width * 4
        self.trunk = nn.Sequential(
            _block(IN_CHANNELS, w1), _block(w1, w1, stride=2),  # 32x32: fine speckles kept
            _block(w1, w2), _block(w2, w2, stride=2),  # 16x16
            _block(w2, w3), _block(w3, w3, stride=2),  # 8x8
            _block(w3, w4),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        # The global max beside the mean: a few bright dots (AC-7, AC-10) barely move a
        # cell's mean feature but own its max.
        self.max_pool = nn.AdaptiveMaxPool2d(1) if max_pool else None
        feats = w4 * (2 if max_pool else 1)
        self.pattern = nn.Linear(feats, len(NAMES))
        self.mitosis = nn.Linear(feats, len(MITOSIS_CLASSES))
        self.regions = nn.Linear(feats, len(REGIONS))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled trunk features every head reads, (N, feats)."""
        t = self.trunk(x)
        f = torch.flatten(self.pool(t), 1)
        if self.max_pool is not None:
            f = torch.cat([f, torch.flatten(self.max_pool(t), 1)], dim=1)
        return f

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.pattern(f), self.mitosis(f), self.regions(f)


def load_weights(model: Hep2Net, state: dict[str, torch.Tensor]) -> bool:
    """Load a checkpoint's weights; one from before the region head (hep2-cells-v5 and
    earlier) loads too, its region head left as initialised. True when it had one."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("regions.") for k in missing):
        raise RuntimeError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    return not missing


def export_onnx(model: Hep2Net, path: Path) -> None:
    """Write the FP32 ONNX model: input "crops" (N, 2, 64, 64), three named outputs,
    dynamic N."""
    model.eval()
    dummy = torch.zeros(2, IN_CHANNELS, CROP_PX, CROP_PX)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model, (dummy,), str(path), input_names=[INPUT_NAME],
        output_names=[PATTERN_OUTPUT, MITOSIS_OUTPUT, REGION_OUTPUT],
        dynamic_axes={INPUT_NAME: {0: "n"}, PATTERN_OUTPUT: {0: "n"}, MITOSIS_OUTPUT: {0: "n"},
                      REGION_OUTPUT: {0: "n"}},
        opset_version=17, dynamo=False,
    )
