"""The Python engine (the `mymps-bridge` plugin) through a real server.

- Architectures the native path lacks, made here with `transformers` (tiny,
  random weights), loaded with `load_model(..., model_type="huggingface")`
  and compared with transformers' own output in this process, with a mask
  and padding.
- A user package's `torch.nn.Module` with a dict output, through
  `checkpoint` with `model_class="package.Class"` (the package is on the
  server's PYTHONPATH, never sent by the client).
- `.pt2` programs from `torch.export`: two inputs, and a dynamic batch.
- Safety: a pickle with a `__reduce__` payload (its marker file must not
  appear), a class path that does not exist, a module that raises on
  import, `trust_remote_code` without the operator's flag: typed errors,
  and the server keeps serving.
- The engine choice (`engine="native" | "python"`, `metadata["engine"]`),
  concurrent calls on one model, and a server whose Python cannot be found
  (native loaders work; bridge requests say what to install).

On an accelerator (MYMPS_TEST_DEVICE=cuda:0) models are loaded as float32
and compared within 2e-3.
"""

import json
import os
import subprocess
import threading

import numpy as np
import pytest
import torch
import transformers as tf

from mymps import BadArgumentError, ModelError, MympsClient

DEVICE = os.environ.get("MYMPS_TEST_DEVICE", "cpu")
ON_CPU = DEVICE == "cpu"
ATOL = 1e-4 if ON_CPU else 2e-3
FLOAT32 = {} if ON_CPU else {"dtype": "float32"}
VOCAB = 99
BATCH, SEQ = 3, 9
LENGTHS = [SEQ, 6, 3]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def ids_and_mask(seed=1, pad_id=0, side="right"):
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


def reference(model, inputs):
    kw = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        out = model(**kw, use_cache=False) if "use_cache" in model.forward.__code__.co_varnames else model(**kw)
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def check_against(client, name, model, inputs):
    got = client.infer(name, inputs)
    want = reference(model, inputs)
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for k, w in want.items():
        w = w.numpy()
        assert got[k].shape == w.shape, (k, got[k].shape, w.shape)
        assert got[k].dtype == w.dtype
        d = float(np.abs(got[k] - w).max())
        assert d <= ATOL, f"{name} {k}: max abs diff {d:.3g}"
    return got


SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=37, max_position_embeddings=64)

# Architectures outside the native set (bert, roberta, xlm-roberta,
# distilbert, gpt2, llama, mistral, qwen2, vit): config class, model class,
# config arguments, pad id, padding side.
OUTSIDE = {
    "qwen3": (tf.Qwen3Config, tf.Qwen3Model,
              dict(SMALL, num_key_value_heads=2, head_dim=8), 0, "left"),
    "gemma2": (tf.Gemma2Config, tf.Gemma2Model,
               dict(SMALL, num_key_value_heads=2, head_dim=8, pad_token_id=0), 0, "left"),
    "deberta-v2": (tf.DebertaV2Config, tf.DebertaV2Model,
                   dict(SMALL, type_vocab_size=0, relative_attention=True,
                        position_buckets=8, pos_att_type=["p2c", "c2p"]), 0, "right"),
    "electra": (tf.ElectraConfig, tf.ElectraModel, dict(SMALL, embedding_size=16), 0, "right"),
    "albert": (tf.AlbertConfig, tf.AlbertModel, dict(SMALL, embedding_size=16), 0, "right"),
    "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXModel, dict(SMALL), 0, "left"),
    "opt": (tf.OPTConfig, tf.OPTModel,
            dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 ffn_dim=37, max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=1),
            1, "left"),
}


def tiny(cfg_cls, model_cls, kw):
    torch.manual_seed(0)
    return model_cls(cfg_cls(**kw)).eval()


@pytest.mark.parametrize("arch", list(OUTSIDE))
def test_architectures_outside_the_native_set(client, tmp_path, arch):
    cfg_cls, model_cls, kw, pad, side = OUTSIDE[arch]
    model = tiny(cfg_cls, model_cls, kw)
    path = tmp_path / arch
    model.save_pretrained(str(path))
    info = client.load_model(arch, model_type="huggingface", model_path=str(path), **FLOAT32)
    meta = info["metadata"]
    assert meta["engine"] == "python"
    assert meta["architecture"] == model_cls.__name__
    assert meta["parameters"] == str(sum(p.numel() for p in model.parameters()))
    assert meta["dtype"] == "float32"
    assert client.model_info(arch)["metadata"]["engine"] == "python"
    ids, mask = ids_and_mask(pad_id=pad, side=side)
    check_against(client, arch, model, {"input_ids": ids})
    got = check_against(client, arch, model, {"input_ids": ids, "attention_mask": mask})
    assert "last_hidden_state" in got
    # Positional inputs follow the model's forward: input_ids, attention_mask.
    by_pos = client.infer(arch, {"0": ids, "1": mask})
    np.testing.assert_array_equal(by_pos["last_hidden_state"], got["last_hidden_state"])
    client.unload_model(arch)


