"""audioclust-produce: what it publishes, its pacing, summary and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from stream_helpers import alsa_home

from audioclust.models.audio import load_audio
from audioclust.stream.kafka.messages import decode_message
from audioclust.stream.kafka.produce import main

FILES = ["0_george_0.wav", "1_jackson_3.wav", "2_lucas_5.wav"]


@pytest.fixture
def three(tmp_path, fsdd_dir):
    d = tmp_path / "rec"
    d.mkdir()
    for name in FILES:
        (d / name).write_bytes((fsdd_dir / name).read_bytes())
    return d


def _by_stream(messages) -> dict[str, list]:
    out: dict[str, list] = {}
    for m in messages:
        out.setdefault(m.key.decode(), []).append(m)
    return out


def test_publishes_every_file_as_a_keyed_chunked_stream(kafka_broker, three, capsys) -> None:
    b = kafka_broker
    b.create_topic("audio", partitions=3)
    rc = main(["--bootstrap", b.bootstrap, "--topic", "audio", "--chunk-seconds", "0.1",
               "--parallel", "3", "--json", str(three)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["streams"] == 3 and summary["topic"] == "audio"
    got = b.read_all("audio", summary["messages"])
    assert len(got) == summary["messages"]
    streams = _by_stream(got)
    assert set(streams) == {n[:-4] for n in FILES}
    for name, msgs in streams.items():
        assert len({m.partition for m in msgs}) == 1  # keyed: one partition per stream
        msgs.sort(key=lambda m: m.offset)
        decoded = [decode_message(m.value, m.headers, key=m.key, target_rate=8000)
                   for m in msgs]
        assert [d.seq for d in decoded] == list(range(len(msgs)))
        assert [d.end_of_stream for d in decoded] == [False] * (len(msgs) - 1) + [True]
        assert all(d.source_rate == 8000 for d in decoded)  # FSDD's own rate is kept
        audio = np.concatenate([d.samples for d in decoded])
        assert [d.offset for d in decoded] == list(range(0, audio.size, 800))
        ref = load_audio(three / f"{name}.wav", sr=None)
        np.testing.assert_allclose(audio, ref, atol=1 / 32768)


def test_resample_and_float32_keep_the_exact_samples(kafka_broker, three, capsys) -> None:
    b = kafka_broker
    b.create_topic("audio")
    f = three / FILES[0]
    assert main(["--bootstrap", b.bootstrap, "--topic", "audio", "--format", "float32",
                 "--resample", "16000", "--stream-id", "x", "--json", str(f)]) == 0
    n = json.loads(capsys.readouterr().out)["messages"]
    got = b.read_all("audio", n)
    audio = np.concatenate([decode_message(m.value, m.headers, target_rate=16000).samples
                            for m in got])
    np.testing.assert_array_equal(audio, load_audio(f, sr=16000))


def test_rate_paces_the_messages(kafka_broker, three, capsys) -> None:
    b = kafka_broker
    b.create_topic("audio")
    t0 = time.monotonic()
    assert main(["--bootstrap", b.bootstrap, "--topic", "audio", "--rate", "40",
                 "--chunk-seconds", "0.02", "--format", "flac", "--json",
                 str(three / FILES[0])]) == 0
    s = json.loads(capsys.readouterr().out)
    n = s["messages"]
    assert n >= 15
    # n messages at 40/s take at least (n - 1) / 40 s
    assert time.monotonic() - t0 >= (n - 1) / 40 * 0.95
    assert s["messages_per_second"] <= 40 * n / (n - 1) + 1
    m = b.read_all("audio", 1)[0]
    assert dict(m.headers)["content-type"] == b"audio/flac"


def test_errors_are_one_line(tmp_path, three) -> None:
    from kafka_broker import free_port

    cmd = [sys.executable, "-m", "audioclust.stream.kafka.produce", "--bootstrap",
           f"127.0.0.1:{free_port()}", "--topic", "t", "--connect-timeout", "1"]
    r = subprocess.run([*cmd, str(tmp_path / "missing.wav")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "missing.wav" in r.stderr
    r = subprocess.run([*cmd, str(three)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "cannot reach the Kafka broker" in r.stderr.splitlines()[-1]
    r = subprocess.run([*cmd, "--mic", str(three)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    r = subprocess.run([*cmd, "--kafka-option", "bogus=1", str(three)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "bogus" in r.stderr


@pytest.mark.parametrize("flags", [
    ["--rate", "nan"], ["--rate", "inf"], ["--rate", "0"], ["--chunk-seconds", "-1"],
    ["--chunk-seconds", "x"], ["--connect-timeout", "inf"], ["--seconds", "nan"],
    ["--parallel", "0"], ["--bootstrap", "a:b:c"], ["--bootstrap", "host:70000"]])
def test_bad_numbers_and_addresses_are_refused_before_anything_runs(flags, three) -> None:
    cmd = [sys.executable, "-m", "audioclust.stream.kafka.produce", "--bootstrap",
           "127.0.0.1:9", "--topic", "t", *flags, str(three)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr and not last.startswith("usage:")
    assert flags[0] in last or "parallel" in last, last


def test_help_explains_the_format() -> None:
    r = subprocess.run([sys.executable, "-m", "audioclust.stream.kafka.produce", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for word in ("end-of-stream", "--realtime", "--rate", "docs/kafka.md"):
        assert word in r.stdout


def test_mic_publishes_what_the_device_captures(kafka_broker, three, tmp_path) -> None:
    b = kafka_broker
    b.create_topic("audio")
    ref = np.concatenate([load_audio(three / f, sr=None) for f in FILES])
    pcm = np.clip(np.round(ref * 32768), -32768, 32767).astype("<i2")
    raw = tmp_path / "rec.raw"
    np.concatenate([pcm, np.zeros(8000, "<i2")]).tofile(raw)
    r = subprocess.run([sys.executable, "-m", "audioclust.stream.kafka.produce", "--bootstrap",
                        b.bootstrap, "--topic", "audio", "--mic", "--device", "acreplay",
                        "--mic-rate", "8000", "--seconds", "0.5", "--stream-id", "m", "--json"],
                       capture_output=True, text=True, env=alsa_home(tmp_path, raw),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["streams"] == 1 and summary["messages"] >= 3
    got = sorted(b.read_all("audio", summary["messages"]), key=lambda m: m.offset)
    decoded = [decode_message(m.value, m.headers, target_rate=8000) for m in got]
    assert {d.stream for d in decoded} == {"m"}
    assert [d.seq for d in decoded] == list(range(len(decoded)))
    sizes = [d.samples.size for d in decoded]
    offsets = [d.offset for d in decoded]
    # offsets grow by at least each block's size; blocks dropped from the full queue are
    # jumps (gaps for the service), never overlaps
    assert offsets[0] == 0
    assert all(b >= a + n for a, b, n in zip(offsets[:-1], offsets[1:], sizes[:-1], strict=True))
    if summary["overflows"] == 0:
        assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]
    # The first block is the start of the recording, sample for sample. A clockless device
    # overruns PortAudio's buffer now and then, so later blocks are checked to be some
    # stretch of the file rather than the next one.
    full = np.concatenate([pcm, np.zeros(8000, "<i2")])
    assert sizes[0] == 2000
    np.testing.assert_array_equal(decoded[0].samples, pcm[:2000].astype(np.float32) / 32768)
    for d in decoded[1:]:
        block = np.round(d.samples * 32768).astype("<i2")
        starts = np.flatnonzero(full[: full.size - block.size + 1] == block[0])
        assert any(np.array_equal(full[k : k + block.size], block) for k in starts)


def test_mic_without_an_input_device_is_a_one_line_error(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "audioclust.stream.kafka.produce", "--bootstrap",
                        "127.0.0.1:1", "--topic", "audio", "--mic", "--device", "no-such-mic"],
                       capture_output=True, text=True, env=alsa_home(tmp_path, None),
                       timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith("audioclust-produce: error: no input device 'no-such-mic'")
    assert r.stderr.strip().count("\n") == 0
