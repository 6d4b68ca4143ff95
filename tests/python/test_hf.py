"""HuggingFace models through a real server: tiny models with random weights
made here with `transformers`, saved with `save_pretrained`, loaded with
`load_model(name, model_type="huggingface", model_path=DIR)`, and their
outputs compared with transformers' own on the same inputs (float32: max
abs difference <= 1e-4) — with and without attention masks, left and right
padding, batches > 1, in every weight layout (`model.safetensors`, sharded
safetensors, `pytorch_model.bin`, sharded `.bin`).

The server runs the architectures natively (Rust on tch, no Python), from
the `mymps-models` plugin beside its binary (scripts/setup.sh puts it
there). Checked against transformers 4.57 and 5.x: `pytorch_model.bin`
checkpoints are written here (`save_bin`), as transformers 5 writes
safetensors only. Hub names resolve through a Hugging Face cache laid out
here. Architectures the native path lacks: test_bridge.py.
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers as tf

from mymps import BadArgumentError, ModelError, MympsClient

# The server's device (conftest starts it there). On an accelerator the
# models are loaded as float32 explicitly (its default is float16), and the
# bound allows for the device's float32 arithmetic (TF32 convolutions).
DEVICE = os.environ.get("MYMPS_TEST_DEVICE", "cpu")
ON_CPU = DEVICE == "cpu"
ATOL = 1e-4 if ON_CPU else 2e-3
FLOAT32 = {} if ON_CPU else {"dtype": "float32"}
VOCAB = 99
BATCH, SEQ = 3, 9
LENGTHS = [SEQ, 6, 3]  # tokens per row; the rest is padding

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny(cls, **kw):
    """A tiny random model of config class `cls`, in eval mode."""
    torch.manual_seed(0)
    return kw.pop("model")(cls(**kw)).eval()


def token_ids(seed=1, pad_id=0, side="right"):
    """Random ids [BATCH, SEQ] in [2, VOCAB) and the mask of LENGTHS, padded
    with `pad_id` on `side`."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, VOCAB, size=(BATCH, SEQ)).astype(np.int64)
    mask = np.zeros((BATCH, SEQ), np.int64)
    for i, n in enumerate(LENGTHS):
        if side == "right":
            mask[i, :n] = 1
        else:
            mask[i, SEQ - n:] = 1
    ids[mask == 0] = pad_id
    return ids, mask


class Outputs(dict):
    __getattr__ = dict.__getitem__


def reference(model, inputs):
    """transformers' outputs; for a model with a head (a causal LM), its
    logits and the base model's last_hidden_state (what AutoModel gives)."""
    kw = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        out = Outputs(model(**kw))
        if model.base_model is not model:
            out.update(model.base_model(**kw))
    return out


def compare(client, name, model, inputs, outputs, atol=ATOL):
    """Runs `inputs` through the server and through transformers; checks the
    output names and that every value (padded positions too) is within
    `atol`. Returns {output: max abs diff}."""
    got = client.infer(name, inputs)
    want = reference(model, inputs)
    assert sorted(got) == sorted(outputs)
    diffs = {}
    for k in outputs:
        w = getattr(want, k).numpy()
        assert got[k].shape == w.shape, (k, got[k].shape, w.shape)
        assert got[k].dtype == np.float32
        diffs[k] = float(np.abs(got[k] - w).max())
        assert diffs[k] <= atol, f"{name} {k}: max abs diff {diffs[k]:.3g}"
    print(f"{name} {sorted(inputs)}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    return diffs


def save_bin(model, path, shard_bytes=None):
    """config.json and pytorch_model.bin (sharded with its index when
    `shard_bytes` is given), as save_pretrained(safe_serialization=False)
    wrote them before transformers 5, which writes safetensors only. Tied
    parameters are saved once (the first key that holds them)."""
    path.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(str(path))
    seen, sd = set(), {}
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        sd[k] = v.contiguous()
    if shard_bytes is None:
        torch.save(sd, path / "pytorch_model.bin")
        return
    shards, cur, size = [], {}, 0
    for k, v in sd.items():
        n = v.numel() * v.element_size()
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = v, size + n
    shards.append(cur)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, path / name)
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


