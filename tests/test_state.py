"""The stream state file: any stream id round-trips, damaged files are one-line errors, and
the per-stream codec (arrays + scalars <-> bytes) that the file uses."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from stream_helpers import run_cli

from audioclust.stream.assign import Assigner
from audioclust.stream.sources import MAX_STREAM_ID_BYTES
from audioclust.stream.state import StateError, decode_stream_state, encode_stream_state

PRIOR = np.array([0.5, 0.3, 0.2])
DIM = 4


def _fed(names: list[str], seed: int = 0, model_id: str = "m") -> Assigner:
    rng = np.random.default_rng(seed)
    a = Assigner(PRIOR, DIM, model_id=model_id)
    for i in range(6 * len(names)):
        a.process(names[i % len(names)], rng.standard_normal(DIM),
                  rng.dirichlet(np.ones(3)))
    return a


def _same_state(a: Assigner, b: Assigner) -> None:
    assert list(a.streams) == list(b.streams)
    for name, s in a.streams.items():
        arrays, scalars = s.state()
        arrays2, scalars2 = b.streams[name].state()
        assert scalars == scalars2
        assert arrays.keys() == arrays2.keys()
        for k in arrays:
            np.testing.assert_array_equal(arrays[k], arrays2[k])


def _round_trip(a: Assigner, path) -> Assigner:
    a.save(path)
    b = Assigner(PRIOR, DIM, model_id=a.model_id)
    assert b.load(path) == len(a.streams)
    return b


@pytest.mark.parametrize("name", ["x" * 70_000, "a\0b", "\0", "s/prior", "__meta__",
                                  "naïve 流 🎧", "a/b/../c", " "])
def test_any_stream_id_round_trips(tmp_path, name: str) -> None:
    """A stream id over 65,535 bytes stopped the save (zip member name); one with a NUL
    made the file unloadable; ids that look like member names must not collide."""
    a = _fed([name, "plain"])
    _same_state(a, _round_trip(a, tmp_path / "state.npz"))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=5, unique=True))
def test_arbitrary_stream_ids_round_trip(tmp_path, names: list[str]) -> None:
    a = _fed(names)
    _same_state(a, _round_trip(a, tmp_path / "state.npz"))


def test_member_names_never_hold_stream_ids(tmp_path) -> None:
    a = _fed(["secret/stream\0id"])
    a.save(tmp_path / "state.npz")
    with zipfile.ZipFile(tmp_path / "state.npz") as z:
        names = z.namelist()
    assert not any("secret" in n for n in names)
    assert "__meta__.npy" in names


def _damaged(tmp_path) -> dict[str, bytes]:
    good = _fed(["s0", "s1"]).save(tmp_path / "good.npz").read_bytes()

    def npz(**arrays) -> bytes:
        p = tmp_path / "x.npz"
        np.savez(p, **arrays)
        return p.read_bytes()

    meta = {"version": 2, "model": "m", "config": {}, "streams": ["s0"]}
    return {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "not a zip": b"not a state file at all",
        "no meta": npz(other=np.zeros(3)),
        "meta not json": npz(__meta__=np.array("{nope")),
        "meta a list": npz(__meta__=np.array(json.dumps([1, 2]))),
        "meta without streams": npz(__meta__=np.array(json.dumps({"version": 1}))),
        "streams not a list": npz(__meta__=np.array(json.dumps({**meta, "streams": 5}))),
        "unknown version": npz(__meta__=np.array(json.dumps({**meta, "version": 99}))),
        "member missing": npz(__meta__=np.array(json.dumps(meta))),
        "member garbage": npz(__meta__=np.array(json.dumps(meta)),
                              **{"stream.0": np.frombuffer(b"garbage!", np.uint8)}),
        "meta numeric": npz(__meta__=np.arange(3)),
    }


def test_damaged_state_files_are_one_line_errors(tmp_path) -> None:
    for what, data in _damaged(tmp_path).items():
        bad = tmp_path / "bad.npz"
        bad.write_bytes(data)
        with pytest.raises(ValueError) as info:
            Assigner(PRIOR, DIM, model_id="m").load(bad)
        message = str(info.value)
        assert str(bad) in message and "\n" not in message, (what, message)


def test_damaged_state_file_through_the_cli(tmp_path, stream_model, tone) -> None:
    import soundfile as sf

    clip = tmp_path / "tone.wav"
    sf.write(clip, tone, 16000)
    for what, data in _damaged(tmp_path).items():
        state = tmp_path / "state.npz"
        state.write_bytes(data)
        proc = run_cli("--source", "file", str(clip), "--model", str(stream_model),
                       "--state", str(state), "-q")
        assert proc.returncode == 1, (what, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("audioclust-stream: error: "), \
            (what, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_version_1_files_are_still_read(tmp_path) -> None:
    """The format before stream ids moved into the JSON document (member ``<id>/<key>``)."""
    a = _fed(["s0", "s1"])
    arrays, doc = {}, {"version": 1, "model": "m", "config": {}, "streams": {}}
    for name, s in a.streams.items():
        arr, sc = s.state()
        arrays.update({f"{name}/{k}": v for k, v in arr.items()})
        doc["streams"][name] = sc
    path = tmp_path / "v1.npz"
    np.savez(path, __meta__=np.array(json.dumps(doc)), **arrays)
    b = Assigner(PRIOR, DIM, model_id="m")
    assert b.load(path) == 2
    _same_state(a, b)


# --- the per-stream codec -------------------------------------------------------------------

_dtypes = st.sampled_from(["<f8", "<f4", "<i8", "<i4", "<u1", "|b1", "<f2", "<u8"])
_arrays = st.dictionaries(
    st.text(min_size=1, max_size=20),
    _dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3,
                                                               max_side=5))),
    max_size=4)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(arrays=_arrays, scalars=st.dictionaries(st.text(), _json, max_size=5))
def test_stream_codec_round_trips(arrays, scalars) -> None:
    data = encode_stream_state(arrays, scalars)
    assert isinstance(data, bytes)
    got_arrays, got_scalars = decode_stream_state(data)
    assert got_scalars == scalars
    assert got_arrays.keys() == arrays.keys()
    for k, v in arrays.items():
        assert got_arrays[k].dtype == v.dtype and got_arrays[k].shape == v.shape
        np.testing.assert_array_equal(got_arrays[k], v)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cut=st.integers(0, 400), flip=st.integers(0, 400))
def test_stream_codec_rejects_anything_else_with_a_state_error(data, cut, flip) -> None:
    good = bytearray(encode_stream_state({"prior": np.arange(3.0)}, {"windows": 3}))
    for candidate in (data, bytes(good[:cut]),
                      bytes(good[:flip % len(good)]) + bytes([good[flip % len(good)] ^ 0x5A])
                      + bytes(good[flip % len(good) + 1:])):
        try:
            arrays, scalars = decode_stream_state(candidate)
        except StateError as exc:
            assert "\n" not in str(exc)
        else:
            assert isinstance(arrays, dict) and isinstance(scalars, dict)


@pytest.mark.parametrize("spec", [["x", "<f8", [1] * 40], ["x", "<U3", [1]], ["x", "|O", [1]],
                                  ["x", ">f8", [1]], ["x", "f8,i4", [1]], ["x", "<f8", [-1]],
                                  ["x", "<f8", [True]], ["x", "<f8"], "x"])
def test_stream_codec_refuses_headers_it_did_not_write(spec) -> None:
    import struct

    header = json.dumps({"arrays": [spec], "scalars": {}}).encode()
    data = struct.pack("<4sBI", b"ACSS", 1, len(header)) + header + b"\0" * 8
    with pytest.raises(StateError):
        decode_stream_state(data)


def test_stream_codec_refuses_object_arrays_and_non_json() -> None:
    with pytest.raises(ValueError):
        encode_stream_state({"x": np.array([object()])}, {})
    with pytest.raises(ValueError):
        encode_stream_state({}, {"x": object()})


def test_the_stream_id_limit_is_documented() -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "kafka.md").read_text()
    assert f"{MAX_STREAM_ID_BYTES:,} bytes" in docs


def test_a_damaged_head_free_stream_state_is_one_line(tmp_path) -> None:
    from audioclust.models.reference import NoveltyReference
    from audioclust.stream.headfree import HeadFreeAssigner
    from audioclust.stream.state import read_state_file, write_state_file

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, DIM)) * 4
    labels = np.repeat(np.arange(3), 40)
    ref = NoveltyReference.fit(centres[labels] + rng.standard_normal((120, DIM)), labels, "head")
    a = HeadFreeAssigner(ref, model_id="m")
    for _ in range(5):
        a.process("s", rng.standard_normal(DIM))
    state = read_state_file(a.save(tmp_path / "hf.npz"))
    arrays, scalars = state.streams["s"]
    for drop in ("openset.centroids", "openset.space.mean"):
        damaged = {"s": ({k: v for k, v in arrays.items() if k != drop}, scalars)}
        write_state_file(tmp_path / "bad.npz", state.doc, damaged)
        with pytest.raises(ValueError) as info:
            HeadFreeAssigner(ref, model_id="m").load(tmp_path / "bad.npz")
        assert str(tmp_path / "bad.npz") in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="a model with a head"):  # and the other way round
        HeadFreeAssigner(ref, model_id="m").load(_fed(["s"]).save(tmp_path / "head.npz"))


def _misfits(arrays: dict, scalars: dict) -> dict[str, tuple[dict, dict]]:
    """A head model's stream state with one part that decodes but does not fit."""
    def arr(**kw):
        return {**arrays, **kw}, scalars

    def sc(**kw):
        return arrays, {**scalars, **kw}

    k = arrays["prior"].size
    return {
        "prior of another size": arr(prior=np.full(1, 1.0)),
        "prior NaN": arr(prior=np.full(k, np.nan)),
        "prior negative": arr(prior=-arrays["prior"]),
        "prior 2-d": arr(prior=arrays["prior"][None]),
        "centroids infinite": arr(centroids=np.full_like(arrays["centroids"], np.inf)),
        "counts of another size": arr(counts=arrays["counts"][:1]),
        "counts negative": arr(counts=-np.ones(k, np.int64)),
        "counts fractional": arr(counts=np.full(k, 0.5)),
        "windows infinite": sc(windows=float("inf")),
        "windows negative": sc(windows=-1),
        "windows fractional": sc(windows=2.5),
        "windows a bool": sc(windows=True),
        "recent not a list": sc(confidence_recent=5),
        "recent NaN": sc(novelty_recent=[0.1, float("nan")]),
        "recent text": sc(confidence_recent=["x"]),
    }


def test_a_stream_state_that_does_not_fit_is_refused_and_changes_nothing(tmp_path) -> None:
    """The codec reads any well-formed arrays; what the assigner then took without a look
    (a prior of another size, NaN, counts of one cluster) gave wrong clusters or an
    IndexError traceback at the stream's next window."""
    from audioclust.stream.state import read_state_file, write_state_file

    good = _fed(["s", "t"])
    state = read_state_file(good.save(tmp_path / "good.npz"))
    for what, stream in _misfits(*state.streams["s"]).items():
        bad = tmp_path / "bad.npz"
        write_state_file(bad, state.doc, {"t": state.streams["t"], "s": stream})
        fresh = _fed(["u"])
        with pytest.raises(StateError) as info:
            fresh.load(bad)
        message = str(info.value)
        assert str(bad) in message and "'s'" in message and "\n" not in message, \
            (what, message)
        assert list(fresh.streams) == ["u"], what  # nothing restored, not even "t"
        with pytest.raises(StateError):  # the Kafka changelog's way in, too
            fresh.load_stream("s", *stream)
        assert list(fresh.streams) == ["u"], what
