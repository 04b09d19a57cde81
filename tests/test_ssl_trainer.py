"""The shared SSL loop: crops, checkpoints without pickle, resume, torchrun/DDP, the CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from audioclust.models.embedder import embed_clips, load_embedder, read_embedder_metadata
from audioclust.training.crops import CropDataset
from audioclust.training.datasets import AudioFolder
from audioclust.training.features import LogMelBank
from audioclust.training.ssl.trainer import SSLConfig, TrainResult, train_ssl
from audioclust.training.train import write_ssl

TINY = {"embed_dim": 32, "channels": 8}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, fsdd_dir) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    for name in sorted(os.listdir(fsdd_dir))[:40]:
        shutil.copy(fsdd_dir / name, out / name)
    return out


def _config(tmp_path: Path, **kw) -> SSLConfig:
    base = dict(method="byola", encoder_config=TINY, epochs=2, batch_size=8, crop_frames=32,
                checkpoint_every=1, cache_dir=str(tmp_path / "cache"),
                byola={"memory_size": 0, "hidden_dim": 32, "projection_dim": 16})
    base.update(kw)
    return SSLConfig(**base)


def test_crops_tile_short_clips_and_are_reproducible():
    data = np.arange(2 * 10, dtype=np.float32).reshape(2, 10)
    bank = LogMelBank(data, np.array([0, 3, 10]))
    ds = CropDataset(bank, crop_frames=5, mean=1.0, std=2.0, seed=7)
    short = ds[0]
    assert short.shape == (1, 2, 5)
    # clip 0 is frames 0..2 repeated; any crop of the tiling is a run of that cycle
    raw = short[0].numpy() * 2.0 + 1.0
    cycle = [0, 1, 2]
    k = cycle.index(int(raw[0, 0]))
    assert raw[0].tolist() == [cycle[(k + j) % 3] for j in range(5)]
    torch.testing.assert_close(ds[1], ds[1])
    ds.set_epoch(1)
    starts = {int(ds[1][0, 0, 0] * 2 + 1) for _ in range(3)}
    assert len(starts) == 1  # same epoch, same crop
    offsets = set()
    for epoch in range(30):
        ds.set_epoch(epoch)
        offsets.add(int(ds[1][0, 0, 0] * 2 + 1) - 3)
    assert offsets == set(range(3))  # clip 1 has 7 frames: offsets 0..2, all reached


def test_train_writes_checkpoints_without_pickle(tiny_data, tmp_path):
    result = train_ssl(_config(tmp_path), AudioFolder(tiny_data), tmp_path / "run",
                       progress=False)
    run = tmp_path / "run"
    assert result.encoder_path == run / "encoder.safetensors"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch_0001.safetensors", "epoch_0002.safetensors"]
    meta = read_embedder_metadata(result.encoder_path)
    assert meta["encoder"] == "audiontt" and meta["encoder_config"]["embed_dim"] == 32
    assert meta["info"]["method"] == "byola" and meta["info"]["epochs"] == 2
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == 2 * (40 // 8)
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 10
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # every file is plain safetensors/JSON: nothing needs pickle to load
    load_file(str(run / "state.safetensors"))
    # save -> load gives identical embeddings
    clips = [AudioFolder(tiny_data).load(i)[0] for i in range(6)]
    a = embed_clips(load_embedder(result.encoder_path), clips)
    b = embed_clips(load_embedder(run / "checkpoints" / "epoch_0002.safetensors"), clips)
    np.testing.assert_array_equal(a, b)
    r = embed_clips(load_embedder(result.encoder_path, random_init=0), clips)
    assert not np.allclose(a, r)  # the control really is another network


def test_resume_continues_where_it_stopped(tiny_data, tmp_path):
    data = AudioFolder(tiny_data)
    config = _config(tmp_path, epochs=3)
    full = train_ssl(config, data, tmp_path / "full", progress=False)
    interrupted = tmp_path / "interrupted"
    _train_epochs_then_stop(config, data, interrupted, stop_after=1)
    state = json.loads((interrupted / "state.json").read_text())
    assert state["epoch"] == 1 and state["step"] == 5
    resumed = train_ssl(config, data, interrupted, resume=True, progress=False)
    assert resumed.epochs_run == 2
    state = json.loads((interrupted / "state.json").read_text())
    assert state["epoch"] == 3 and state["step"] == 15
    # the resumed run is the uninterrupted run: same losses step by step, same weights
    full_state = json.loads((tmp_path / "full" / "state.json").read_text())
    assert state["history"]["loss"] == pytest.approx(full_state["history"]["loss"], abs=1e-6)
    w_full = load_file(str(full.encoder_path))
    w_res = load_file(str(resumed.encoder_path))
    for k in w_full:
        torch.testing.assert_close(w_res[k], w_full[k], rtol=0, atol=1e-6)


def _train_epochs_then_stop(config: SSLConfig, data, out: Path, stop_after: int) -> None:
    """Run ``config`` but stop right after epoch ``stop_after``'s checkpoint, as a crash."""
    import audioclust.training.ssl.trainer as trainer

    real = trainer._save_state

    class Stop(Exception):
        pass

    def save_then_maybe_stop(path, method, opt, meta):
        real(path, method, opt, meta)
        if meta["epoch"] == stop_after:
            raise Stop

    trainer._save_state = save_then_maybe_stop
    try:
        with pytest.raises(Stop):
            train_ssl(config, data, out, progress=False)
    finally:
        trainer._save_state = real


