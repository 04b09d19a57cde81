"""Random fixed-length crops of cached log-mels, the encoder's training input (SSL
training, SPICE)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from audioclust.training.features import LogMelBank

__all__ = ["CropDataset"]


class CropDataset(Dataset):
    """Random ``crop_frames``-long crops of a :class:`LogMelBank`, normalised.

    Crop offsets are a pure function of (seed, epoch, index), so any number of processes
    and any resume point see the same crops.
    """

    def __init__(self, bank: LogMelBank, crop_frames: int, mean: float, std: float, seed: int):
        self.bank = bank
        self.crop_frames = crop_frames
        self.mean, self.std = mean, std
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.bank)

    def __getitem__(self, i: int) -> torch.Tensor:
        clip = self.bank.clip(i)
        n = clip.shape[1]
        if n < self.crop_frames:
            clip = np.tile(clip, (1, math.ceil(self.crop_frames / n)))
            n = clip.shape[1]
        rng = np.random.default_rng((self.seed, self.epoch, i))
        start = int(rng.integers(0, n - self.crop_frames + 1))
        crop = (clip[:, start : start + self.crop_frames] - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None]
