"""The fleet's cluster registry: the id/alias rule on concurrent proposals (any log order
gives the same clusters, every replay the same ids), the clusterer's hook (rename, merge
survival), streams that share a sound's id, the Kafka message codec; and with the real
broker, two instances whose streams hear a sound both know under one id; and through the
real CLI, a registered sound known to a service of another group.

Embeddings are synthetic (random sound directions plus noise in 32 dimensions) except in
the CLI test: the registry sees embeddings, not audio, and this keeps those tests under a
few seconds.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from audioclust.models.reference import NoveltyReference
from audioclust.stream.headfree import HeadFreeAssigner, HeadFreeStream
from audioclust.stream.kafka.config import KafkaConfig
from audioclust.stream.kafka.registry import (
    KafkaClusterRegistry,
    decode_proposal,
    encode_proposal,
)
from audioclust.stream.openset import OpenSetClusterer, centroid_factor
from audioclust.stream.registry import REGISTERED_BASE, ClusterRegistry, Proposal, RegistryError

DIM = 32


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def world():
    """A reference fitted on 6 training sounds, and sound() drawing windows of new ones."""
    rng = np.random.default_rng(0)
    dirs = 3.0 * _unit(rng.standard_normal((10, DIM)))  # 0-5 training sounds, 6-9 new

    def sound(k: int, n: int, seed: int) -> np.ndarray:
        r = np.random.default_rng(seed)
        return dirs[k] + 0.45 * r.standard_normal((n, DIM))

    train = np.concatenate([sound(k, 80, 100 + k) for k in range(6)])
    ref = NoveltyReference.fit(train, np.repeat(np.arange(6), 80))
    assert ref.cluster_radius is not None
    return ref, sound


def scene(sound, k: int, seed: int, n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """A stream's windows: 40 of the training sounds, then sound ``k`` every other window
    among them (a stream of one sound alone re-centres its space on it); and which are k."""
    r = np.random.default_rng(seed)
    ks = np.concatenate([r.integers(0, 6, 40), np.where(np.arange(2 * n) % 2 == 0, k,
                                                         r.integers(0, 6, 2 * n))])
    windows = np.stack([sound(int(j), 1, seed * 1000 + i)[0] for i, j in enumerate(ks)])
    return windows, ks == k


def main_id(ids: list[int], mine: np.ndarray) -> int:
    """The id of most of the last 10 windows of the scene's sound."""
    values, counts = np.unique(np.asarray(ids)[mine][-10:], return_counts=True)
    return int(values[np.argmax(counts)])


def _proposal(ref: NoveltyReference, windows: np.ndarray, origin: str) -> Proposal:
    """As a stream's link makes it: similarities to the centroid of the windows before."""
    u = ref.unit(windows)
    m0 = float(ref.cluster_similarity)
    s = np.array([u[i] @ _unit(u[:i].sum(0)) / centroid_factor(i, m0)
                  for i in range(1, len(u))])
    return Proposal.of(origin, u.sum(0), len(u), float(s.sum()), float((s * s).sum()),
                       float(ref.cluster_radius), m0)


def test_concurrent_proposals_resolve_by_log_order_and_every_replay_agrees(world):
    ref, sound = world
    # instances A and B each propose the sound 6 they heard at once, A also sound 7
    a6, b6 = _proposal(ref, sound(6, 30, 1), "A-6"), _proposal(ref, sound(6, 30, 2), "B-6")
    a7 = _proposal(ref, sound(7, 30, 3), "A-7")
    for log in itertools.permutations([a6, b6, a7]):
        reg = ClusterRegistry(ref)
        ids = {p.origin: reg.apply(p) for p in log}
        assert ids["A-6"] == ids["B-6"] != ids["A-7"]  # the later of A-6, B-6 is an alias
        assert len(reg) == 2 and reg.aliases == 1
        first = next(p.origin for p in log if p.origin != "A-7")
        assert ids[first] == REGISTERED_BASE + [p.origin for p in log
                                                if p.origin in (first, "A-7")].index(first)
        assert reg.apply(log[0]) == ids[log[0].origin]  # a resend: the same answer
        again = ClusterRegistry(ref)  # an instance that replays the log later
        assert {p.origin: again.apply(p) for p in log} == ids
        np.testing.assert_array_equal(again.centroids, reg.centroids)
    # a window of sound 6 falls in its registered cluster, one of sound 8 in none
    assert reg.find(ref.unit(sound(6, 1, 9))[0]) == ids["A-6"]
    assert reg.find(ref.unit(sound(8, 1, 9))[0]) is None
    with pytest.raises(ValueError):
        reg.apply(Proposal("x", np.ones(DIM + 1) / 5, 30, 0.5, 0.4))