def _cli(*args, env=None, launcher=None) -> subprocess.CompletedProcess:
    cmd = launcher or [sys.executable, "-m", "audioclust.training.train"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)


def _tiny_toml(tmp_path: Path) -> Path:
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        "[ssl]\nbatch_size = 8\ncrop_frames = 32\n"
        "[ssl.encoder_config]\nembed_dim = 32\nchannels = 8\n"
        "[ssl.byola]\nmemory_size = 0\nhidden_dim = 32\nprojection_dim = 16\n"
    )
    return cfg


def test_cli_json_and_errors(tiny_data, tmp_path):
    cfg = _tiny_toml(tmp_path)
    proc = _cli("ssl", "--data", tiny_data, "--out", tmp_path / "run", "--epochs", "1",
                "--config", cfg, "--cache-dir", tmp_path / "c", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["epochs_run"] == 1 and summary["clips_per_second"] > 0
    assert Path(summary["encoder"]).is_file()

    proc = _cli("ssl", "--data", tiny_data, "--out", tmp_path / "none", "--resume", "--config",
                cfg, "--quiet")
    assert proc.returncode == 1 and "nothing to resume from" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _cli("ssl", "--data", tmp_path / "absent", "--out", tmp_path / "x")
    assert proc.returncode == 1 and "not a folder" in proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[ssl]\nepochs = 0\n")
    proc = _cli("ssl", "--data", tiny_data, "--out", tmp_path / "x", "--config", bad)
    assert proc.returncode == 1 and "epochs" in proc.stderr.splitlines()[-1]


def test_write_ssl_writes_the_summary_from_the_result_alone(tmp_path):
    result = TrainResult(encoder_path=tmp_path / "encoder.safetensors", epochs_run=2,
                         seconds=3.14159, clips_per_second=12.345, final_loss=0.5)
    stream, lines = io.StringIO(), []
    write_ssl(result, as_json=True, log=lines.append, stream=stream)
    assert json.loads(stream.getvalue()) == {
        "encoder": str(tmp_path / "encoder.safetensors"), "epochs_run": 2, "seconds": 3.1,
        "clips_per_second": 12.3, "final_loss": 0.5}
    assert lines == []
    write_ssl(result, log=lines.append, stream=stream)
    assert lines == [f"done in 3.1 s (12.3 clips/s); encoder: {result.encoder_path}"]
    assert stream.getvalue().count("\n") == 1  # without --json nothing more on stdout


def test_torchrun_two_processes(tiny_data, tmp_path):
    """DistributedDataParallel + DistributedSampler with gloo, world size 2, on CPU."""
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = _cli("ssl", "--data", tiny_data, "--out", tmp_path / "ddp", "--epochs", "1",
                "--config", _tiny_toml(tmp_path), "--cache-dir", tmp_path / "c", "--json",
                "--quiet", "--threads", "1", env=env,
                launcher=[str(torchrun), "--standalone", "--nproc_per_node", "2", "-m",
                          "audioclust.training.train"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # only rank 0 reports
    state = json.loads((tmp_path / "ddp" / "state.json").read_text())
    # 40 clips, batch 8 per process, 2 processes: 2 steps per epoch (DistributedSampler)
    assert state["step"] == 40 // (8 * 2)
    assert (tmp_path / "ddp" / "encoder.safetensors").is_file()
