"""The evaluation library functions (training/evaluation.py) return reports and write
nothing; the CLI's writers write a report's files from the report alone."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest

from audioclust.models.cli import UserError
from audioclust.training.baselines import BaselineConfig
from audioclust.training.evaluate import write_baselines
from audioclust.training.evaluation import ROW_KEYS, BaselinesRun, evaluate_baselines

# cache_dir "": no feature cache, so the evaluation itself writes nothing anywhere
RUN = BaselinesRun(features=("mfcc",), cache_dir="",
                   grid=BaselineConfig(reducers=("none", "pca"), clusterers=("kmeans",)))


@pytest.fixture(scope="module")
def report(fsdd_subset):
    return evaluate_baselines(RUN, fsdd_subset, "speaker")


def test_evaluate_baselines_returns_a_report_and_writes_nothing(report, fsdd_subset,
                                                                 tmp_path, monkeypatch):
    # Anything written to the working folder, the cache or the home folder lands here.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUDIOCLUST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    before = sorted(p.name for p in fsdd_subset.iterdir())
    again = evaluate_baselines(RUN, fsdd_subset, "speaker")
    assert list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in fsdd_subset.iterdir()) == before
    def scores(r):
        return {k: v for k, v in r.to_dict().items() if k != "seconds"}

    assert [scores(r) for r in again.rows] == [scores(r) for r in report.rows]

    assert report.clips == 120 and report.classes == ["george", "jackson", "lucas"]
    assert [(r.features, r.reducer, r.clusterer) for r in report.rows] == [
        ("mfcc", "none", "kmeans"), ("mfcc", "pca", "kmeans")]
    assert all(r.n_clusters == 3 for r in report.rows)  # k = number of speakers
    assert report.best.acc == max(r.acc for r in report.rows)
    assert report.best.acc >= 0.6  # chance is 1/3; 0.75 seen
    assert report.map_xy.shape == (120, 2) and len(report.best.labels) == 120
    rows = report.to_dict()
    assert [set(r) for r in rows] == [set(ROW_KEYS)] * 2
    assert json.loads(json.dumps(rows)) == rows
    meta = report.record()["meta"]
    assert meta["config"] == {"features": ["mfcc"], "encoders": [],
                              "grid": RUN.grid.__dict__}


def test_evaluate_baselines_refuses_unknown_features(fsdd_subset):
    with pytest.raises(UserError, match="unknown features"):
        evaluate_baselines(dataclasses.replace(RUN, features=("chroma",)), fsdd_subset,
                           "speaker")


def test_write_baselines_from_the_report_alone(report, tmp_path):
    out = tmp_path / "report"
    stream = io.StringIO()
    write_baselines(report, out, as_json=True, stream=stream)
    assert json.loads(stream.getvalue()) == report.to_dict()
    assert sorted(p.name for p in out.iterdir()) == [
        "baselines.json", "baselines.md", "confusion.png", "map.png"]
    saved = json.loads((out / "baselines.json").read_text())
    assert saved == json.loads(json.dumps(report.record()))  # tuples come back as lists
    assert saved["meta"]["config"]["grid"]["reducers"] == ["none", "pca"]
    md = (out / "baselines.md").read_text()
    assert md.startswith(f"# Baselines: {report.data} (labels: speaker, 120 clips)\n")
    assert md.count("\n|") == 2 + 2  # header, rule, two rows
    for png in ("confusion.png", "map.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    text = io.StringIO()
    write_baselines(report, tmp_path / "again", stream=text)
    assert text.getvalue().startswith(md.split("\n\n", 1)[1])  # the table, then the best
    assert f"\nbest: {report.title}\n" in text.getvalue()
