"""audioclust-report: the page of the clusters, from real records of the default model, checked
as HTML, as audio, and in headless Chromium (the audio decodes, plays on a click, no console
errors, the screenshot shows the expected blocks); and every kind of bad input."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from browser import Chromium, chromium_path
from conftest import REPO
from stream_helpers import ENV, read_jsonl

from audioclust.stream.report.records import read_records
from audioclust.stream.report.snippets import Candidate, choose, png_indexed

DEMO = REPO / "models" / "assets" / "demo-fsdd.flac"
GM = REPO.parent / "shared" / "datasets" / "gm-notes"
# one note of each of six families: music the speech model never heard, next to speech
NOTES = ("bass", "brass", "flute", "guitar", "organ", "reed")


def run_report(*args: str, cwd: Path | None = None, timeout: float = 300
               ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audioclust.stream.report.cli", *args],
                          capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd)


class Doc(HTMLParser):
    """The parts of the page the tests look at."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.cards: list[dict[str, str]] = []
        self.figures: list[dict[str, str]] = []  # with the card they belong to
        self.audio: dict[str, str] = {}
        self.titles: dict[str, str] = {}  # card id -> its h3 text
        self._card: str | None = None
        self._h3 = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "article":
            self._card = a["id"]
            self.cards.append(a)
        elif tag == "figure":
            self.figures.append({**a, "card": self._card or ""})
        elif tag == "audio":
            self.audio[a["id"]] = a["src"]
            self.figures[-1]["audio"] = a["id"]
        elif tag == "h3":
            self._h3 = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3":
            self._h3 = False
        elif tag == "article":
            self._card = None

    def handle_data(self, data: str) -> None:
        if self._h3 and self._card:
            self.titles[self._card] = self.titles.get(self._card, "") + data


def _data(url: str) -> tuple[str, bytes]:
    head, _, payload = url.partition(",")
    assert head.startswith("data:") and head.endswith(";base64"), head[:40]
    return head[5:-7], base64.b64decode(payload)


# --- the real run: records of the default model over speech and instrument notes -----------

@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("report")
    notes = d / "notes"
    notes.mkdir()
    for family in NOTES:
        src = sorted((GM / family).glob("*.flac"))[0]
        shutil.copy(src, notes / src.name)
    shutil.copy(DEMO, d / "demo.flac")
    records = d / "records.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "audioclust.stream.cli", "--source", "file", "demo.flac",
         "notes", "--sink", f"jsonl:{records}", "-q"],
        capture_output=True, text=True, timeout=300, env=ENV, cwd=d)
    assert proc.returncode == 0, proc.stderr
    out = d / "report.html"
    rep = run_report(str(records), "--audio", "demo.flac", "notes", "-o", str(out), "--json",
                     cwd=d)
    assert rep.returncode == 0, rep.stderr
    return {"dir": d, "records": records, "html": out, "summary": json.loads(rep.stdout),
            "stderr": rep.stderr, "doc": Doc(out.read_text())}


def test_page_summary_and_no_warnings(real_run):
    s, recs = real_run["summary"], read_jsonl(real_run["records"])
    assert s["streams"] == 1 + len(NOTES) and s["windows"] == len(recs)
    assert s["warnings"] == [] and s["skipped_lines"] == 0
    assert "warning" not in real_run["stderr"] and "Traceback" not in real_run["stderr"]
    assert s["clusters"] == len({r["cluster"] for r in recs if r["cluster"] is not None
                                 and not r["silent"]})
    assert s["snippets"] == len(real_run["doc"].audio) > 0
    # the sizes the --help states: well under 100 KB per snippet with 1 s windows
    assert s["bytes"] == real_run["html"].stat().st_size < 20_000 + 40_000 * s["snippets"]


def test_page_is_self_contained(real_run):
    doc = real_run["doc"]
    for tag, a in doc.tags:
        assert tag not in ("link", "iframe", "object", "embed"), tag
        if tag == "script":
            assert "src" not in a
        for key in ("src", "href"):
            if key in a:
                assert a[key].startswith(("data:", "#")), (tag, a[key][:60])
    csp = [a["content"] for t, a in doc.tags if t == "meta"
           and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]