def test_a_native_architecture_on_the_python_engine(client, tmp_path):
    torch.manual_seed(0)
    model = tf.BertModel(tf.BertConfig(**SMALL)).eval()
    model.save_pretrained(str(tmp_path / "bert"))
    native = client.load_model("bert-n", model_path=str(tmp_path / "bert"), **FLOAT32)
    python = client.load_model("bert-p", model_path=str(tmp_path / "bert"), engine="python", **FLOAT32)
    assert native["metadata"]["engine"] == "native"
    assert python["metadata"]["engine"] == "python"
    ids, mask = ids_and_mask()
    a = client.infer("bert-n", {"input_ids": ids, "attention_mask": mask})
    b = client.infer("bert-p", {"input_ids": ids, "attention_mask": mask})
    assert sorted(a) == sorted(b) == ["last_hidden_state", "pooler_output"]
    for k in a:
        assert float(np.abs(a[k] - b[k]).max()) <= ATOL
    # engine="native" for an architecture it lacks says how to run it.
    cfg_cls, model_cls, kw, _, _ = OUTSIDE["qwen3"]
    tiny(cfg_cls, model_cls, kw).save_pretrained(str(tmp_path / "q"))
    with pytest.raises(ModelError, match='engine="python"'):
        client.load_model("q", model_path=str(tmp_path / "q"), engine="native")
    with pytest.raises(BadArgumentError, match="engine 'rust' is not one of"):
        client.load_model("q", model_path=str(tmp_path / "q"), engine="rust")
    for n in ("bert-n", "bert-p"):
        client.unload_model(n)


def test_concurrent_calls_on_one_model(client, tmp_path):
    cfg_cls, model_cls, kw, pad, side = OUTSIDE["qwen3"]
    model = tiny(cfg_cls, model_cls, kw)
    model.save_pretrained(str(tmp_path / "q"))
    client.load_model("qc", model_path=str(tmp_path / "q"), **FLOAT32)
    inputs = [ids_and_mask(seed=s, pad_id=pad, side=side) for s in range(4)]
    want = [client.infer("qc", {"input_ids": i, "attention_mask": m})["last_hidden_state"]
            for i, m in inputs]
    errors, results = [], {}

    def worker(n):
        try:
            with MympsClient(client.host, client.port) as c:
                for r in range(5):
                    i, m = inputs[(n + r) % 4]
                    results[(n, r)] = ((n + r) % 4, c.infer("qc", {"input_ids": i, "attention_mask": m}))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 20
    for k, out in results.values():
        np.testing.assert_array_equal(out["last_hidden_state"], want[k])
    client.unload_model("qc")


# ---- checkpoint with a user class -------------------------------------------

PACKAGE = '''
import torch
from torch import nn


class TwoHeads(nn.Module):
    """A user's model: two inputs, a dict of two outputs."""

    def __init__(self, d_in=6, d_hidden=5, n_classes=3):
        super().__init__()
        self.body = nn.Linear(d_in, d_hidden)
        self.head = nn.Linear(d_hidden, n_classes)

    def forward(self, x, scale=None):
        h = torch.tanh(self.body(x))
        if scale is not None:
            h = h * scale
        return {"logits": self.head(h), "features": h}
'''


@pytest.fixture
def user_server(server_factory, tmp_path, monkeypatch):
    """A server whose Python path has the package `mymps_user_pkg` (and
    `mymps_broken_pkg`, which raises on import)."""
    pkgs = tmp_path / "site"
    (pkgs / "mymps_user_pkg").mkdir(parents=True)
    (pkgs / "mymps_user_pkg" / "__init__.py").write_text("")
    (pkgs / "mymps_user_pkg" / "nets.py").write_text(PACKAGE)
    (pkgs / "mymps_broken_pkg").mkdir()
    (pkgs / "mymps_broken_pkg" / "__init__.py").write_text("raise RuntimeError('broken on purpose')\n")
    monkeypatch.setenv("PYTHONPATH", str(pkgs))
    server = server_factory()
    monkeypatch.delenv("PYTHONPATH")
    return server


