"""How well ``audioclust-enrol``'s rule names a labelled data set's classes.

For each class: ``--examples`` files of it (drawn with ``--seed``) are enrolled alone under
the class's name, as ``audioclust-enrol`` does it (stream windows, energy gate, the
model's embedding, :meth:`Enrolment.add`); then every window of the other files gets the
label the stream would give it: the enrolled cluster whose radius holds it, else the name
of its head cluster when that cluster was named and the window is not novel (the head's
argmax under the training prior: the stream's per-stream prior correction is left out).
Per class: what the examples became (head or enrolled), **recall** (share of the class's
held-out windows that get its name) and **false** (share of the other classes' windows
that get it). Prints JSON lines, then a summary line.

    python bench/enrol_quality.py --data ../shared/datasets/gm-notes --labels folder
    python bench/enrol_quality.py --data ../shared/datasets/fsdd/recordings --labels speaker \\
        --per-class 60
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from audioclust.models.general import demo_model_path
from audioclust.models.runtime import OnnxModel
from audioclust.stream.config import StreamConfig
from audioclust.stream.enrol import EnrolError, Enrolment, example_windows
from audioclust.training.datasets import AudioFolder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--labels", required=True, help="folder, digit, speaker or csv:FILE")
    p.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    p.add_argument("--examples", type=int, default=5, help="files enrolled per class")
    p.add_argument("--per-class", type=int, default=0, help="files per class at most (0: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    model = OnnxModel(args.model or demo_model_path(), threads=1)
    info, cfg = model.info, StreamConfig()
    rng = np.random.default_rng(args.seed)
    by_class: dict[str, list[Path]] = {}
    for clip in AudioFolder(args.data, args.labels).clips:
        by_class.setdefault(str(clip.label), []).append(clip.path)
    files, labels = [], []
    for name in sorted(by_class):
        chosen = list(rng.permutation(by_class[name]))
        if args.per_class:
            chosen = chosen[: args.per_class]
        files += chosen
        labels += [name] * len(chosen)
    windows, owner = [], []
    for i, f in enumerate(files):
        try:
            w, _ = example_windows(model, [str(f)], cfg)
        except EnrolError:  # no audible window
            continue
        windows += w
        owner += [i] * len(w)
    z, post = model.embed(windows, 16)
    owner_arr = np.array(owner)
    win_label = np.array([labels[i] for i in owner])
    tops = None if post is None else np.argmax(post, axis=1)
    novel = info.reference.is_novel(info.reference.novelty(z)) if info.reference else None
    rows = []
    for name in sorted(by_class):
        mine = [i for i, lab in enumerate(labels) if lab == name]
        examples = set(mine[: args.examples])
        ex = np.isin(owner_arr, list(examples))
        e = Enrolment(info.reference, info.n_clusters)
        try:
            message = e.add(name, z[ex], None if post is None else post[ex],
                            [str(files[i]) for i in examples])
        except EnrolError as exc:
            rows.append({"class": name, "error": str(exc)})
            continue
        c = e.named[name]
        got = np.zeros(len(z), dtype=bool)
        for j in np.flatnonzero(~ex):
            m = e.match(z[j], None if tops is None else int(tops[j]),
                        bool(novel is not None and novel[j]))
            if m is not None:
                got[j] = True
            elif tops is not None and c.kind == "head" and not (novel is not None and novel[j]):
                got[j] = int(tops[j]) == c.cluster
        same, other = (win_label == name) & ~ex, win_label != name
        rows.append({"class": name, "kind": c.kind, "example_windows": int(ex.sum()),
                     "radius": round(c.radius, 3) if c.kind == "enrolled" else None,
                     "recall": round(float(got[same].mean()), 3) if same.any() else None,
                     "false": round(float(got[other].mean()), 3), "message": message})
    for r in rows:
        print(json.dumps(r))
    ok = [r for r in rows if "recall" in r and r["recall"] is not None]
    print(json.dumps({"summary": True, "classes": len(rows), "windows": len(z),
                      "head": sum(r.get("kind") == "head" for r in rows),
                      "enrolled": sum(r.get("kind") == "enrolled" for r in rows),
                      "mean_recall": round(float(np.mean([r["recall"] for r in ok])), 3),
                      "mean_false": round(float(np.mean([r["false"] for r in ok])), 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
