"""The report page: one self-contained HTML file (inline CSS, SVG, a little JS; audio and
images as data: URLs), with a Content-Security-Policy that forbids any network access.

Top to bottom: a summary, the clusters as chips (largest first; each links to its card),
cluster sizes over time (stacked cumulative windows), a timeline per stream (the cluster
of each stretch, novel stretches hatched, drift detections as red marks; a stretch links to
its cluster), then a card per cluster with its snippets (click a spectrogram to play it,
"play all" plays the card's snippets in turn) and a card of the novel windows.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field

import numpy as np

from audioclust.stream.report.records import NO_CLUSTER, Cluster, Records, StreamRecords
from audioclust.stream.report.snippets import Candidate, Clip

__all__ = ["NOVEL", "ClusterView", "Page", "Snippet", "StreamView", "cluster_colour",
           "plural", "render"]

#: Pseudo cluster id of novel windows without a cluster in timelines and charts.
NOVEL = -2

# Well-separated categorical colours for the largest clusters (the d3/matplotlib
# "category 20" values); further clusters get hues spaced by the golden angle.
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#bcbd22", "#17becf", "#393b79", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
            "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#637939")
NOVEL_COLOUR = "#4a4a4a"
OTHER_COLOUR = "#b8b8b8"


def cluster_colour(rank: int) -> str:
    """The colour of the cluster with this size rank (0: the largest)."""
    if rank < len(_PALETTE):
        return _PALETTE[rank]
    hue = (rank * 137.508) % 360
    return _hsl_hex(hue, 0.55, 0.48)


def _hsl_hex(h: float, s: float, lum: float) -> str:
    c = (1 - abs(2 * lum - 1)) * s
    x = c * (1 - abs((h / 60) % 2 - 1))
    m = lum - c / 2
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h // 60) % 6]
    return "#" + "".join(f"{round((v + m) * 255):02x}" for v in (r, g, b))


@dataclass
class Snippet:
    """One playable window of a cluster."""

    key: str  # the audio element's id, unique in the page
    candidate: Candidate
    clip: Clip
    why: str  # "most confident", "spread", "most novel"


@dataclass
class ClusterView:
    cluster: Cluster
    colour: str
    snippets: list[Snippet] = field(default_factory=list)
    note: str | None = None  # why there are fewer snippets than asked for


@dataclass
class StreamView:
    records: StreamRecords
    audio: str | None  # the file its snippets are cut from


@dataclass
class Page:
    """What the page shows; built by :func:`audioclust.stream.report.build.build_report`."""

    title: str
    records: Records
    streams: list[StreamView]  # those with a timeline, largest first
    hidden_streams: list[StreamRecords]  # beyond the stream limit: a table row each
    clusters: list[ClusterView]  # cards, largest first
    hidden_clusters: list[Cluster]  # beyond the cluster limit: a table row each
    colours: dict[int, str]  # every cluster id (and NOVEL) -> colour
    novel: ClusterView | None  # the novel windows' card, when there are any
    novel_windows: int
    warnings: list[str]
    notes: list[str]  # how the page was made (limits, normalisation)
    timeline_bins: int

    @property
    def assigned(self) -> int:
        """Windows assigned to any cluster."""
        return sum(c.windows for c in self.records.clusters.values())


# --- small formatting helpers ----------------------------------------------------------------

def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _duration(seconds: float) -> str:
    s = round(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def _clock(seconds: float, span: float) -> str:
    if span < 60:
        return f"{seconds:g} s"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h or span >= 3600 else f"{m}:{s:02d}"


def _ticks(span: float, most: int = 8) -> list[float]:
    """Round tick positions in [0, span]: steps of 1, 2, 5 × 10^k s, or whole minutes/hours."""
    steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
             10800, 21600, 43200, 86400]
    step = next((s for s in steps if span / s <= most), 86400 * math.ceil(span / 86400 / most))
    return [i * step for i in range(int(span / step + 1e-9) + 1)]


def plural(count: int, word: str) -> str:
    """``1 window``, ``2 windows``, ``1,234 windows``."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _pct(x: float) -> str:
    return f"{100 * x:.3f}".rstrip("0").rstrip(".") + "%"


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _short(name: str, limit: int = 48) -> str:
    """A name that fits: the end of a long path is what tells files apart."""
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def _base(name: str, limit: int = 26) -> str:
    """A stream's short name for captions: a path's file name, else the id."""
    return _short(name.rsplit("/", 1)[-1] or name, limit)


