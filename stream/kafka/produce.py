"""``audioclust-produce``: publish recordings (or the microphone) to Kafka in audioclust's format.

Each file becomes one stream (id: the file name without its extension, or ``--stream-id``
for a single file), cut into chunks of ``--chunk-seconds``, sent as raw PCM (or WAV/FLAC)
with the headers of ``docs/kafka.md`` and keyed by stream id so a stream stays on one
partition, in order. The last chunk of a file carries ``end-of-stream: 1``.
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from audioclust.models.audio import find_audio_files, load_audio
from audioclust.models.cli import UserError, run_command
from audioclust.stream.kafka.messages import EncodedMessage, encode_container, encode_pcm

__all__ = ["Publisher", "chunk_messages", "main"]

PROG = "audioclust-produce"

EPILOG = """\
formats:
  int16 / float32   raw little-endian PCM with sample-rate, dtype and channels headers
  wav / flac        a small 16-bit container per chunk (content-type audio/wav, audio/flac)

Every message carries stream-id, seq (0, 1, 2, ... per stream), offset (first sample on
the stream clock, at the file's rate), timestamp (capture time of the first sample in
--realtime and --mic mode, send time otherwise) and, on a file's last chunk,
end-of-stream: 1. See docs/kafka.md.

examples:
  audioclust-produce --bootstrap localhost:9092 --topic audio recordings/
  audioclust-produce --bootstrap localhost:9092 --topic audio --realtime --parallel 8 a.wav b.wav
  audioclust-produce --bootstrap localhost:9092 --topic audio --mic --seconds 30