def test_checkpoint_with_a_user_class(user_server, tmp_path):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_loader("user_nets", loader=None)
    nets = importlib.util.module_from_spec(spec)
    exec(PACKAGE, nets.__dict__)
    torch.manual_seed(0)
    model = nets.TwoHeads(d_in=6, d_hidden=5, n_classes=4).eval()
    path = tmp_path / "two_heads.pt"
    torch.save(model.state_dict(), path)
    x = np.random.default_rng(0).standard_normal((7, 6)).astype(np.float32)
    scale = np.float32(0.5) * np.ones((1, 5), np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.from_numpy(scale))
    with MympsClient(user_server.host, user_server.port) as c:
        info = c.load_model("two", model_type="checkpoint", model_path=str(path),
                            model_class="mymps_user_pkg.nets.TwoHeads",
                            config={"d_in": 6, "d_hidden": 5, "n_classes": 4}, **FLOAT32)
        assert info["metadata"]["engine"] == "python"
        assert info["metadata"]["architecture"] == "mymps_user_pkg.nets.TwoHeads"
        assert info["metadata"]["parameters"] == str(sum(p.numel() for p in model.parameters()))
        got = c.infer("two", {"0": x, "scale": scale})
        assert sorted(got) == ["features", "logits"]
        for k in got:
            np.testing.assert_allclose(got[k], want[k].numpy(), atol=ATOL, rtol=0)
        # Keyword or positional, as the class's forward names them.
        got2 = c.infer("two", {"x": x})
        with torch.no_grad():
            np.testing.assert_allclose(got2["logits"], model(torch.from_numpy(x))["logits"].numpy(),
                                       atol=ATOL, rtol=0)
        with pytest.raises(ModelError, match="unknown input 'y'"):
            c.infer("two", {"y": x})
        # A state_dict that does not fit the class says so.
        with pytest.raises(ModelError, match="does not fit"):
            c.load_model("two-bad", model_type="checkpoint", model_path=str(path),
                         model_class="mymps_user_pkg.nets.TwoHeads", config={"d_in": 3})
    assert "mymps_user_pkg" not in sys.modules  # it ran on the server only


def test_bad_classes_are_typed_errors(user_server, tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "sd.pt")
    with MympsClient(user_server.host, user_server.port) as c:
        cases = {
            "mymps_user_pkg.nets.NoSuchClass": "has no class 'NoSuchClass'",
            "mymps_no_such_package.Model": "no module 'mymps_no_such_package'",
            "mymps_broken_pkg.Model": "RuntimeError: broken on purpose",
            "mymps_user_pkg.nets.torch": "is not a Python class path|not a torch.nn.Module|has no class",
            "os.system": "has no class|not a torch.nn.Module",
            "mymps_user_pkg/../x.Model": "is not a Python class path",
        }
        for cls, msg in cases.items():
            with pytest.raises(ModelError, match=msg):
                c.load_model("bad", model_type="checkpoint", model_path=str(tmp_path / "sd.pt"),
                             model_class=cls)
        assert c.health()["status"] == "ok"
        assert c.list_models() == []