def test_clusters_sorted_by_size_with_their_most_confident_window_first(real_run):
    doc, recs = real_run["doc"], read_jsonl(real_run["records"])
    sizes = {}
    for r in recs:
        if r["cluster"] is not None and not r["silent"]:
            sizes[r["cluster"]] = sizes.get(r["cluster"], 0) + 1
    cards = [c for c in doc.cards if c["id"].startswith("cluster-")]
    assert [int(c["data-windows"]) for c in cards] == sorted(sizes.values(), reverse=True)
    assert {int(c["data-cluster"]) for c in cards} == set(sizes)
    for card in cards:
        cid = int(card["data-cluster"])
        figs = [f for f in doc.figures if f["card"] == card["id"]]
        best = max(r["confidence"] or 0.0 for r in recs if r["cluster"] == cid and not r["silent"])
        assert figs and float(figs[0]["data-score"]) == pytest.approx(best, abs=1e-6)
        assert len(figs) <= 6
        for i, a in enumerate(figs):  # no two snippets of one stream overlap
            for b in figs[i + 1:]:
                if a["data-stream"] == b["data-stream"]:
                    assert (float(a["data-end"]) <= float(b["data-start"])
                            or float(b["data-end"]) <= float(a["data-start"]))
        # each snippet is a window the records give this cluster
        windows = {(r["stream"], r["start"]) for r in recs if r["cluster"] == cid}
        assert all((f["data-stream"], float(f["data-start"])) in windows for f in figs)


def test_snippets_are_the_windows_cut_from_the_audio(real_run):
    doc, d = real_run["doc"], real_run["dir"]
    checked = 0
    for f in doc.figures:
        mime, data = _data(doc.audio[f["audio"]])
        assert mime in ("audio/ogg", "audio/flac")
        y, sr = sf.read(io.BytesIO(data), dtype="float32")
        start, end = float(f["data-start"]), float(f["data-end"])
        info = sf.info(str(d / f["data-stream"]))
        x, _ = sf.read(str(d / f["data-stream"]), start=round(start * info.samplerate),
                       stop=round(end * info.samplerate), dtype="float32")
        # the window, then 25 ms of silence (Chromium's decoder may drop the last packet)
        assert sr == info.samplerate and x.size <= y.size <= x.size + 0.03 * sr
        assert np.abs(y[x.size + round(0.005 * sr):]).max(initial=0) < 0.02
        n = x.size
        # lossy but the same sound, aligned: the waveforms correlate closely
        assert np.corrcoef(x[:n], y[:n])[0, 1] > 0.9, f
        # peak-normalised to -1 dBFS (after 5 ms fades), by at most +30 dB
        fade = round(0.005 * sr)
        lo, hi = (min(10 ** (-1 / 20), 10 ** (30 / 20) * float(np.abs(p).max()))
                  for p in (x[fade:-fade], x))
        assert 0.95 * lo <= float(np.abs(y).max()) <= 1.05 * hi
        img_mime, png = _data(next(a["src"] for t, a in doc.tags if t == "img"
                                   and a.get("src", "").startswith("data:image")))
        assert img_mime == "image/png" and png.startswith(b"\x89PNG")
        checked += 1
    assert checked == len(doc.audio)


# --- in a real browser ------------------------------------------------------------------------

AUDIO_STATE_JS = r"""
(async () => {
  const ctx = new OfflineAudioContext(1, 1, 48000);
  const out = [];
  for (const a of document.querySelectorAll("audio")) {
    const meta = await new Promise((resolve) => {
      const done = () => resolve(a.error ? "error " + a.error.code : "ok");
      if (a.readyState >= 1 || a.error) return done();
      a.addEventListener("loadedmetadata", done, {once: true});
      a.addEventListener("error", done, {once: true});
    });
    const bytes = Uint8Array.from(atob(a.src.slice(a.src.indexOf(",") + 1)),
                                  (c) => c.charCodeAt(0));
    let decoded;
    try {
      const buf = await ctx.decodeAudioData(bytes.buffer);
      let peak = 0;
      for (const v of buf.getChannelData(0)) peak = Math.max(peak, Math.abs(v));
      decoded = {seconds: buf.duration, peak};
    } catch (e) { decoded = String(e); }
    out.push({id: a.id, meta, duration: a.duration, decoded});
  }
  return out;
})()
"""