def load(client, name, model, path, bin=False, shard_bytes=None, **save_kw):
    if bin:
        save_bin(model, path, shard_bytes)
    else:
        model.save_pretrained(str(path), **save_kw)
    info = client.load_model(name, model_type="huggingface", model_path=str(path), **FLOAT32)
    assert info["status"] == "ok" and info["name"] == name
    return info


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ---- encoders -------------------------------------------------------------

ENCODER_KW = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=64)

ENCODERS = {
    "bert": (tf.BertConfig, tf.BertModel, dict(ENCODER_KW, type_vocab_size=2), 0),
    "roberta": (tf.RobertaConfig, tf.RobertaModel, dict(ENCODER_KW, type_vocab_size=1, pad_token_id=1), 1),
    "xlm-roberta": (tf.XLMRobertaConfig, tf.XLMRobertaModel,
                    dict(ENCODER_KW, type_vocab_size=1, pad_token_id=1, hidden_act="gelu_new"), 1),
}


@pytest.mark.parametrize("arch", list(ENCODERS))
def test_bert_family_matches_transformers(client, tmp_path, arch):
    cfg_cls, model_cls, kw, pad = ENCODERS[arch]
    model = tiny(cfg_cls, model=model_cls, **kw)
    info = load(client, arch, model, tmp_path / arch)
    meta = info["metadata"]
    assert meta["architecture"] == model_cls.__name__
    assert meta["parameters"] == str(n_params(model))
    assert meta["dtype"] == "float32" and meta["weights"] == "model.safetensors"
    assert meta["path"] == str(tmp_path / arch)
    assert info["device"] == client.device
    outs = ["last_hidden_state", "pooler_output"]
    ids, mask = token_ids(pad_id=pad)
    compare(client, arch, model, {"input_ids": ids}, outs)
    compare(client, arch, model, {"input_ids": ids, "attention_mask": mask}, outs)
    if kw["type_vocab_size"] > 1:
        tt = np.random.default_rng(2).integers(0, 2, size=ids.shape).astype(np.int64)
        compare(client, arch, model, {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}, outs)
    pos = np.tile(np.arange(5, 5 + SEQ, dtype=np.int64), (BATCH, 1))
    compare(client, arch, model, {"input_ids": ids, "attention_mask": mask, "position_ids": pos}, outs)
    # Positional inputs follow transformers' forward: input_ids, attention_mask.
    by_pos = client.infer(arch, {"0": ids, "1": mask})
    by_name = client.infer(arch, {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_array_equal(by_pos["last_hidden_state"], by_name["last_hidden_state"])
    # int32 ids and a boolean mask are accepted too.
    np.testing.assert_allclose(
        client.infer(arch, {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(bool)})["last_hidden_state"],
        by_name["last_hidden_state"], atol=1e-6)
    client.unload_model(arch)


def test_distilbert_matches_transformers(client, tmp_path):
    model = tiny(tf.DistilBertConfig, model=tf.DistilBertModel, vocab_size=VOCAB, dim=32, n_layers=2,
                 n_heads=4, hidden_dim=37, max_position_embeddings=64)
    info = load(client, "distilbert", model, tmp_path / "distilbert")
    assert info["metadata"]["architecture"] == "DistilBertModel"
    assert info["metadata"]["parameters"] == str(n_params(model))
    ids, mask = token_ids()
    compare(client, "distilbert", model, {"input_ids": ids}, ["last_hidden_state"])
    compare(client, "distilbert", model, {"input_ids": ids, "attention_mask": mask}, ["last_hidden_state"])
    client.unload_model("distilbert")


def test_bert_from_pytorch_model_bin_and_a_masked_lm_checkpoint(client, tmp_path):
    # pytorch_model.bin (torch.save zip), read by mymps's own unpickler.
    model = tiny(tf.BertConfig, model=tf.BertModel, **dict(ENCODER_KW, hidden_act="gelu_new"))
    info = load(client, "bert-bin", model, tmp_path / "bin", bin=True)
    assert info["metadata"]["weights"] == "pytorch_model.bin"
    ids, mask = token_ids()
    compare(client, "bert-bin", model, {"input_ids": ids, "attention_mask": mask},
            ["last_hidden_state", "pooler_output"])
    # A BertForMaskedLM checkpoint: keys under "bert.", no pooler; AutoModel
    # gives its base model.
    mlm = tiny(tf.BertConfig, model=tf.BertForMaskedLM, **ENCODER_KW)
    load(client, "bert-mlm", mlm, tmp_path / "mlm")
    got = client.infer("bert-mlm", {"input_ids": ids, "attention_mask": mask})
    assert sorted(got) == ["last_hidden_state"]
    want = reference(mlm.bert, {"input_ids": ids, "attention_mask": mask}).last_hidden_state.numpy()
    assert np.abs(got["last_hidden_state"] - want).max() <= ATOL
    for n in ["bert-bin", "bert-mlm"]:
        client.unload_model(n)


# ---- decoders -------------------------------------------------------------

def decoder_cases(client, name, model, outs, pad=0):
    """No mask; right padding; left padding; left padding with the position
    ids that generate() would use."""
    ids, _ = token_ids(pad_id=pad)
    compare(client, name, model, {"input_ids": ids}, outs)
    # Position ids alone (one row for the batch), restarting mid-sequence:
    # with transformers' default use_cache this is no packed-sequence mask.
    restart = np.concatenate([np.arange(4), np.arange(SEQ - 4)]).astype(np.int64)[None]
    compare(client, name, model, {"input_ids": ids, "position_ids": restart}, outs)
    for side in ["right", "left"]:
        ids, mask = token_ids(pad_id=pad, side=side)
        compare(client, name, model, {"input_ids": ids, "attention_mask": mask}, outs)
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)
    compare(client, name, model, {"input_ids": ids, "attention_mask": mask, "position_ids": pos}, outs)


def test_gpt2_matches_transformers(client, tmp_path):
    kw = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    base = tiny(tf.GPT2Config, model=tf.GPT2Model, **kw)
    info = load(client, "gpt2", base, tmp_path / "gpt2")
    assert info["metadata"]["architecture"] == "GPT2Model"
    assert info["metadata"]["parameters"] == str(n_params(base))
    decoder_cases(client, "gpt2", base, ["last_hidden_state"])
    ids, mask = token_ids()
    tt = np.random.default_rng(3).integers(0, VOCAB, size=ids.shape).astype(np.int64)
    compare(client, "gpt2", base, {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt},
            ["last_hidden_state"])
    # GPT2LMHeadModel: logits through the tied embeddings (the checkpoint
    # has no lm_head.weight), from a sharded pytorch_model.bin.
    lm = tiny(tf.GPT2Config, model=tf.GPT2LMHeadModel, **dict(kw, activation_function="gelu"))
    info = load(client, "gpt2-lm", lm, tmp_path / "gpt2-lm", bin=True, shard_bytes=20_000)
    assert info["metadata"]["architecture"] == "GPT2LMHeadModel"
    assert info["metadata"]["weights"].startswith("pytorch_model.bin.index.json (")
    assert info["metadata"]["parameters"] == str(n_params(lm))
    decoder_cases(client, "gpt2-lm", lm, ["last_hidden_state", "logits"])
    for n in ["gpt2", "gpt2-lm"]:
        client.unload_model(n)


LLAMA_KW = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


def test_llama_matches_transformers(client, tmp_path):
    # Base model, grouped-query attention (4 heads, 2 key/value heads), a
    # non-default rope_theta.
    base = tiny(tf.LlamaConfig, model=tf.LlamaModel, **dict(LLAMA_KW, rope_theta=500.0))
    info = load(client, "llama", base, tmp_path / "llama")
    assert info["metadata"]["architecture"] == "LlamaModel"
    assert info["metadata"]["parameters"] == str(n_params(base))
    decoder_cases(client, "llama", base, ["last_hidden_state"])
    # LlamaForCausalLM with its own lm_head, biases, llama3 rope scaling,
    # from a sharded safetensors checkpoint.
    lm = tiny(tf.LlamaConfig, model=tf.LlamaForCausalLM, **dict(
        LLAMA_KW, attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16}))
    info = load(client, "llama-lm", lm, tmp_path / "llama-lm", max_shard_size="20KB")
    meta = info["metadata"]
    assert meta["weights"].startswith("model.safetensors.index.json (")
    assert int(meta["weights"].split("(")[1].split()[0]) > 1
    assert meta["parameters"] == str(n_params(lm))
    assert meta["outputs"] == "last_hidden_state, logits"
    decoder_cases(client, "llama-lm", lm, ["last_hidden_state", "logits"])
    # Linear rope scaling.
    lin = tiny(tf.LlamaConfig, model=tf.LlamaModel, **dict(
        LLAMA_KW, rope_scaling={"rope_type": "linear", "factor": 2.0}))
    load(client, "llama-linear", lin, tmp_path / "llama-linear")
    ids, mask = token_ids(side="left")
    compare(client, "llama-linear", lin, {"input_ids": ids, "attention_mask": mask}, ["last_hidden_state"])
    for n in ["llama", "llama-lm", "llama-linear"]:
        client.unload_model(n)


