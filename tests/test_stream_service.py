"""audioclust-stream as a running service: /metrics, /healthz, /readyz over HTTP while it
replays in real time, then SIGTERM: drain, flush, state saved, exit 0."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import soundfile as sf
from stream_helpers import ENV, assert_same_records, concat_clips, read_jsonl, reference

from audioclust.models.audio import load_audio
from audioclust.models.runtime import OnnxModel


def scrape(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (all label sets) in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            total += float(m.group(2))
    return total


def test_metrics_move_and_sigterm_drains(stream_model, fsdd_subset, tmp_path):
    rec = tmp_path / "long.wav"
    sf.write(rec, concat_clips(sorted(fsdd_subset.iterdir())[:30]), 8000, subtype="PCM_16")
    out, state = tmp_path / "o.jsonl", tmp_path / "state.npz"
    launched = time.monotonic()  # before the service's own clock starts: bounds hold
    proc = subprocess.Popen(
        [sys.executable, "-m", "audioclust.stream.cli", "--source", "file", str(rec),
         "--realtime", "--model", str(stream_model), "--sink", f"jsonl:{out}",
         "--state", str(state), "--metrics-port", "0", "--max-wait", "0.01"],
        stderr=subprocess.PIPE, text=True, env=ENV)
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()

    def wait_for(pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)
                continue
            seen.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no {pattern!r} in: {''.join(seen)}")

    try:
        port = int(wait_for(r"metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1))
        wait_for(r"ready: file source open")
        base = f"http://127.0.0.1:{port}"
        assert scrape(f"{base}/healthz") == (200, "ok\n")
        assert scrape(f"{base}/readyz") == (200, "ready\n")
        assert scrape(f"{base}/nothing")[0] == 404

        def windows(text: str) -> float:
            return metric(text, "audioclust_windows_total")

        def outcomes(text: str) -> float:
            return sum(metric(text, f"audioclust_{n}_total") for n in
                       ("assignments", "novel_windows", "silent_windows"))

        def scrape_until(done, what: str, timeout: float = 60) -> tuple[str, float]:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                text = scrape(f"{base}/metrics")[1]
                seen_at = time.monotonic()
                if done(text):
                    return text, seen_at
                assert proc.poll() is None, "".join(seen)
                time.sleep(0.05)
            raise AssertionError(f"no {what} within {timeout} s")

        # each window is counted once with its outcome; a scrape may fall between the two
        # counts of the window being written, so wait for a scrape that does not
        before, _ = scrape_until(lambda t: windows(t) >= 2 and outcomes(t) == windows(t),
                                 "windows")
        w0 = windows(before)
        after, at = scrape_until(lambda t: windows(t) >= w0 + 2 and outcomes(t) == windows(t),
                                 "more windows")
        w1 = windows(after)
        # real time: a 1 s window every 0.5 s of audio, and no audio before the launch, so
        # at most 2 windows per second since then (a replay that ran ahead would break it)
        assert w1 <= 2 * (at - launched), (w1, at - launched)
        for name in ("audioclust_inference_latency_seconds_count",
                     "audioclust_end_to_end_latency_seconds_count",
                     "audioclust_batch_size_count"):
            assert metric(after, name) > metric(before, name) > 0, name
        assert "audioclust_queue_depth" in after
        # realtime replay gives capture timestamps, so latency is measured from them: never
        # negative, never longer than the service has been running
        mean = metric(after, "audioclust_end_to_end_latency_seconds_sum") / \
            metric(after, "audioclust_end_to_end_latency_seconds_count")
        assert 0 <= mean <= at - launched
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    m = wait_for(r"stopped: (\d+) windows from 1 streams")
    records = read_jsonl(out)  # every line complete JSON: nothing half-written
    assert len(records) == int(m.group(1)) >= w1
    assert state.is_file()
    # what was written is exactly the start of what a full run gives
    model = OnnxModel(stream_model, threads=1)
    want = reference(model, {str(rec): load_audio(rec, 16000)})
    assert len(records) < len(want)  # stopped midway
    assert_same_records(records, want[: len(records)])
    assert np.all(np.diff([r["timestamp"] for r in records]) > 0)