# Page coordinates and expected colours of blocks whose colour is known from the DOM.
BLOCKS_JS = r"""
(() => {
  const box = (el) => { const r = el.getBoundingClientRect();
    return {x: r.x + scrollX, y: r.y + scrollY, w: r.width, h: r.height}; };
  const rgb = (c) => c.match(/\d+/g).slice(0, 3).map(Number);
  const swatches = [...document.querySelectorAll(".card .sw.big, .chip .sw")]
    .filter((el) => !el.classList.contains("hatch"))
    .map((el) => ({...box(el), rgb: rgb(getComputedStyle(el).backgroundColor)}));
  const segments = [...document.querySelectorAll("svg.timeline rect[data-code]")]
    .filter((el) => !el.getAttribute("fill").startsWith("url"))
    .map((el) => ({...box(el), hex: el.getAttribute("fill")}))
    .filter((b) => b.w >= 6);
  const images = [...document.querySelectorAll("button.snip img")].map(box);
  return {swatches, segments, images, width: document.documentElement.scrollWidth,
          tiles: [...document.querySelectorAll(".tile")].map((t) => t.innerText)};
})()
"""


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    h = hex_colour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


@pytest.fixture(scope="module")
def browser():
    if chromium_path() is None:
        pytest.fail("chromium is not installed: `make setup` installs it (Makefile APT_PACKAGES)")
    with Chromium(width=1280, height=900) as b:
        yield b


def test_page_in_chromium(real_run, browser, tmp_path):
    from PIL import Image

    b = browser
    b.open(real_run["html"].resolve().as_uri())
    states = b.evaluate(AUDIO_STATE_JS)
    assert len(states) == real_run["summary"]["snippets"]
    for s in states:
        assert s["meta"] == "ok", s
        assert isinstance(s["decoded"], dict), s  # decodeAudioData decoded every sample
        assert 0.5 < s["decoded"]["seconds"] < 1.1 and s["decoded"]["peak"] > 0.5, s
        assert 0.5 < s["duration"] < 1.1, s

    # a person's click on the first spectrogram plays its window to the end
    target = b.evaluate("""(() => {
      const btn = document.querySelector("button.snip");
      btn.scrollIntoView({block: "center"});
      const r = btn.getBoundingClientRect();
      const audio = document.getElementById(btn.dataset.audio);
      window.__heard = new Promise((resolve) => {
        let on = false;
        audio.addEventListener("playing", () => { on = btn.classList.contains("on"); });
        audio.addEventListener("ended", () => setTimeout(
          () => resolve({on, after: btn.classList.contains("on")}), 0), {once: true});
      });
      return [r.x + r.width / 2, r.y + r.height / 2];
    })()""")
    b.click(*target)
    assert b.evaluate("window.__heard") == {"on": True, "after": False}

    # "play all" plays a card's snippets one after another
    target = b.evaluate("""(() => {
      const card = [...document.querySelectorAll(".card")].find(
        (c) => c.querySelectorAll("audio").length >= 2);
      const [first, second] = card.querySelectorAll("audio");
      window.__order = new Promise((resolve) => {
        const seen = [];
        first.addEventListener("ended", () => seen.push("first ended"), {once: true});
        second.addEventListener("playing", () => { seen.push("second playing");
                                                    resolve(seen); }, {once: true});
      });
      const btn = card.querySelector("button.playall");
      btn.scrollIntoView({block: "center"});
      const r = btn.getBoundingClientRect();
      return [r.x + r.width / 2, r.y + r.height / 2];
    })()""")
    b.click(*target)
    assert b.evaluate("window.__order") == ["first ended", "second playing"]
    b.evaluate("document.querySelector('button.snip.on')?.click(); window.scrollTo(0, 0)")

    assert [c for c in b.console if c["type"] in ("error", "warning", "assert")] == []
    assert b.exceptions == []
    assert [e for e in b.log if e["level"] in ("error", "warning")] == []
    assert b.requests and all(u.startswith(("file:", "data:")) for u in b.requests)

    b.fit_to_content()
    blocks = b.evaluate(BLOCKS_JS)
    assert blocks["width"] <= 1280  # nothing overflows sideways
    tiles = " ".join(blocks["tiles"]).lower()
    assert f"streams\n{1 + len(NOTES)}" in tiles
    shot = b.screenshot(tmp_path / "report.png")
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)

    def centre(box: dict) -> np.ndarray:
        return img[int(box["y"] + box["h"] / 2), int(box["x"] + box["w"] / 2)]

    # every cluster's swatch, on its chip and its card, shows the cluster's colour
    assert len(blocks["swatches"]) == 2 * real_run["summary"]["clusters"]
    for sw in blocks["swatches"]:
        assert np.abs(centre(sw) - sw["rgb"]).max() <= 3, sw
    # the timelines' stretches are painted in their clusters' colours
    assert blocks["segments"]
    for seg in blocks["segments"]:
        assert np.abs(centre(seg) - _rgb(seg["hex"])).max() <= 3, seg
    # spectrogram thumbnails are pictures, not blank boxes
    assert len(blocks["images"]) == real_run["summary"]["snippets"]
    for box in blocks["images"]:
        y0, x0 = int(box["y"]), int(box["x"])
        patch = img[y0:y0 + int(box["h"]), x0:x0 + int(box["w"])]
        assert patch.shape[:2] == (72, 180) and patch.std() > 10, box
    if os.environ.get("AUDIOCLUST_REPORT_SHOT"):  # keep the picture to look at
        shutil.copy(shot, os.environ["AUDIOCLUST_REPORT_SHOT"])


