"""``audioclust-stream``: cluster ids and confidences for every window of a live stream."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from audioclust.models.cli import EXIT_ERROR, UserError, run_command
from audioclust.stream.config import StreamConfig, load_stream_config
from audioclust.stream.sinks import Sink
from audioclust.stream.sources import Source

__all__ = ["EXIT_NO_DEVICE", "main"]

PROG = "audioclust-stream"
#: Exit code when ``--source mic`` finds no input device (distinct from 1: a set-up problem
#: a supervisor may want to tell apart from a crash).
EXIT_NO_DEVICE = 3

log = logging.getLogger("audioclust.stream")

EPILOG = """\
records: one JSON object per window on the sink:
  stream, seq (window index), start, end (seconds on the stream clock),
  cluster (null when silent; ids from K on: discovered on this stream; from 1000000000
  on: enrolled with audioclust-enrol), label (its enrolled name, or null), confidence,
  novel (unlike the training audio), silent, model, timestamp (capture time, unix s, or
  null), level_dbfs, top, nearest, similarity, drift, novelty (fraction of the model's
  training windows more typical than this one; null without a reference), discovered
examples:
  audioclust-stream --source file recordings/ --sink jsonl:out.jsonl
  audioclust-stream --source mic --device "USB" --metrics-port 9100 --state mic.npz
  audioclust-stream --source kafka --bootstrap localhost:9092 --topic audio --group ac
progress and errors go to stderr; exit codes: 0 done, 1 failure (or a file that could
not be read), 2 bad command line, 3 no input device, 130 interrupted.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Give every window of a stream of audio (files, a microphone, a Kafka topic) a "
            "cluster id and a confidence with an exported audioclust model, correcting for "
            "each stream's own cluster prior, flagging novel sounds and drift. Settings: "
            "defaults, then --config FILE (TOML/YAML), then flags."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", required=True, choices=("file", "mic", "kafka"),
                   help="where audio comes from")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="--source file: audio files or folders (one stream per file)")
    p.add_argument("--model", help="exported .onnx model, or demo: the shipped FSDD digits "
                   "model (default: the general-audio model, built into the user's cache by "
                   "audioclust-export --general)")
    p.add_argument("--sink", help="stdout (default), jsonl:FILE (appends) or kafka:TOPIC")
    p.add_argument("--config", type=Path, help="TOML or YAML settings file")
    p.add_argument("--state", help="state file (.npz): restored at start, saved at intervals "
                   "and at shutdown")
    p.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz, /readyz on this "
                   "port (0: any free port, printed on stderr)")
    p.add_argument("--metrics-host", help="address to bind the metrics server (default "
                   "127.0.0.1)")
    g = p.add_argument_group("windowing and batching")
    g.add_argument("--window", type=float, help="window seconds (default: the model's)")
    g.add_argument("--hop", type=float, help="hop seconds (default: the model's)")
    g.add_argument("--max-batch", type=int, help="windows per inference batch (default 16)")
    g.add_argument("--max-wait", type=float, help="seconds a window waits for its batch "
                   "(default 0.05)")
    g.add_argument("--silence-dbfs", type=float, help="energy gate: windows below this RMS "
                   "level are silent (default -50)")
    g.add_argument("--provider", help="ONNX Runtime provider: auto, cpu, cuda (default auto)")
    g.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default 1)")
    f = p.add_argument_group("--source file")
    f.add_argument("--realtime", action="store_true", default=None,
                   help="replay at the pace of the audio instead of as fast as possible")
    f.add_argument("--parallel", type=int, help="files replayed side by side (default 8)")
    m = p.add_argument_group("--source mic")
    m.add_argument("--device", help="input device name (substring) or index (default: the "
                   "system's default input)")
    k = p.add_argument_group("--source kafka / --sink kafka:TOPIC")
    k.add_argument("--bootstrap", help="HOST:PORT of a Kafka broker")
    k.add_argument("--topic", help="topic to consume")
    k.add_argument("--group", help="consumer group")
    k.add_argument("--kafka-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a [kafka] setting (repeatable; VALUE is read as JSON if it parses)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on "
                   "stderr")
    return p