def test_mistral_with_a_sliding_window_matches_transformers(client, tmp_path):
    # sliding_window 4 < the sequence: keys further back than the window are masked.
    lm = tiny(tf.MistralConfig, model=tf.MistralForCausalLM, **dict(LLAMA_KW, sliding_window=4))
    info = load(client, "mistral", lm, tmp_path / "mistral")
    assert info["metadata"]["architecture"] == "MistralForCausalLM"
    assert info["metadata"]["parameters"] == str(n_params(lm))
    decoder_cases(client, "mistral", lm, ["last_hidden_state", "logits"])
    client.unload_model("mistral")


def test_qwen2_matches_transformers(client, tmp_path):
    # q/k/v biases, tied embeddings; the second layer uses a sliding window.
    lm = tiny(tf.Qwen2Config, model=tf.Qwen2ForCausalLM, **dict(
        LLAMA_KW, tie_word_embeddings=True, use_sliding_window=True, sliding_window=4,
        max_window_layers=1))
    assert lm.config.layer_types == ["full_attention", "sliding_attention"]
    info = load(client, "qwen2", lm, tmp_path / "qwen2")
    assert info["metadata"]["parameters"] == str(n_params(lm))
    decoder_cases(client, "qwen2", lm, ["last_hidden_state", "logits"])
    base = tiny(tf.Qwen2Config, model=tf.Qwen2Model, **LLAMA_KW)
    load(client, "qwen2-base", base, tmp_path / "qwen2-base", bin=True)
    decoder_cases(client, "qwen2-base", base, ["last_hidden_state"])
    for n in ["qwen2", "qwen2-base"]:
        client.unload_model(n)