# --- charts ---------------------------------------------------------------------------------

SILENT = -3


def _codes(s: StreamRecords) -> np.ndarray:
    """Per window: its cluster id; NOVEL for a novel window without one; else SILENT (not
    drawn: silent, or no cluster for another reason)."""
    codes = np.where(s.cluster != NO_CLUSTER, s.cluster, np.where(s.novel, NOVEL, SILENT))
    return np.where(s.silent, SILENT, codes)


def _segments(s: StreamRecords, bins: int) -> list[tuple[int, int, int, int]]:
    """(first bin, end bin, code, windows) runs of the majority code of each time bin."""
    codes = _codes(s)
    span = max(s.duration, 1e-9)
    centre = (s.start + s.end) / 2
    b = np.minimum((centre / span * bins).astype(np.int64), bins - 1)
    drawn = codes != SILENT
    if not drawn.any():
        return []
    pairs, counts = np.unique(np.stack([b[drawn], codes[drawn]]), axis=1, return_counts=True)
    # the most frequent code of each bin (ties: the smaller code, for a stable picture)
    order = np.lexsort((pairs[1], -counts, pairs[0]))
    pairs, counts = pairs[:, order], counts[order]
    first = np.ones(pairs.shape[1], dtype=bool)
    first[1:] = pairs[0, 1:] != pairs[0, :-1]
    win_bins, win_codes = pairs[0, first], pairs[1, first]
    per_bin = np.bincount(b[drawn], minlength=bins)
    runs: list[tuple[int, int, int, int]] = []
    for bi, code in zip(win_bins.tolist(), win_codes.tolist(), strict=True):
        if runs and runs[-1][2] == code and runs[-1][1] == bi:
            lo, _, _, n = runs[-1]
            runs[-1] = (lo, bi + 1, code, n + int(per_bin[bi]))
        else:
            runs.append((bi, bi + 1, code, int(per_bin[bi])))
    return runs


def _axis(span: float, y: int) -> str:
    parts = []
    for t in _ticks(span):
        x = _pct(t / span) if span > 0 else "0%"
        anchor = "start" if t == 0 else ("end" if t >= span * 0.98 else "middle")
        parts.append(f'<line x1="{x}" x2="{x}" y1="{y - 4}" y2="{y}" class="tick"/>'
                     f'<text x="{x}" y="{y + 11}" text-anchor="{anchor}">{_e(_clock(t, span))}'
                     "</text>")
    return "".join(parts)


def _label_of(code: int, page: Page) -> str:
    if code == NOVEL:
        return "novel"
    c = page.records.clusters.get(code)
    return c.name if c else f"cluster {code}"


def _timeline(view: StreamView, page: Page) -> str:
    s = view.records
    span = max(s.duration, 1e-9)
    bins = max(1, min(page.timeline_bins, len(s)))
    rects = []
    for lo, hi, code, n in _segments(s, bins):
        t0, t1 = lo / bins * span, hi / bins * span
        fill = "url(#novel-hatch)" if code == NOVEL else page.colours.get(code, OTHER_COLOUR)
        tip = (f"{_label_of(code, page)} · {_clock(t0, span)}–{_clock(t1, span)} · "
               f"{plural(n, 'window')}")
        rect = (f'<rect x="{_pct(lo / bins)}" y="4" width="{_pct((hi - lo) / bins)}" '
                f'height="20" fill="{fill}" data-code="{code}"><title>{_e(tip)}</title></rect>')
        href = "#novel" if code == NOVEL else f"#cluster-{code}"
        rects.append(f'<a href="{href}">{rect}</a>')
    # a thin row under the bar marks where windows were flagged novel (also those an
    # open-set clusterer gave a new cluster), darker where more of them were
    novel_rows = []
    flagged = s.novel & ~s.silent
    if flagged.any():
        centre = (s.start + s.end) / 2
        b = np.minimum((centre / span * bins).astype(np.int64), bins - 1)
        share = np.bincount(b[flagged], minlength=bins) / np.maximum(
            np.bincount(b[~s.silent], minlength=bins), 1)
        for bi in np.flatnonzero(share).tolist():
            novel_rows.append(f'<rect x="{_pct(bi / bins)}" y="26" width="{_pct(1 / bins)}" '
                              f'height="3" class="nv" fill-opacity="{0.25 + 0.75 * share[bi]:.2f}"'
                              "/>")
    marks = []
    for i, signals in s.drift:
        x = _pct(min(float(s.start[i]) / span, 1.0))
        tip = f"drift in {', '.join(signals)} at {_clock(float(s.start[i]), span)}"
        marks.append(f'<g class="drift"><line x1="{x}" x2="{x}" y1="2" y2="30"/>'
                     f'<circle cx="{x}" cy="4" r="3.5"/><title>{_e(tip)}</title></g>')
    return (f'<svg class="timeline" width="100%" height="46" role="img" '
            f'aria-label="timeline of {_e(s.name)}">'
            '<rect x="0" y="4" width="100%" height="20" class="silence"/>'
            + "".join(rects) + "".join(novel_rows) + "".join(marks) + _axis(span, 34)
            + "</svg>")


