"""Shared fixtures: the FSDD recordings beside the checkout and small audio files on disk."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def fsdd_root() -> Path:
    """FSDD's recordings: $AUDIOCLUST_FSDD, or ../shared/datasets/fsdd/recordings."""
    env = os.environ.get("AUDIOCLUST_FSDD")
    return Path(env) if env else REPO.parent / "shared" / "datasets" / "fsdd" / "recordings"


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    root = fsdd_root()
    if not root.is_dir():
        pytest.fail(f"FSDD not found at {root}: CI and developers keep ../shared beside the repo "
                    "(or set AUDIOCLUST_FSDD)")
    return root


def copy_fsdd(fsdd: Path, out: Path, digits: range, speakers: tuple[str, ...],
              takes: range) -> Path:
    """Copy the FSDD clips ``{digit}_{speaker}_{take}.wav`` of the given sets into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for digit in digits:
        for speaker in speakers:
            for take in takes:
                name = f"{digit}_{speaker}_{take}.wav"
                shutil.copy(fsdd / name, out / name)
    return out


@pytest.fixture(scope="session")
def fsdd_subset(tmp_path_factory, fsdd_dir) -> Path:
    """120 FSDD clips (digits 0-3, speakers george/jackson/lucas, 10 takes each), copied."""
    return copy_fsdd(fsdd_dir, tmp_path_factory.mktemp("fsdd_subset"), range(4),
                     ("george", "jackson", "lucas"), range(10))


@pytest.fixture
def tone() -> np.ndarray:
    """One second of a 440 Hz tone at 16 kHz, amplitude 0.5."""
    t = np.arange(16000) / 16000
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def write(path: Path, data: np.ndarray, sr: int, **kwargs) -> Path:
    sf.write(path, data, sr, **kwargs)
    return path


@pytest.fixture(scope="session")
def stream_model(tmp_path_factory) -> Path:
    """A small exported model for the streaming tests: random AudioNTT, 4-cluster head.

    Random weights, but deterministic (seeded) and with sharp posteriors, so assignments
    through different sources can be compared exactly.
    """
    import torch

    from audioclust.models.embedder import Embedder, save_embedder
    from audioclust.models.encoders import build_encoder
    from audioclust.models.export import export_model
    from audioclust.models.heads import ClusterHead, HeadConfig, save_head

    d = tmp_path_factory.mktemp("stream_model")
    torch.manual_seed(0)
    embedder = Embedder(build_encoder("audiontt", {"embed_dim": 64, "channels": 16}),
                        mean=-6.0, std=5.0).eval()
    enc = save_embedder(embedder, d / "enc.safetensors", {"method": "random", "data": "none"})
    head = ClusterHead(HeadConfig(64, 4, n_heads=1, hidden_dim=32))
    head.temperature.fill_(0.1)
    hd = save_head(head, d / "head.safetensors", "random", info={"data": "none"})
    out = d / "model.onnx"
    export_model(enc, hd, out, window_seconds=1.0, hop_seconds=0.5,
                 description="random test model")
    return out


@pytest.fixture
def kafka_broker(tmp_path):
    """A tansu broker (memory storage) on a free loopback port, stopped after the test."""
    from kafka_broker import Broker

    broker = Broker(log_path=tmp_path / "tansu.log").start()
    yield broker
    broker.stop(remember=False)


@pytest.fixture(scope="session")
def headfree_encoder(tmp_path_factory) -> Path:
    """A small random AudioNTT encoder (64-d, seeded), saved without a head."""
    import torch

    from audioclust.models.embedder import Embedder, save_embedder
    from audioclust.models.encoders import build_encoder

    d = tmp_path_factory.mktemp("headfree")
    torch.manual_seed(0)
    embedder = Embedder(build_encoder("audiontt", {"embed_dim": 64, "channels": 16}),
                        mean=-6.0, std=5.0).eval()
    return save_embedder(embedder, d / "enc.safetensors", {"method": "random", "data": "none"})


@pytest.fixture(scope="session")
def headfree_model(headfree_encoder, fsdd_subset) -> Path:
    """:func:`headfree_encoder` exported head-free with a novelty reference of FSDD."""
    from audioclust.models.export import export_model

    return export_model(headfree_encoder, None, headfree_encoder.with_name("enc_only.onnx"),
                        reference_data=fsdd_subset).path
