"""audioclust-stream over files: end to end in-process and through the CLI, against the model
run directly on the same windows; energy gate; state across runs; bad inputs."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from stream_helpers import (
    assert_same_records,
    concat_clips,
    load_streams,
    read_jsonl,
    reference,
    run_cli,
)

from audioclust.models.audio import load_audio
from audioclust.models.runtime import OnnxModel
from audioclust.stream.assign import Assigner
from audioclust.stream.config import FileConfig, StreamConfig, load_stream_config
from audioclust.stream.gate import EnergyGate, rms_dbfs
from audioclust.stream.metrics import StreamMetrics
from audioclust.stream.pipeline import Pipeline
from audioclust.stream.sinks.jsonl import JsonlSink
from audioclust.stream.sources.file import FileSource, list_files

SR = 16000


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory, fsdd_subset) -> Path:
    """Four 8 kHz recordings of ~6-8 s (ten FSDD clips each): full windows, hops, tails."""
    d = tmp_path_factory.mktemp("long")
    clips = sorted(fsdd_subset.iterdir())
    for i in range(4):
        sf.write(d / f"rec{i}.wav", concat_clips(clips[i * 10 : i * 10 + 10]), 8000,
                 subtype="PCM_16")
    return d


def run_pipeline(model_path: Path, paths: list, out: Path, config: StreamConfig | None = None,
                 metrics: StreamMetrics | None = None) -> tuple[list[dict], Pipeline]:
    model = OnnxModel(model_path, threads=1)
    cfg = config or StreamConfig()
    source = FileSource(paths, model.info.sample_rate, cfg.file, metrics=metrics)
    pipe = Pipeline(model, source, JsonlSink(out), cfg, metrics=metrics)
    pipe.run()
    return read_jsonl(out), pipe


def test_in_process_replay_matches_direct_model_runs(stream_model, long_dir, fsdd_subset,
                                                    tmp_path):
    # small batches and several files at once: windows of different streams share batches
    cfg = StreamConfig(max_batch=5, file=FileConfig(parallel=3, chunk_seconds=0.25))
    metrics = StreamMetrics()
    got, pipe = run_pipeline(stream_model, [long_dir, fsdd_subset], tmp_path / "o.jsonl", cfg,
                             metrics)
    model = OnnxModel(stream_model, threads=1)
    files = list_files([long_dir, fsdd_subset])
    want = reference(model, load_streams([p for _, p in files], SR, [n for n, _ in files]), cfg)
    assert len(got) == len(want) > 120
    assert_same_records(got, want)
    # some full windows (1 s at hop 0.5 s) and some tails, each stream's seq 0, 1, 2, ...
    assert {round(r["end"] - r["start"], 3) for r in got} >= {1.0}
    for name in {r["stream"] for r in got}:
        seqs = [r["seq"] for r in got if r["stream"] == name]
        assert seqs == list(range(len(seqs)))
    assert {r["model"] for r in got} == {f"model@{model.info.weights_sha256[:12]}"}
    assert sum(r["cluster"] is not None for r in got) > 0
    # batching really happened across streams, never above max_batch
    sizes = metrics.batch_size.collect()[0].samples
    count = next(s.value for s in sizes if s.name.endswith("_count"))
    total = next(s.value for s in sizes if s.name.endswith("_sum"))
    assert total == sum(not r["silent"] for r in got) and count < total
    assert next(s.value for s in sizes if s.name.endswith("_bucket")
                and s.labels["le"] == "4.0") < count  # some batches of 5
    assert pipe.summary.windows == len(got)
    assert metrics.windows.labels(source="file")._value.get() == len(got)


def test_output_does_not_depend_on_chunking(stream_model, long_dir, tmp_path):
    a, _ = run_pipeline(stream_model, [long_dir], tmp_path / "a.jsonl",
                        StreamConfig(file=FileConfig(chunk_seconds=0.1, parallel=1)))
    b, _ = run_pipeline(stream_model, [long_dir], tmp_path / "b.jsonl",
                        StreamConfig(max_batch=1, file=FileConfig(chunk_seconds=0.77)))
    assert_same_records(a, b, atol=1e-5)


def test_cli_replay_matches_direct_model_runs(stream_model, fsdd_subset, long_dir, tmp_path):
    proc = run_cli("--source", "file", str(long_dir), str(fsdd_subset / "1_lucas_3.wav"),
                   "--model", str(stream_model), "--max-batch", "4")
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    model = OnnxModel(stream_model, threads=1)
    files = list_files([long_dir, fsdd_subset / "1_lucas_3.wav"])
    want = reference(model, load_streams([p for _, p in files], SR, [n for n, _ in files]))
    assert_same_records(got, want)
    assert f"done: {len(got)} windows from 5 streams" in proc.stderr
    assert "ready" in proc.stderr  # progress goes to stderr, records alone on stdout


def test_window_and_hop_override_and_config_file(stream_model, long_dir, tmp_path):
    conf = tmp_path / "stream.toml"
    conf.write_text('window_seconds = 0.5\nhop_seconds = 0.25\nsilence_dbfs = -30.0\n'
                    '[assign]\nprior_momentum = 0.9\n[file]\nparallel = 2\n')
    out = tmp_path / "o.jsonl"
    proc = run_cli("--source", "file", str(long_dir / "rec0.wav"), "--model", str(stream_model),
                   "--config", str(conf), "--hop", "0.5", "--sink", f"jsonl:{out}")
    assert proc.returncode == 0, proc.stderr
    cfg = load_stream_config(conf, {"hop_seconds": 0.5})
    assert (cfg.window_seconds, cfg.hop_seconds, cfg.assign.prior_momentum) == (0.5, 0.5, 0.9)
    got = read_jsonl(out)
    want = reference(OnnxModel(stream_model, threads=1),
                     load_streams([long_dir / "rec0.wav"], SR), cfg)
    assert_same_records(got, want)
    assert all(r["end"] - r["start"] <= 0.5 + 1e-9 for r in got)
    assert any(r["silent"] for r in got)  # -30 dBFS gates the pauses between digits


def test_energy_gate(stream_model, tone, tmp_path):
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(SR) * 10 ** (-70 / 20)).astype(np.float32)  # -70 dBFS
    audio = np.concatenate([np.zeros(SR, np.float32), quiet, tone, tone])
    sf.write(tmp_path / "gate.wav", audio, SR, subtype="FLOAT")
    assert rms_dbfs(np.zeros(10)) == -200.0 and abs(rms_dbfs(tone) - (-9.03)) < 0.01
    assert EnergyGate(-50).silent(quiet) and not EnergyGate(-50).silent(tone)
    metrics = StreamMetrics()
    got, _ = run_pipeline(stream_model, [tmp_path / "gate.wav"], tmp_path / "o.jsonl",
                          metrics=metrics)
    # windows 0-2 lie in the first 2 s (silence, then -70 dBFS noise): silent
    assert [r["silent"] for r in got] == [True, True, True, False, False, False, False]
    for r in got[:3]:
        assert r["cluster"] is None and r["confidence"] is None and r["novel"] is False
        assert r["level_dbfs"] < -50
    assert all(r["confidence"] is not None for r in got[3:])
    # silent windows never reach the model
    sizes = metrics.batch_size.collect()[0].samples
    assert next(s.value for s in sizes if s.name.endswith("_sum")) == 4
    assert metrics.silent._value.get() == 3


def test_state_saved_and_restored_across_runs(stream_model, long_dir, tmp_path):
    state = tmp_path / "state.npz"
    rec = long_dir / "rec1.wav"
    first = run_cli("--source", "file", str(rec), "--model", str(stream_model),
                    "--state", str(state), "--sink", f"jsonl:{tmp_path / 'a.jsonl'}")
    assert first.returncode == 0, first.stderr and state.is_file()
    second = run_cli("--source", "file", str(rec), "--model", str(stream_model),
                     "--state", str(state), "--sink", f"jsonl:{tmp_path / 'b.jsonl'}")
    assert second.returncode == 0, second.stderr
    assert "restored the state of 1 streams" in second.stderr
    a, b = read_jsonl(tmp_path / "a.jsonl"), read_jsonl(tmp_path / "b.jsonl")
    # the second run continues the first: same as one assigner seeing the recording twice
    model = OnnxModel(stream_model, threads=1)
    assigner = Assigner(model.info.prior, model.info.embedding_dim)
    streams = load_streams([rec], SR)
    assert_same_records(a, reference(model, streams, assigner=assigner))
    assert_same_records(b, reference(model, streams, assigner=assigner))
    # and the restored state shows: centroids exist from the first window on
    first_heard = next(r for r in a if not r["silent"])
    assert first_heard["similarity"] is None
    assert next(r for r in b if not r["silent"])["similarity"] is not None
    # a state file of another model is refused with a clear message
    other = tmp_path / "other.npz"
    Assigner(model.info.prior, model.info.embedding_dim, model_id="0" * 64).save(other)
    proc = run_cli("--source", "file", str(rec), "--model", str(stream_model),
                   "--state", str(other))
    assert proc.returncode == 1 and "belongs to another model" in proc.stderr


def _until(predicate, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def test_state_is_saved_at_intervals_while_running(stream_model, long_dir, tmp_path):
    import shutil
    import threading
    from dataclasses import replace

    state = tmp_path / "state.npz"
    cfg = StreamConfig(state=str(state), state_interval=0.3,
                       file=replace(FileConfig(), realtime=True))
    model = OnnxModel(stream_model, threads=1)
    source = FileSource([long_dir / "rec2.wav"], model.info.sample_rate, cfg.file)
    metrics = StreamMetrics()
    pipe = Pipeline(model, source, JsonlSink(tmp_path / "out.jsonl"), cfg, metrics)
    stop = threading.Event()
    runner = threading.Thread(target=pipe.run, args=(stop,))
    runner.start()
    try:
        def streams_saved() -> int:
            return Assigner(model.info.prior, model.info.embedding_dim,
                            model_id=model.info.weights_sha256).load(state)

        _until(lambda: state.is_file() and streams_saved() == 1, 30, "the stream's state")
        assert runner.is_alive()  # saved mid-run, not only at the end
        first = state.stat().st_mtime_ns
        _until(lambda: state.stat().st_mtime_ns > first, 30, "another save")  # and again
        # a save that fails (here: a folder in the way) is counted and retried, and the
        # service carries on
        while not state.is_dir():  # a save may land between the unlink and the mkdir
            state.unlink(missing_ok=True)
            with contextlib.suppress(FileExistsError):
                state.mkdir()
        (state / "in-the-way").write_text("")
        errors = metrics.errors.labels(kind="state_save")
        _until(lambda: errors._value.get() >= 2, 30, "failed saves")
        assert runner.is_alive()
        shutil.rmtree(state)
        _until(state.is_file, 30, "a save once the way is clear")
    finally:
        stop.set()
        runner.join(timeout=30)
    assert not runner.is_alive()


def test_a_torn_last_line_is_not_glued_to_the_next_record(tmp_path):
    """A process killed in the middle of a write leaves half a line; the next run appends
    to the same file, and its first record must still be a line of its own."""
    out = tmp_path / "o.jsonl"
    out.write_text('{"stream":"a","seq":0}\n{"stream":"a","se')
    sink = JsonlSink(out)
    sink.write([{"stream": "b", "seq": 1}])
    sink.close()
    lines = out.read_text().splitlines()
    assert json.loads(lines[-1]) == {"stream": "b", "seq": 1}
    assert lines[1] == '{"stream":"a","se'  # the torn line stays as it was, on its own
    JsonlSink(out).close()  # a whole file is left alone
    assert out.read_text().count("\n") == 3


def test_a_sink_to_a_device_writes_and_flushes_without_fsync():
    """``--sink jsonl:/dev/null`` (docs/deploy.md's sizing run): fsync refuses a device."""
    sink = JsonlSink("/dev/null")
    sink.write([{"stream": "a", "seq": 0}])
    sink.flush()
    sink.close()
    assert not sink._durable


def test_bad_files_are_reported_and_the_rest_carry_on(stream_model, fsdd_subset, tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    good = fsdd_subset / "2_jackson_4.wav"
    (d / "a_good.wav").write_bytes(good.read_bytes())
    (d / "b_corrupt.wav").write_bytes(b"RIFF" + np.random.default_rng(0).bytes(3000))
    (d / "c_truncated.wav").write_bytes(good.read_bytes()[:2000])
    nan = np.full(8000, 0.1, np.float32)
    nan[100] = np.nan
    sf.write(d / "d_nan.wav", nan, 16000, subtype="FLOAT")
    (d / "e_empty.flac").write_bytes(b"")
    # 44.1 kHz stereo: not an error, resampled to the model's 16 kHz
    x = load_audio(good, sr=44100)
    sf.write(d / "f_44k.wav", np.stack([x, x], 1), 44100)
    sf.write(d / "g_short.wav", np.full(200, 0.3, np.float32), 16000)  # < min_samples
    out = tmp_path / "o.jsonl"
    proc = run_cli("--source", "file", str(d), "--model", str(stream_model),
                   "--sink", f"jsonl:{out}")
    assert proc.returncode == 1
    err = proc.stderr
    assert "b_corrupt.wav: not readable as audio" in err
    assert "c_truncated.wav: truncated" in err
    assert "d_nan.wav: 1 samples are NaN or infinite" in err
    assert "e_empty.flac: empty (0 bytes)" in err
    assert "g_short.wav: ended after 200 samples, shorter than the model's minimum" in err
    assert "4 of 7 files could not be read" in err
    assert err.count("skipped, the other files carry on") == 4
    got = read_jsonl(out)
    assert {Path(r["stream"]).name for r in got} == {"a_good.wav", "f_44k.wav"}
    model = OnnxModel(stream_model, threads=1)
    want = reference(model, {str(d / "a_good.wav"): load_audio(good, SR),
                             str(d / "f_44k.wav"): load_audio(d / "f_44k.wav", SR)})
    assert_same_records(got, want)


def test_command_line_errors(stream_model, fsdd_subset, tmp_path):
    clip = str(fsdd_subset / "0_george_0.wav")
    proc = run_cli("--source", "file", clip, "--model", str(tmp_path / "absent.onnx"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        f"audioclust-stream: error: {tmp_path / 'absent.onnx'}: no such model file"
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    proc = run_cli("--source", "file", clip, "--model", str(tmp_path / "garbage.onnx"))
    assert proc.returncode == 1 and "not a loadable ONNX model" in proc.stderr
    (tmp_path / "kafka.toml").write_text('[kafka]\nmax_poll_records = "x"\n')
    (tmp_path / "nan.toml").write_text("silence_dbfs = nan\n")
    (tmp_path / "binary.toml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\x00")
    (tmp_path / "a-file").write_text("")
    for args, message in [
        # [kafka] is checked even when Kafka is not used
        (["--source", "file", clip, "--config", str(tmp_path / "kafka.toml")],
         "kafka.max_poll_records: expected int, got 'x'"),
        (["--source", "kafka", "--bootstrap", "127.0.0.1:1", "--kafka-option",
          'max_poll_records="x"'], "kafka.max_poll_records: expected int, got 'x'"),
        (["--source", "kafka", "--bootstrap", "127.0.0.1:1", "--kafka-option",
          "request_timeout_ms=[1]"], "kafka.request_timeout_ms: expected int"),
        (["--source", "file", clip, "--config", str(tmp_path / "nan.toml")], "silence_dbfs"),
        (["--source", "file", clip, "--config", str(tmp_path / "binary.toml")],
         f"{tmp_path / 'binary.toml'}: not a text file"),
        # found at start, not when the state is first saved
        (["--source", "file", clip, "--state", str(tmp_path / "a-file" / "state.npz")],
         f"{tmp_path / 'a-file' / 'state.npz'}: cannot write the state file"),
        (["--source", "file"], "needs at least one PATH"),
        (["--source", "file", str(tmp_path / "nowhere")], "no such file or folder"),
        (["--source", "file", clip, "--sink", "carrier-pigeon"], "use stdout, jsonl:FILE"),
        (["--source", "file", clip, "--max-batch", "0"], "max_batch"),
        (["--source", "mic", clip], "PATH arguments are for --source file"),
        (["--source", "file", clip, "--config", str(tmp_path / "none.toml")], "cannot read"),
        (["--source", "kafka", "--bootstrap", "127.0.0.1:1", "--kafka-option",
          "startup_timeout_s=1"], "127.0.0.1:1"),
    ]:
        out = tmp_path / "records.jsonl"
        sink = [] if "--sink" in args else ["--sink", f"jsonl:{out}"]
        proc = run_cli(*args, "--model", str(stream_model), *sink)
        assert proc.returncode == 1, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert not out.exists() or not out.read_text(), (args, "records were written")
    proc = run_cli("--source", "radio")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "cluster (null when silent; ids from K on: discovered" in proc.stdout
