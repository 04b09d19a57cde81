"""How well ``make run``'s records separate speech from instruments on ``demo-mix.flac``.

Each window is labelled by what it holds most of (samples of a word or of a note, from the
recording's timeline in ``models/assets/make_demo.py``; windows with neither are left
out), then scored against the records' cluster ids: purity and NMI for speech vs
instrument, and for the eight sources (four speakers, four families).

    audioclust-stream --source file models/assets/demo-mix.flac --sink jsonl:runs/mix.jsonl
    python bench/general_demo.py runs/mix.jsonl [--fsdd DIR] [--gm-notes DIR] [--json]

Another mix built the same way, to check the figures hold beyond the shipped one:
``--write OUT.flac --blocks theo:organ,yweweler:reed --take 2 --first-note 8`` writes the
recording (and exits); stream it, then score its records with the same options.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

REPO = Path(__file__).resolve().parents[1]


def _make_demo():
    spec = importlib.util.spec_from_file_location("make_demo",
                                                  REPO / "models/assets/make_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def window_labels(records: list[dict], spans: list[tuple[str, float, float]]) -> list[str | None]:
    """The label of the clip covering most of each record's window (None: only silence)."""
    out: list[str | None] = []
    for rec in records:
        cover: Counter[str] = Counter()
        for label, a, b in spans:
            overlap = min(b, rec["end"]) - max(a, rec["start"])
            if overlap > 0:
                cover[label] += overlap
        out.append(cover.most_common(1)[0][0] if cover else None)
    return out


def purity(truth: list[str], clusters: list[int]) -> float:
    by_cluster: dict[int, Counter[str]] = {}
    for t, c in zip(truth, clusters, strict=True):
        by_cluster.setdefault(c, Counter())[t] += 1
    return sum(max(c.values()) for c in by_cluster.values()) / len(truth)


def score(records: list[dict], spans: list[tuple[str, float, float]]) -> dict:
    labels = window_labels(records, spans)
    rows = [(lab, rec["cluster"]) for lab, rec in zip(labels, records, strict=True)
            if lab is not None and rec["cluster"] is not None]
    source = [lab for lab, _ in rows]
    kind = [lab.split(":")[0] for lab in source]
    clusters = [c for _, c in rows]
    speech = {c for k, c in zip(kind, clusters, strict=True) if k == "speech"}
    music = {c for k, c in zip(kind, clusters, strict=True) if k == "instrument"}
    shared = speech & music
    in_shared = sum(c in shared for c in clusters)
    return {
        "windows": len(records), "scored": len(rows),
        "speech_windows": kind.count("speech"), "instrument_windows": kind.count("instrument"),
        "clusters": len(set(clusters)), "speech_clusters": len(speech),
        "instrument_clusters": len(music), "shared_clusters": len(shared),
        "windows_in_shared_clusters": in_shared,
        "kind_purity": round(purity(kind, clusters), 4),
        "kind_nmi": round(float(normalized_mutual_info_score(kind, clusters)), 4),
        "kind_ari": round(float(adjusted_rand_score(kind, clusters)), 4),
        "source_purity": round(purity(source, clusters), 4),
        "source_nmi": round(float(normalized_mutual_info_score(source, clusters)), 4),
        "novel": int(np.sum([bool(r["novel"]) for r in records])),
    }


def main() -> None:
    shared = REPO.parent / "shared/datasets"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records", type=Path, nargs="?",
                   help="JSON lines of audioclust-stream on demo-mix.flac")
    p.add_argument("--fsdd", type=Path, default=shared / "fsdd/recordings")
    p.add_argument("--gm-notes", type=Path, default=shared / "gm-notes")
    p.add_argument("--json", action="store_true")
    p.add_argument("--blocks", help="SPEAKER:FAMILY,... (default: demo-mix.flac's)")
    p.add_argument("--take", type=int, default=0, help="FSDD take of every word")
    p.add_argument("--first-note", type=int, default=0, help="index of each family's first "
                   "note (in name order)")
    p.add_argument("--write", type=Path, help="write the mix's recording here and exit")
    args = p.parse_args()
    demo = _make_demo()
    blocks = demo.MIX_BLOCKS if args.blocks is None else \
        tuple(tuple(b.split(":", 1)) for b in args.blocks.split(","))
    clips = demo.mix_clips(args.fsdd, args.gm_notes, blocks, args.take, args.first_note)
    if args.write is not None:
        demo._write(args.write, demo._join([c for _, c in clips], demo.MIX_GAP))
        return
    if args.records is None:
        p.error("give the records to score (or --write OUT)")
    spans = demo.timeline(clips, demo.MIX_GAP)
    records = [json.loads(line) for line in args.records.read_text().splitlines()]
    result = score(records, spans)
    print(json.dumps(result) if args.json else
          "\n".join(f"{k:28s} {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
