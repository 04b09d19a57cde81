"""Hugging Face encoders from a local folder (hf:DIR): tiny random configurations saved to
a temp folder, embeddings against transformers' own feature extractor + model (<= 1e-5),
and the exported ONNX graph against torch (<= 1e-4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

transformers = pytest.importorskip("transformers")

from audioclust.models.encoder_spec import open_encoder  # noqa: E402
from audioclust.models.export import export_model  # noqa: E402


def _waveform_model(d: Path, config_cls, model_cls, do_normalize: bool, **config):
    tf = transformers
    model_cls(config_cls(hidden_size=32, num_attention_heads=2, intermediate_size=37,
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                         **config)).save_pretrained(d)
    tf.Wav2Vec2FeatureExtractor(do_normalize=do_normalize).save_pretrained(d)

    def reference(x: np.ndarray) -> torch.Tensor:
        iv = tf.Wav2Vec2FeatureExtractor.from_pretrained(d)(
            x, sampling_rate=16000, return_tensors="pt").input_values
        return model_cls.from_pretrained(d).eval()(iv).last_hidden_state.mean(1)

    return d, reference


def _wav2vec2(d: Path) -> tuple[Path, callable]:
    tf = transformers
    return _waveform_model(
        d, tf.Wav2Vec2Config, tf.Wav2Vec2Model, True, num_hidden_layers=2,
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 2), conv_kernel=(10, 4, 2),
        feat_extract_norm="layer", do_stable_layer_norm=True)


def _hubert(d: Path) -> tuple[Path, callable]:
    tf = transformers
    return _waveform_model(d, tf.HubertConfig, tf.HubertModel, False, num_hidden_layers=1,
                           conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4))


def _ast(d: Path) -> tuple[Path, callable]:
    tf = transformers
    cfg = tf.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=37, max_length=64, num_mel_bins=32, patch_size=16,
                       frequency_stride=10, time_stride=10)
    tf.ASTModel(cfg).save_pretrained(d)
    tf.ASTFeatureExtractor(num_mel_bins=32, max_length=64).save_pretrained(d)

    def reference(x: np.ndarray) -> torch.Tensor:
        iv = tf.ASTFeatureExtractor.from_pretrained(d)(
            x, sampling_rate=16000, return_tensors="pt").input_values
        return tf.ASTModel.from_pretrained(d).eval()(iv).pooler_output

    return d, reference


def _clap(d: Path) -> tuple[Path, callable]:
    tf = transformers
    cfg = tf.ClapAudioConfig(window_size=4, num_mel_bins=16, spec_size=64, patch_size=4,
                             patch_stride=4, hidden_size=32, depths=[1, 1],
                             num_attention_heads=[2, 2], projection_dim=16, enable_fusion=False,
                             patch_embeds_hidden_size=16)
    tf.ClapAudioModelWithProjection(cfg).save_pretrained(d)
    tf.ClapFeatureExtractor(truncation="rand_trunc", max_length_s=1, feature_size=16,
                            frequency_min=50).save_pretrained(d)

    def reference(x: np.ndarray) -> torch.Tensor:
        # Over max_length_s the extractor takes a random crop; audioclust takes the first
        # max_length_s (deterministic), so the reference is given that crop.
        inputs = tf.ClapFeatureExtractor.from_pretrained(d)(
            x[:48000], sampling_rate=48000, return_tensors="pt")
        return tf.ClapAudioModelWithProjection.from_pretrained(d).eval()(**inputs).audio_embeds

    return d, reference


MODELS = {"wav2vec2": _wav2vec2, "hubert": _hubert, "ast": _ast, "clap": _clap}


@pytest.fixture(scope="module", params=list(MODELS))
def hf_model(request, tmp_path_factory):
    torch.manual_seed(0)
    return MODELS[request.param](tmp_path_factory.mktemp(request.param))


def test_embeddings_match_transformers(hf_model):
    folder, reference = hf_model
    enc = open_encoder(f"hf:{folder}")
    rng = np.random.default_rng(1)
    # shorter and longer than AST's 64 frames and CLAP's 1 s (repeat-padded / cut)
    for seconds in (0.3, 0.77, 1.4):
        x = (0.1 * rng.standard_normal(int(seconds * enc.sample_rate))).astype(np.float32)
        with torch.no_grad():
            want = reference(x).numpy()
        got = enc.embed([x])
        assert got.shape == (1, enc.embed_dim)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, np.abs(want).max()))
    assert enc.kind == "hf"
    assert enc.description["name"].startswith("hf:") and enc.randomise is not None


@pytest.mark.slow
def test_onnx_export_matches_torch(hf_model, tmp_path):
    folder, _ = hf_model
    enc = open_encoder(f"hf:{folder}")
    result = export_model(enc, None, tmp_path / "m.onnx", window_seconds=1.0, hop_seconds=0.5)
    assert json.loads(result.metadata["encoder"])["name"].startswith("hf:")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    for samples in (enc.sample_rate, int(1.6 * enc.sample_rate)):
        x = (0.1 * rng.standard_normal((2, samples))).astype(np.float32)
        (got,) = session.run(None, {"waveform": x, "lengths": np.full(2, samples, np.int64)})
        with torch.no_grad():
            want = enc.module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_random_init_and_errors(tmp_path):
    torch.manual_seed(0)
    folder, _ = _hubert(tmp_path / "hubert")
    enc = open_encoder(f"hf:{folder}")
    x = [np.zeros(4000, np.float32) + 0.01]
    assert not np.allclose(enc.embed(x), enc.random_init(3).embed(x))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
        open_encoder(f"hf:{tmp_path / 'bert'}")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"unreadable config\.json"):
        open_encoder(f"hf:{tmp_path / 'broken'}")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(ValueError, match="cannot load the model"):
        open_encoder(f"hf:{tmp_path / 'noweights'}")
    with pytest.raises(ValueError, match="give the model folder"):
        open_encoder("hf:")
