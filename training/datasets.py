"""Collections of audio clips with optional labels.

Label specs (the ``--labels`` flag):

- ``folder``: the name of each clip's parent folder;
- ``digit`` / ``speaker``: fields of FSDD-style names ``{digit}_{speaker}_{take}.wav``;
- ``csv:FILE``: a CSV with columns ``path,label`` (paths relative to the data folder, or
  absolute); the CSV then also defines which clips belong to the set;
- ``none`` (or no spec): unlabelled.

Crop/pad policy (``clip_seconds``): clips are used at their own length by default. With a
fixed length, longer clips are cropped (``crop="center"`` for evaluation, ``"random"`` for
training) and shorter ones are zero-padded at the end; :meth:`AudioFolder.load` then also
says how many samples are real, so pooling and encoders can ignore the padding.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from audioclust.models.audio import find_audio_files, load_audio
from audioclust.models.errors import ConfigError, DataError

__all__ = ["AudioFolder", "Clip", "fix_length", "parse_label_spec"]

FSDD_NAME = re.compile(r"^(?P<digit>\d+)_(?P<speaker>[^_]+)_(?P<take>\d+)$")
LabelSpec = Literal["folder", "digit", "speaker", "csv", "none"]
CropMode = Literal["center", "random", "start"]


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str | None = None


def parse_label_spec(spec: str | None) -> tuple[LabelSpec, Path | None]:
    """``"csv:labels.csv"`` -> ``("csv", Path("labels.csv"))``; checks the spec's form."""
    if spec is None or spec == "none":
        return "none", None
    if spec.startswith("csv:"):
        if not spec[4:]:
            raise ConfigError("--labels csv: needs a file, as in csv:labels.csv")
        return "csv", Path(spec[4:])
    if spec in ("folder", "digit", "speaker"):
        return spec, None  # type: ignore[return-value]
    raise ConfigError(f"unknown label spec {spec!r}: use folder, digit, speaker, csv:FILE or none")


def _fsdd_field(path: Path, field: str) -> str:
    m = FSDD_NAME.match(path.stem)
    if m is None:
        raise DataError(f"{path}: name is not {{digit}}_{{speaker}}_{{take}}, cannot label it")
    return m.group(field)


def _read_csv(root: Path, csv_path: Path) -> list[Clip]:
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
                raise DataError(f"{csv_path}: needs a header with columns path,label")
            rows = list(reader)
    except OSError as exc:
        raise DataError(f"{csv_path}: cannot read labels ({exc.strerror or exc})") from exc
    clips = []
    for line, row in enumerate(rows, start=2):
        p = Path(row["path"])
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            raise DataError(f"{csv_path}:{line}: no such audio file {p}")
        clips.append(Clip(p, row["label"]))
    if not clips:
        raise DataError(f"{csv_path}: lists no clips")
    return clips


def fix_length(
    x: np.ndarray, length: int, crop: CropMode = "center", rng: np.random.Generator | None = None
) -> tuple[np.ndarray, int]:
    """Crop or zero-pad ``x`` to ``length`` samples; returns (clip, number of real samples)."""
    n = x.shape[-1]
    if n >= length:
        if crop == "start":
            start = 0
        elif crop == "center":
            start = (n - length) // 2
        else:
            start = int((rng or np.random.default_rng()).integers(0, n - length + 1))
        return x[..., start : start + length], length
    pad = [(0, 0)] * (x.ndim - 1) + [(0, length - n)]
    return np.pad(x, pad), n


class AudioFolder:
    """The audio clips below a folder, optionally labelled; indexable like a Dataset.

    ``folder[i]`` is ``(waveform, label_index)`` with ``label_index = -1`` when unlabelled.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        labels: str | None = None,
        sample_rate: int = 16000,
        clip_seconds: float | None = None,
        crop: CropMode = "center",
        seed: int = 0,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a folder")
        self.label_spec, csv_path = parse_label_spec(labels)
        self.sample_rate = sample_rate
        self.clip_samples = None if clip_seconds is None else round(clip_seconds * sample_rate)
        self.crop: CropMode = crop
        self._rng = np.random.default_rng(seed)
        if self.label_spec == "csv":
            assert csv_path is not None
            self.clips = _read_csv(self.root, csv_path)
        else:
            files = find_audio_files(self.root)
            self.clips = [Clip(p, self._label_for(p)) for p in files]
        if not self.clips:
            raise DataError(f"{self.root}: no audio files found")
        names = sorted({c.label for c in self.clips if c.label is not None}, key=_natural_key)
        self.class_names: list[str] = names
        index = {n: i for i, n in enumerate(names)}
        self.targets = np.array(
            [index[c.label] if c.label is not None else -1 for c in self.clips], dtype=np.int64
        )

    def _label_for(self, path: Path) -> str | None:
        if self.label_spec == "folder":
            return path.parent.name
        if self.label_spec in ("digit", "speaker"):
            return _fsdd_field(path, self.label_spec)
        return None

    @property
    def labelled(self) -> bool:
        return self.label_spec != "none"

    def __len__(self) -> int:
        return len(self.clips)

    def load(self, i: int) -> tuple[np.ndarray, int]:
        """Clip ``i`` under the crop/pad policy: (float32 waveform, real samples)."""
        x = load_audio(self.clips[i].path, sr=self.sample_rate)
        if self.clip_samples is None:
            return x, x.shape[0]
        return fix_length(x, self.clip_samples, self.crop, self._rng)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.load(i)[0], int(self.targets[i])


def _natural_key(s: str) -> tuple:
    # "2" before "10"; digits sort as numbers.
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s))
