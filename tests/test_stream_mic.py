"""audioclust-stream from a microphone, for real through PortAudio and ALSA.

The input device is an ALSA ``file`` PCM whose ``infile`` is a raw recording: PortAudio
captures that recording as if from a microphone. The ALSA ``null`` slave under it has no
clock, so the "microphone" delivers audio as fast as it is read rather than in real time:
the bounded callback queue fills within milliseconds and every later block is dropped and
counted as an overflow. That exercises overflow counting and gap handling for real; the
recording itself (followed by zeros in the raw file) fits in the queue, so its windows
reach the pipeline intact and must match ``--source file`` on the same samples.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from stream_helpers import alsa_home, assert_same_records, concat_clips, read_jsonl, run_cli


@pytest.fixture(scope="module")
def recording(tmp_path_factory, fsdd_subset) -> tuple[Path, Path]:
    """A 8 kHz 16-bit recording (WAV) and the same samples as raw PCM + 30 s of zeros."""
    d = tmp_path_factory.mktemp("mic")
    audio = concat_clips(sorted(fsdd_subset.iterdir())[40:52])
    pcm = np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2")
    wav = d / "rec.wav"
    sf.write(wav, pcm, 8000, subtype="PCM_16")
    raw = d / "rec.raw"
    np.concatenate([pcm, np.zeros(30 * 8000, "<i2")]).tofile(raw)
    return wav, raw


def test_portaudio_sees_the_replay_device(recording, tmp_path):
    code = "import sounddevice as sd; print(sd.query_devices('acreplay', 'input')['name'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=alsa_home(tmp_path, recording[1]), timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "acreplay", proc.stderr


@pytest.mark.parametrize("which", ["stream_model", "headfree_model"])
def test_mic_replay_gives_the_same_assignments_as_file_mode(which, request, recording,
                                                            tmp_path):
    """With a head, and head-free (the open-set clusterer sees the windows in order)."""
    stream_model = request.getfixturevalue(which)
    wav, raw = recording
    seconds = sf.info(wav).duration
    conf = tmp_path / "mic.yaml"
    # capture at the recording's 8 kHz: the service's streaming resampler takes it to 16 kHz
    conf.write_text("mic:\n  sample_rate: 8000\n  queue_blocks: 150\n")
    out = tmp_path / "mic.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "audioclust.stream.cli", "--source", "mic", "--device",
         "acreplay", "--model", str(stream_model), "--config", str(conf), "--sink",
         f"jsonl:{out}", "--metrics-port", "0"],
        stderr=subprocess.PIPE, text=True, env=alsa_home(tmp_path, raw))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()
    seen: list[str] = []
    port = None
    try:
        deadline = time.monotonic() + 120
        done = False
        while time.monotonic() < deadline and not done:
            try:
                seen.append(lines.get(timeout=0.5))
                if m := re.search(r"metrics on http://127\.0\.0\.1:(\d+)/", seen[-1]):
                    port = int(m.group(1))
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)
            # done once the windows past the end of the recording are written
            done = out.exists() and any(r["start"] > seconds + 1 for r in read_jsonl(out))
        assert done, "".join(seen)
        # The pipeline sees the hole the dropped blocks left only once it has drained the
        # queued blocks before it: under load that can come after the windows above.
        gap_line = re.compile(r'^audioclust_stream_events_total\{kind="gap"\} \S+$', re.M)
        deadline = time.monotonic() + 60
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            if gap_line.search(text) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    while not lines.empty():
        seen.append(lines.get())
    log = "".join(seen)
    assert "capturing from 'acreplay' at 8000 Hz, resampled to 16000 Hz" in log
    # the clockless device overflows the queue: counted, and seen as gaps on the stream
    overflows = float(re.search(r"^audioclust_mic_input_overflows_total (\S+)$", text,
                                re.M).group(1))
    gaps = re.search(r'^audioclust_stream_events_total\{kind="gap"\} (\S+)$', text, re.M)
    assert gaps, f"no gap event within 60 s of the windows; overflows {overflows}"
    gaps = float(gaps.group(1))
    assert overflows > 0 and gaps > 0
    assert "input overflows (audio dropped)" in log
    mic = read_jsonl(out)
    assert {r["stream"] for r in mic} == {"mic"}
    # file mode on the same samples; compare the full windows inside the recording
    proc = run_cli("--source", "file", str(wav), "--model", str(stream_model), "--sink",
                   f"jsonl:{tmp_path / 'file.jsonl'}")
    assert proc.returncode == 0, proc.stderr
    ref = [r for r in read_jsonl(tmp_path / "file.jsonl") if r["end"] - r["start"] == 1.0]
    assert len(ref) >= 8
    got = [r for r in mic if r["seq"] <= ref[-1]["seq"]]
    for r in ref:
        r["stream"] = "mic"
    assert_same_records(got, ref)
    assert sum(r["cluster"] is not None for r in got) > 0
    # after the recording, zeros: silent windows, never clustered
    later = [r for r in mic if r["start"] >= seconds + 0.5]
    assert later and all(r["silent"] and r["cluster"] is None for r in later)


def test_no_input_device(stream_model, recording, tmp_path):
    proc = run_cli("--source", "mic", "--model", str(stream_model),
                   env=alsa_home(tmp_path, None))
    assert proc.returncode == 3, proc.stderr
    assert "audioclust-stream: error: no default input device" in proc.stderr
    assert "input devices: none" in proc.stderr
    proc = run_cli("--source", "mic", "--device", "no-such-mic", "--model", str(stream_model),
                   env=alsa_home(tmp_path, recording[1]))
    assert proc.returncode == 3, proc.stderr
    assert "no input device 'no-such-mic'" in proc.stderr and "'acreplay'" in proc.stderr
