"""bench/: the graph FLOPs counter on hand-checkable graphs, and both bench scripts end to
end on the small stream_model with tiny repetition counts."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from audioclust.models.runtime import OnnxModel

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
# Tiny runs: seconds, not minutes, and one thread (the machine is shared).
TINY = ["--threads", "1", "--warmup", "1", "--repeats", "2", "--min-time", "0.01",
        "--peak-size", "64", "--peak-repeats", "1"]


def _import(name: str) -> ModuleType:
    # The scripts import their sibling benchlib the way `python bench/x.py` finds it.
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def tp() -> ModuleType:
    return _import("onnx_throughput")


@pytest.fixture(scope="module")
def int8_model(stream_model, tmp_path_factory) -> Path:
    return _import("benchlib").make_int8(stream_model, tmp_path_factory.mktemp("int8"))


def _init(name: str, shape: tuple[int, ...], seed: int) -> onnx.TensorProto:
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(values, name)


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _hand_graph() -> onnx.ModelProto:
    """Every counted op once, with MACs worked out by hand in the test below."""
    nodes = [
        # (1,3,8,8) * W1 (4,3,3,3), pad 1 -> (1,4,8,8)
        helper.make_node("Conv", ["x", "embedder.frontend.w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        # groups 2, stride 2: (1,4,8,8) * W2 (6,2,3,3) -> (1,6,3,3)
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], group=2, strides=[2, 2]),
        # stride 2: (1,6,3,3) * W3 (6,2,2,2) -> (1,2,6,6)
        helper.make_node("ConvTranspose", ["c2", "w3"], ["t3"], strides=[2, 2]),
        helper.make_node("Reshape", ["t3", "s4"], ["v4"]),  # (1,6,12)
        helper.make_node("MatMul", ["v4", "w4"], ["m4"]),  # (1,6,12) @ (12,5) -> (1,6,5)
        helper.make_node("Add", ["m4", "m4"], ["a4"]),
        helper.make_node("Reshape", ["a4", "s5"], ["v5"]),  # (30,1)
        helper.make_node("Gemm", ["v5", "w5"], ["g5"], transA=1),  # (30,1)^T @ (30,7)
        helper.make_node("Gemm", ["g5", "w6", "b6"], ["y"], transB=1),  # (1,7) @ (3,7)^T
    ]
    inits = [
        _init("embedder.frontend.w1", (4, 3, 3, 3), 1), _init("w2", (6, 2, 3, 3), 2),
        _init("b2", (6,), 3), _init("w3", (6, 2, 2, 2), 4), _init("w4", (12, 5), 5),
        _init("w5", (30, 7), 6), _init("w6", (3, 7), 7), _init("b6", (3,), 8),
        numpy_helper.from_array(np.array([1, 6, 12], np.int64), "s4"),
        numpy_helper.from_array(np.array([30, 1], np.int64), "s5"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)


def test_flops_of_a_hand_made_graph(tp):
    model = _hand_graph()
    onnx.checker.check_model(model)
    x = np.zeros((1, 3, 8, 8), np.float32)
    # the graph is valid and does what the comments say
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": x})[0].shape == (1, 3)
    conv1 = (4 * 8 * 8) * (3 * 3 * 3)  # output elements x (C_in x kernel)
    conv2 = (6 * 3 * 3) * (2 * 3 * 3)  # x (C_in / groups x kernel)
    convt = (6 * 3 * 3) * (2 * 2 * 2)  # input elements x (C_out / groups x kernel)
    matmul = (6 * 5) * 12
    gemm_ta, gemm_tb = 7 * 30, 3 * 7
    count = tp.count_flops(model, {"x": x})
    assert count.macs == conv1 + conv2 + convt + matmul + gemm_ta + gemm_tb == 8907
    assert count.flops == 2 * 8907
    assert count.by_op == {"Conv": 2 * (conv1 + conv2), "ConvTranspose": 2 * convt,
                           "MatMul": 2 * matmul, "Gemm": 2 * (gemm_ta + gemm_tb)}
    assert count.nodes == {"Conv": 2, "ConvTranspose": 1, "MatMul": 1, "Gemm": 2}
    assert count.frontend_flops == 2 * conv1  # only the node reading embedder.frontend.*
    assert count.ignored_ops == {"Relu": 1, "Reshape": 2, "Add": 1}
    assert count.tensors_shaped_by_ort == 0  # static shapes: shape inference sized all


def test_flops_of_data_dependent_shapes_come_from_a_run(tp):
    # Reshape to (-1, n) with n a runtime value: shape inference cannot size the MatMul.
    model = _model(
        [helper.make_node("Concat", ["minus1", "n"], ["shape"], axis=0),
         helper.make_node("Reshape", ["x", "shape"], ["v"]),
         helper.make_node("MatMul", ["v", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 5])],
        [numpy_helper.from_array(np.array([-1], np.int64), "minus1"), _init("w", (4, 5), 0)])
    count = tp.count_flops(model, {"x": np.zeros((1, 12), np.float32),
                                   "n": np.array([4], np.int64)})
    assert count.tensors_shaped_by_ort >= 1
    assert count.macs == 3 * 5 * 4  # (3,4) @ (4,5)


def test_flops_of_the_exported_model(tp, stream_model, int8_model):
    n = 16000
    feeds = {"waveform": np.zeros((1, n), np.float32), "lengths": np.array([n], np.int64)}
    count = tp.count_flops(onnx.load(stream_model), feeds)
    from audioclust.models.frontend import FrontendConfig, LogMelFrontend

    frontend = LogMelFrontend(FrontendConfig(**OnnxModel(stream_model).info.frontend))
    stft, frames = frontend.stft, frontend.config.num_frames(n)
    (channels, _, taps), rows = stft.stage1.shape, stft.stage2.shape[0]
    # the STFT's grouped convolution and matrix product, and the mel matmul
    assert count.frontend_flops == 2 * (channels * frames * taps
                                        + rows * channels * frames
                                        + frontend.mel.numel() * frames)
    assert count.flops > count.frontend_flops  # the encoder and head count too
    assert count.nodes["Gemm"] == 3  # the head's three linear layers
    # per clip means per clip: a batch of 3 costs three times one
    feeds3 = {"waveform": np.zeros((3, n), np.float32), "lengths": np.full(3, n, np.int64)}
    assert tp.count_flops(onnx.load(stream_model), feeds3).flops == 3 * count.flops
    # quantisation swaps ops, not multiplications: same count from the int8 graph
    count8 = tp.count_flops(onnx.load(int8_model), feeds)
    assert count8.flops == count.flops
    assert count8.by_op.get("ConvInteger", 0) > 0 and count8.by_op.get("MatMulInteger", 0) > 0
    assert "Gemm" not in count8.by_op


def test_make_int8_keeps_metadata(stream_model, int8_model):
    from audioclust.models.export import _weights_sha256

    a = {p.key: p.value for p in onnx.load(stream_model).metadata_props}
    loaded = onnx.load(int8_model)
    b = {p.key: p.value for p in loaded.metadata_props}
    assert b["quantization"] == "int8" and a["quantization"] == "none"
    assert b["weights_sha256"] == _weights_sha256(loaded) != a["weights_sha256"]
    same = set(a) - {"quantization", "weights_sha256"}
    assert {k: b[k] for k in same} == {k: a[k] for k in same}
    assert OnnxModel(int8_model).info.quantization == "int8"


def _run(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def test_throughput_end_to_end(stream_model, tmp_path):
    out = tmp_path / "t.json"
    # no --int8: the script quantises with the export's int8 path itself
    proc = _run("onnx_throughput.py", "--model", str(stream_model), "--batches", "1,4",
                "--json", "--out", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == doc
    assert doc["int8_model"]["quantization"] == "int8"
    assert doc["settings"]["clip_samples"] == 16000 and doc["settings"]["threads"] == 1
    assert doc["flops"]["per_clip"] == doc["flops"]["int8_graph"]["flops"] > 0
    peak = doc["peak"]["fp32_gflops"]
    assert peak > 0 and peak >= doc["peak"]["before_gflops"]["ort_matmul_fp32"] > 0
    assert doc["peak"]["after_gflops"]["ort_matmulinteger_int8"] > 0
    got = {(r["precision"], r["batch"]) for r in doc["results"]}
    assert got == {("fp32", 1), ("fp32", 4), ("int8", 1), ("int8", 4)}
    for r in doc["results"]:
        c = r["clips_per_s"]
        assert 0 < c["min"] <= c["median"] <= c["max"] and len(c["runs"]) == 2
        assert r["real_time_factor"] == pytest.approx(c["median"] * 1.0)  # 1 s clips
        assert r["gflops"] == pytest.approx(c["median"] * doc["flops"]["per_clip"] / 1e9)
        assert r["peak_fraction"] == pytest.approx(r["gflops"] / peak)
        assert r["peak_fraction"] > 0
    assert "| fp32 | 4 |" in proc.stderr and "| int8 | 1 |" in proc.stderr  # the table


def test_throughput_help_and_errors(tmp_path):
    proc = _run("onnx_throughput.py", "--help")
    assert proc.returncode == 0 and "--int8" in proc.stdout and "--json" in proc.stdout
    proc = _run("onnx_throughput.py", "--model", str(tmp_path / "absent.onnx"), *TINY)
    assert proc.returncode == 1 and "no such model file" in proc.stderr
    proc = _run("onnx_throughput.py", "--model", "m.onnx", "--batches", "0")
    assert proc.returncode == 2 and "positive batch sizes" in proc.stderr


def test_int8_agreement_end_to_end(stream_model, int8_model, fsdd_dir, tmp_path):
    proc = _run("int8_agreement.py", "--model", str(stream_model), "--int8", str(int8_model),
                "--data", str(fsdd_dir), "--limit", "24", "--batch", "8", "--threads", "1",
                "--out", str(tmp_path / "a.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert json.loads((tmp_path / "a.json").read_text()) == doc
    assert doc["data"]["clips"] == 24 and doc["data"]["audio_seconds"] > 0
    assert doc["int8_model"]["quantization"] == "int8" and doc["warnings"] == []
    assert 0 <= doc["agreement"] <= 1
    assert doc["agreeing_clips"] == round(24 * doc["agreement"])
    assert len(doc["disagreeing"]) == 24 - doc["agreeing_clips"]
    assert 0 < doc["cosine"]["min"] <= doc["cosine"]["mean"] <= 1 + 1e-6
    seconds = doc["seconds"]
    assert min(seconds["fp32"], seconds["int8"], seconds["load_audio"]) > 0
    assert seconds["total"] >= seconds["fp32"] + seconds["int8"]


def test_int8_agreement_of_a_model_with_itself_is_total(stream_model, fsdd_dir, capsys):
    agreement = _import("int8_agreement")
    # the fp32 file as its own "int8": every argmax must match, and the script says it
    # was not given an int8 model
    code = agreement.main(["--model", str(stream_model), "--int8", str(stream_model),
                           "--data", str(fsdd_dir), "--limit", "10", "--threads", "1"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["agreement"] == 1.0 and doc["disagreeing"] == []
    assert doc["cosine"]["min"] == pytest.approx(1.0, abs=1e-6)
    assert any("not int8" in w for w in doc["warnings"])


def test_spice_stage2_study_scores_every_head(fsdd_subset, tmp_path):
    import torch

    from audioclust.models.embedder import Embedder, save_embedder
    from audioclust.models.encoders import build_encoder
    from audioclust.models.frontend import FrontendConfig

    torch.manual_seed(0)
    encoder = build_encoder("audiontt", {"embed_dim": 32, "channels": 8}).eval()
    ckpt = save_embedder(Embedder(encoder, FrontendConfig(), 0.0, 1.0),
                         tmp_path / "encoder.safetensors")
    proc = _run("spice_stage2.py", "--encoder", str(ckpt), "--data", str(fsdd_subset),
                "--clusters", "4", "--center-ratios", "0.5,0.2", "--seeds", "0",
                "--epochs", "2", "--heads", "2", "--crop-frames", "32",
                "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert json.loads((tmp_path / "s.json").read_text()) == doc
    assert doc["clips"] == 120 and doc["n_clusters"] == 4
    assert 0 <= doc["kmeans"]["nmi"] <= 1 and 0.25 <= doc["kmeans"]["acc"] <= 1
    assert [(r["center_ratio"], r["seed"]) for r in doc["runs"]] == [(0.5, 0), (0.2, 0)]
    for r in doc["runs"]:
        heads = r["heads"]
        assert len(heads) == 2
        assert r["kept"] == heads[r["kept_head"]]
        assert r["kept"]["loss"] == min(h["loss"] for h in heads)  # SPICE's rule
        assert r["mean_acc"] == pytest.approx(np.mean([h["acc"] for h in heads]), abs=1e-4)
        assert all(0.25 <= h["acc"] <= 1 and 1 <= h["clusters_used"] <= 4 for h in heads)
        assert all(0 <= h["head_agreement"] <= 1 and 0 <= h["knn_agreement"] <= 1
                   for h in heads)
        assert set(r["spearman_with_acc"]) == {"loss", "head_agreement", "knn_agreement"}
        assert all(math.isnan(v) or -1 <= v <= 1 for v in r["spearman_with_acc"].values())
        assert r["heads_above_kmeans_on_both"] == sum(
            h["nmi"] > doc["kmeans"]["nmi"] and h["acc"] > doc["kmeans"]["acc"] for h in heads)
    # the two settings differ only in how centres are formed: their heads differ
    assert doc["runs"][0]["heads"] != doc["runs"][1]["heads"]
    proc = _run("spice_stage2.py", "--encoder", str(tmp_path / "absent.safetensors"))
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_heads_table_scores_every_clusterer_on_an_embeddings_file(fsdd_subset, tmp_path):
    from audioclust.training.datasets import AudioFolder

    y = AudioFolder(fsdd_subset, labels="digit").targets  # 4 digits, 30 clips each
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 24)) * 3.0
    emb = tmp_path / "emb.npy"
    np.save(emb, (centres[y] + rng.standard_normal((y.size, 24))).astype(np.float32))
    out = tmp_path / "t.json"
    proc = _run("heads_table.py", "--embeddings", str(emb), "--data", str(fsdd_subset),
                "--labels", "digit", "--name", "toy", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [r["clusterer"] for r in doc["rows"]] == ["kmeans", "agglomerative", "temi",
                                                    "spice", "deepcluster"]
    assert doc["clips"] == 120 and doc["n_clusters"] == 4 and doc["dim"] == 24
    for r in doc["rows"]:  # clear clusters: every clusterer finds them
        assert r["nmi"] > 0.9 and r["clusters_used"] == 4, r
        assert 0 <= r["ari"] <= 1 and r["seconds"] >= 0
    assert all("selected" in r for r in doc["rows"][2:])
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("| data set |") and len(lines) == 2 + 5
    assert "| toy (digit) | temi |" in proc.stdout

    np.save(emb, np.zeros((7, 3), dtype=np.float32))  # rows that do not match the folder
    proc = _run("heads_table.py", "--embeddings", str(emb), "--data", str(fsdd_subset),
                "--labels", "digit")
    assert proc.returncode == 2 and "for 120 clips" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = _run("heads_table.py", "--embeddings", str(tmp_path / "absent.npy"), "--data",
                str(fsdd_subset), "--labels", "digit")
    assert proc.returncode == 2 and "not found" in proc.stderr
    proc = _run("heads_table.py", "--embeddings", str(emb))  # a .npy needs the folder
    assert proc.returncode == 2 and "needs --data and --labels" in proc.stderr

    # an .npz carries its labels; several seeds give one row each, and mean ± spread
    npz = tmp_path / "emb.npz"
    np.savez(npz, embeddings=(centres[y] + rng.standard_normal((y.size, 24))).astype(
        np.float32), labels=np.asarray(y))
    proc = _run("heads_table.py", "--embeddings", str(npz), "--clusterers", "kmeans",
                "--seeds", "0,1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [(r["clusterer"], r["seed"]) for r in doc["rows"]] == [("kmeans", 0), ("kmeans", 1)]
    assert doc["n_clusters"] == 4 and " ± " in proc.stdout and "| emb | kmeans |" in proc.stdout


def test_heads_scale_reports_the_plan_the_rules_chose(tmp_path):
    out = tmp_path / "s.json"
    proc = _run("heads_scale.py", "--sizes", "300,700", "--dim", "16", "--clusters", "3",
                "--methods", "temi", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["n"] for r in rows] == [300, 700]
    for r in rows:
        assert r["nmi"] > 0.9 and r["clusters_used"] == 3
        assert r["plan"]["batch_size"] == 64 and r["plan"]["steps"] >= 490
        assert r["wall_seconds"] > 0 and r["k_neighbors"] >= 5
    assert _run("heads_scale.py", "--methods", "kmeans").returncode == 2


def test_embed_clips_writes_the_folder_order(fsdd_subset, tmp_path):
    import torch

    from audioclust.models.embedder import Embedder, embed_clips, load_embedder, save_embedder
    from audioclust.models.encoders import build_encoder
    from audioclust.training.datasets import AudioFolder

    torch.manual_seed(0)
    ckpt = save_embedder(Embedder(build_encoder("audiontt", {"embed_dim": 16, "channels": 8})
                                  .eval(), mean=-6.0, std=5.0), tmp_path / "enc.safetensors")
    out = tmp_path / "e.npy"
    proc = _run("embed_clips.py", "--encoder", str(ckpt), "--data", str(fsdd_subset),
                "--out", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    x = np.load(out)
    folder = AudioFolder(fsdd_subset)
    assert x.shape == (120, 16)
    wave, n_real = folder.load(0)
    first = embed_clips(load_embedder(ckpt), [wave[:n_real]])
    np.testing.assert_allclose(x[0], first[0], atol=1e-4)
    proc = _run("embed_clips.py", "--encoder", str(tmp_path / "none.safetensors"), "--data",
                str(fsdd_subset), "--out", str(out))
    assert proc.returncode == 2 and "no such checkpoint" in proc.stderr


def test_throughput_against_a_baseline(stream_model, int8_model, tmp_path):
    # the model as its own baseline: timed in turns, every row gets a ratio
    proc = _run("onnx_throughput.py", "--model", str(stream_model), "--int8", str(int8_model),
                "--baseline", str(stream_model), "--batches", "2", "--json", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    rows = {(r["model"], r["precision"]): r for r in doc["results"]}
    assert set(rows) == {("model", "fp32"), ("model", "int8"), ("baseline", "fp32")}
    assert doc["baseline"]["weights_sha256"] == doc["model"]["weights_sha256"]
    assert doc["flops"]["baseline_graph"]["flops"] == doc["flops"]["per_clip"]
    base = rows["baseline", "fp32"]["clips_per_s"]["median"]
    for r in rows.values():
        assert r["vs_baseline"] == pytest.approx(r["clips_per_s"]["median"] / base)
        assert r["clips_per_s_per_thread"] == r["clips_per_s"]["median"]  # one thread
        assert r["clips_per_s"]["per_cpu_second"]["median"] > 0
    assert "| baseline | fp32 | 2 |" in proc.stderr


def test_profile_attributes_node_time_to_the_model_parts(stream_model):
    proc = _run("onnx_profile.py", "--model", str(stream_model), "--threads", "1", "--batch",
                "2", "--calls", "3", "--warmup", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert sum(doc["by_part"].values()) == pytest.approx(1.0)
    assert sum(doc["by_op"].values()) == pytest.approx(1.0)
    assert doc["by_part"]["frontend"] > 0 and doc["by_part"]["encoder"] > 0
    # the frontend's convolution and the encoder's convolutions are told apart
    convs = {n["part"] for n in doc["nodes"] if n["op"] == "Conv"}
    assert {"frontend", "encoder"} <= convs
    assert doc["windows_per_s"] > 0 and "| frontend |" in proc.stderr


def test_frontend_candidates_are_exact(tmp_path):
    proc = _run("frontend_candidates.py", "--threads", "1", "--batch", "2", "--samples", "4000",
                "--warmup", "0", "--repeats", "1", "--min-time", "0.01", "--json",
                timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)["candidates"]
    assert {"dft-conv", "onnx-dft", "onnx-stft", "factorised-16"} <= set(rows)
    for r in rows.values():
        assert r["max_abs_diff_loud"] <= 1e-4 and r["windows_per_s"]["median"] > 0
    # the factorisation does a sixth of the direct DFT's multiplications or less
    assert rows["factorised-16"]["mflops_per_clip"] * 6 < rows["dft-conv"]["mflops_per_clip"]


def _gpu_check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(["bash", str(BENCH / "gpu_check.sh"), *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env={**os.environ, **env})


def test_gpu_check_without_a_gpu_says_so_and_succeeds(tmp_path):
    proc = _gpu_check({"NVIDIA_SMI": str(tmp_path / "absent-nvidia-smi")})
    assert proc.returncode == 0 and "no NVIDIA GPU here" in proc.stdout
    assert "nothing measured" in proc.stdout
    # nvidia-smi present but finding no GPU (as on a host without the driver loaded)
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    smi.chmod(0o755)
    proc = _gpu_check({"NVIDIA_SMI": str(smi)})
    assert proc.returncode == 0 and "lists none" in proc.stdout


def test_gpu_check_with_a_gpu_but_no_cuda_build_fails_in_one_line(tmp_path, stream_model):
    # A listed GPU, but this Python's ONNX Runtime is the CPU build: a clear error, exit 1.
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: Test GPU (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    proc = _gpu_check({"NVIDIA_SMI": str(smi), "PYTHON": sys.executable},
                      "--model", str(stream_model))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "gpu_check: GPU 0: Test GPU" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("gpu_throughput: error: ")
    assert "CUDAExecutionProvider is not available" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_gpu_throughput_sweep_runs_the_loader_path_on_cpu(stream_model):
    proc = _run("gpu_throughput.py", "--model", str(stream_model), "--provider", "cpu",
                "--threads", "1", "--batches", "1,3", "--warmup", "0", "--repeats", "1",
                "--min-time", "0.01", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["provider"]["used"] == "CPUExecutionProvider"
    assert doc["provider"]["node_time_share_at_largest_batch"] == \
        {"CPUExecutionProvider": pytest.approx(1.0)}
    assert [r["batch"] for r in doc["results"]] == [1, 3]
    for r in doc["results"]:
        assert r["io_binding"]["median"] > 0 and r["session_run"]["median"] > 0
    assert "provider used: **CPUExecutionProvider**" in proc.stderr

def test_soak_on_a_tiny_run(tmp_path):
    """The soak end to end, in half a minute of traffic: a real broker, the service killed
    and restarted, the broker frozen; nothing lost, every dead letter on its topic."""
    out = tmp_path / "soak.json"
    proc = _run("soak.py", "--minutes", "0.5", "--streams", "2", "--malformed", "0.3",
                "--pause-seconds", "3", "--rss-every", "2", "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == doc
    w = doc["windows"]
    assert w["lost"] == 0 and w["extra"] == 0 and w["in"] > 20
    assert w["out_unique"] == w["in"] and w["duplicates"] == w["out_records"] - w["in"] >= 0
    sent = doc["dead_letters"]["sent"]
    assert sum(sent.values()) == doc["messages"]["malformed"] > 5
    found = doc["dead_letters"]["on_dlq_topic"]
    assert doc["dead_letters"]["missing"] == 0 and set(found) == set(sent)
    assert all(found[r] >= n for r, n in sent.items())  # replayed after the kill: again
    assert doc["dead_letters"]["repeated"] == sum(found.values()) - sum(sent.values())
    assert doc["kill"]["at_s"] < doc["broker_pause"]["at_s"]
    assert sum(doc["broker_pause"]["readyz_samples"].values()) >= 2
    for name in ("service_1", "service_2"):
        rss = doc["rss"][name]
        assert rss["samples"] >= 1 and 0 < rss["start_mb"] <= rss["max_mb"]
    assert doc["exit_code_after_sigterm"] == 0
    assert doc["messages"]["send_errors"] == 0


def test_enrol_quality_scores_every_class(fsdd_subset):
    proc = subprocess.run([sys.executable, str(BENCH / "enrol_quality.py"), "--data",
                           str(fsdd_subset), "--labels", "speaker", "--examples", "2",
                           "--per-class", "6"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    summary = rows.pop()
    assert summary["classes"] == 3 and [r["class"] for r in rows] == ["george", "jackson",
                                                                       "lucas"]
    assert summary["head"] + summary["enrolled"] == 3
    assert all(0 <= r["recall"] <= 1 and 0 <= r["false"] <= 1 for r in rows)