class Payload:
    """Unpickling this runs `open(marker, "w")`: what a hostile weights file does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_payload_never_runs(user_server, client, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"body.weight": Payload(str(marker))}, evil)
    with MympsClient(user_server.host, user_server.port) as c:
        with pytest.raises(ModelError, match="weights_only"):
            c.load_model("evil", model_type="checkpoint", model_path=str(evil),
                         model_class="mymps_user_pkg.nets.TwoHeads")
        assert c.health()["status"] == "ok"
    # A Hugging Face directory of an architecture the bridge runs, whose
    # pytorch_model.bin is the payload: transformers' torch.load is
    # weights_only in the server's interpreter.
    cfg_cls, model_cls, kw, _, _ = OUTSIDE["qwen3"]
    d = tmp_path / "evil-hf"
    tiny(cfg_cls, model_cls, kw).config.save_pretrained(str(d))
    torch.save({"layers.0.mlp.up_proj.weight": Payload(str(marker))}, d / "pytorch_model.bin")
    with pytest.raises(ModelError):
        client.load_model("evil-hf", model_path=str(d))
    assert not marker.exists(), "a pickle payload ran on the server"
    assert client.health()["status"] == "ok"


def test_trust_remote_code_needs_the_operators_flag(client, server_factory, tmp_path):
    cfg_cls, model_cls, kw, _, _ = OUTSIDE["qwen3"]
    tiny(cfg_cls, model_cls, kw).save_pretrained(str(tmp_path / "q"))
    with pytest.raises(ModelError, match="--allow-remote-code"):
        client.load_model("q", model_path=str(tmp_path / "q"), trust_remote_code=True)
    allowed = server_factory("--allow-remote-code")
    with MympsClient(allowed.host, allowed.port) as c:
        info = c.load_model("q", model_path=str(tmp_path / "q"), trust_remote_code=True)
        assert info["metadata"]["engine"] == "python"


# ---- torch.export ------------------------------------------------------------


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x, y):
        return self.lin(x) * torch.sigmoid(y), x.sum(dim=-1)


def test_torch_export_programs(client, tmp_path):
    torch.manual_seed(0)
    m = TwoInputs().eval()
    x = torch.randn(2, 4)
    y = torch.randn(2, 3)
    static = tmp_path / "two_inputs.pt2"
    torch.export.save(torch.export.export(m, (x, y)), str(static))
    batch = torch.export.Dim("batch", min=1, max=64)
    dynamic = tmp_path / "dynamic.pt2"
    torch.export.save(
        torch.export.export(m, (x, y), dynamic_shapes={"x": {0: batch}, "y": {0: batch}}),
        str(dynamic),
    )
    info = client.load_model("ep", model_type="torch_export", model_path=str(static), **FLOAT32)
    assert info["metadata"]["engine"] == "python"
    assert info["metadata"]["architecture"] == "exported_program"
    got = client.infer("ep", {"0": x.numpy(), "1": y.numpy()})
    with torch.no_grad():
        w0, w1 = m(x, y)
    assert sorted(got) == ["0", "1"]
    np.testing.assert_allclose(got["0"], w0.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(got["1"], w1.numpy(), atol=ATOL, rtol=0)
    # The static program refuses another batch size (a typed error).
    with pytest.raises(ModelError):
        client.infer("ep", {"0": np.zeros((5, 4), np.float32), "1": np.zeros((5, 3), np.float32)})
    client.load_model("ep-dyn", model_type="torch_export", model_path=str(dynamic), **FLOAT32)
    for n in (1, 5, 17):
        xb, yb = torch.randn(n, 4), torch.randn(n, 3)
        got = client.infer("ep-dyn", {"0": xb.numpy(), "1": yb.numpy()})
        with torch.no_grad():
            w0, w1 = m(xb, yb)
        assert got["0"].shape == (n, 3)
        np.testing.assert_allclose(got["0"], w0.numpy(), atol=ATOL, rtol=0)
        np.testing.assert_allclose(got["1"], w1.numpy(), atol=ATOL, rtol=0)
    with pytest.raises(ModelError, match="Python engine only"):
        client.load_model("ep-n", model_type="torch_export", model_path=str(static), engine="native")
    (tmp_path / "not.pt2").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a .pt2 archive"):
        client.load_model("ep-bad", model_type="torch_export", model_path=str(tmp_path / "not.pt2"))
    for n in ("ep", "ep-dyn"):
        client.unload_model(n)


@pytest.mark.skipif(os.environ.get("MYMPS_TEST_AOTI") != "1",
                    reason="AOTInductor compiles C++ (minutes on 2 cores): MYMPS_TEST_AOTI=1 runs it")
def test_an_aotinductor_package(client, tmp_path):
    torch.manual_seed(0)
    m = TwoInputs().eval().to(DEVICE)
    x, y = torch.randn(2, 4, device=DEVICE), torch.randn(2, 3, device=DEVICE)
    path = torch._inductor.aoti_compile_and_package(
        torch.export.export(m, (x, y)), package_path=str(tmp_path / "m_aoti.pt2"))
    info = client.load_model("aoti", model_type="torch_export", model_path=path)
    assert info["metadata"]["architecture"] == "aoti"
    got = client.infer("aoti", {"0": x.cpu().numpy(), "1": y.cpu().numpy()})
    with torch.no_grad():
        w0, w1 = m(x, y)
    assert sorted(got) == ["0", "1"]
    np.testing.assert_allclose(got["0"], w0.cpu().numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(got["1"], w1.cpu().numpy(), atol=ATOL, rtol=0)
    client.unload_model("aoti")


# ---- a server without Python ---------------------------------------------------


def test_a_server_without_python_keeps_its_native_loaders(server_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("MYMPS_PYTHON", str(tmp_path / "no-such-python"))
    server = server_factory()
    monkeypatch.delenv("MYMPS_PYTHON")
    torch.manual_seed(0)
    tf.BertModel(tf.BertConfig(**SMALL)).eval().save_pretrained(str(tmp_path / "bert"))
    cfg_cls, model_cls, kw, _, _ = OUTSIDE["qwen3"]
    tiny(cfg_cls, model_cls, kw).save_pretrained(str(tmp_path / "q"))
    with MympsClient(server.host, server.port) as c:
        assert c.load_model("bert", model_path=str(tmp_path / "bert"), **FLOAT32)["metadata"]["engine"] == "native"
        with pytest.raises(ModelError, match="Python engine .*not available.*MYMPS_PYTHON"):
            c.load_model("q", model_path=str(tmp_path / "q"))
        with pytest.raises(ModelError, match="not available"):
            c.load_model("u", model_type="checkpoint", model_path=str(tmp_path / "q" / "config.json"),
                         model_class="pkg.Model")
        ids, mask = ids_and_mask()
        assert c.infer("bert", {"input_ids": ids})["last_hidden_state"].shape == (BATCH, SEQ, 32)


# ---- text generation through transformers' generate ---------------------------


def tiny_tokenizer(folder):
    """A byte-level BPE tokenizer trained here (no download), saved as
    transformers saves one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["The quick brown fox jumps over the lazy dog.",
                             "naïve café, déjà vu — 🦀 rust 🐍 python"] * 20, trainer)
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                      pad_token="<pad>")
    fast.save_pretrained(str(folder))
    return tf.AutoTokenizer.from_pretrained(str(folder))