"""


@dataclass
class _Stream:
    name: str
    samples: np.ndarray
    rate: int


def chunk_messages(samples: np.ndarray, *, stream: str, sample_rate: int, chunk: int,
                   fmt: str = "int16", start_seq: int = 0, realtime_start: float | None = None,
                   end_of_stream: bool = True) -> Iterator[tuple[float, EncodedMessage]]:
    """Messages of one recording: (seconds of audio before this chunk, message) pairs.

    With ``realtime_start`` the timestamp is the capture time the chunk would have had live;
    without it the timestamp is set when the message is made (just before sending).
    """
    n = samples.shape[0]
    for i, lo in enumerate(range(0, n, chunk)):
        piece = samples[lo : lo + chunk]
        ts = (realtime_start + lo / sample_rate) if realtime_start is not None else time.time()
        last = end_of_stream and lo + chunk >= n
        kw = {"stream": stream, "seq": start_seq + i, "sample_rate": sample_rate,
              "offset": lo, "timestamp": round(ts, 6), "end_of_stream": last}
        if fmt in ("wav", "flac"):
            msg = encode_container(piece, fmt=fmt, **kw)
        else:
            msg = encode_pcm(piece, dtype=fmt, **kw)
        yield lo / sample_rate, msg


class Publisher:
    """A producer with pacing and a tally; ``send`` is keyed, ``finish`` waits for acks."""

    def __init__(self, bootstrap: str, topic: str, rate: float | None = None,
                 client: dict | None = None, connect_timeout: float = 10.0):
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.topic, self.rate = topic, rate
        try:
            opts = {"acks": "all", "linger_ms": 5,
                    "bootstrap_timeout_ms": int(connect_timeout * 1000), **(client or {})}
            self.producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), **opts)
        except KafkaError as exc:
            raise UserError(f"cannot reach the Kafka broker at {bootstrap} ({exc})") from exc
        self.messages = self.bytes = 0
        self.failed = 0
        self.t0 = time.monotonic()
        self.first_error: str | None = None

    def send(self, msg: EncodedMessage) -> None:
        if self.rate:
            # Pace against the start, not the previous send, so jitter does not accumulate.
            wait = self.t0 + self.messages / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        future = self.producer.send(self.topic, key=msg.key, value=msg.value,
                                    headers=msg.headers)
        future.add_errback(self._failed)
        self.messages += 1
        self.bytes += len(msg.value)

    def _failed(self, exc: Exception) -> None:
        self.failed += 1
        self.first_error = self.first_error or str(exc)

    def finish(self, timeout: float = 60.0) -> float:
        try:
            self.producer.flush(timeout=timeout)
        finally:
            self.producer.close(timeout=5)
        if self.failed:
            raise UserError(f"{self.failed} of {self.messages} messages were not delivered "
                            f"({self.first_error})")
        return time.monotonic() - self.t0


def _load_streams(paths: list[str], stream_id: str | None,
                  resample_to: int | None = None) -> list[_Stream]:
    files: list[Path] = []
    for p in paths:
        try:
            found = find_audio_files(p)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from exc
        if not found:
            raise UserError(f"{p}: no audio files")
        files.extend(found)
    if stream_id and len(files) > 1:
        raise UserError("--stream-id names one stream: give one file, or leave it out")
    names: dict[str, Path] = {}
    streams = []
    for f in files:
        name = stream_id or f.stem
        if name in names:
            raise UserError(f"{f} and {names[name]} would share stream id {name!r}")
        names[name] = f
        # --resample: the whole recording at once, exactly as --source file does, so that
        # the service sees the same samples either way (per-chunk resampling differs at
        # the chunk edges by the filter's transients).
        x = load_audio(f, sr=resample_to)
        streams.append(_Stream(name, x, resample_to or int(sf.info(f).samplerate)))
    return streams


def _publish_files(args: argparse.Namespace, pub: Publisher, streams: list[_Stream]) -> dict:
    total_audio = sum(s.samples.size / s.rate for s in streams)
    start = time.time()
    t0 = time.monotonic()
    # Up to --parallel recordings are interleaved chunk by chunk, as live streams would be.
    pending = list(streams)
    active: list[tuple[Iterator[tuple[float, EncodedMessage]], float]] = []
    while pending or active:
        while pending and len(active) < args.parallel:
            s = pending.pop(0)
            base = time.monotonic() - t0
            gen = chunk_messages(s.samples, stream=s.name, sample_rate=s.rate,
                                 chunk=max(1, round(args.chunk_seconds * s.rate)),
                                 fmt=args.format,
                                 realtime_start=(start + base) if args.realtime else None)
            active.append((gen, base))
        still = []
        for gen, base in active:
            item = next(gen, None)
            if item is None:
                continue
            at, msg = item
            if args.realtime:  # a chunk is sent once its last sample would have been captured
                chunk_s = args.chunk_seconds
                wait = t0 + base + at + chunk_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            pub.send(msg)
            still.append((gen, base))
        active = still
    return {"streams": len(streams), "audio_seconds": round(total_audio, 3)}


def _mic_rate(args: argparse.Namespace) -> int:
    """The capture rate of the chosen input device; a one-line error when there is none."""
    try:
        import sounddevice as sd
    except OSError as exc:  # PortAudio library missing
        raise UserError(f"no audio input: {exc}") from exc
    try:
        info = sd.query_devices(args.device, "input")
    except (ValueError, sd.PortAudioError) as exc:
        raise UserError(f"no input device{f' {args.device!r}' if args.device else ''}: "
                        f"{exc}") from exc
    return int(args.mic_rate or info["default_samplerate"])


def _publish_mic(args: argparse.Namespace, pub: Publisher, rate: int) -> dict:
    import sounddevice as sd

    block = max(1, round(args.chunk_seconds * rate))
    q: queue.Queue = queue.Queue(maxsize=1000)
    overflows = 0

    captured = 0  # samples PortAudio handed over, including blocks dropped below

    def callback(indata: np.ndarray, frames: int, _t: object, status: object) -> None:
        nonlocal overflows, captured
        if status:
            overflows += 1
        try:
            # the block's place on the stream clock travels with it: a dropped block then
            # shows up as a jump in offset, which the service treats as a gap
            q.put_nowait((time.time() - frames / rate, captured, indata[:, 0].copy()))
        except queue.Full:
            overflows += 1
        captured += frames

    name = args.stream_id or "mic"
    seq = sent = 0
    deadline = time.monotonic() + args.seconds if args.seconds else None
    try:
        with sd.InputStream(device=args.device, channels=1, samplerate=rate,
                            blocksize=block, dtype="float32", callback=callback):
            while deadline is None or time.monotonic() < deadline:
                try:
                    ts, offset, x = q.get(timeout=0.5)
                except queue.Empty:
                    continue
                kw = {"stream": name, "seq": seq, "sample_rate": rate, "offset": offset,
                      "timestamp": round(ts, 6)}
                msg = (encode_container(x, fmt=args.format, **kw)
                       if args.format in ("wav", "flac") else encode_pcm(x, dtype=args.format,
                                                                        **kw))
                pub.send(msg)
                seq += 1
                sent += x.size
    except KeyboardInterrupt:
        pass  # Ctrl-C ends a mic session normally
    except sd.PortAudioError as exc:
        raise UserError(f"audio input failed: {exc}") from exc
    return {"streams": 1, "audio_seconds": round(sent / rate, 3), "overflows": overflows}


def _client_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _positive(text: str) -> float:
    """A finite number > 0 (seconds, messages per second)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number > 0")
    return value


