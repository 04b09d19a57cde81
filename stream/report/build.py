"""From a records file and the audio it came from to the report page.

:func:`match_audio` finds each stream's audio (``--audio`` arguments: files and folders
matched to streams named by their paths, as ``--source file`` names them, or ``ID=PATH``
for any stream id, such as a Kafka stream's); :func:`build_report` chooses and cuts the
snippets and lays out the page. Problems that leave a usable page (a stream without audio,
an unreadable audio file, lines that are not records) become warnings, shown on the page
and returned to the caller.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from audioclust.models.audio import AudioError, find_audio_files
from audioclust.models.errors import ConfigError
from audioclust.stream.report.page import (
    NOVEL,
    NOVEL_COLOUR,
    ClusterView,
    Page,
    Snippet,
    StreamView,
    cluster_colour,
    render,
)
from audioclust.stream.report.records import NO_CLUSTER, Cluster, Records, StreamRecords
from audioclust.stream.report.snippets import AudioFile, Candidate, choose, encode

__all__ = ["AudioMatch", "Report", "ReportConfig", "build_report", "match_audio", "write_report"]

_DUPLICATE = re.compile(r"#\d+$")


@dataclass(frozen=True)
class ReportConfig:
    """Limits that keep the page quick to open and its size independent of how long the
    recordings are (``[report]`` table of a ``--config`` file, or flags)."""

    #: Snippets per cluster (and for the novel windows).
    snippets: int = 6
    #: Clusters with a card and snippets, largest first; smaller ones get a table row.
    max_clusters: int = 60
    #: Streams with a timeline, most windows first; the others get a table row.
    max_streams: int = 50
    #: Longest snippet; a longer window is cut to its middle.
    snippet_seconds: float = 4.0
    #: Most time bins per timeline (each drawn in the colour of its most frequent cluster).
    timeline_bins: int = 800
    #: Page title (default: from the records file's name).
    title: str | None = None

    def __post_init__(self) -> None:
        if self.snippets < 0 or self.max_clusters < 0 or self.max_streams < 0:
            raise ConfigError("snippets, max_clusters and max_streams must be >= 0")
        if not self.snippet_seconds > 0 or self.timeline_bins < 1:
            raise ConfigError("snippet_seconds must be > 0 and timeline_bins >= 1")


@dataclass
class AudioMatch:
    """Which file each stream's snippets are cut from, and what could not be matched."""

    files: dict[str, AudioFile] = field(default_factory=dict)  # stream -> file
    warnings: list[str] = field(default_factory=list)
    unreadable: int = 0  # audio files that could not be read


def _parse_spec(text: str) -> tuple[str | None, Path]:
    """``PATH`` or ``ID=PATH`` (a path that exists as written wins over the ``=`` form)."""
    ident, sep, rest = text.partition("=")
    if sep and ident and rest and not Path(text).exists():
        return ident, Path(rest)
    return None, Path(text)


def _resolved(name: str) -> Path | None:
    try:
        return Path(name).resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def _streams_for_file(f: Path, shown_as: str, suffix: tuple[str, ...],
                      names: list[str]) -> list[str]:
    """Streams named by this file: as given, the same file, or the same trailing path."""
    target = f.resolve()

    def named(name: str, test: Callable[[str], bool]) -> bool:
        # the file source names a file given twice "PATH#2", "PATH#3", ...
        return test(name) or test(_DUPLICATE.sub("", name))

    exact = [n for n in names
             if named(n, lambda b: b == shown_as or _resolved(b) == target)]
    if exact:
        return exact
    # named relative to another working directory: match the trailing path components
    return [n for n in names
            if named(n, lambda b: len(Path(b).parts) >= len(suffix)
                     and Path(b).parts[-len(suffix):] == suffix)]