# ---- vision ---------------------------------------------------------------

def test_vit_matches_transformers(client, tmp_path):
    model = tiny(tf.ViTConfig, model=tf.ViTModel, image_size=16, patch_size=4, num_channels=3,
                 hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    info = load(client, "vit", model, tmp_path / "vit")
    assert info["metadata"]["architecture"] == "ViTModel"
    assert info["metadata"]["parameters"] == str(n_params(model))
    assert info["metadata"]["inputs"] == "pixel_values"
    px = np.random.default_rng(4).standard_normal((2, 3, 16, 16)).astype(np.float32)
    compare(client, "vit", model, {"pixel_values": px}, ["last_hidden_state", "pooler_output"])
    np.testing.assert_array_equal(client.infer("vit", {"0": px})["pooler_output"],
                                  client.infer("vit", {"pixel_values": px})["pooler_output"])
    with pytest.raises(BadArgumentError, match=r"'pixel_values' must be a float array of shape \[N, 3, 16, 16\]"):
        client.infer("vit", {"pixel_values": px[:, :, :8]})
    client.unload_model("vit")


# ---- dtypes ---------------------------------------------------------------

def test_default_dtype_is_float32_on_the_cpu_and_float16_on_accelerators(client, tmp_path):
    m = tiny(tf.BertConfig, model=tf.BertModel, **ENCODER_KW)
    m.save_pretrained(str(tmp_path / "m"))
    info = client.load_model("default-dtype", model_type="huggingface", model_path=str(tmp_path / "m"))
    device = client.health()["device"]
    want = "float32" if device == "cpu" else "float16"
    assert info["metadata"]["dtype"] == want, (device, info["metadata"])
    ids, mask = token_ids()
    out = client.infer("default-dtype", {"input_ids": ids, "attention_mask": mask})
    assert out["last_hidden_state"].dtype == np.dtype(want)
    client.unload_model("default-dtype")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_loads(client, tmp_path, dtype):
    import ml_dtypes

    lm = tiny(tf.LlamaConfig, model=tf.LlamaForCausalLM, **LLAMA_KW)
    lm.save_pretrained(str(tmp_path / "m"))
    info = client.load_model(f"half-{dtype}", model_type="huggingface", model_path=str(tmp_path / "m"), dtype=dtype)
    assert info["metadata"]["dtype"] == dtype
    assert client.model_info(f"half-{dtype}")["metadata"]["dtype"] == dtype
    ids, mask = token_ids(side="left")
    got = client.infer(f"half-{dtype}", {"input_ids": ids, "attention_mask": mask})
    want = reference(lm, {"input_ids": ids, "attention_mask": mask})
    np_dtype = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    for k in ["last_hidden_state", "logits"]:
        assert got[k].dtype == np_dtype
        g, w = got[k].astype(np.float32), getattr(want, k).numpy()
        err = np.abs(g - w).max() / np.abs(w).max()
        print(f"{dtype} {k}: max abs diff {np.abs(g - w).max():.2e}, relative to max {err:.2e}")
        assert err < (0.02 if dtype == "float16" else 0.05), (k, err)
    # Float inputs are cast to the model's dtype (a float32 ViT input here).
    vit = tiny(tf.ViTConfig, model=tf.ViTModel, image_size=8, patch_size=4, hidden_size=32,
               num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)
    vit.save_pretrained(str(tmp_path / "vit"))
    client.load_model(f"half-vit-{dtype}", model_type="huggingface", model_path=str(tmp_path / "vit"), dtype=dtype)
    px = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    out = client.infer(f"half-vit-{dtype}", {"pixel_values": px})["last_hidden_state"]
    assert out.dtype == np_dtype
    want = reference(vit, {"pixel_values": px}).last_hidden_state.numpy()
    assert np.abs(out.astype(np.float32) - want).max() < 0.1
    client.unload_model(f"half-{dtype}")
    client.unload_model(f"half-vit-{dtype}")


# ---- hub names --------------------------------------------------------------

def hub_cache_entry(cache, repo_id, src, rev="0123abcd"):
    """`src`'s files as a snapshot of the Hugging Face cache `cache` (the
    layout huggingface_hub writes: blobs/, snapshots/REV/ of links, refs/main)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / rev
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    snap.mkdir(parents=True)
    for f in src.iterdir():
        blob = repo / "blobs" / f"{f.name}.blob"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs" / "main").write_text(rev)
    return snap


def test_hub_names_resolve_through_the_local_cache(server_factory, tmp_path, monkeypatch):
    model = tiny(tf.BertConfig, model=tf.BertModel, **ENCODER_KW)
    model.save_pretrained(str(tmp_path / "src"))
    cache = tmp_path / "hf-cache"
    snap = hub_cache_entry(cache, "org/tiny-bert", tmp_path / "src")
    # A snapshot whose file links out of its repository is refused.
    bad = hub_cache_entry(cache, "org/escape", tmp_path / "src")
    (bad / "config.json").unlink()
    (bad / "config.json").symlink_to(tmp_path / "src" / "config.json")
    root = tmp_path / "root"
    root.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    server = server_factory("--model-root", str(root))
    monkeypatch.delenv("HF_HUB_CACHE")
    with MympsClient(server.host, server.port) as c:
        # The seed's form: the name alone.
        info = c.load_model("org/tiny-bert", **FLOAT32)
        assert info["metadata"]["path"] == str(snap.resolve())
        assert info["metadata"]["engine"] == "native"
        ids, mask = token_ids()
        compare(c, "org/tiny-bert", model, {"input_ids": ids, "attention_mask": mask},
                ["last_hidden_state", "pooler_output"])
        with pytest.raises(ModelError, match=r"cannot be opened.*not in the Hugging Face cache .*models--org--missing"):
            c.load_model("org/missing")
        with pytest.raises(ModelError, match="leads out of the model directory"):
            c.load_model("org/escape")
        # Paths that are no hub names are not looked up there.
        with pytest.raises(ModelError, match="outside the model root"):
            c.load_model("x", model_path=str(snap))
        assert c.health()["status"] == "ok"


# ---- errors ---------------------------------------------------------------

def test_errors_are_clear_and_the_server_keeps_serving(client, tmp_path):
    model = tiny(tf.BertConfig, model=tf.BertModel, **ENCODER_KW)
    load(client, "ok", model, tmp_path / "ok")
    ids, mask = token_ids()

    # A directory that does not exist (there is no hub to download from).
    with pytest.raises(ModelError, match="cannot be opened"):
        client.load_model("e", model_type="huggingface", model_path=str(tmp_path / "bert-base-uncased"))
    # A directory without config.json; a file instead of a directory.
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json in"):
        client.load_model("e", model_type="huggingface", model_path=str(tmp_path / "empty"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match="is not a directory"):
        client.load_model("e", model_type="huggingface", model_path=str(tmp_path / "file"))
    # An architecture we lack: the error lists those we have.
    (tmp_path / "albert").mkdir()
    (tmp_path / "albert" / "config.json").write_text(
        json.dumps({"model_type": "albert", "architectures": ["AlbertModel"]}))
    with pytest.raises(ModelError, match=r"model_type 'albert' \(AlbertModel\) has no native implementation "
                                         r"\(native: bert \(BertModel\), distilbert .*llama .*vit \(ViTModel\).*\); "
                                         r"engine=\"python\" runs it"):
        client.load_model("e", model_type="huggingface", model_path=str(tmp_path / "albert"), engine="native")
    # Without an engine, transformers (the Python engine) takes it, and
    # says what it lacks (test_bridge.py runs such models).
    with pytest.raises(ModelError, match="albert"):
        client.load_model("e", model_type="huggingface", model_path=str(tmp_path / "albert"))
    # No weights; a weight missing; a weight of the wrong shape.
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    with pytest.raises(ModelError, match="no weights in .*expected model.safetensors"):
        client.load_model("e", model_type="huggingface", model_path=str(tmp_path / "noweights"))
    from safetensors.torch import load_file, save_file
    sd = load_file(str(tmp_path / "ok" / "model.safetensors"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    save_file({k: v for k, v in sd.items() if "layer.1.output.dense.weight" not in k}, str(broken / "model.safetensors"))
    with pytest.raises(ModelError, match=r"missing weight 'encoder.layer.1.output.dense.weight'"):
        client.load_model("e", model_type="huggingface", model_path=str(broken))
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (broken / "config.json").write_text(json.dumps(cfg))
    save_file(sd, str(broken / "model.safetensors"))
    with pytest.raises(ModelError, match=r"weight 'encoder.layer.0.intermediate.dense.weight' has shape \[37, 32\] in the checkpoint, the config implies \[40, 32\]"):
        client.load_model("e", model_type="huggingface", model_path=str(broken))
    cfg["intermediate_size"] = 37
    cfg["hidden_act"] = "snake"
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="unsupported activation hidden_act = 'snake'"):
        client.load_model("e", model_type="huggingface", model_path=str(broken))
    with pytest.raises(BadArgumentError, match="dtype"):
        client.load_model("e", model_type="huggingface", model_path=str(tmp_path / "ok"), dtype="int8")

    # Bad inputs.
    with pytest.raises(BadArgumentError, match=r"missing input 'input_ids' \(this model takes: input_ids, attention_mask, token_type_ids, position_ids\)"):
        client.infer("ok", {"attention_mask": mask})
    with pytest.raises(BadArgumentError, match=r"unknown input 'pixel_values'; this model takes: input_ids"):
        client.infer("ok", {"input_ids": ids, "pixel_values": np.zeros((1, 3, 4, 4), np.float32)})
    with pytest.raises(BadArgumentError, match=r"'input_ids' must be a 2-D integer array"):
        client.infer("ok", {"input_ids": ids[0]})
    with pytest.raises(BadArgumentError, match=r"'input_ids' must be a 2-D integer array"):
        client.infer("ok", {"input_ids": ids.astype(np.float32)})
    with pytest.raises(BadArgumentError, match=r"'input_ids' has values in \[.*\], outside \[0, 99\)"):
        client.infer("ok", {"input_ids": ids + VOCAB})
    with pytest.raises(BadArgumentError, match=r"'attention_mask' must have the shape of input_ids"):
        client.infer("ok", {"input_ids": ids, "attention_mask": mask[:, :4]})
    with pytest.raises(BadArgumentError, match=r"'token_type_ids' has values .* outside \[0, 2\)"):
        client.infer("ok", {"input_ids": ids, "token_type_ids": np.full_like(ids, 2)})
    with pytest.raises(BadArgumentError, match="sequence is too long"):
        client.infer("ok", {"input_ids": np.ones((1, 65), np.int64)})
    with pytest.raises(BadArgumentError, match="given twice"):
        client.infer("ok", {"0": ids, "input_ids": ids})
    with pytest.raises(BadArgumentError, match=r"positional input \"4\""):
        client.infer("ok", {"0": ids, "4": ids})

    # The server and the model keep working.
    assert client.health()["status"] == "ok"
    compare(client, "ok", model, {"input_ids": ids, "attention_mask": mask}, ["last_hidden_state", "pooler_output"])
    assert [m["name"] for m in client.list_models() if m["name"] in ("ok", "e")] == ["ok"]
    client.unload_model("ok")


def test_model_directories_resolve_under_the_model_root(server_factory, tmp_path):
    from mymps import MympsClient

    root = tmp_path / "root"
    root.mkdir()
    model = tiny(tf.DistilBertConfig, model=tf.DistilBertModel, vocab_size=VOCAB, dim=16, n_layers=1,
                 n_heads=2, hidden_dim=20, max_position_embeddings=16)
    model.save_pretrained(str(root / "org" / "tiny"))
    # A symlinked weights file that leads out of the model directory.
    (root / "leaky").mkdir()
    (root / "leaky" / "config.json").write_text((root / "org" / "tiny" / "config.json").read_text())
    (tmp_path / "w.safetensors").write_bytes((root / "org" / "tiny" / "model.safetensors").read_bytes())
    (root / "leaky" / "model.safetensors").symlink_to(tmp_path / "w.safetensors")
    server = server_factory("--model-root", str(root))
    with MympsClient(server.host, server.port) as c:
        # The name is the directory, relative to the root; the default model_type is huggingface.
        info = c.load_model("org/tiny", **FLOAT32)
        assert info["metadata"]["path"] == str(root / "org" / "tiny")
        ids, mask = token_ids()
        compare(c, "org/tiny", model, {"input_ids": ids, "attention_mask": mask}, ["last_hidden_state"])
        with pytest.raises(ModelError, match="outside the model root"):
            c.load_model("x", model_path=str(tmp_path))
        with pytest.raises(ModelError, match="leads out of the model directory"):
            c.load_model("x", model_path="leaky")
        with pytest.raises(ModelError, match="cannot be opened"):
            c.load_model("gpt2")
