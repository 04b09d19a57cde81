"""Builds ``demo-fsdd.flac``, the recording ``make run`` streams through the default model.

Three FSDD speakers (george, jackson, lucas) say the digits 0-9 (take 0 of each), one
speaker after the other, with 0.75 s of silence between words: about 39 s of 16 kHz mono.
FSDD is CC BY-SA 4.0 (Zohar Jackson and contributors,
https://github.com/Jakobovski/free-spoken-digit-dataset);
the recording carries the same licence.

    python models/assets/make_demo.py [--fsdd ../shared/datasets/fsdd/recordings]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from audioclust.models.audio import load_audio

SPEAKERS = ("george", "jackson", "lucas")
GAP_SECONDS = 0.75
RATE = 16000


def main() -> None:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fsdd", type=Path,
                   default=here.parents[1].parent / "shared/datasets/fsdd/recordings")
    p.add_argument("-o", "--output", type=Path, default=here / "demo-fsdd.flac")
    args = p.parse_args()
    gap = np.zeros(round(GAP_SECONDS * RATE), dtype=np.float32)
    parts = [gap]
    for speaker in SPEAKERS:
        for digit in range(10):
            parts += [load_audio(args.fsdd / f"{digit}_{speaker}_0.wav", RATE), gap]
    audio = np.concatenate(parts)
    sf.write(args.output, audio, RATE, subtype="PCM_16")
    print(f"{args.output}: {audio.size / RATE:.1f} s")


if __name__ == "__main__":
    main()
