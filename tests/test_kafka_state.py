"""Stream state that follows its partition across the consumer group (the changelog topic):
the real CLI in subprocesses, a real broker (tansu), the real ONNX model.

(a) a partition moves from instance A to instance B mid-stream: every record equals that
of one instance that never lost it (no window written twice); (b) a state of another model
in the changelog is refused with one line; the message codec's checks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from test_kafka_service import (
    CHUNK,
    RATE,
    Service,
    audio_of,
    expected_windows,
    keys,
    publish,
    wait_until,
)

from audioclust.stream.kafka.changelog import decode_entry, encode_headers
from audioclust.stream.kafka.messages import encode_pcm
from audioclust.stream.sources import StreamSnapshot
from audioclust.stream.state import StateError, encode_stream_state

#: No stream may expire while the test waits between its two halves (a loaded machine).
PATIENT = "stream_idle_seconds = 900.0\n"

#: Fields of a record that depend on the stream's state or its audio.
FIELDS = ("cluster", "confidence", "novel", "silent", "top", "nearest", "similarity",
          "drift", "novelty", "discovered", "start", "end", "timestamp")


def same_record(got: dict, want: dict) -> bool:
    for f in FIELDS:
        a, b = got[f], want[f]
        if isinstance(a, float) and isinstance(b, float):
            if not math.isclose(a, b, rel_tol=0, abs_tol=1e-5):
                return False
        elif a != b:
            return False
    return True


def mismatches(records: list[dict], reference: dict) -> list:
    return [(r["stream"], r["seq"], {f: (r[f], reference[(r["stream"], r["seq"])][f])
                                     for f in FIELDS})
            for r in records if not same_record(r, reference[(r["stream"], r["seq"])])]


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """Services started by a test; any still running at its end are killed."""
    started: list[Service] = []
    yield started
    for svc in started:
        if svc.proc.poll() is None:
            svc.kill()


def test_a_moved_partition_carries_its_streams_state(kafka_broker, stream_model, tmp_path,
                                                     services) -> None:
    b = kafka_broker
    b.create_topic("audio", partitions=2)
    n_streams, half, total = 6, 40, 80  # 8 s per stream: windows 0..14, 0..6 before the move
    # the reference never loses a partition
    ref = Service(b, stream_model, tmp_path, "ref", group="ref", settings=PATIENT)
    a = Service(b, stream_model, tmp_path, "a", settings=PATIENT)
    services += [ref, a]
    a.wait_log(r"partitions assigned: audio")
    where = publish(b, n_streams, range(half), total)
    assert {p for p, _ in where.values()} == {0, 1}  # streams on both partitions
    before = expected_windows(n_streams, half)
    wait_until(lambda: keys(a.records()) >= before, 180, "A's windows before the move", [a])

    second = Service(b, stream_model, tmp_path, "b", settings=PATIENT)
    services.append(second)
    wait_until(lambda: len(second.assignments()) > 0 and len(second.assignments()[-1]) == 1
               and len(a.assignments()[-1]) == 1, 120, "the partitions split", [a, second])
    publish(b, n_streams, range(half, total), total)
    expected = expected_windows(n_streams, total)
    wait_until(lambda: keys(ref.records()) >= expected
               and keys(a.records()) | keys(second.records()) >= expected, 240,
               "every window from A+B and from the reference", [ref, a, second])
    assert a.stop() == 0 and second.stop() == 0 and ref.stop() == 0

    reference = {(r["stream"], r["seq"]): r for r in ref.records()}
    assert set(reference) == expected
    got_a, got_b = a.records(), second.records()
    assert keys(got_a) | keys(got_b) == expected
    # B took over streams that A had begun: their states came from the changelog ...
    moved = {r["stream"] for r in got_b} & {r["stream"] for r in got_a}
    assert moved, "no stream moved from A to B"
    # ... so every record after the move is the one the unmoved instance wrote, and no
    # window was written twice (those up to the saved one are skipped by the new owner).
    assert mismatches(got_a + got_b, reference) == []
    restored = second.wait_log(r"restored the states of (\d+) streams")
    assert int(restored.group(1)) == len(moved)
    assert len(got_a) + len(got_b) == len(expected)
    for s in moved:
        assert min(r["seq"] for r in got_b if r["stream"] == s) > \
            max(r["seq"] for r in got_a if r["stream"] == s)


def test_a_state_of_another_model_in_the_changelog_is_refused(kafka_broker, stream_model,
                                                              tmp_path, services) -> None:
    b = kafka_broker
    b.create_topic("audio")
    b.create_topic("g.state")
    snap = StreamSnapshot(encode_stream_state({}, {}), 3)
    prod = b.producer()
    prod.send("g.state", key=b"s0", value=snap.state, headers=encode_headers(snap, "0" * 64))
    prod.flush()
    prod.close()
    svc = Service(b, stream_model, tmp_path, "other")
    services.append(svc)
    assert svc.proc.wait(120) == 1
    err = svc.text()
    assert "Traceback" not in err
    line = [x for x in err.splitlines() if "error:" in x]
    assert len(line) == 1, err
    assert "state topic g.state[0]@0: state belongs to another model (000000000000…" in line[0]
    assert "give this model its own state_topic" in line[0]


def test_an_ended_stream_leaves_a_tombstone_and_is_not_restored(kafka_broker, stream_model,
                                                               tmp_path, services) -> None:
    b = kafka_broker
    b.create_topic("audio")
    a = Service(b, stream_model, tmp_path, "a", settings=PATIENT)
    services.append(a)
    a.wait_log(r"partitions assigned: audio")
    publish(b, 2, range(30), 30)  # s0 and s1 end with their 30th chunk
    prod = b.producer(linger_ms=5)
    x = audio_of(7, 30)
    for c in range(30):  # "live" goes on
        m = encode_pcm(x[c * CHUNK : (c + 1) * CHUNK], stream="live", seq=c, sample_rate=RATE,
                       offset=c * CHUNK)
        prod.send("audio", key=m.key, value=m.value, headers=m.headers)
    prod.flush()
    prod.close()
    ended = {"s0", "s1"}
    wait_until(lambda: keys(a.records()) >= expected_windows(2, 30)
               | {("live", w) for w in range(5)}, 180, "the windows of all three streams", [a])

    last: dict = {}

    def tombstoned() -> bool:  # the latest message of each key in the changelog
        last.update({m.key.decode(): m for m in b.read_all("g.state", 10**9, timeout=2)})
        return ended <= set(last) and all(last[s].value is None for s in ended)

    wait_until(tombstoned, 60, "tombstones of the ended streams", [a])
    assert last["live"].value  # a stream going on keeps its state
    assert dict(last["s0"].headers)["ended"] == b"1"
    assert a.stop() == 0
    # a new owner restores the stream going on, not the ended ones
    second = Service(b, stream_model, tmp_path, "b", settings=PATIENT)
    services.append(second)
    restored = second.wait_log(r"restored the states of (\d+) streams", 120)
    assert int(restored.group(1)) == 1
    assert second.stop() == 0


def test_changelog_entries_round_trip_and_foreign_ones_are_refused() -> None:
    state = encode_stream_state({}, {"windows": 2})
    snap = StreamSnapshot(state, 7, ended=True)
    headers = encode_headers(snap, "ab" * 32)
    assert decode_entry(state, headers, "ab" * 32, "here") == snap
    assert decode_entry(state, headers, "", "here") == snap  # no model to check against
    with pytest.raises(StateError, match=r"^here: state belongs to another model"):
        decode_entry(state, headers, "cd" * 32, "here")
    newer = [(k, b"2" if k == "state-format" else v) for k, v in headers]
    with pytest.raises(StateError, match=r"^here: changelog format '2', this code reads 1"):
        decode_entry(state, newer, "ab" * 32, "here")
    with pytest.raises(StateError, match="format 'missing'"):
        decode_entry(state, [], "ab" * 32, "here")
    bad = [(k, b"x" if k == "window" else v) for k, v in headers]
    with pytest.raises(StateError, match="window header 'x' is not a number"):
        decode_entry(state, bad, "ab" * 32, "here")


def test_instances_killed_and_restarted_in_turn_lose_no_stream_state(
        kafka_broker, stream_model, tmp_path, services) -> None:
    b = kafka_broker
    b.create_topic("audio", partitions=2)
    n_streams, part, total = 6, 40, 120  # 12 s per stream, published in thirds

    def start(name: str, group: str = "g") -> Service:
        svc = Service(b, stream_model, tmp_path, name, group=group, settings=PATIENT)
        services.append(svc)
        return svc

    def split(x: Service, y: Service) -> None:
        wait_until(lambda: all(s.assignments() and len(s.assignments()[-1]) == 1
                               for s in (x, y)), 180, "the partitions split", [x, y])

    ref = start("ref", "ref")
    a, b1 = start("a"), start("b1")
    split(a, b1)
    publish(b, n_streams, range(part), total)
    wait_until(lambda: keys(a.records()) | keys(b1.records()) >= expected_windows(n_streams, part),
               240, "the first third", [a, b1])
    a.kill()  # SIGKILL: no revoke, no last save; B takes over from the last commit
    a2 = start("a2")
    split(a2, b1)
    publish(b, n_streams, range(part, 2 * part), total)
    live = [a, b1, a2]
    wait_until(lambda: set().union(*map(keys, (s.records() for s in live)))
               >= expected_windows(n_streams, 2 * part), 240, "the second third", [b1, a2])
    b1.kill()
    b2 = start("b2")
    split(a2, b2)
    publish(b, n_streams, range(2 * part, total), total)
    everyone = [a, b1, a2, b2]
    expected = expected_windows(n_streams, total)
    wait_until(lambda: keys(ref.records()) >= expected
               and set().union(*map(keys, (s.records() for s in everyone))) >= expected, 300,
               "every window", [ref, a2, b2])
    assert a2.stop() == 0 and b2.stop() == 0 and ref.stop() == 0

    reference = {(r["stream"], r["seq"]): r for r in ref.records()}
    assert set(reference) == expected
    got = [r for s in everyone for r in s.records()]
    assert {(r["stream"], r["seq"]) for r in got} == expected
    # Every record, including those written again after a kill, is the one the instance
    # that never stopped wrote: no stream went back to the training prior.
    assert mismatches(got, reference) == []
    for svc in (a2, b2):
        assert int(svc.wait_log(r"restored the states of (\d+) streams").group(1)) > 0


def test_one_streams_state_moves_between_assigners_through_the_codec() -> None:
    import numpy as np

    from audioclust.stream.assign import Assigner
    from audioclust.stream.state import decode_stream_state

    prior = np.array([0.5, 0.3, 0.2])
    rng = np.random.default_rng(0)
    zs = rng.normal(size=(40, 4))
    ps = rng.dirichlet(np.ones(3), size=40)
    old, new, never = Assigner(prior, 4), Assigner(prior, 4), Assigner(prior, 4)
    for i in range(20):
        old.process("s", zs[i], ps[i])
        never.process("s", zs[i], ps[i])
    assert old.stream_state("gone") is None
    new.load_stream("s", *decode_stream_state(encode_stream_state(*old.stream_state("s"))))
    for i in range(20, 40):  # the moved stream goes on exactly as the one that never moved
        assert new.process("s", zs[i], ps[i]) == never.process("s", zs[i], ps[i])
    new.drop_streams(["s", "unknown"])
    assert "s" not in new.streams
    wrong = Assigner(np.array([0.5, 0.5]), 4)  # another head: the state does not fit
    with pytest.raises(StateError, match=r"^kafka: here: stream 's': state has \(3, 4\)"):
        wrong.load_stream("s", *old.stream_state("s"), where="kafka: here")
    assert "s" not in wrong.streams