def match_audio(records: Records, specs: list[str]) -> AudioMatch:
    """Map ``--audio`` arguments onto the streams of ``records``."""
    out = AudioMatch()
    names = list(records.streams)
    opened: dict[Path, AudioFile | None] = {}

    def open_file(p: Path) -> AudioFile | None:
        key = p.resolve()
        if key not in opened:
            try:
                opened[key] = AudioFile(p)
            except AudioError as exc:
                out.warnings.append(f"audio {exc}: its streams get timelines without snippets")
                out.unreadable += 1
                opened[key] = None
        return opened[key]

    for spec in specs:
        ident, path = _parse_spec(spec)
        if ident is not None:
            if ident not in records.streams:
                out.warnings.append(f"--audio {spec}: no stream {ident!r} in the records")
                continue
            f = open_file(path)
            if f is not None:
                out.files[ident] = f
            continue
        if path.is_dir():
            files = find_audio_files(path)
            pairs = [(f, str(path / f.relative_to(path)), (path.resolve().name,
                      *f.relative_to(path).parts)) for f in files]
        else:
            pairs = [(path, str(path), (path.name,))]
        matched = 0
        for f, shown_as, suffix in pairs:
            streams = _streams_for_file(f, shown_as, suffix, names)
            if not streams:
                continue
            af = open_file(f)
            matched += 1
            for s in streams:
                if af is not None:
                    out.files[s] = af
        if not matched:
            if not path.exists():
                out.warnings.append(f"audio {path}: no such file or folder")
                out.unreadable += 1
            else:
                out.warnings.append(
                    f"--audio {spec}: no stream of the records is named by this path (streams "
                    "of --source file are named by the path given there; map others with "
                    "--audio ID=PATH)")
    for name, f in out.files.items():
        s = records.streams[name]
        if s.duration > f.duration + max(0.5, s.window_seconds):
            out.warnings.append(
                f"stream {name}: records reach {s.duration:.1f} s but {f.path} is "
                f"{f.duration:.1f} s long: is it the right file? (windows past its end get "
                "no snippets)")
    return out


@dataclass
class Report:
    html: str
    page: Page
    snippets: int
    warnings: list[str]