# --- enrolled names, discovered clusters, novelty, stream ids of Kafka streams --------------

def _tone(freq: float, seconds: float, sr: int = 16000, noise: float = 0.0,
          seed: int = 0) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(t.size)
            ).astype(np.float32)


def _record(stream: str, seq: int, cluster: int | None, conf: float | None, **extra) -> dict:
    return {"stream": stream, "seq": seq, "start": seq * 0.5, "end": seq * 0.5 + 1.0,
            "cluster": cluster, "confidence": conf, "novel": cluster is None,
            "silent": False, "model": "m@0", "timestamp": None, "level_dbfs": -20.0,
            "top": cluster or 0, "nearest": None, "similarity": None, "drift": [], **extra}


def _write_jsonl(path: Path, records: list[dict], extra_lines: tuple[str, ...] = ()) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "".join(extra_lines))
    return path


@pytest.fixture
def openset_run(tmp_path) -> dict:
    """Two Kafka-style streams (ids, not paths): 20 s each; cluster 0 is enrolled as "dog",
    cluster 12 was discovered online, a stretch is novel with novelty scores."""
    sf.write(tmp_path / "dev1.flac", np.concatenate([_tone(440, 10), _tone(1200, 10.5)]), 16000)
    sf.write(tmp_path / "dev2.wav", _tone(440, 20.5, noise=0.05), 16000)
    recs = []
    for seq in range(40):  # dev-1: dog for 10 s, then a discovered sound, a novel stretch
        if seq < 20:
            recs.append(_record("dev-1", seq, 0, 0.6 + seq / 100, label="dog", novelty=0.1))
        elif seq < 30:
            recs.append(_record("dev-1", seq, 12, 0.7, discovered=True, novel=True,
                                novelty=0.5))
        else:
            recs.append(_record("dev-1", seq, None, 0.2, novelty=0.6 + seq / 100))
    recs[25]["drift"] = ["novelty"]
    for seq in range(40):
        recs.append(_record("dev-2", seq, 0 if seq % 5 else 3, 0.9 - seq / 100, novelty=0.1))
    records = _write_jsonl(tmp_path / "kafka.jsonl", recs)
    out = tmp_path / "report.html"
    proc = run_report(str(records), "--audio", f"dev-1={tmp_path / 'dev1.flac'}",
                      f"dev-2={tmp_path / 'dev2.wav'}", "-o", str(out), "--json")
    return {"proc": proc, "doc": Doc(out.read_text()), "records": recs, "html": out}


