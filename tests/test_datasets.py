"""AudioFolder: label specs, crop/pad policy, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write

from audioclust.training.datasets import AudioFolder, fix_length, parse_label_spec


def test_fsdd_digit_and_speaker_labels(fsdd_subset):
    digits = AudioFolder(fsdd_subset, labels="digit")
    assert len(digits) == 120
    assert digits.class_names == ["0", "1", "2", "3"]
    assert np.bincount(digits.targets).tolist() == [30, 30, 30, 30]
    speakers = AudioFolder(fsdd_subset, labels="speaker")
    assert speakers.class_names == ["george", "jackson", "lucas"]
    i = next(i for i, c in enumerate(speakers.clips) if c.path.name == "2_lucas_7.wav")
    assert speakers.class_names[speakers.targets[i]] == "lucas"
    assert digits.class_names[digits.targets[i]] == "2"


def test_full_fsdd_labels(fsdd_dir):
    ds = AudioFolder(fsdd_dir, labels="speaker")
    assert len(ds) == 3000
    assert len(ds.class_names) == 6
    assert np.bincount(ds.targets).tolist() == [500] * 6


def test_folder_labels_natural_order(tmp_path, tone):
    for cls in ("10", "2", "dog"):
        (tmp_path / cls).mkdir()
        write(tmp_path / cls / "a.wav", tone, 16000)
        write(tmp_path / cls / "b.flac", tone, 16000, format="FLAC")
    ds = AudioFolder(tmp_path, labels="folder")
    assert ds.class_names == ["2", "10", "dog"]
    assert len(ds) == 6
    wave, target = ds[0]
    assert wave.dtype == np.float32 and ds.class_names[target] == ds.clips[0].path.parent.name


def test_csv_labels_define_the_set(tmp_path, tone):
    write(tmp_path / "x.wav", tone, 16000)
    write(tmp_path / "y.wav", tone, 16000)
    write(tmp_path / "unlisted.wav", tone, 16000)
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(f"path,label\nx.wav,bird\n{tmp_path / 'y.wav'},car\n")
    ds = AudioFolder(tmp_path, labels=f"csv:{csv_file}")
    assert [c.path.name for c in ds.clips] == ["x.wav", "y.wav"]
    assert ds.class_names == ["bird", "car"]


def test_csv_errors(tmp_path, tone):
    write(tmp_path / "x.wav", tone, 16000)
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("file,class\nx.wav,a\n")
    with pytest.raises(ValueError, match="columns path,label"):
        AudioFolder(tmp_path, labels=f"csv:{bad_header}")
    missing = tmp_path / "m.csv"
    missing.write_text("path,label\nx.wav,a\nnope.wav,b\n")
    with pytest.raises(ValueError, match=r"m.csv:3: no such audio file"):
        AudioFolder(tmp_path, labels=f"csv:{missing}")
    with pytest.raises(ValueError, match="cannot read labels"):
        AudioFolder(tmp_path, labels=f"csv:{tmp_path / 'absent.csv'}")


def test_unlabelled(fsdd_subset):
    ds = AudioFolder(fsdd_subset)
    assert not ds.labelled and (ds.targets == -1).all() and ds.class_names == []


def test_bad_specs_and_folders(tmp_path, tone):
    with pytest.raises(ValueError, match="unknown label spec"):
        parse_label_spec("genre")
    with pytest.raises(ValueError, match="needs a file"):
        parse_label_spec("csv:")
    with pytest.raises(ValueError, match="not a folder"):
        AudioFolder(tmp_path / "absent")
    with pytest.raises(ValueError, match="no audio files"):
        AudioFolder(tmp_path)
    write(tmp_path / "recording.wav", tone, 16000)
    with pytest.raises(ValueError, match=r"recording\.wav: name is not"):
        AudioFolder(tmp_path, labels="digit")


def test_fix_length_policy():
    x = np.arange(10, dtype=np.float32)
    y, n = fix_length(x, 4, "center")
    assert y.tolist() == [3, 4, 5, 6] and n == 4
    y, n = fix_length(x, 4, "start")
    assert y.tolist() == [0, 1, 2, 3]
    rng = np.random.default_rng(0)
    starts = {int(fix_length(x, 4, "random", rng)[0][0]) for _ in range(200)}
    assert starts == set(range(7))  # every valid offset, none outside
    y, n = fix_length(x, 13)
    assert y.tolist() == [*range(10), 0, 0, 0] and n == 10


def test_clip_seconds_applies_policy(fsdd_subset):
    ds = AudioFolder(fsdd_subset, labels="digit", clip_seconds=0.5)
    lengths = set()
    for i in range(10):
        wave, n_real = ds.load(i)
        assert wave.shape == (8000,)
        assert 0 < n_real <= 8000
        assert not wave[n_real:].any()
        lengths.add(n_real)
    assert len(lengths) > 1