def _kafka_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--kafka-option {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _device(text: str | None) -> str | int | None:
    if text is None:
        return None
    return int(text) if text.strip().isdigit() else text


def _open_sink(spec: str, kafka: Any) -> Sink:
    kind, _, arg = spec.partition(":")
    if kind == "stdout" and not arg:
        from audioclust.stream.sinks.jsonl import StdoutSink

        return StdoutSink()
    if kind == "jsonl" and arg:
        from audioclust.stream.sinks.jsonl import JsonlSink

        return JsonlSink(arg)
    if kind == "kafka" and arg:
        try:
            from audioclust.stream.kafka.sink import KafkaSink
        except ImportError as exc:
            raise UserError(f"the Kafka sink is not available in this build ({exc})") from exc
        return KafkaSink(arg, kafka)
    raise UserError(f"--sink {spec!r}: use stdout, jsonl:FILE or kafka:TOPIC")


def _open_source(args: argparse.Namespace, cfg: StreamConfig, kafka: Any, sample_rate: int,
                 metrics: Any) -> Source:
    if args.source == "file":
        if not args.paths:
            raise UserError("--source file needs at least one PATH (file or folder)")
        from audioclust.stream.sources.file import FileSource

        return FileSource(args.paths, sample_rate, cfg.file, metrics=metrics)
    if args.paths:
        raise UserError(f"PATH arguments are for --source file, not --source {args.source}")
    if args.source == "mic":
        from audioclust.stream.sources.mic import MicSource

        return MicSource(sample_rate, cfg.mic, metrics=metrics)
    try:
        from audioclust.stream.kafka.source import KafkaSource
    except ImportError as exc:
        raise UserError(f"the Kafka source is not available in this build ({exc})") from exc
    return KafkaSource(kafka, sample_rate=sample_rate, metrics=metrics)


def _cluster_registry(args: argparse.Namespace, kafka: Any, info: Any) -> Any:
    """Kafka mode: the group's registry of discovered clusters (None: off, or a model
    that discovers none)."""
    ref = info.reference
    if args.source != "kafka" or not kafka.cluster_registry or ref is None \
            or ref.cluster_radius is None:
        return None
    from audioclust.stream.kafka.registry import KafkaClusterRegistry

    return KafkaClusterRegistry(kafka, ref, info.weights_sha256)


def _settings(args: argparse.Namespace) -> StreamConfig:
    """The defaults, then ``--config``, then ``--kafka-option``, then the other flags given."""
    flags = {"bootstrap": args.bootstrap, "topic": args.topic, "group": args.group}
    overrides = {
        "model": args.model, "sink": args.sink, "state": args.state,
        "metrics_port": args.metrics_port, "metrics_host": args.metrics_host,
        "window_seconds": args.window, "hop_seconds": args.hop, "max_batch": args.max_batch,
        "max_wait": args.max_wait, "silence_dbfs": args.silence_dbfs,
        "provider": args.provider, "threads": args.threads,
        "file": {"realtime": args.realtime, "parallel": args.parallel},
        "mic": {"device": _device(args.device)},
        # an unset flag (None) must not mask the same setting given as --kafka-option
        "kafka": {**_kafka_options(args.kafka_option),
                  **{k: v for k, v in flags.items() if v is not None}},
    }
    return load_stream_config(args.config, overrides)


def _serve(args: argparse.Namespace) -> int:
    from audioclust.stream.sources.mic import NoInputDevice

    cfg = _settings(args)
    kafka = cfg.kafka

    # Stop requests arrive from here on; the loop sees them between polls and drains.
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():  # a second request: give up draining
            raise KeyboardInterrupt
        log.info("%s: stopping after the windows in flight", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from audioclust.stream.api import open_model
    from audioclust.stream.metrics import Health, MetricsServer, StreamMetrics
    from audioclust.stream.pipeline import Pipeline, build_assigner

    metrics = StreamMetrics()
    health = Health(cfg.stall_seconds)
    server = None
    if cfg.metrics_port is not None:
        try:
            server = MetricsServer(metrics, health, cfg.metrics_port, cfg.metrics_host).start()
        except OSError as exc:
            raise UserError(f"--metrics-port {cfg.metrics_port}: cannot listen on "
                            f"{cfg.metrics_host} ({exc.strerror or exc})") from exc
        log.info("metrics on http://%s:%d/metrics", cfg.metrics_host, server.port)
    try:
        model = open_model(cfg)
        info = model.info
        log.info("model %s: %d Hz, window %.3g s, hop %.3g s, %s clusters, %s",
                 model.path.name, info.sample_rate, cfg.window_seconds or info.window_seconds,
                 cfg.hop_seconds or info.hop_seconds, info.n_clusters or "head-free",
                 model.provider)
        registry = None
        try:
            source = _open_source(args, cfg, kafka, info.sample_rate, metrics)
            sink = _open_sink(cfg.sink, kafka)
            registry = _cluster_registry(args, kafka, info)
            pipeline = Pipeline(model, source, sink, cfg, metrics, health,
                                build_assigner(model, cfg, registry))
            summary = pipeline.run(stop)
        except NoInputDevice as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return EXIT_NO_DEVICE
        finally:
            if registry is not None:
                registry.close()
        log.info("%s", summary.line())
        failures = getattr(source, "failures", [])
        if failures:
            print(f"{PROG}: error: {len(failures)} of {source.total} files could not be "
                  "read (see above); the others were processed", file=sys.stderr)
            return EXIT_ERROR
        return 0
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("audioclust").setLevel(logging.WARNING if args.quiet else logging.INFO)
    if not os.environ.get("AUDIOCLUST_DEBUG"):
        # kafka-python logs every failed reconnect attempt; the Kafka source reports the
        # broker's state in its own lines, and AUDIOCLUST_DEBUG=1 brings these back.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
        # the service's own model line already names the execution provider
        logging.getLogger("audioclust.models.runtime").setLevel(logging.WARNING)
    return run_command(PROG, lambda: _serve(args))


if __name__ == "__main__":
    sys.exit(main())