def test_labels_discovered_clusters_and_novelty(openset_run):
    proc, doc, recs = openset_run["proc"], openset_run["doc"], openset_run["records"]
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    assert [c["id"] for c in doc.cards] == ["cluster-0", "cluster-12", "cluster-3", "novel"]
    assert int(doc.cards[0]["data-windows"]) == sum(r["cluster"] == 0 for r in recs) == 52
    assert doc.titles["cluster-0"] == "dog"
    text = openset_run["html"].read_text()
    card12 = text[text.index('id="cluster-12"'):text.index('id="cluster-3"')]
    assert "discovered" in card12 and 'class="badge new"' in card12
    card0 = text[text.index('id="cluster-0"'):text.index('id="cluster-12"')]
    assert 'class="badge named"' in card0 and "#0" in card0
    # the novel card plays the most novel window first, scored by the records' novelty
    novel = [f for f in doc.figures if f["card"] == "novel"]
    assert novel and float(novel[0]["data-score"]) == pytest.approx(0.6 + 39 / 100)
    assert novel[0]["data-why"] == "most novel"
    # cluster 0 is in both streams: its snippets come from both (the spread)
    assert {f["data-stream"] for f in doc.figures if f["card"] == "cluster-0"} == {"dev-1",
                                                                                  "dev-2"}
    assert "drift in novelty at 12.5 s" in text
    assert json.loads(proc.stdout)["snippets"] == len(doc.audio)


def test_openset_page_in_chromium(openset_run, browser):
    browser.open(openset_run["html"].resolve().as_uri())
    states = browser.evaluate(AUDIO_STATE_JS)
    assert states and all(s["meta"] == "ok" and isinstance(s["decoded"], dict)
                          for s in states), states
    assert browser.exceptions == []
    assert [c for c in browser.console if c["type"] == "error"] == []


# --- limits: long recordings give a page of bounded size ------------------------------------

def test_long_recording_many_clusters_stays_small(tmp_path):
    # 20 minutes of 8 kHz audio, 2,400 windows over 80 clusters
    sr, minutes = 8000, 20
    rng = np.random.default_rng(1)
    freqs = np.repeat(rng.uniform(200, 3000, minutes * 12), 5 * sr)
    audio = (0.3 * np.sin(2 * np.pi * np.cumsum(freqs) / sr)).astype(np.float32)
    sf.write(tmp_path / "long.flac", audio, sr)
    n = minutes * 60 * 2 - 1
    clusters = rng.integers(0, 80, n)
    recs = [_record("long.flac", i, int(clusters[i]), float(rng.uniform(0.3, 1)))
            for i in range(n)]
    records = _write_jsonl(tmp_path / "long.jsonl", recs)
    out = tmp_path / "long.html"
    proc = run_report(str(records), "--audio", "long.flac", "-o", str(out), "--json",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["cards"] == 60 and s["snippets"] == 60 * 6  # --max-clusters x --snippets
    assert s["bytes"] < 4_000_000
    doc = Doc(out.read_text())
    assert sum(1 for t, a in doc.tags if t == "rect" and "data-code" in a) <= 800
    assert '<details id="more-clusters">' in out.read_text()  # the 20 smallest: table rows


# --- units -------------------------------------------------------------------------------------

def test_choose_confident_first_then_spread_without_overlap():
    cands = [Candidate("a", t * 0.5, t * 0.5 + 1, 0.99 - t * 0.001) for t in range(100)]
    cands += [Candidate("b", t * 0.5, t * 0.5 + 1, 0.5) for t in range(10)]
    chosen = choose(cands, 6, {"a": 50.5, "b": 5.5})
    picks = [c for c, _ in chosen]
    assert [why for _, why in chosen] == ["best"] * 3 + ["spread"] * 3
    assert picks[0] == cands[0] and len(picks) == 6
    # a window's length apart: adjacent windows are mostly the same sound
    assert all(p.stream != q.stream or p.end + 1 <= q.start or q.end + 1 <= p.start
               for i, p in enumerate(picks) for q in picks[i + 1:])
    assert [p.start for p in picks[:3]] == [0.0, 2.0, 4.0]
    # b's windows score below the median: the spread stays in a, among its windows above
    # the median (the first 55), and reaches the far end of them
    assert {p.stream for p in picks} == {"a"}
    assert max(p.start for p in picks) == 27.0
    # a stream not heard yet comes first in the spread
    late = [Candidate("c", 0.0, 1.0, 0.95)]
    assert choose(cands + late, 6, {"a": 50.5, "b": 5.5, "c": 1.0})[3] == (late[0], "spread")
    assert choose([], 6, {}) == [] and choose(cands, 0, {}) == []
    # a 2 s stream holds two non-overlapping 1 s windows, but not two a window apart: the
    # second comes from the relaxed pass
    short = [Candidate("s", t * 0.5, t * 0.5 + 1, 0.9 - t / 100) for t in range(3)]
    assert [(c.start, why) for c, why in choose(short, 6, {"s": 2.0})] == [(0.0, "best"),
                                                                          (1.0, "best")]


def test_records_reader_dedupes_and_keeps_columns(tmp_path):
    recs = [_record("s", 0, 1, 0.5), _record("s", 1, 1, 0.6), _record("s", 0, 2, 0.9)]
    recs[1]["drift"] = ["confidence"]
    r = read_records(_write_jsonl(tmp_path / "r.jsonl", recs))
    s = r.streams["s"]
    assert s.cluster.tolist() == [2, 1] and s.confidence.tolist() == [0.9, 0.6]
    assert s.drift == [(1, ("confidence",))]
    assert {c.id: c.windows for c in r.by_size()} == {2: 1, 1: 1}


def test_png_writer_roundtrip(tmp_path):
    from PIL import Image

    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) % 3
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    (tmp_path / "p.png").write_bytes(png_indexed(pixels, palette))
    got = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    assert (got == palette[pixels]).all()


