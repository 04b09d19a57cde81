"""Recover the default model's training checkpoints from ``default.onnx``.

The shipped ONNX file was exported from an embedder and a head checkpoint that were not
kept. This rebuilds both, as audioclust checkpoints, from the graph's initialisers so the
model can be re-exported (a new frontend, new metadata) without retraining:

- each conv block's BatchNorm was folded into its convolution at export; the conv takes the
  folded weight and the BatchNorm becomes the identity plus the folded bias
  (running mean 0, running variance 1 - eps, weight 1);
- the encoder's two linear layers are stored transposed (``MatMul``);
- only the selected TEMI head was exported, so the head checkpoint has one head.

The script checks that the rebuilt torch model gives the ONNX graph's embedding and
posterior on every FSDD clip given, and writes ``default-encoder.safetensors`` and
``default-head.safetensors`` beside the model. Run once from the repository root::

    .venv/bin/python models/assets/recover_default.py ../shared/datasets/fsdd/recordings
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from audioclust.models.audio import load_audio
from audioclust.models.embedder import Embedder, embed_clips, save_embedder
from audioclust.models.encoders import AudioNTT, AudioNTTConfig
from audioclust.models.frontend import FrontendConfig
from audioclust.models.heads import ClusterHead, HeadConfig, file_sha256, save_head

ASSETS = Path(__file__).resolve().parent


def main(fsdd: str, limit: int = 300) -> None:
    src = ASSETS / "default.onnx"
    model = onnx.load(src)
    meta = {p.key: p.value for p in model.metadata_props}
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    enc_info = json.loads(meta["encoder"])
    training = json.loads(meta["training_data"])

    encoder = AudioNTT(AudioNTTConfig(**enc_info["config"]))
    state = encoder.state_dict()
    for i, block in enumerate(encoder.blocks):
        p = f"embedder.encoder.blocks.{i}.conv."
        state[f"blocks.{i}.conv.weight"] = torch.from_numpy(init[p + "weight"].copy())
        eps = block.bn.eps
        n = block.bn.num_features
        state[f"blocks.{i}.bn.weight"] = torch.ones(n)
        state[f"blocks.{i}.bn.bias"] = torch.from_numpy(init[p + "weight_bias"].copy())
        state[f"blocks.{i}.bn.running_mean"] = torch.zeros(n)
        state[f"blocks.{i}.bn.running_var"] = torch.full((n,), 1.0 - eps)
    # The exporter names the transposed linear weights by value; find them by shape/order.
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"
               and n.input[1] in init and n.input[1].startswith("val_")]
    assert len(matmuls) == 2, [n.input for n in matmuls]
    for layer, node in zip((0, 3), matmuls, strict=True):
        state[f"fc.{layer}.weight"] = torch.from_numpy(init[node.input[1]].T.copy())
        bias = init[f"embedder.encoder.fc.{layer}.bias"]
        state[f"fc.{layer}.bias"] = torch.from_numpy(bias.copy())
    encoder.load_state_dict(state, strict=True)
    embedder = Embedder(encoder, FrontendConfig(**json.loads(meta["frontend"])),
                        mean=float(init["embedder.norm_mean"]),
                        std=float(init["embedder.norm_std"])).eval()

    head_keys = sorted(k for k in init if k.startswith("head.heads."))
    selected = int(head_keys[0].split(".")[2])
    hidden = init[f"head.heads.{selected}.0.weight"].shape[0]
    n_clusters = int(meta["n_clusters"])
    head = ClusterHead(HeadConfig(in_dim=int(meta["embedding_dim"]), n_clusters=n_clusters,
                                  n_heads=1, hidden_dim=hidden, n_layers=2))
    hstate = head.state_dict()
    for k in head_keys:
        hstate[k.replace(f"head.heads.{selected}.", "heads.0.", 1)] = \
            torch.from_numpy(init[k].copy())
    hstate["input_mean"] = torch.from_numpy(init["head.input_mean"].copy())
    hstate["input_std"] = torch.from_numpy(init["head.input_std"].copy())
    hstate["temperature"] = torch.tensor(float(init["head.temperature"]))
    hstate["prior"] = torch.tensor(json.loads(meta["prior"]), dtype=torch.float32)
    head.load_state_dict(hstate, strict=True)
    head.eval()

    files = sorted(Path(fsdd).glob("*.wav"))[:limit]
    clips = [load_audio(f, 16000) for f in files]
    z = embed_clips(embedder, clips)
    with torch.no_grad():
        p = head(torch.from_numpy(z)).numpy()
    sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    ez, ep = [], []
    for c in clips:
        c = np.pad(c, (0, max(0, int(meta["min_samples"]) - len(c))))
        out = sess.run(None, {"waveform": c[None].astype(np.float32),
                              "lengths": np.array([len(c)], dtype=np.int64)})
        ez.append(out[0][0])
        ep.append(out[1][0])
    dz = float(np.abs(np.stack(ez) - z).max() / np.abs(z).max())
    dp = float(np.abs(np.stack(ep) - p).max())
    agree = float((np.stack(ep).argmax(1) == p.argmax(1)).mean())
    print(f"{len(clips)} clips: embedding max rel. diff {dz:.2e}, posterior max abs diff "
          f"{dp:.2e}, argmax agreement {agree:.4f}")
    assert dz < 1e-4 and dp < 1e-4 and agree == 1.0

    enc_path = save_embedder(embedder, ASSETS / "default-encoder.safetensors", info={
        "method": meta["encoder_method"], "data": training["encoder"],
        "clips": training["encoder_clips"], "recovered_from": "default.onnx"})
    save_head(head, ASSETS / "default-head.safetensors", meta["head_method"],
              encoder_sha256=file_sha256(enc_path),
              info={"data": training["head"], "selected_of": 8, "recovered_from": "default.onnx"})
    print("wrote", enc_path, ASSETS / "default-head.safetensors")


if __name__ == "__main__":
    main(sys.argv[1])