def _candidates(streams: list[StreamRecords], files: dict[str, AudioFile],
                mask_of: Callable[[StreamRecords], np.ndarray],
                score_of: Callable[[StreamRecords], np.ndarray],
                limit: int = 4000) -> list[Candidate]:
    """Windows that may be played (in streams with audio, within the file), at most
    ``limit``: the best-scoring quarter of them and an even spread of the rest."""
    out: list[Candidate] = []
    for s in streams:
        f = files.get(s.name)
        if f is None:
            continue
        mask = mask_of(s) & (s.end <= f.duration + 1e-3)
        idx = np.flatnonzero(mask)
        scores = score_of(s)[idx]
        out.extend(Candidate(s.name, float(s.start[i]), float(s.end[i]), float(sc))
                   for i, sc in zip(idx.tolist(), scores.tolist(), strict=True))
    if len(out) <= limit:
        return out
    by_score = sorted(range(len(out)), key=lambda i: -out[i].score)
    keep = set(by_score[: limit // 4])
    rest = [i for i in range(len(out)) if i not in keep]
    step = len(rest) / (limit - len(keep))
    keep.update(rest[int(j * step)] for j in range(limit - len(keep)))
    return [out[i] for i in sorted(keep)]


def _novel_mask(s: StreamRecords) -> np.ndarray:
    """Novel windows without a cluster: the novel card's candidates."""
    return (s.cluster == NO_CLUSTER) & s.novel & ~s.silent


def _confidence(s: StreamRecords) -> np.ndarray:
    return np.nan_to_num(s.confidence, nan=0.0)


def _novelty(s: StreamRecords) -> np.ndarray:
    # the recorded novelty score where there is one, else how unsure the assignment was
    return np.where(np.isnan(s.novelty), 1 - np.nan_to_num(s.confidence, nan=0.0), s.novelty)


def _input_warnings(records: Records, audio: AudioMatch) -> list[str]:
    """What the page cannot show as asked: skipped lines, mixed models, missing audio."""
    warnings = []
    if records.skipped:
        n, (line, why) = len(records.skipped), records.skipped[0]
        warnings.append(f"{records.path}: {n} line{' is' if n == 1 else 's are'} not a record "
                        f"and skipped (line {line}: {why}"
                        + (f"; {n - 1} more" if n > 1 else "") + ")")
    if len(records.models) > 1:
        warnings.append(f"the records come from {len(records.models)} models "
                        f"({', '.join(records.models)}): their cluster ids are not comparable")
    warnings.extend(audio.warnings)
    no_audio = [n for n in records.streams if n not in audio.files]
    if no_audio and len(no_audio) == len(records.streams):
        warnings.append("no stream has audio (pass --audio PATH or --audio ID=PATH): "
                        "timelines only, no snippets")
    elif no_audio:
        listed = ", ".join(no_audio[:5]) + (f" and {len(no_audio) - 5} more"
                                           if len(no_audio) > 5 else "")
        warnings.append(f"{len(no_audio)} stream{'s have' if len(no_audio) > 1 else ' has'} "
                        f"no audio (timeline only): {listed}")
    return warnings


def build_report(records: Records, audio: AudioMatch, config: ReportConfig | None = None,
                 progress: Callable[[str], None] | None = None) -> Report:
    """Choose and cut the snippets and render the page."""
    cfg = config or ReportConfig()
    say = progress or (lambda _msg: None)
    warnings = _input_warnings(records, audio)
    ranked = records.by_size()
    colours = {c.id: cluster_colour(i) for i, c in enumerate(ranked)}
    colours[NOVEL] = NOVEL_COLOUR
    all_streams = sorted(records.streams.values(), key=lambda s: (-len(s), s.name))
    shown_streams = all_streams[: cfg.max_streams]
    durations = {s.name: s.duration for s in all_streams}

    views = [ClusterView(c, colours[c.id]) for c in ranked[: cfg.max_clusters]]
    novel_windows = sum(int(_novel_mask(s).sum()) for s in all_streams)
    novel_view = ClusterView(Cluster(NOVEL, windows=novel_windows), NOVEL_COLOUR) \
        if novel_windows else None

    jobs: list[tuple[ClusterView, list[tuple[Candidate, str]], str]] = []
    for cv in views:
        cid = cv.cluster.id
        cands = _candidates(all_streams, audio.files,
                            lambda s, cid=cid: (s.cluster == cid) & ~s.silent, _confidence)
        picks = choose(cands, cfg.snippets, durations)
        jobs.append((cv, picks, "most confident"))
        cv.note = _no_audio_note(cv.cluster.streams, audio.files)
    if novel_view is not None:
        cands = _candidates(all_streams, audio.files, _novel_mask, _novelty)
        picks = choose(cands, cfg.snippets, durations)
        jobs.append((novel_view, picks, "most novel"))
        if not picks:
            novel_view.note = "none of the novel windows is in a stream with audio"

    total = sum(len(p) for _, p, _ in jobs)
    if total:
        files = len({id(f) for f in audio.files.values()})
        say(f"cutting {total} snippets from {files} audio file{'s' if files != 1 else ''}")
    cut = _cut(jobs, audio.files, cfg.snippet_seconds, warnings)

    notes = [
        f"Snippets: up to {cfg.snippets} per cluster (the {math.ceil(cfg.snippets / 2)} most "
        "confident windows, then "
        "a spread over streams and time among the more confident half), each its window "
        f"cut from the stream's audio (at most {cfg.snippet_seconds:g} s), peak-normalised "
        "to -1 dBFS (at most +30 dB) with 5 ms fades.",
        "Spectrograms: 25 ms frames, mel-spaced rows from 0 Hz to half the sample rate, "
        "80 dB range per snippet.",
        f"Timelines: at most {cfg.timeline_bins} stretches per stream; a stretch shows the "
        "cluster most of its windows went to.",
    ]
    if len(ranked) > cfg.max_clusters:
        notes.append(f"{len(ranked) - cfg.max_clusters} smaller clusters are listed without "
                     f"snippets (--max-clusters {cfg.max_clusters}).")
    if len(all_streams) > cfg.max_streams:
        notes.append(f"{len(all_streams) - cfg.max_streams} streams are listed without a "
                     f"timeline (--max-streams {cfg.max_streams}).")
    title = cfg.title or f"audioclust report: {records.path.name}"
    page = Page(
        title=title, records=records,
        streams=[StreamView(s, str(audio.files[s.name].path) if s.name in audio.files else None)
                 for s in shown_streams],
        hidden_streams=all_streams[cfg.max_streams:],
        clusters=views, hidden_clusters=ranked[cfg.max_clusters:], colours=colours,
        novel=novel_view, novel_windows=novel_windows, warnings=warnings, notes=notes,
        timeline_bins=cfg.timeline_bins,
    )
    return Report(render(page), page, cut, warnings)


def _cut(jobs: list[tuple[ClusterView, list[tuple[Candidate, str]], str]],
         files: dict[str, AudioFile], longest: float, warnings: list[str]) -> int:
    """Cut, encode and attach each job's snippets; the number made."""
    key = 0
    for cv, picks, best_why in jobs:
        for c, why in picks:
            f = files[c.stream]
            lo, hi = c.start, c.end
            if hi - lo > longest:  # the middle of a long window
                mid = (lo + hi) / 2
                lo, hi = mid - longest / 2, mid + longest / 2
            try:
                x = f.read(lo, hi)
            except AudioError as exc:
                warnings.append(f"audio {exc}: snippet skipped")
                continue
            key += 1
            cv.snippets.append(Snippet(f"s{key}", c, encode(x, f.sample_rate),
                                       best_why if why == "best" else why))
    return key


def _no_audio_note(streams: Counter, files: dict[str, AudioFile]) -> str | None:
    """Says so when some of a cluster's windows cannot be heard (streams without audio)."""
    unheard = sum(n for s, n in streams.items() if s not in files)
    if not unheard:
        return None
    total = sum(streams.values())
    if unheard == total:
        return "no snippets: none of its streams has audio"
    return f"{unheard:,} of its {total:,} windows are in streams without audio"


def write_report(report: Report, path: str | os.PathLike) -> int:
    """Write the page atomically (a reader never sees half a page); returns its size in
    bytes. Raises OSError."""
    p = Path(path)
    data = report.html.encode("utf-8")
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return len(data)