def test_the_clusterer_keeps_registered_ids_through_renames_and_merges():
    c = OpenSetClusterer(4, 0.5, 0.8)
    c.shared_from = REGISTERED_BASE
    a = c.learn_one(np.array([1.0, 0, 0, 0]))
    b = c.learn_one(np.array([0, 1.0, 0, 0]))
    assert c.rename(b, REGISTERED_BASE + 3) == REGISTERED_BASE + 3
    assert c.live_ids == [a, REGISTERED_BASE + 3]
    assert c._older(REGISTERED_BASE + 3, a) and not c._older(a, REGISTERED_BASE)
    assert c._older(REGISTERED_BASE, REGISTERED_BASE + 3)
    c.rename(a, REGISTERED_BASE + 3)  # the same registered sound: pooled into one
    assert c.live_ids == [REGISTERED_BASE + 3] and c.merged == 1
    with pytest.raises(KeyError):
        c.rename(a, 7)


def test_streams_that_hear_one_sound_give_it_one_registered_id(world):
    ref, sound = world
    reg = ClusterRegistry(ref)
    a, b = HeadFreeStream(ref, registry=reg), HeadFreeStream(ref, registry=reg)
    wa, xa = scene(sound, 6, 1)  # new sounds, one on each stream
    wb, xb = scene(sound, 7, 2)
    ids_a = [a.process(z).cluster for z in wa]
    ids_b = [b.process(z).cluster for z in wb]
    x, y = main_id(ids_a, xa), main_id(ids_b, xb)
    assert min(x, y) >= REGISTERED_BASE and x != y
    first = np.asarray(ids_a)[xa]
    assert first[0] < REGISTERED_BASE  # the stream's own id until it is registered
    # both hear sound 8 at once: window by window, neither knows of the other's cluster
    (sa, ma), (sb, mb) = scene(sound, 8, 3), scene(sound, 8, 4)
    both = [(a.process(p).cluster, b.process(q).cluster) for p, q in zip(sa, sb, strict=True)]
    s8 = main_id([i for i, _ in both], ma)
    assert s8 == main_id([j for _, j in both], mb) >= REGISTERED_BASE
    assert s8 not in (x, y) and reg.aliases >= 1
    # a third stream that hears sound 8 later has the id from its first window of it on
    c = HeadFreeStream(ref, registry=reg)
    wc, mc = scene(sound, 8, 5, n=3)
    assert np.asarray([c.process(z).cluster for z in wc])[mc][0] == s8
    # the link's part of the state moves with the stream
    arrays, scalars = a.state()
    moved = HeadFreeStream(ref, registry=reg)
    moved.load_state(arrays, scalars)
    assert moved.link.stats.keys() == a.link.stats.keys()
    rest, _ = scene(sound, 8, 6, n=5)
    assert [a.process(z).cluster for z in rest] == [moved.process(z).cluster for z in rest]


def test_registry_messages_round_trip_and_foreign_ones_are_refused(world):
    ref, sound = world
    p = _proposal(ref, sound(6, 30, 1), "origin-1")
    key, value, headers = encode_proposal(p, "m" * 64)
    q = decode_proposal(key, value, headers, "m" * 64, DIM, "here")
    assert (q.origin, q.members, q.similarity, q.radius) == \
        (p.origin, p.members, p.similarity, p.radius)
    np.testing.assert_allclose(q.centroid, p.centroid, atol=1e-6)
    cases = [(key, value, headers, "o" * 64, "another model"),
             (key, value, [("registry-format", b"9"), *headers[1:]], "m" * 64, "format '9'"),
             (key, value[:-4], headers, "m" * 64, f"not a proposal of a {DIM}-d"),
             (key, value, headers[:2], "m" * 64, "members, similarity or radius")]
    for k, v, h, model, why in cases:
        with pytest.raises(RegistryError, match=why) as e:
            decode_proposal(k, v, h, model, DIM, "kafka: cluster registry t@3")
        assert str(e.value).startswith("kafka: cluster registry t@3: ")
        assert "\n" not in str(e.value)