def _sizes_chart(page: Page) -> str:
    """Stacked cumulative windows per cluster against time (stream clock, or wall clock when
    every record carries a capture time)."""
    streams = [v.records for v in page.streams] + page.hidden_streams
    codes = np.concatenate([_codes(s) for s in streams]) if streams else np.array([])
    centre_stream = np.concatenate([(s.start + s.end) / 2 for s in streams]) if streams else \
        np.array([])
    stamps = np.concatenate([s.timestamp for s in streams]) if streams else np.array([])
    drawn = codes != SILENT
    if not drawn.any():
        return ""
    wall = bool(np.isfinite(stamps[drawn]).all())
    t = (stamps + (centre_stream - np.concatenate([s.start for s in streams])))[drawn] \
        if wall else centre_stream[drawn]
    codes = codes[drawn]
    t0, t1 = float(t.min()), float(t.max())
    span = max(t1 - t0, 1e-9)
    n_points = 160
    grid = np.linspace(t0, t1, n_points)
    # series: the clusters shown as chips (up to 12 by size), the rest as one, then novel
    shown = [cv.cluster.id for cv in page.clusters][:12]
    series: list[tuple[str, str, np.ndarray]] = []
    for cid in shown:
        series.append((_label_of(cid, page), page.colours[cid], np.sort(t[codes == cid])))
    rest = ~np.isin(codes, [*shown, NOVEL])
    if rest.any():
        series.append(("other clusters", OTHER_COLOUR, np.sort(t[rest])))
    if (codes == NOVEL).any():
        series.append(("novel", "url(#novel-hatch)", np.sort(t[codes == NOVEL])))
    cum = np.array([np.searchsorted(ts, grid, side="right") for _, _, ts in series], float)
    total = float(cum[:, -1].sum())
    stack = np.cumsum(cum, axis=0) / max(total, 1.0) * 100
    xs = (grid - t0) / span * 1000
    paths = []
    below = np.zeros(n_points)
    for (name, colour, ts), top in zip(series, stack, strict=True):
        pts_top = " ".join(f"{x:.1f},{100 - y:.2f}" for x, y in zip(xs, top, strict=True))
        pts_bot = " ".join(f"{x:.1f},{100 - y:.2f}"
                           for x, y in zip(xs[::-1], below[::-1], strict=True))
        paths.append(f'<path d="M{pts_top} L{pts_bot} Z" fill="{colour}">'
                     f"<title>{_e(name)}: {plural(ts.size, 'window')}</title></path>")
        below = top
    ticks = []
    for tick in _ticks(span):
        x = _pct(tick / span)
        label = _wall(t0 + tick) if wall else _clock(tick, span)
        anchor = "start" if tick == 0 else ("end" if tick >= span * 0.98 else "middle")
        ticks.append(f'<line x1="{x}" x2="{x}" y1="154" y2="158" class="tick"/>'
                     f'<text x="{x}" y="170" text-anchor="{anchor}">{_e(label)}</text>')
    axis_name = "capture time (UTC)" if wall else "time into each stream"
    return ('<section class="panel"><h2>Cluster sizes over time</h2>'
            f'<p class="hint">Windows assigned so far, stacked, all streams together, against '
            f'{axis_name}; {int(total):,} windows at the end.</p>'
            '<svg class="sizes" width="100%" height="176" role="img" '
            'aria-label="cluster sizes over time">'
            '<svg x="0" y="4" width="100%" height="150" viewBox="0 0 1000 100" '
            'preserveAspectRatio="none">' + "".join(paths) + "</svg>"
            + "".join(ticks) + "</svg></section>")


