"""Inception-v3 (Szegedy et al. 2016) up to its 2048-d pool3 features: the network of
FID, precision/recall and most image-generation metrics.

Module and parameter names equal torchvision's ``inception_v3`` state_dict keys
(``Conv2d_1a_3x3.conv.weight``, ``Mixed_7c.branch_pool.bn.running_var``, ``fc.weight``,
``AuxLogits.*`` when present), so a weights file saved from torchvision, or converted by
pytorch-fid, loads as is. The auxiliary head and ``fc`` are held only so those files load
strictly; features come from the global average pool after ``Mixed_7c``.

The network takes 299 × 299 inputs scaled to [-1, 1]: what torchvision's pretrained
model computes internally (``transform_input=True``) and what pytorch-fid feeds it.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 299
FEATURE_DIM = 2048


class BasicConv2d(nn.Module):
    """conv (no bias) → batch norm (eps 1e-3) → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


C1 = partial(BasicConv2d, kernel_size=1)
C3 = partial(BasicConv2d, kernel_size=3, padding=1)
C1x7 = partial(BasicConv2d, kernel_size=(1, 7), padding=(0, 3))
C7x1 = partial(BasicConv2d, kernel_size=(7, 1), padding=(3, 0))
C1x3 = partial(BasicConv2d, kernel_size=(1, 3), padding=(0, 1))
C3x1 = partial(BasicConv2d, kernel_size=(3, 1), padding=(1, 0))


def avg_pool(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)


class InceptionA(nn.Module):
    """35×35 block: 1×1, 5×5, double 3×3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = C1(in_channels, 64)
        self.branch5x5_1 = C1(in_channels, 48)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = C1(in_channels, 64)
        self.branch3x3dbl_2 = C3(64, 96)
        self.branch3x3dbl_3 = C3(96, 96)
        self.branch_pool = C1(in_channels, pool_features)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(avg_pool(x)),
        ], 1)


class InceptionB(nn.Module):
    """35 → 17 grid reduction."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = C1(in_channels, 64)
        self.branch3x3dbl_2 = C3(64, 96)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    """17×17 block with factorised 7×7 convolutions."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = C1(in_channels, 192)
        self.branch7x7_1 = C1(in_channels, c7)
        self.branch7x7_2 = C1x7(c7, c7)
        self.branch7x7_3 = C7x1(c7, 192)
        self.branch7x7dbl_1 = C1(in_channels, c7)
        self.branch7x7dbl_2 = C7x1(c7, c7)
        self.branch7x7dbl_3 = C1x7(c7, c7)
        self.branch7x7dbl_4 = C7x1(c7, c7)
        self.branch7x7dbl_5 = C1x7(c7, 192)
        self.branch_pool = C1(in_channels, 192)

    def forward(self, x):
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(avg_pool(x)),
        ], 1)


class InceptionD(nn.Module):
    """17 → 8 grid reduction."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = C1(in_channels, 192)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = C1(in_channels, 192)
        self.branch7x7x3_2 = C1x7(192, 192)
        self.branch7x7x3_3 = C7x1(192, 192)
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            b7,
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionE(nn.Module):
    """8×8 block with expanded 1×3 / 3×1 filter banks."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch1x1 = C1(in_channels, 320)
        self.branch3x3_1 = C1(in_channels, 384)
        self.branch3x3_2a = C1x3(384, 384)
        self.branch3x3_2b = C3x1(384, 384)
        self.branch3x3dbl_1 = C1(in_channels, 448)
        self.branch3x3dbl_2 = C3(448, 384)
        self.branch3x3dbl_3a = C1x3(384, 384)
        self.branch3x3dbl_3b = C3x1(384, 384)
        self.branch_pool = C1(in_channels, 192)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(avg_pool(x)),
        ], 1)


class InceptionAux(nn.Module):
    """The auxiliary classifier's layers, held so weights files that include them load."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv0 = C1(in_channels, 128)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.fc = nn.Linear(768, num_classes)


class InceptionV3(nn.Module):
    """Inception-v3 trunk: ``x [B, 3, 299, 299]`` in [-1, 1] → pool3 features ``[B, 2048]``.

    ``num_classes`` and ``aux_logits`` only shape the unused heads so that a weights file
    (torchvision: 1000 classes with the auxiliary head; pytorch-fid: 1008, without) loads.
    """

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = C3(32, 64)
        self.Conv2d_3b_1x1 = C1(64, 80)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits = InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.fc = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{block}")(x)
        return x.mean(dim=(2, 3))  # [B, 2048]: pool3