def test_two_instances_give_a_sound_both_hear_one_id(kafka_broker, world):
    """Two instances (each an assigner with its own registry client) on the real broker:
    each hears a new sound on a stream of its own, then both hear a third one."""
    ref, sound = world
    config = KafkaConfig(bootstrap=kafka_broker.bootstrap, group="fleet",
                         max_poll_interval_ms=6000)
    model = "f" * 64
    clients = [KafkaClusterRegistry(config, ref, model) for _ in range(3)]
    try:
        a, b = (HeadFreeAssigner(ref, registry=client) for client in clients[:2])
        wa, xa = scene(sound, 6, 21)
        wb, xb = scene(sound, 7, 22)
        x = main_id([a.process("a-1", z).cluster for z in wa], xa)
        y = main_id([b.process("b-1", z).cluster for z in wb], xb)
        assert x != y and min(x, y) >= REGISTERED_BASE
        (sa, ma), (sb, mb) = scene(sound, 8, 23), scene(sound, 8, 24)
        both = [(a.process("a-2", p).cluster, b.process("b-2", q).cluster)
                for p, q in zip(sa, sb, strict=True)]
        s8 = main_id([i for i, _ in both], ma)
        assert s8 == main_id([j for _, j in both], mb) >= REGISTERED_BASE
        assert s8 not in (x, y)
        # a third instance replays the log: the same clusters under the same ids
        c = HeadFreeAssigner(ref, registry=clients[2])
        wc, mc = scene(sound, 8, 25, n=3)
        assert np.asarray([c.process("c-1", z).cluster for z in wc])[mc][0] == s8
        deadline = time.monotonic() + 20  # the tails read each other's last proposals
        while not clients[2].resolved() == clients[0].resolved() == clients[1].resolved():
            assert time.monotonic() < deadline, "the replicas do not agree"
            time.sleep(0.05)
        assert clients[2].replica.aliases >= 1
        # two proposals of one new sound sent at once, before either instance read the
        # other's: both get the id of the one the log put first
        from concurrent.futures import ThreadPoolExecutor

        ps = [_proposal(ref, sound(9, 30, 40 + k), f"c-{k}") for k in range(2)]
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda cp: cp[0].propose(cp[1]),
                                    zip(clients[:2], ps, strict=True)))
        assert answers[0] == answers[1] >= REGISTERED_BASE
        assert answers[0] not in (x, y, s8)
        # a registry of another model is refused with one line
        other = KafkaClusterRegistry(config, ref, "0" * 64)
        clients.append(other)
        with pytest.raises(RegistryError, match="another model"):
            other.find(ref.unit(sound(8, 1, 26))[0])
    finally:
        for client in clients:
            client.close()


def test_without_the_broker_streams_keep_their_own_ids(world) -> None:
    """A registry that cannot be reached costs each try at most its timeout, then backs
    off; the stream's clusters keep their own ids meanwhile."""
    from kafka_broker import free_port

    ref, sound = world
    config = KafkaConfig(bootstrap=f"127.0.0.1:{free_port()}", max_poll_interval_ms=2000)
    client = KafkaClusterRegistry(config, ref, "f" * 64)
    try:
        stream = HeadFreeStream(ref, registry=client)
        windows, mine = scene(sound, 6, 31)
        started = time.monotonic()
        ids = [stream.process(z).cluster for z in windows]
        assert time.monotonic() - started < 10 * client.timeout_s + 5
        assert max(ids) < REGISTERED_BASE and len(set(np.asarray(ids)[mine][-10:])) <= 3
    finally:
        client.close()


def test_the_service_registers_a_sound_that_another_group_then_knows(kafka_broker,
                                                                      headfree_model,
                                                                      tmp_path) -> None:
    """The real CLI with a head-free model: instance A registers the cluster its stream
    grows (after PRIOR_WEIGHT windows); an instance of another group (its own input topic)
    sharing the registry topic gives the same sound that id from its first window on."""
    from test_kafka_service import CHUNK, RATE, Service, audio_of, wait_until

    from audioclust.stream.kafka.messages import encode_pcm

    def publish(topic: str, n: int = 150) -> None:  # 15 s of one tone: windows 0..28
        prod = kafka_broker.producer(linger_ms=5)
        x = audio_of(0, n)
        for c in range(n):
            m = encode_pcm(x[c * CHUNK:(c + 1) * CHUNK], stream="s0", seq=c,
                           sample_rate=RATE, offset=c * CHUNK, end_of_stream=c == n - 1)
            prod.send(topic, key=m.key, value=m.value, headers=m.headers)
        prod.flush()
        prod.close()

    def ids(svc: Service) -> list[int]:
        return [r["cluster"] for r in sorted(svc.records(), key=lambda r: r["seq"])]

    for topic in ("audio", "audio-b"):
        kafka_broker.create_topic(topic, partitions=1)
    shared = ['cluster_topic="fleet.clusters"']
    a = Service(kafka_broker, headfree_model, tmp_path, "a", group="a", options=shared)
    b = Service(kafka_broker, headfree_model, tmp_path, "b", group="b", options=shared,
                extra=["--topic", "audio-b"])
    try:
        a.wait_log(r"partitions assigned: audio\[")
        publish("audio")
        wait_until(lambda: len(a.records()) >= 29, 120, "A's windows", [a])
        assert ids(a)[0] < REGISTERED_BASE <= ids(a)[-1]
        b.wait_log(r"partitions assigned: audio-b\[")
        publish("audio-b")
        wait_until(lambda: len(b.records()) >= 29, 120, "B's windows", [b])
    finally:
        a.stop()
        b.stop()
    registered = ids(a)[-1]
    assert ids(b)[0] == registered and ids(b).count(registered) >= 0.8 * len(ids(b))