# --- bad input: one line, never a traceback -------------------------------------------------

def _one_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_unreadable_records_file(tmp_path):
    _one_error(run_report(str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "r.html")),
               "missing.jsonl: no such file")
    _one_error(run_report(str(tmp_path), "-o", str(tmp_path / "r.html")), "is a folder")
    (tmp_path / "bin.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    _one_error(run_report(str(tmp_path / "bin.jsonl"), "-o", str(tmp_path / "r.html")),
               "not a text file of JSON lines")
    (tmp_path / "empty.jsonl").write_text("")
    _one_error(run_report(str(tmp_path / "empty.jsonl"), "-o", str(tmp_path / "r.html")),
               "no records")
    assert not (tmp_path / "r.html").exists()


def test_lines_that_are_not_records(tmp_path):
    good = [_record("s", i, 0, 0.9) for i in range(4)]
    bad = ('{"stream": "s", "start": 0.0}\n', "[1, 2]\n", '{"stream": "s", "start": "x", '
           '"end": 1, "cluster": 0}\n', "{truncated\n")
    records = _write_jsonl(tmp_path / "r.jsonl", good, bad)
    proc = run_report(str(records), "-o", str(tmp_path / "r.html"), "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    warn = [ln for ln in proc.stderr.splitlines() if "warning:" in ln and "not a record" in ln]
    assert len(warn) == 1 and "4 lines are not a record" in warn[0]
    assert "line 5: no end, cluster field" in warn[0]
    assert json.loads(proc.stdout)["skipped_lines"] == 4
    assert (tmp_path / "r.html").exists()
    # only lines that are not records: nothing to report
    only_bad = _write_jsonl(tmp_path / "bad.jsonl", [], bad)
    _one_error(run_report(str(only_bad), "-o", str(tmp_path / "b.html")),
               "no records in 4 lines (none of them is a record)")


def test_audio_that_cannot_be_read(tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all")
    records = _write_jsonl(tmp_path / "r.jsonl", [_record("dev", i, 0, 0.9) for i in range(6)])
    out = tmp_path / "r.html"
    proc = run_report(str(records), "--audio", f"dev={tmp_path / 'broken.wav'}", "-o", str(out))
    line = _one_error(proc, "1 audio file could not be read", "written")
    assert "broken.wav: not readable as audio" in proc.stderr and line
    doc = Doc(out.read_text())  # the page is still there: timeline, no snippets
    assert doc.audio == {} and "svg" in {t for t, _ in doc.tags}
    # a path that does not exist at all
    proc = run_report(str(records), "--audio", str(tmp_path / "nowhere.flac"), "-o", str(out))
    _one_error(proc, "1 audio file could not be read")
    assert "nowhere.flac: no such file" in proc.stderr


def test_streams_without_audio_get_timelines(tmp_path):
    sf.write(tmp_path / "a.flac", _tone(300, 3.0), 16000)
    recs = [_record("a.flac", i, 0, 0.9) for i in range(5)]
    recs += [_record("mic", i, 1, 0.8) for i in range(5)]
    records = _write_jsonl(tmp_path / "r.jsonl", recs)
    out = tmp_path / "r.html"
    proc = run_report(str(records), "-o", str(out), cwd=tmp_path)  # no --audio at all
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "warning: no stream has audio (pass --audio PATH or --audio ID=PATH)" in proc.stderr
    assert out.read_text().count('class="timeline"') == 2
    proc = run_report(str(records), "--audio", "a.flac", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0
    assert "warning: 1 stream has no audio (timeline only): mic" in proc.stderr
    doc = Doc(out.read_text())
    assert {f["data-stream"] for f in doc.figures} == {"a.flac"}
    assert "no snippets: none of its streams has audio" in out.read_text()


def test_audio_that_matches_no_stream_or_is_too_short(tmp_path):
    sf.write(tmp_path / "short.flac", _tone(300, 1.0), 16000)
    records = _write_jsonl(tmp_path / "r.jsonl", [_record("dev", i, 0, 0.9) for i in range(20)])
    proc = run_report(str(records), "--audio", "nobody=short.flac", "short.flac",
                      "dev=short.flac", "-o", "r.html", cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "warning: --audio nobody=short.flac: no stream 'nobody' in the records" in proc.stderr
    assert "warning: --audio short.flac: no stream of the records is named by this path" \
        in proc.stderr
    assert "stream dev: records reach 10.5 s but short.flac is 1.0 s long" in proc.stderr


def test_stream_ids_and_labels_are_escaped(tmp_path):
    sf.write(tmp_path / "a.flac", _tone(300, 3.0), 16000)
    odd = """<script>alert("x")</script> & 'dev'"""
    recs = [_record(odd, i, 0, 0.9, label="<b>dog</b>") for i in range(5)]
    out = tmp_path / "r.html"
    proc = run_report(str(_write_jsonl(tmp_path / "r.jsonl", recs)), "--audio",
                      f"{odd}={tmp_path / 'a.flac'}", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = Doc(out.read_text())
    assert sum(1 for t, _ in doc.tags if t == "script") == 1  # the page's own
    assert "<b>" not in out.read_text() and doc.titles["cluster-0"] == "<b>dog</b>"
    assert {f["data-stream"] for f in doc.figures} == {odd}


def test_sizes_over_capture_time_when_every_record_has_one(tmp_path):
    recs = [_record("mic", i, i % 2, 0.9, timestamp=1_700_000_000 + i * 0.5) for i in range(60)]
    out = tmp_path / "r.html"
    proc = run_report(str(_write_jsonl(tmp_path / "r.jsonl", recs)), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "against capture time (UTC)" in text and ">22:13:20<" in text  # the first tick
    recs[3]["timestamp"] = None  # one window without: the stream clock
    proc = run_report(str(_write_jsonl(tmp_path / "r.jsonl", recs)), "-o", str(out))
    assert "against time into each stream" in out.read_text()


def test_bad_settings_and_output(tmp_path):
    records = _write_jsonl(tmp_path / "r.jsonl", [_record("dev", 0, 0, 0.9)])
    _one_error(run_report(str(records), "--snippets", "-1", "-o", str(tmp_path / "r.html")),
               "snippets")
    _one_error(run_report(str(records), "-o", str(tmp_path / "no" / "such" / "r.html")),
               "cannot write")
    proc = run_report(str(records), "--max-clusters", "many")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_report_needs_only_the_service_install(tmp_path):
    # torch, scikit-learn and the rest of the train extra cannot be imported: the report
    # runs on what audioclust[cpu] installs
    sf.write(tmp_path / "a.flac", _tone(300, 3.0), 16000)
    records = _write_jsonl(tmp_path / "r.jsonl", [_record("a.flac", i, 0, 0.9) for i in range(5)])
    code = f"""
import importlib.abc, sys
class NoTrain(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in ("torch", "sklearn", "onnx", "matplotlib", "PIL"):
            raise ModuleNotFoundError(f"No module named {{fullname!r}}", name=fullname)
sys.meta_path.insert(0, NoTrain())
from audioclust.stream.report import cli
sys.exit(cli.main([{str(records)!r}, "--audio", "a.flac", "-o", "r.html", "-q"]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=ENV)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert len(Doc((tmp_path / "r.html").read_text()).audio) == 3


def test_help_states_limits_and_audio_mapping():
    proc = run_report("--help")
    assert proc.returncode == 0
    for needle in ("--audio", "ID=PATH", "--snippets", "--max-clusters", "--max-streams",
                   "MB", "self-contained"):
        assert needle in proc.stdout, needle