def _wall(unix: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%H:%M:%S")


# --- sections -------------------------------------------------------------------------------

def _summary(page: Page) -> str:
    r = page.records
    windows = r.windows
    silent = sum(int(s.silent.sum()) for s in r.streams.values())
    sounding = windows - silent
    audio_seconds = sum(s.duration for s in r.streams.values())
    with_audio = sum(1 for v in page.streams if v.audio)
    discovered = sum(1 for c in r.clusters.values() if c.discovered)
    named = sum(1 for c in r.clusters.values() if c.label)
    drift = sum(len(s.drift) for s in r.streams.values())
    flagged = sum(int((s.novel & ~s.silent).sum()) for s in r.streams.values())
    novel_pct = 100 * flagged / sounding if sounding else 0.0
    extra = ", ".join(x for x in (f"{discovered} discovered" if discovered else "",
                                  f"{named} named" if named else "") if x)
    tiles = [
        ("streams", f"{len(r.streams):,}",
         f"{with_audio} with audio" if with_audio != len(r.streams) else "all with audio"),
        ("audio", _duration(audio_seconds), f"{windows:,} windows"),
        ("clusters", f"{len(r.clusters):,}", extra or "in the records"),
        ("novel", f"{novel_pct:.1f} %", f"{flagged:,} of {sounding:,} sounding windows"),
        ("silent", f"{100 * silent / windows:.1f} %" if windows else "0 %",
         plural(silent, "window")),
        ("drift", f"{drift:,}", "detections"),
    ]
    cells = "".join(f'<div class="tile"><div class="k">{_e(k)}</div><div class="v">{_e(v)}'
                    f'</div><div class="s">{_e(s)}</div></div>' for k, v, s in tiles)
    models = ", ".join(f"{m}" for m, _ in r.models.most_common()) or "not recorded"
    return (f'<section class="summary"><div class="tiles">{cells}</div>'
            f'<p class="meta">records <code>{_e(r.path.name)}</code> · model {_e(models)}</p>'
            "</section>")


def _chips(page: Page) -> str:
    total = page.assigned
    chips = []
    for cv in page.clusters:
        c = cv.cluster
        share = 100 * c.windows / total if total else 0
        badge = '<span class="badge new">new</span>' if c.discovered else ""
        chips.append(f'<a class="chip" href="#cluster-{c.id}" data-cluster="{c.id}">'
                     f'<span class="sw" style="background:{cv.colour}"></span>'
                     f"{_e(c.name)}{badge}<span class=\"n\">{c.windows:,} · {share:.0f} %"
                     "</span></a>")
    if page.novel is not None:
        chips.append('<a class="chip" href="#novel"><span class="sw hatch"></span>novel'
                     f'<span class="n">{page.novel_windows:,}</span></a>')
    if page.hidden_clusters:
        chips.append(f'<a class="chip" href="#more-clusters">+{len(page.hidden_clusters)} '
                     "smaller</a>")
    return f'<nav class="chips" aria-label="clusters, largest first">{"".join(chips)}</nav>'


def _streams(page: Page) -> str:
    rows = []
    for v in page.streams:
        s = v.records
        present = len({int(c) for c in s.cluster[(s.cluster != NO_CLUSTER) & ~s.silent]})
        novel = int((_codes(s) == NOVEL).sum())
        facts = [_duration(s.duration), plural(len(s), "window"), plural(present, "cluster")]
        if novel:
            facts.append(f"{novel:,} novel")
        if s.drift:
            facts.append(plural(len(s.drift), "drift detection"))
        audio = (f'<span class="ok" title="{_e(v.audio)}">audio</span>' if v.audio
                 else '<span class="warn">no audio</span>')
        folder, _, file = s.name.rpartition("/")
        label = f'<div class="name">{_e(file or s.name)}</div>'
        if folder:
            label += f'<div class="dir">{_e(_short(folder + "/", 44))}</div>'
        rows.append(f'<div class="stream" data-stream="{_e(s.name)}"><div class="sh">'
                    f'<div title="{_e(s.name)}">{label}</div>'
                    f'<div class="facts">{_e(" · ".join(facts))} · {audio}</div></div>'
                    f"{_timeline(v, page)}</div>")
    more = _table(f"{len(page.hidden_streams)} more streams without a timeline (--max-streams)",
                  ("stream", "duration", "windows"),
                  [(s.name, _duration(s.duration), f"{len(s):,}") for s in page.hidden_streams])
    legend = ('<p class="hint">Each bar is a stream: the colour of each stretch is the '
              'cluster most of its windows went to (click to go to it); '
              '<span class="sw hatch inline"></span> novel without a cluster, blank silent; '
              'the dark row under a bar marks windows flagged novel; '
              '<span class="dot"></span> drift detected.</p>')
    return (f'<section class="panel"><h2>Streams</h2>{legend}{"".join(rows)}{more}</section>')


def _at(seconds: float) -> str:
    """A position in a stream, for captions."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(seconds, 60)
    h, m = divmod(int(m), 60)
    return f"{h}:{m:02d}:{s:04.1f}" if h else f"{m}:{s:04.1f}"


def _snippets(cv: ClusterView, page: Page) -> str:
    figs = []
    for sn in cv.snippets:
        c, clip = sn.candidate, sn.clip
        aid = sn.key
        score = f"novelty {c.score:.2f}" if sn.why == "most novel" else f"conf {c.score:.2f}"
        tip = f"{c.stream}, {c.start:.2f}–{c.end:.2f} s, {score} ({sn.why})"
        figs.append(
            f'<figure class="snip-fig" data-stream="{_e(c.stream)}" data-start="{c.start}" '
            f'data-end="{c.end}" data-score="{c.score}" data-why="{_e(sn.why)}">'
            f'<button class="snip" type="button" data-audio="{aid}" '
            f'title="{_e(tip)}" aria-label="play {_e(tip)}">'
            f'<img src="{_data_url("image/png", clip.image)}" width="180" height="72" alt="">'
            '<span class="play" aria-hidden="true"></span><span class="bar"></span></button>'
            f'<audio id="{aid}" preload="metadata" src="{_data_url(clip.mime, clip.audio)}">'
            f'</audio><figcaption><span class="at">{_e(_at(c.start))}</span>'
            f'<span class="sc">{_e(score)}</span><span class="src">{_e(_base(c.stream, 30))}'
            "</span></figcaption></figure>")
    note = f'<p class="hint">{_e(cv.note)}</p>' if cv.note else ""
    return f'<div class="snips">{"".join(figs)}</div>{note}'


def _card(cv: ClusterView, page: Page, total: int) -> str:
    c = cv.cluster
    share = 100 * c.windows / total if total else 0
    badges = ""
    if c.label:
        badges += '<span class="badge named">named</span>'
    if c.discovered:
        badges += '<span class="badge new">discovered</span>'
    sub = f'<span class="id">#{c.id}</span>' if c.label else ""
    facts = [plural(c.windows, "window"), f"{share:.1f} % of assigned"]
    top_stream, top_n = c.streams.most_common(1)[0]
    facts.append(plural(len(c.streams), "stream")
                 + (f" (most in {_base(top_stream, 40)}, {100 * top_n / c.windows:.0f} %)"
                    if len(c.streams) > 1 else ""))
    if c.mean_confidence is not None:
        facts.append(f"mean confidence {c.mean_confidence:.2f}")
    play_all = (f'<button class="playall" type="button">▶ play all {len(cv.snippets)}</button>'
                if len(cv.snippets) > 1 else "")
    return (f'<article class="card" id="cluster-{c.id}" data-cluster="{c.id}" '
            f'data-windows="{c.windows}">'
            f'<header><span class="sw big" style="background:{cv.colour}"></span>'
            f'<h3>{_e(c.name)}</h3>{sub}{badges}{play_all}</header>'
            f'<p class="facts">{_e(" · ".join(facts))}</p>{_snippets(cv, page)}</article>')


def _novel_card(page: Page) -> str:
    cv = page.novel
    if cv is None:
        return ""
    play_all = (f'<button class="playall" type="button">▶ play all {len(cv.snippets)}</button>'
                if len(cv.snippets) > 1 else "")
    return ('<article class="card novel" id="novel"><header><span class="sw big hatch"></span>'
            f"<h3>Novel windows</h3>{play_all}</header>"
            f'<p class="facts">{plural(page.novel_windows, "window")} unlike every cluster (no '
            "cluster assigned); the most novel first, then a spread over streams and time</p>"
            f"{_snippets(cv, page)}</article>")


def _clusters(page: Page) -> str:
    cards = "".join(_card(cv, page, page.assigned) for cv in page.clusters)
    more = _table(f"{len(page.hidden_clusters)} smaller clusters without snippets "
                  "(--max-clusters)", ("cluster", "windows", "streams"),
                  [(c.name, f"{c.windows:,}", str(len(c.streams))) for c in page.hidden_clusters],
                  ident="more-clusters")
    return ('<section class="panel"><h2>Clusters, largest first</h2><p class="hint">Click a '
            "spectrogram to hear its window; the first snippets are the cluster's most "
            "confident windows, the rest a spread over its streams and time.</p>"
            f"{cards}{_novel_card(page)}{more}</section>")


def _table(summary: str, header: tuple[str, ...], rows: list[tuple[str, ...]],
           ident: str | None = None) -> str:
    """A folded table of what did not fit (empty when nothing was left out)."""
    if not rows:
        return ""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    attr = f' id="{ident}"' if ident else ""
    return (f"<details{attr}><summary>{_e(summary)}</summary><table><tr>{head}</tr>{body}"
            "</table></details>")


def _warnings(page: Page) -> str:
    if not page.warnings:
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in page.warnings)
    return f'<section class="warnings"><h2>Warnings</h2><ul>{items}</ul></section>'


_CSP = ("default-src 'none'; img-src data:; media-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'")

_CSS = """
:root{--fg:#1d1d1f;--muted:#6b6b70;--line:#e3e3e6;--bg:#f6f6f8;--card:#fff;--accent:#2458d6}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
 font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","DejaVu Sans",sans-serif}
main{max-width:1240px;margin:0 auto;padding:20px 24px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:0 0 6px}h3{font-size:15px;margin:0}
code{font:12px ui-monospace,"DejaVu Sans Mono",monospace}
.meta,.hint{color:var(--muted);margin:4px 0 10px;font-size:13px}
.panel,.summary,.warnings{background:var(--card);border:1px solid var(--line);border-radius:10px;
 padding:14px 16px;margin:14px 0}
.tiles{display:grid;grid-template-columns:repeat(6,1fr);gap:10px}
.tile{border:1px solid var(--line);border-radius:8px;padding:8px 10px}
.tile .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.tile .v{font-size:22px;font-weight:600}.tile .s{color:var(--muted);font-size:12px}
.warnings{background:#fff8e6;border-color:#f0d58c}.warnings ul{margin:0;padding-left:18px}
.chips{display:flex;flex-wrap:wrap;gap:6px;margin:12px 0}
.chip{display:inline-flex;align-items:center;gap:6px;padding:4px 10px 4px 6px;background:#fff;
 border:1px solid var(--line);border-radius:999px;color:var(--fg);text-decoration:none}
.chip:hover{border-color:#9a9aa0}.chip .n{color:var(--muted);font-size:12px}
.sw{display:inline-block;width:14px;height:14px;border-radius:3px;flex:none}
.sw.big{width:20px;height:20px;border-radius:4px}.sw.inline{vertical-align:-2px}
.hatch{background:repeating-linear-gradient(135deg,#4a4a4a 0 3px,#cfcfcf 3px 6px)}
.dot{display:inline-block;width:8px;height:8px;border-radius:50%;background:#e0245e}
.badge{font-size:11px;border-radius:4px;padding:1px 6px;margin-left:4px;font-weight:600}
.badge.new{background:#e8f1ff;color:#1d4fbf}.badge.named{background:#e9f7ee;color:#17773a}
.stream{display:grid;grid-template-columns:290px 1fr;gap:14px;align-items:start;
 padding:6px 0;border-top:1px solid #f0f0f2}
.sh .name{font-weight:600;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.sh .dir{color:var(--muted);font-size:12px;overflow:hidden;white-space:nowrap}
.sh .facts{color:var(--muted);font-size:12px}
.ok{color:#17773a}.warn{color:#a15c00}
svg text{font-size:11px;fill:var(--muted)}svg .tick{stroke:#aaa}
svg .silence{fill:#efeff2}svg a rect:hover{opacity:.8}
svg .drift line{stroke:#e0245e;stroke-width:1.5}svg .nv{fill:#222}svg .drift circle{fill:#e0245e}
.card{border-top:1px solid var(--line);padding:14px 0 10px}
.card header{display:flex;align-items:center;gap:8px}
.card .id{color:var(--muted)}.card .facts{color:var(--muted);margin:4px 0 8px;font-size:13px}
.playall{margin-left:auto;border:1px solid var(--line);background:#fff;border-radius:6px;
 padding:4px 10px;cursor:pointer;font:inherit}
.playall:hover{border-color:var(--accent);color:var(--accent)}
.snips{display:flex;flex-wrap:wrap;gap:10px}
.snip-fig{margin:0;width:180px}
.snip{position:relative;display:block;padding:0;border:0;border-radius:6px;overflow:hidden;
 cursor:pointer;background:#000;width:180px;height:72px;--p:0}
.snip img{display:block}
.snip .play{position:absolute;left:8px;bottom:8px;width:0;height:0;border-style:solid;
 border-width:7px 0 7px 12px;border-color:transparent transparent transparent #fff;opacity:.85}
.snip.on .play{border-width:0;width:10px;height:12px;border-left:3px solid #fff;
 border-right:3px solid #fff}
.snip .bar{position:absolute;left:0;bottom:0;height:3px;width:calc(var(--p)*100%);
 background:#fff}
.snip.on{outline:3px solid var(--accent);outline-offset:-3px}
.snip.broken{opacity:.35;cursor:not-allowed}
.snip-fig figcaption{font-size:11px;color:var(--muted);margin-top:3px;display:flex;
 flex-wrap:wrap;justify-content:space-between}
.snip-fig .at{color:var(--fg);font-weight:600}
.snip-fig .src{flex-basis:100%;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
table{border-collapse:collapse;margin-top:8px;font-size:13px}
td,th{border-bottom:1px solid var(--line);padding:3px 10px;text-align:left}
details{margin-top:10px}
footer{color:var(--muted);font-size:12px;margin-top:18px}
@media (max-width:900px){.tiles{grid-template-columns:repeat(3,1fr)}}
"""

# Clicking a spectrogram plays (or stops) its window; "play all" plays a card's snippets in
# turn; one sound at a time. A snippet that cannot be decoded is greyed out.
_JS = """
(() => {
  "use strict";
  let now = null;
  const stop = () => {
    if (!now) return;
    now.audio.pause(); now.audio.currentTime = 0;
    now.button.classList.remove("on"); now.button.style.setProperty("--p", 0);
    now = null;
  };
  const play = (button, then) => {
    const audio = document.getElementById(button.dataset.audio);
    if (now && now.audio === audio) { stop(); return; }
    stop();
    const mine = now = {audio, button};
    button.classList.add("on");
    audio.onended = () => { if (now === mine) { stop(); if (then) then(); } };
    audio.play().catch(() => { if (now === mine) stop(); });
    const tick = () => {
      if (now !== mine) return;
      if (audio.duration) button.style.setProperty("--p", audio.currentTime / audio.duration);
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  };
  document.addEventListener("click", (event) => {
    const one = event.target.closest("button.snip");
    if (one) { if (!one.classList.contains("broken")) play(one, null); return; }
    const all = event.target.closest("button.playall");
    if (!all) return;
    const list = [...all.closest(".card").querySelectorAll("button.snip:not(.broken)")];
    const next = (i) => { if (i < list.length) play(list[i], () => next(i + 1)); };
    next(0);
  });
  for (const audio of document.querySelectorAll("audio")) {
    const broken = () => {
      const b = document.querySelector(`button[data-audio="${audio.id}"]`);
      if (b) { b.classList.add("broken"); b.title += " (cannot be played here)"; }
    };
    audio.addEventListener("error", broken);
    if (audio.error) broken();
  }
})();
"""

_DEFS = ('<svg width="0" height="0" style="position:absolute" aria-hidden="true"><defs>'
         '<pattern id="novel-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
         'patternTransform="rotate(45)"><rect width="6" height="6" fill="#cfcfcf"/>'
         f'<rect width="3" height="6" fill="{NOVEL_COLOUR}"/></pattern></defs></svg>')


def render(page: Page) -> str:
    """The whole HTML document."""
    notes = "".join(f"<li>{_e(n)}</li>" for n in page.notes)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(page.title)}</title><style>{_CSS}</style></head><body>{_DEFS}<main>"
        f"<h1>{_e(page.title)}</h1>"
        f"{_summary(page)}{_warnings(page)}{_chips(page)}{_sizes_chart(page)}"
        f"{_streams(page)}{_clusters(page)}"
        f"<footer><p>Made by audioclust-report.</p><ul>{notes}</ul></footer>"
        f"</main><script>{_JS}</script></body></html>\n"
    )