def _bootstrap(text: str) -> str:
    from audioclust.stream.kafka.config import check_bootstrap

    try:
        check_bootstrap(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("kafka.bootstrap: ")) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Publish recordings or the microphone to a Kafka topic as audioclust "
                    "audio messages (keyed by stream id, chunked, with sequence numbers).")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="audio files or folders (searched recursively)")
    p.add_argument("--mic", action="store_true", help="publish the microphone instead")
    p.add_argument("--device", help="input device name or index (with --mic)")
    p.add_argument("--seconds", type=_positive, help="stop the microphone after this long")
    p.add_argument("--mic-rate", type=int, metavar="HZ",
                   help="capture rate (default: the device's own; the service resamples)")
    p.add_argument("--bootstrap", required=True, type=_bootstrap, metavar="HOST:PORT",
                   help="Kafka bootstrap servers (comma-separated)")
    p.add_argument("--topic", required=True, help="topic to publish to")
    p.add_argument("--stream-id", help="stream id (default: file name without extension; "
                   "'mic' for --mic)")
    p.add_argument("--chunk-seconds", type=_positive, default=0.25,
                   help="audio per message (default: %(default)s)")
    p.add_argument("--format", choices=("int16", "float32", "wav", "flac"), default="int16",
                   help="payload format (default: %(default)s)")
    p.add_argument("--resample", type=int, metavar="HZ",
                   help="resample each recording to HZ before chunking (default: send the "
                   "file's own rate; the service resamples each chunk)")
    p.add_argument("--rate", type=_positive, metavar="MSG_PER_S",
                   help="send at most this many messages per second (default: as fast as "
                   "possible)")
    p.add_argument("--realtime", action="store_true",
                   help="send each chunk when it would have been captured live")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="files interleaved at a time, as N live streams (default: "
                   "%(default)s)")
    p.add_argument("--kafka-option", type=_client_option, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="kafka-python producer setting, e.g. security_protocol=SSL "
                   "(repeatable; VALUE is JSON when it parses)")
    p.add_argument("--connect-timeout", type=_positive, default=10.0, metavar="SECONDS",
                   help="give up when the broker cannot be reached within this long "
                   "(default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mic == bool(args.files):
        parser.error("give FILES or --mic (not both)")
    if args.parallel < 1:
        parser.error("--parallel must be >= 1")

    def body() -> int:
        from audioclust.stream.kafka.config import client_options

        client = client_options(dict(args.kafka_option), "producer")
        # Loaded up front so that a bad file fails before anything is sent.
        streams = (_load_streams(args.files, args.stream_id, args.resample) if args.files
                   else [])
        mic_rate = _mic_rate(args) if args.mic else 0  # likewise: no device, no connection
        pub = Publisher(args.bootstrap, args.topic, rate=args.rate, client=client,
                        connect_timeout=args.connect_timeout)
        summary = (_publish_mic(args, pub, mic_rate) if args.mic
                   else _publish_files(args, pub, streams))
        wall = pub.finish()
        summary.update({"topic": args.topic, "messages": pub.messages, "bytes": pub.bytes,
                        "wall_seconds": round(wall, 3),
                        "messages_per_second": round(pub.messages / wall, 1) if wall else None})
        if args.json:
            print(json.dumps(summary))
        else:
            print(f"{PROG}: {pub.messages} messages ({summary['audio_seconds']} s of audio, "
                  f"{summary['streams']} stream(s)) to {args.topic} in {wall:.1f} s",
                  file=sys.stderr)
        return 0

    return run_command(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
