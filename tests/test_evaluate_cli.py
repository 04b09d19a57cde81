"""End to end: the installed `audioclust-eval baselines` command on real FSDD clips."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EVAL = [sys.executable, "-m", "audioclust.training.evaluate"]
KEYS = {"features", "reducer", "clusterer", "n_clusters", "nmi", "ari", "acc", "seconds"}


def _run(*args: str | Path, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([*EVAL, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_console_script_is_installed():
    exe = shutil.which("audioclust-eval", path=str(Path(sys.executable).parent))
    assert exe is not None
    proc = subprocess.run([exe, "baselines", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "--labels" in proc.stdout and "dbscan" in proc.stdout


def test_baselines_grid_on_subset(fsdd_subset, tmp_path):
    out = tmp_path / "report"
    proc = _run("baselines", "--data", fsdd_subset, "--labels", "speaker", "--out", out,
                "--json", "--quiet", "--cache-dir", tmp_path / "cache", check=True)
    rows = json.loads(proc.stdout)
    assert len(rows) == 2 * 3 * 4
    assert all(set(r) == KEYS for r in rows)
    assert {(r["features"], r["reducer"], r["clusterer"]) for r in rows} == {
        (f, r, c)
        for f in ("logmel", "mfcc")
        for r in ("none", "pca", "tsne")
        for c in ("kmeans", "agglomerative", "dbscan", "meanshift")
    }
    for r in rows:
        assert 0 <= r["nmi"] <= 1 and -1 <= r["ari"] <= 1 and 0 < r["acc"] <= 1
        assert r["n_clusters"] >= 1 and r["seconds"] >= 0
        if r["clusterer"] in ("kmeans", "agglomerative"):
            assert r["n_clusters"] == 3  # k = number of speakers
    # three speakers' voices are far apart in log-mel statistics
    best = max(rows, key=lambda r: r["acc"])
    assert best["acc"] >= 0.9 and best["nmi"] >= 0.8
    saved = json.loads((out / "baselines.json").read_text())
    assert saved["meta"]["classes"] == ["george", "jackson", "lucas"]
    assert len(saved["rows"]) == 24
    assert (out / "baselines.md").read_text().count("\n|") == 24 + 2  # header, rule, rows
    for png in ("confusion.png", "map.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((tmp_path / "cache" / "features").glob("*.npz"))


def test_grid_subset_and_config_file(fsdd_subset, tmp_path):
    cfg = tmp_path / "eval.toml"
    cfg.write_text('[baselines]\nfeatures = ["mfcc"]\n[baselines.grid]\nreducers = ["pca"]\n')
    proc = _run("baselines", "--data", fsdd_subset, "--labels", "digit", "--out", tmp_path / "o",
                "--json", "--quiet", "--no-cache", "--config", cfg, "--clusterers",
                "kmeans,agglomerative", check=True)
    rows = json.loads(proc.stdout)
    assert [(r["features"], r["reducer"], r["clusterer"]) for r in rows] == [
        ("mfcc", "pca", "kmeans"), ("mfcc", "pca", "agglomerative")]
    assert all(r["n_clusters"] == 4 for r in rows)


def _one_line_error(proc: subprocess.CompletedProcess, code: int, *parts: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    # argparse names the subcommand in usage errors: "audioclust-eval baselines: error:"
    assert lines and lines[-1].startswith("audioclust-eval"), proc.stderr
    assert "error:" in lines[-1]
    assert "Traceback" not in proc.stderr
    for part in parts:
        assert part in lines[-1]


def test_errors(tmp_path, fsdd_subset):
    _one_line_error(_run("baselines", "--data", tmp_path / "absent", "--labels", "digit"), 1,
                    "not a folder")
    _one_line_error(_run("baselines", "--data", fsdd_subset, "--labels", "genre"), 1,
                    "unknown label spec")
    _one_line_error(_run("baselines", "--data", fsdd_subset, "--labels", "digit",
                         "--reducers", "umap"), 2, "umap")
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("[baselines.grid]\npca_variance = 3.0\n")
    _one_line_error(_run("baselines", "--data", fsdd_subset, "--labels", "digit", "--config",
                         bad_cfg), 1, "pca_variance")


def test_corrupt_clip_is_named(tmp_path, fsdd_subset):
    data = tmp_path / "data"
    shutil.copytree(fsdd_subset, data)
    victim = data / "1_jackson_4.wav"
    victim.write_bytes(victim.read_bytes()[:300])
    proc = _run("baselines", "--data", data, "--labels", "digit", "--no-cache", "--quiet",
                "--out", tmp_path / "o")
    _one_line_error(proc, 1, str(victim), "truncated")
    assert not (tmp_path / "o" / "baselines.json").exists()  # no half-written report


@pytest.mark.parametrize("argv", [[], ["baselines"]])
def test_usage_errors_exit_2(argv):
    assert _run(*argv).returncode == 2


def test_every_training_subcommand_takes_the_shared_flags():
    import argparse

    from audioclust.training import evaluate, train
    from audioclust.training.options import cache_dir_from

    for module, labels in ((evaluate, True), (train, False)):
        sub = next(a for a in module.build_parser()._actions
                   if isinstance(a, argparse._SubParsersAction))
        for name, parser in sub.choices.items():
            flags = {o: a for a in parser._actions for o in a.option_strings}
            for flag in ("--data", "--out", "--json", "--quiet", "--seed", "--cache-dir"):
                assert flag in flags and flags[flag].help, (module.PROG, name, flag)
            assert ("--labels" in flags) == labels, (module.PROG, name)
            assert flags["--data"].required, (module.PROG, name)
    args = evaluate.build_parser().parse_args(
        ["head", "--head", "h", "--encoder", "e", "--data", "d", "--labels", "digit",
         "--no-cache", "--cache-dir", "c"])
    assert cache_dir_from(args) == "" and args.seed == 0 and args.out == Path("runs/head-eval")
    args = train.build_parser().parse_args(["ssl", "--data", "d", "--out", "o"])
    assert cache_dir_from(args) is None and args.seed is None  # None: the config's seed
