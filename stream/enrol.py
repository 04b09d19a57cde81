"""Enrolment: names for clusters, from a few example recordings of a sound.

``audioclust-enrol --model M --state S --name dog FILES...`` cuts the example files into
the stream's windows (window, hop and energy gate as ``audioclust-stream`` uses them),
embeds them with the model and, in the state file S, either names the cluster the
examples fall in or adds a named cluster of its own. ``audioclust-stream --state S`` then
writes each window's ``label``: the name of its cluster, null when it has none.

Names are **global**: one enrolment serves every stream (a user enrols "dog" once, not per
microphone). Two kinds of cluster can carry one:

- a **head** cluster c < K (models with a head; its id means the same sound on every
  stream). The examples *fall in* c when half or more of their audible windows
  (:data:`~audioclust.stream.openset.MAJORITY`, the open-set clusterer's notion of "one
  cluster") are not novel and have c as the head's most probable cluster. Then c gets the
  name, and nothing else changes.
- an **enrolled** cluster, otherwise (always with a head-free model, whose own clusters are
  per stream). It gets the next id from :data:`ENROLLED_BASE` on (10⁹, 10⁹ + 1, ...; an id
  is never reused, even after ``--remove``): head ids are below K and the clusters a stream
  discovers count up from K by at most one per window, so they would need 10⁹ windows
  (over 15 years of one stream at two windows a second) to reach this range. Its centroid
  is the mean direction of the examples in the heads' unit space of the model's novelty
  reference (fixed, the same for every stream), and its radius follows the open-set
  clusterer's rule (:mod:`audioclust.stream.openset`): the examples' leave-one-out
  similarities, on the scale of an exact centroid, give the 5 % quantile and the mean,
  each shrunk towards the training audio's cluster scale (ρ₀, m₀ of the reference) with
  :data:`~audioclust.stream.openset.PRIOR_WEIGHT`, and the radius for windows is that
  radius times the centroid factor g(n, m) of n examples. No fixed threshold: a model
  without a reference with a cluster scale can only name head clusters.

The examples of an existing name are added to it (an enrolled cluster pools its examples;
a head name is confirmed when they fall in the same cluster). Examples that fall in a
cluster named otherwise (half or more of their windows in an enrolled cluster's radius, or
in a named head cluster) are refused: one sound, one name.

An enrolled cluster of a head model also records where its examples' windows fell (their
head clusters, and whether some were novel): on the stream it claims only windows in one
of those places, so a sound whose examples all lie in head cluster 3 or among novel audio
does not take windows the head puts elsewhere (measured in ``docs/benchmarks.md``).

On the stream, a window within an enrolled cluster's radius (the most similar such
cluster; with a head, where its examples fell) is reported with that cluster's id,
whatever the head or the stream's discovered clusters would say; its ``confidence`` is
p(c|x) ∝ exp(cos(x, μ_c)/τ) over the enrolled clusters (τ: ``[openset] temperature``),
``similarity`` its cosine to the centroid, and it moves neither the stream's prior nor
its discovered clusters. Enrolled clusters do not adapt online: a stream's records depend
only on its own windows and the enrolment.

The state file keeps the enrolment: its JSON document holds ``enrolment`` (``next_id`` and
the named clusters: name, cluster, kind, windows, files, heads (where the examples fell;
-1: novel)) and each enrolled cluster's
example vectors are the member ``enrolment.<id>`` (float32, one row per window), from
which centroid and radius are recomputed on load. The stream reads the names when it
starts; enrol while it is stopped (a running service writes its own copy of the state at
its next save).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audioclust.models.errors import UserError
from audioclust.models.reference import NoveltyReference
from audioclust.stream.openset import (
    MAJORITY,
    MEMBER_QUANTILE,
    PRIOR_WEIGHT,
    centroid_factor,
    loo_similarities,
)

__all__ = ["ENROLLED_BASE", "EnrolError", "Enrolment", "Match", "NamedCluster", "main"]

PROG = "audioclust-enrol"
#: First id of an enrolled cluster.
ENROLLED_BASE = 1_000_000_000
#: The state file's array members of enrolled clusters: ``enrolment.<id>``.
MEMBER_PREFIX = "enrolment."
#: The state document's entry.
DOC_KEY = "enrolment"
MAX_NAME = 64
#: In :attr:`NamedCluster.heads`: some of the examples' windows were novel.
NOVEL = -1


class EnrolError(UserError, ValueError):
    """An enrolment that cannot be made (the message is one line; nothing has changed)."""


@dataclass(frozen=True)
class Match:
    """A window that falls in an enrolled cluster."""

    cluster: int
    label: str
    confidence: float
    similarity: float


@dataclass
class NamedCluster:
    name: str
    cluster: int
    kind: str  # "head" or "enrolled"
    windows: int
    files: list[str] = field(default_factory=list)
    #: Enrolled, with a head: where its examples' windows fell (head clusters; NOVEL).
    heads: list[int] = field(default_factory=list)
    #: Enrolled: the examples' unit vectors (n, d), float32.
    members: np.ndarray | None = None
    centroid: np.ndarray | None = None
    radius: float = 1.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "cluster": self.cluster, "kind": self.kind,
                               "windows": self.windows, "files": len(self.files)}
        if self.centroid is not None:  # enrolled, and measured with the model
            out["radius"] = round(self.radius, 6)
        return out


def check_name(name: str) -> str:
    """A name as given, or EnrolError when it cannot be one."""
    if not name.strip() or len(name) > MAX_NAME or not name.isprintable() or name != name.strip():
        raise EnrolError(f"name {name[:80]!r}: use 1 to {MAX_NAME} printable characters, "
                         "without leading or trailing spaces")
    return name


class Enrolment:
    """The named clusters of one model, shared by every stream."""

    def __init__(self, reference: NoveltyReference | None = None, n_clusters: int = 0,
                 temperature: float = 0.1):
        self.reference = reference
        self.n_clusters = n_clusters
        self.temperature = temperature
        self.named: dict[str, NamedCluster] = {}  # in enrolment order
        self.next_id = ENROLLED_BASE
        self._rebuild()

    # --- the stream's side --------------------------------------------------------------

    def _rebuild(self) -> None:
        self._labels = {c.cluster: c.name for c in self.named.values()}
        enrolled = [c for c in self.named.values() if c.kind == "enrolled"]
        self._ids = np.array([c.cluster for c in enrolled], dtype=np.int64)
        self._names = [c.name for c in enrolled]
        dim = self.reference.dim if self.reference is not None else 0
        self._centroids = np.array([c.centroid for c in enrolled]).reshape(len(enrolled), dim)
        self._radii = np.array([c.radius for c in enrolled], dtype=np.float64)
        self._heads = [frozenset(c.heads) for c in enrolled]

    def label(self, cluster: int | None) -> str | None:
        return None if cluster is None else self._labels.get(cluster)

    def match(self, embedding: np.ndarray, top: int | None = None,
              novel: bool = False) -> Match | None:
        """The enrolled cluster whose radius holds the window (the most similar), or None.
        With a head (``top``: the window's head cluster), a cluster claims only windows
        where its examples fell: in one of its examples' head clusters, or novel when some
        of its examples were."""
        if self._ids.size == 0:
            return None
        assert self.reference is not None
        sims = self._centroids @ self.reference.unit(embedding)[0]
        inside = sims >= self._radii
        if top is not None:
            where = NOVEL if novel else top
            inside &= np.array([where in h for h in self._heads])
        if not inside.any():
            return None
        best = int(np.argmax(np.where(inside, sims, -np.inf)))
        logits = (sims - sims[best]) / self.temperature
        confidence = float(1.0 / np.exp(logits).sum())
        return Match(int(self._ids[best]), self._names[best], round(confidence, 6),
                     round(float(sims[best]), 6))

    # --- enrolling ----------------------------------------------------------------------

    def _radius(self, members: np.ndarray) -> tuple[np.ndarray, float]:
        """Centroid direction and window radius of a cluster of these unit vectors."""
        ref = self.reference
        assert ref is not None and ref.cluster_radius is not None \
            and ref.cluster_similarity is not None
        n = members.shape[0]
        total = members.astype(np.float64).sum(0)
        centroid = total / max(float(np.linalg.norm(total)), 1e-12)
        rho0, m0 = ref.cluster_radius, ref.cluster_similarity
        s = loo_similarities(members.astype(np.float64))
        if s.size:  # against n - 1 members: divided by g(n - 1) onto the exact scale
            s = s / float(centroid_factor(n - 1, m0))
            w = float(s.size)
            mean = (PRIOR_WEIGHT * m0 + w * float(s.mean())) / (PRIOR_WEIGHT + w)
            exact = (PRIOR_WEIGHT * rho0 + w * float(np.quantile(s, MEMBER_QUANTILE))) \
                / (PRIOR_WEIGHT + w)
        else:
            mean, exact = m0, rho0
        return centroid, float(exact * centroid_factor(n, mean))

    def _fill(self, c: NamedCluster) -> None:
        assert c.members is not None
        c.centroid, c.radius = self._radius(c.members)
        c.windows = int(c.members.shape[0])

    def _where(self, embeddings: np.ndarray, posteriors: np.ndarray | None
               ) -> list[int | None]:
        """Per window: its head cluster (the head's argmax), NOVEL, or None head-free."""
        if posteriors is None:
            return [None] * embeddings.shape[0]
        tops = np.argmax(posteriors, axis=1)
        if self.reference is not None:
            tops = np.where(self.reference.is_novel(self.reference.novelty(embeddings)), NOVEL,
                            tops)
        return [int(t) for t in tops]

    def _falls_in(self, embeddings: np.ndarray, posteriors: np.ndarray | None
                  ) -> tuple[NamedCluster | None, int | None, float]:
        """(enrolled cluster the examples fall in, head cluster they fall in, its share)."""
        n = embeddings.shape[0]
        where = self._where(embeddings, posteriors)
        found = (self.match(z, None if w is None else max(w, 0), w == NOVEL)
                 for z, w in zip(embeddings, where, strict=True))
        hits = Counter(m.cluster for m in found if m is not None)
        if hits:
            cid, k = hits.most_common(1)[0]
            if k >= MAJORITY * n:
                return next(c for c in self.named.values() if c.cluster == cid), None, k / n
        counts = Counter(w for w in where if w is not None and w != NOVEL)
        if counts:
            c, k = counts.most_common(1)[0]
            if k >= MAJORITY * n:
                return None, c, k / n
        return None, None, 0.0

    def add(self, name: str, embeddings: np.ndarray, posteriors: np.ndarray | None,
            files: list[str]) -> str:
        """Enrol ``embeddings`` (n, d) (and the head's ``posteriors``) as ``name``; returns
        what was done, in one line. EnrolError leaves the enrolment as it was."""
        check_name(name)
        z = np.asarray(embeddings, dtype=np.float64)
        if z.ndim != 2 or z.shape[0] == 0:
            raise EnrolError("no audible window in the examples")
        n = z.shape[0]
        other, head, share = self._falls_in(z, posteriors)
        mine = self.named.get(name)
        if other is not None and other.name != name:
            raise EnrolError(f"the examples fall in cluster {other.cluster}, enrolled as "
                             f"{other.name!r} ({share:.0%} of {n} windows): remove it first "
                             "or enrol them under that name")
        if mine is not None and mine.kind == "head":
            if head == mine.cluster:
                mine.windows += n
                mine.files += files
                return (f"{name!r} already names head cluster {head}: {share:.0%} of {n} "
                        "windows fall in it")
            raise EnrolError(f"{name!r} names head cluster {mine.cluster}, and the examples "
                             f"do not fall in it: remove {name!r} first to enrol it anew")
        if mine is not None:  # an enrolled cluster: pool the examples
            self._need_scale()
            units = self.reference.unit(z).astype(np.float32)
            mine.members = np.concatenate([mine.members, units])
            mine.heads = _heads_of(mine.heads, self._where(z, posteriors))
            mine.files += files
            self._fill(mine)
            self._rebuild()
            return (f"added {n} windows to {name!r} (cluster {mine.cluster}, now "
                    f"{mine.windows} windows, radius {mine.radius:.3f})")
        if head is not None:
            taken = self._labels.get(head)
            if taken is not None:
                raise EnrolError(f"the examples fall in head cluster {head}, already named "
                                 f"{taken!r} ({share:.0%} of {n} windows)")
            self.named[name] = NamedCluster(name, head, "head", n, list(files))
            self._rebuild()
            return f"named head cluster {head} {name!r}: {share:.0%} of {n} windows fall in it"
        self._need_scale()
        c = NamedCluster(name, self.next_id, "enrolled", n, list(files),
                         _heads_of([], self._where(z, posteriors)),
                         self.reference.unit(z).astype(np.float32))
        self._fill(c)
        self.named[name] = c
        self.next_id += 1
        self._rebuild()
        return (f"enrolled {name!r} as cluster {c.cluster} from {n} windows "
                f"(radius {c.radius:.3f})")

    def _need_scale(self) -> None:
        ref = self.reference
        if ref is None or ref.cluster_radius is None or ref.cluster_similarity is None:
            raise EnrolError("the examples fall in no head cluster, and the model has no "
                             "novelty reference with a cluster scale to enrol a cluster of "
                             "their own: re-export it with audioclust-export --data DIR")

    def remove(self, name: str) -> NamedCluster:
        c = self.named.pop(name, None)
        if c is None:
            known = ", ".join(repr(k) for k in self.named) or "none"
            raise EnrolError(f"no cluster is named {name[:80]!r} (names: {known[:200]})")
        self._rebuild()
        return c

    # --- state --------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and the document entry that :meth:`load` reads (nothing when empty)."""
        if not self.named and self.next_id == ENROLLED_BASE:
            return {}, {}
        arrays = {f"{MEMBER_PREFIX}{c.cluster}": c.members for c in self.named.values()
                  if c.members is not None}
        clusters = [{"name": c.name, "cluster": c.cluster, "kind": c.kind,
                     "windows": c.windows, "files": c.files, "heads": c.heads}
                    for c in self.named.values()]
        return arrays, {DOC_KEY: {"next_id": self.next_id, "clusters": clusters}}

    def load(self, arrays: dict[str, np.ndarray], doc: dict[str, Any], fit: bool = True) -> None:
        """Restore what :meth:`state` wrote; ValueError (nothing changed) when it does not
        fit this model. ``fit=False`` reads the names only (to list or remove them without
        the model): such an enrolment matches no window."""
        entry = doc.get(DOC_KEY)
        if entry is None:
            self.named, self.next_id = {}, ENROLLED_BASE
            self._rebuild()
            return
        if not isinstance(entry, dict) or not isinstance(entry.get("clusters"), list) \
                or not _is_int(entry.get("next_id")):
            raise ValueError("enrolment: not a table with next_id and clusters")
        named: dict[str, NamedCluster] = {}
        for item in entry["clusters"]:
            c = self._load_one(item, arrays, fit)
            if c.name in named or any(o.cluster == c.cluster for o in named.values()):
                raise ValueError(f"enrolment: {c.name[:60]!r} or cluster {c.cluster} appears "
                                 "twice")
            if c.kind == "enrolled" and not ENROLLED_BASE <= c.cluster < entry["next_id"]:
                raise ValueError(f"enrolment: cluster id {c.cluster} of {c.name[:60]!r} is "
                                 f"outside {ENROLLED_BASE}..{entry['next_id'] - 1}")
            named[c.name] = c
        old = self.named, self.next_id
        self.named, self.next_id = named, int(entry["next_id"])
        try:
            for c in named.values():
                if c.kind == "enrolled" and fit:
                    self._fill(c)
            if fit:
                self._rebuild()
        except Exception:
            self.named, self.next_id = old
            self._rebuild()
            raise

    def _load_one(self, item: Any, arrays: dict[str, np.ndarray], fit: bool) -> NamedCluster:
        ok = (isinstance(item, dict) and isinstance(item.get("name"), str)
              and _is_int(item.get("cluster")) and item.get("kind") in ("head", "enrolled")
              and _is_int(item.get("windows")) and isinstance(item.get("files"), list)
              and all(isinstance(f, str) for f in item["files"])
              and isinstance(item.get("heads", []), list)
              and all(_is_int(h) and h >= NOVEL for h in item.get("heads", [])))
        if not ok:
            raise ValueError(f"enrolment: malformed entry {str(item)[:60]!r}")
        c = NamedCluster(check_name(item["name"]), item["cluster"], item["kind"],
                         item["windows"], list(item["files"]), list(item.get("heads", [])))
        if fit and self.n_clusters and c.kind == "enrolled" and \
                (not c.heads or max(c.heads) >= self.n_clusters):
            raise ValueError(f"enrolment: {c.name!r} was enrolled with another head")
        if c.kind == "head":
            if fit and not 0 <= c.cluster < self.n_clusters:
                raise ValueError(f"enrolment: {c.name!r} names head cluster {c.cluster}, the "
                                 f"model has {self.n_clusters} head clusters")
            return c
        members = arrays.get(f"{MEMBER_PREFIX}{c.cluster}")
        ref = self.reference
        if members is None or members.ndim != 2 or members.shape[0] == 0:
            raise ValueError(f"enrolment: the examples of {c.name!r} are missing")
        if fit and (ref is None or ref.cluster_radius is None or members.shape[1] != ref.dim):
            raise ValueError(f"enrolment: {c.name!r} holds {members.shape[1]}-d examples, "
                             "which this model cannot compare with")
        if members.dtype.kind != "f" or not np.isfinite(members).all():
            raise ValueError(f"enrolment: the examples of {c.name!r} are not finite floats")
        c.members = members.astype(np.float32)
        return c


def _heads_of(known: list[int], where: list[int | None]) -> list[int]:
    """The sorted union of ``known`` and the windows' head clusters (head-free: none)."""
    return sorted(set(known) | {w for w in where if w is not None})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --- the command ---------------------------------------------------------------------------

EPILOG = """\
the rule: with a head, the examples name head cluster c when half or more of their
audible windows are not novel and have c as the head's most probable cluster; otherwise
(and always head-free) they become an enrolled cluster of their own, id 1000000000 on,
whose radius comes from the examples and the model's novelty reference. Names are global:
every stream of the state file gets them. Records of audioclust-stream --state S then
carry "label": the name of the window's cluster (null when it has none).
enrol while the stream is stopped: it reads the names when it starts.
examples:
  audioclust-enrol --state mic.npz --name dog barks/*.wav
  audioclust-enrol --state mic.npz --list --json
  audioclust-enrol --state mic.npz --remove dog
exit codes: 0 done, 1 failure (nothing changed), 2 bad command line.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Name a sound from example recordings: the examples are cut and embedded\n"
                    "as audioclust-stream would, and the cluster they fall in (or a cluster of\n"
                    "their own) gets the name in the stream's state file.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", required=True, help="the stream's state file (.npz); created "
                   "when missing")
    p.add_argument("--model", help="exported .onnx model, or `demo` for the shipped FSDD "
                   "model (default: the general-audio model, as audioclust-stream; pass the "
                   "one the stream runs)")
    p.add_argument("--config", type=Path, help="the stream's TOML or YAML settings (window, "
                   "hop, energy gate, provider)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--name", help="enrol FILES under this name")
    what.add_argument("--list", action="store_true", help="list the named clusters")
    what.add_argument("--remove", metavar="NAME", help="forget a name (an enrolled "
                      "cluster goes with it; its id is not reused)")
    p.add_argument("files", nargs="*", metavar="FILE", help="--name: example audio files or "
                   "folders")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def _model(cfg: Any) -> Any:
    from audioclust.stream.api import open_model

    return open_model(cfg)


def _open(path: Path, model: Any | None) -> tuple[Any, Enrolment]:
    """The state file (an empty one when missing) and its enrolment, checked against the
    model (``None``: names only)."""
    from audioclust.stream.state import StateError, StateFile, read_state_file

    info = None if model is None else model.info
    enrolment = Enrolment(None if info is None else info.reference,
                          0 if info is None else info.n_clusters)
    if not path.exists():
        if model is None:
            raise EnrolError(f"{path}: no such state file")
        return StateFile({"model": info.weights_sha256}), enrolment
    state = read_state_file(path)
    owner = state.doc.get("model")
    if info is not None and owner and owner != info.weights_sha256:
        raise StateError(f"{path}: state belongs to another model ({str(owner)[:12]}…), not "
                         f"{model.path.name}; pass the stream's --model")
    try:
        enrolment.load(state.arrays, state.doc, fit=model is not None)
    except ValueError as exc:
        raise StateError(f"{path}: {' '.join(str(exc).split())[:200]}") from exc
    return state, enrolment


def _save(path: Path, state: Any, enrolment: Enrolment) -> None:
    from audioclust.models.files import check_writable
    from audioclust.stream.state import write_state_file

    arrays = {k: v for k, v in state.arrays.items() if not k.startswith(MEMBER_PREFIX)}
    extra, entry = enrolment.state()
    doc = {k: v for k, v in state.doc.items() if k not in ("version", "streams", DOC_KEY)}
    try:
        check_writable(path)
        write_state_file(path, {**doc, **entry}, state.streams, {**arrays, **extra})
    except OSError as exc:
        raise EnrolError(f"{path}: cannot write the state file ({exc.strerror or exc})") \
            from exc


def example_windows(model: Any, paths: list[str], cfg: Any) -> tuple[list[np.ndarray],
                                                                      list[str]]:
    """The audible windows of the example files, cut as the stream cuts a file, and the
    files; an unreadable file raises its one-line error."""
    from audioclust.models.audio import find_audio_files, load_audio
    from audioclust.stream.gate import EnergyGate
    from audioclust.stream.window import recording_windows

    info = model.info
    sr = info.sample_rate
    window = round((cfg.window_seconds or info.window_seconds) * sr)
    hop = round((cfg.hop_seconds or info.hop_seconds) * sr)
    gate = EnergyGate(cfg.silence_dbfs)
    files = [str(f) for p in paths for f in find_audio_files(p)]
    if not files:
        raise EnrolError(f"no audio file in {', '.join(paths)[:200]}")
    audible: list[np.ndarray] = []
    for f in files:
        cut = recording_windows(load_audio(f, sr), window, hop, sr, info.min_samples)
        audible += [w for w in cut if not gate.silent(w)]
    if not audible:
        raise EnrolError(f"no audible window in the {len(files)} example files (all below "
                         f"the energy gate of {cfg.silence_dbfs:g} dBFS or shorter than the "
                         "model's minimum)")
    return audible, files


def _run(args: argparse.Namespace) -> int:
    from audioclust.stream.config import load_stream_config

    path = Path(args.state)
    cfg = load_stream_config(args.config, {"model": args.model})
    if args.name is None and args.files:
        raise EnrolError("FILE arguments go with --name")
    if args.list or args.remove is not None:
        state, enrolment = _open(path, None)
        if args.remove is not None:
            gone = enrolment.remove(args.remove)
            _save(path, state, enrolment)
            _say(args, f"removed {gone.name!r} (cluster {gone.cluster})",
                 {"removed": gone.summary()})
            return 0
        rows = [c.summary() for c in enrolment.named.values()]
        if args.json:
            print(json.dumps(rows))
        elif not rows:
            print("no named clusters")
        else:
            print(f"{'name':<24} {'cluster':>10}  {'kind':<8} {'windows':>7} {'files':>5}")
            for r in rows:
                print(f"{r['name']:<24} {r['cluster']:>10}  {r['kind']:<8} {r['windows']:>7} "
                      f"{r['files']:>5}")
        return 0
    check_name(args.name)
    if not args.files:
        raise EnrolError("--name needs at least one example FILE (or folder)")
    model = _model(cfg)
    state, enrolment = _open(path, model)
    windows, files = example_windows(model, args.files, cfg)
    z, posteriors = model.embed(windows, cfg.max_batch)
    message = enrolment.add(args.name, z, posteriors, files)
    _save(path, state, enrolment)
    _say(args, message, {"message": message, **enrolment.named[args.name].summary()})
    return 0


def _say(args: argparse.Namespace, text: str, doc: dict[str, Any]) -> None:
    print(json.dumps(doc) if args.json else text)


def main(argv: list[str] | None = None) -> int:
    from audioclust.models.cli import run_command

    args = _parser().parse_args(argv)
    return run_command(PROG, lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
