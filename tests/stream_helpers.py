"""Shared helpers of the streaming tests: the reference computation and the CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from audioclust.models.audio import load_audio
from audioclust.models.runtime import OnnxModel
from audioclust.stream.assign import Assigner
from audioclust.stream.config import StreamConfig
from audioclust.stream.gate import rms_dbfs

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def windows_of(audio: np.ndarray, window: int, hop: int, min_samples: int) -> list[tuple]:
    """(index, start, samples) of every window of a whole recording: full windows at
    k·hop, then the tail window the service emits at the end of a stream."""
    out = []
    k = 0
    while k * hop + window <= audio.size:
        out.append((k, k * hop, audio[k * hop : k * hop + window]))
        k += 1
    start = k * hop
    covered = (k - 1) * hop + window if k else 0
    if audio.size - start >= min_samples and audio.size > covered:
        out.append((k, start, audio[start:]))
    return out


def reference(model: OnnxModel, streams: dict[str, np.ndarray],
              config: StreamConfig | None = None, assigner: Assigner | None = None) -> list[dict]:
    """The records the service should write, computed the plain way: each window run
    through the model on its own (no batching, no padding), assigned in stream order."""
    cfg = config or StreamConfig()
    info = model.info
    sr = info.sample_rate
    window = round((cfg.window_seconds or info.window_seconds) * sr)
    hop = round((cfg.hop_seconds or info.hop_seconds) * sr)
    assigner = assigner or Assigner(info.prior, info.embedding_dim, cfg.assign)
    out = []
    for name, audio in streams.items():
        for index, start, x in windows_of(audio, window, hop, info.min_samples):
            silent = rms_dbfs(x) < cfg.silence_dbfs
            rec = {"stream": name, "seq": index, "start": round(start / sr, 6),
                   "end": round((start + x.size) / sr, 6), "silent": silent}
            if silent:
                rec.update(cluster=None, confidence=None, novel=False)
            else:
                z, p = model.embed([x])
                a = assigner.process(name, z[0], p[0])
                rec.update(cluster=a.cluster, confidence=a.confidence, novel=a.novel)
            out.append(rec)
    return out


def load_streams(paths: list[Path], sr: int, names: list[str] | None = None) -> dict:
    return {(names[i] if names else str(p)): load_audio(p, sr=sr) for i, p in enumerate(paths)}


def assert_same_records(got: list[dict], want: list[dict], atol: float = 1e-4) -> None:
    """Same windows with the same outcome, in the same order per stream."""
    def by_stream(records: list[dict]) -> dict[str, list[dict]]:
        d: dict[str, list[dict]] = {}
        for r in records:
            d.setdefault(r["stream"], []).append(r)
        return d

    g, w = by_stream(got), by_stream(want)
    assert sorted(g) == sorted(w)
    for name in w:
        assert len(g[name]) == len(w[name]), name
        for a, b in zip(g[name], w[name], strict=True):
            for key in ("seq", "start", "end", "silent", "cluster", "novel"):
                assert a[key] == b[key], (name, a["seq"], key, a[key], b[key])
            if b["confidence"] is None:
                assert a["confidence"] is None
            else:
                assert abs(a["confidence"] - b["confidence"]) < atol, (name, a, b)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_cli(*args: str, timeout: float = 300, env: dict | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audioclust.stream.cli", *args],
                          capture_output=True, text=True, timeout=timeout, env=env or ENV,
                          cwd=cwd)


def concat_clips(paths: list[Path], sr: int = 8000, gap_seconds: float = 0.1) -> np.ndarray:
    """FSDD clips one after another with short silences: a longer 'live' recording."""
    parts = []
    for p in paths:
        parts += [load_audio(p, sr=sr), np.zeros(round(gap_seconds * sr), np.float32)]
    return np.concatenate(parts)


# An ALSA "file" PCM over the clockless "null" device: PortAudio captures the raw file as
# if from a microphone, as fast as it is read.
ASOUNDRC = """\
pcm.acreplay {{
    type plug
    slave {{ pcm "acfilecore"; format S16_LE; rate {rate}; channels 1 }}
    hint {{ show on; description "audioclust replay device" }}
}}
pcm.acfilecore {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{infile}"
    format "raw"
}}
"""


def alsa_home(tmp: Path, raw: Path | None, rate: int = 8000) -> dict[str, str]:
    """An environment whose ~/.asoundrc defines the replay device (or no device at all)."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    (home / ".asoundrc").write_text("" if raw is None else
                                    ASOUNDRC.format(rate=rate, infile=raw))
    return {**ENV, "HOME": str(home)}