def cli_generate(server, name, prompt, *args):
    from conftest import server_binary

    return subprocess.run(
        [str(server_binary()), "generate", name, prompt, "--addr", server.addr, *args],
        capture_output=True, text=True, timeout=120)


def test_a_causal_lm_generates_through_transformers(client, mymps_server, tmp_path):
    path = tmp_path / "neox-lm"
    tok = tiny_tokenizer(path)
    torch.manual_seed(0)
    model = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=64, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id)).eval()
    model.save_pretrained(str(path))
    info = client.load_model("neox-lm", model_path=str(path), **FLOAT32)
    assert info["metadata"]["engine"] == "python"
    assert info["metadata"]["generate"] == "true"
    prompt = "The quick brown fox"
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        want = model.generate(**enc, max_new_tokens=10, do_sample=False,
                              pad_token_id=tok.pad_token_id)[0, enc["input_ids"].shape[1]:].tolist()
    # The whole result in one reply.
    out = cli_generate(mymps_server, "neox-lm", prompt, "--max-new-tokens", "10", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    seq = summary["sequences"][0]
    assert seq["prompt_ids"] == enc["input_ids"][0].tolist()
    assert seq["ids"] == want
    assert seq["text"] == tok.decode(want, skip_special_tokens=True)
    assert summary["steps"] == summary["forward_passes"] == len(want)
    # Streamed: the pieces, printed as they come, add up to the text.
    out = cli_generate(mymps_server, "neox-lm", prompt, "--max-new-tokens", "10")
    assert out.returncode == 0, out.stderr
    assert out.stdout == seq["text"] + "\n"
    # A bad option is a bad argument, and the server serves on.
    out = cli_generate(mymps_server, "neox-lm", prompt, "--temperature", "0.5")
    assert out.returncode != 0
    assert "only apply when sampling" in out.stderr, out.stderr
    # A model without an LM head does not generate.
    cfg_cls, model_cls, kw, _, _ = OUTSIDE["gpt_neox"]
    tiny(cfg_cls, model_cls, kw).save_pretrained(str(tmp_path / "neox-base"))
    info = client.load_model("neox-base", model_path=str(tmp_path / "neox-base"), **FLOAT32)
    assert "generate" not in info["metadata"]
    out = cli_generate(mymps_server, "neox-base", "1,2,3", "--ids")
    assert out.returncode != 0
    assert "does not generate text" in out.stderr, out.stderr
    out = cli_generate(mymps_server, "neox-lm", prompt, "--max-new-tokens", "3", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["sequences"][0]["ids"] == want[:3]
    for n in ("neox-lm", "neox-base"):
        client.unload_model(n)
