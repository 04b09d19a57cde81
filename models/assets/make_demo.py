"""Builds the shipped recordings: the two ``make run`` demos and the general model's reference.

- ``demo-fsdd.flac``: three FSDD speakers (george, jackson, lucas) say the digits 0-9
  (take 0 of each), one speaker after the other, 0.75 s of silence between words: about
  39 s (the FSDD model's demo, ``--model demo``).
- ``demo-mix.flac``: what ``make run`` streams through the general-audio model: four
  speakers saying the digits (take 0) alternating with four instrument families (keyboard,
  string, brass, flute; four notes each), one block after the other, 0.5 s between
  sounds: about 70 s.
- ``general-reference.flac``: the general model's novelty reference and cluster scale
  (``models/general.py``): equal parts speech and instrument notes, disjoint from both
  demos: all six FSDD speakers say every digit (take 1), and three notes of each of the
  eleven GM-notes families (drawn with seed 0 from the notes the demo does not use), in
  one random order (seed 0), 0.5 s between sounds: about 125 s.

All 16 kHz mono, 16-bit FLAC. FSDD is CC BY-SA 4.0 (Zohar Jackson and contributors,
https://github.com/Jakobovski/free-spoken-digit-dataset); the GM notes are rendered from
the Fluid (R3) General MIDI SoundFont (MIT licence; ``../shared/datasets/gm-notes``); a
recording that holds FSDD speech carries CC BY-SA 4.0.

    python models/assets/make_demo.py [--fsdd DIR] [--gm-notes DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

from audioclust.models.audio import load_audio

RATE = 16000
FSDD_SPEAKERS = ("george", "jackson", "lucas")
MIX_BLOCKS = (("george", "keyboard"), ("jackson", "string"), ("lucas", "brass"),
              ("nicolas", "flute"))
MIX_NOTES = 4
ALL_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
REFERENCE_NOTES = 3


MIX_GAP = 0.5


def _join(clips: list[np.ndarray], gap_seconds: float) -> np.ndarray:
    gap = np.zeros(round(gap_seconds * RATE), dtype=np.float32)
    parts = [gap]
    for clip in clips:
        parts += [clip, gap]
    return np.concatenate(parts)


def timeline(clips: list[tuple[str, np.ndarray]], gap_seconds: float
             ) -> list[tuple[str, float, float]]:
    """(label, start s, end s) of each clip in ``_join``'s recording."""
    gap = round(gap_seconds * RATE)
    out, at = [], gap
    for label, clip in clips:
        out.append((label, at / RATE, (at + clip.size) / RATE))
        at += clip.size + gap
    return out


def mix_clips(fsdd: Path, gm_notes: Path, blocks: tuple[tuple[str, str], ...] = MIX_BLOCKS,
              take: int = 0, first_note: int = 0) -> list[tuple[str, np.ndarray]]:
    """``demo-mix.flac``'s sounds in order (or another mix built the same way), labelled
    ``speech:<speaker>`` or ``instrument:<family>``."""
    out: list[tuple[str, np.ndarray]] = []
    for speaker, family in blocks:
        out += [(f"speech:{speaker}", load_audio(fsdd / f"{d}_{speaker}_{take}.wav", RATE))
                for d in range(10)]
        notes = sorted((gm_notes / family).glob("*.flac"))[first_note:first_note + MIX_NOTES]
        out += [(f"instrument:{family}", load_audio(n, RATE)) for n in notes]
    return out


def _write(path: Path, audio: np.ndarray) -> None:
    sf.write(path, audio, RATE, subtype="PCM_16")
    print(f"{path}: {audio.size / RATE:.1f} s")


def main() -> None:
    here = Path(__file__).resolve().parent
    shared = here.parents[1].parent / "shared/datasets"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fsdd", type=Path, default=shared / "fsdd/recordings")
    p.add_argument("--gm-notes", type=Path, default=shared / "gm-notes")
    p.add_argument("-o", "--out-dir", type=Path, default=here)
    args = p.parse_args()

    def words(speaker: str, take: int) -> list[np.ndarray]:
        return [load_audio(args.fsdd / f"{d}_{speaker}_{take}.wav", RATE) for d in range(10)]

    def notes(family: str) -> list[Path]:
        return sorted((args.gm_notes / family).glob("*.flac"))

    demo = [c for s in FSDD_SPEAKERS for c in words(s, 0)]
    _write(args.out_dir / "demo-fsdd.flac", _join(demo, 0.75))

    mix = [clip for _, clip in mix_clips(args.fsdd, args.gm_notes)]
    _write(args.out_dir / "demo-mix.flac", _join(mix, MIX_GAP))
    in_demo = {n for _, family in MIX_BLOCKS for n in notes(family)[:MIX_NOTES]}

    rng = np.random.default_rng(0)
    speech = [c for s in ALL_SPEAKERS for c in words(s, 1)]
    families = sorted(d.name for d in args.gm_notes.iterdir() if d.is_dir())
    instruments = []
    for family in families:
        free = [n for n in notes(family) if n not in in_demo]
        picks = rng.choice(len(free), REFERENCE_NOTES, replace=False)
        instruments += [load_audio(free[i], RATE) for i in sorted(picks)]
    clips = speech + instruments
    reference = [clips[i] for i in rng.permutation(len(clips))]
    _write(args.out_dir / "general-reference.flac", _join(reference, 0.5))


if __name__ == "__main__":
    main()
