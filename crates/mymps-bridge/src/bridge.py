"""The Python side of mymps's Python bridge (run in the server's embedded
interpreter as the module ``mymps_bridge``).

The Rust side calls these functions with the GIL held and tensors that
share their memory with the server's (no copies). Nothing here reads code
from a weights file: every ``torch.load`` in this interpreter is made
``weights_only`` (see ``_force_weights_only``), classes come from the
server's own import path, and transformers' ``trust_remote_code`` is only
passed on when the server allowed it.
"""

import importlib
import inspect
import json
import os
import re
import secrets
import threading
import zipfile

import torch

_CLASS_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class BridgeError(Exception):
    """A load or forward error meant for the client, as it is."""


class BadOption(BridgeError):
    """A request's option that cannot be honoured (the client's
    ``bad_argument``)."""


class OverLimit(BridgeError):
    """A request over the server's limits (``limit_reached``)."""


class NoSupport(BridgeError):
    """What this model cannot do (``unsupported``)."""


def _force_weights_only():
    """Makes every torch.load of this interpreter weights_only: a pickle
    that names a callable (a ``__reduce__`` payload) is refused instead of
    run, whoever calls torch.load (transformers, a user's module)."""
    original = torch.load
    if getattr(original, "_mymps_weights_only", False):
        return

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    load._mymps_weights_only = True
    load.__doc__ = original.__doc__
    torch.load = load


_force_weights_only()


def _dtype(name, device):
    if name is None:
        return torch.float32 if device == "cpu" else torch.float16
    try:
        d = getattr(torch, name)
    except AttributeError:
        d = None
    if not isinstance(d, torch.dtype) or not d.is_floating_point:
        raise BridgeError(
            f"dtype '{name}' is not a floating-point type (float32, float16, bfloat16, float64)"
        )
    return d


def _parameters(module):
    try:
        params = list(module.parameters())
    except Exception:
        return 0, "none"
    n = sum(p.numel() for p in params)
    dtype = str(params[0].dtype).replace("torch.", "") if params else "none"
    return n, dtype


def _names(params):
    return ", ".join(params)


class Loaded:
    """A loaded model: what forward calls, and how it takes its inputs."""

    def __init__(self, fn, metadata, positional, names, dtype, cast_inputs):
        self.fn = fn
        self.metadata = metadata
        # Parameter names by position (for "0", "1", ...), when known.
        self.positional = positional
        # Every name the model takes (None: anything).
        self.names = names
        self.dtype = dtype
        self.cast_inputs = cast_inputs
        # Text generation (huggingface causal LMs only): the transformers
        # model, its tokenizer (or None) and its _TextModel (or None).
        self.model = None
        self.tokenizer = None
        self.text = None


def _signature(fn):
    """(positional parameter names, all names or None if **kwargs)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None, None
    positional, names, var_kw = [], [], False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional.append(p.name)
            names.append(p.name)
        elif p.kind == p.KEYWORD_ONLY:
            names.append(p.name)
        elif p.kind == p.VAR_KEYWORD:
            var_kw = True
        elif p.kind == p.VAR_POSITIONAL:
            positional = None if positional is None else positional + ["*"]
    return positional, (None if var_kw else names)


# --- huggingface -----------------------------------------------------------


def load_huggingface(path, device, dtype, trust_remote_code):
    try:
        import transformers
    except ImportError as e:
        raise BridgeError(
            f"the Python engine needs transformers for huggingface models: install it into the server's environment (pip install transformers): {e}"
        )
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise BridgeError(f"no config.json in '{path}' (a huggingface model directory)")
    config = transformers.AutoConfig.from_pretrained(
        path, trust_remote_code=trust_remote_code, local_files_only=True
    )
    cls = None
    for name in getattr(config, "architectures", None) or []:
        c = getattr(transformers, name, None)
        if isinstance(c, type) and issubclass(c, torch.nn.Module):
            cls = c
            break
    if cls is None:
        auto = transformers.AutoModel
        load = lambda **kw: auto.from_pretrained(path, **kw)  # noqa: E731
        architecture = "AutoModel"
    else:
        load = lambda **kw: cls.from_pretrained(path, **kw)  # noqa: E731
        architecture = cls.__name__
    kind = _dtype(dtype, device)
    model = load(
        trust_remote_code=trust_remote_code,
        local_files_only=True,
        low_cpu_mem_usage=True,
    )
    model = model.to(device=device, dtype=kind).eval()
    if architecture == "AutoModel":
        architecture = type(model).__name__
    positional, names = _signature(model.forward)
    n, d = _parameters(model)
    weights = next(
        (
            f
            for f in (
                "model.safetensors",
                "model.safetensors.index.json",
                "pytorch_model.bin",
                "pytorch_model.bin.index.json",
            )
            if os.path.exists(os.path.join(path, f))
        ),
        "?",
    )
    metadata = {
        "architecture": architecture,
        "hf_model_type": str(getattr(config, "model_type", "")),
        "parameters": str(n),
        "dtype": d,
        "weights": weights,
        "transformers": transformers.__version__,
        "inputs": _names(names or positional or []),
    }
    tokenizer = _load_tokenizer(transformers, path, trust_remote_code)
    text = _text_generation(model, config)
    if tokenizer is not None:
        metadata["tokenizer"] = type(tokenizer).__name__
    if text is not None:
        metadata["generate"] = "true"
    use_cache = names is None or "use_cache" in names
    return_dict = names is None or "return_dict" in names

    def fn(args, kwargs):
        if use_cache and "use_cache" not in kwargs:
            kwargs["use_cache"] = False
        if return_dict and "return_dict" not in kwargs:
            kwargs["return_dict"] = True
        return model(*args, **kwargs)

    loaded = Loaded(fn, metadata, positional, names, kind, True)
    loaded.model = model
    loaded.tokenizer = tokenizer
    loaded.text = text
    return loaded


# --- checkpoint with a Python class -----------------------------------------


def _import_class(class_path):
    if not _CLASS_PATH.match(class_path):
        raise BridgeError(
            f"model_class '{class_path[:120]}' is not a Python class path (package.module.Class)"
        )
    module_name, _, class_name = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise BridgeError(
            f"model_class '{class_path}': no module '{e.name}' on the server's Python path"
        )
    except Exception as e:
        raise BridgeError(
            f"model_class '{class_path}': importing '{module_name}' failed: {type(e).__name__}: {e}"
        )
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise BridgeError(f"model_class '{class_path}': '{module_name}' has no class '{class_name}'")
    if not issubclass(cls, torch.nn.Module):
        raise BridgeError(f"model_class '{class_path}' is not a torch.nn.Module")
    return cls


def _read_state_dict(path):
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise BridgeError(f"reading .safetensors needs the safetensors package: {e}")
        return load_file(path, device="cpu")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BridgeError(
            f"'{path}' is not a state_dict that loads with weights_only (only tensors and plain containers; nothing in a weights file is executed): {str(e).splitlines()[0][:300]}"
        )
    if not isinstance(sd, dict):
        raise BridgeError(f"'{path}' holds a {type(sd).__name__}, not a state_dict")
    return sd


def load_checkpoint(path, class_path, config_json, device, dtype):
    cls = _import_class(class_path)
    config = json.loads(config_json) if config_json else {}
    if not isinstance(config, dict):
        raise BridgeError("config must be a JSON object (the class's keyword arguments)")
    sd = _read_state_dict(path)
    try:
        model = cls(**config)
    except Exception as e:
        raise BridgeError(f"{class_path}(**config) failed: {type(e).__name__}: {e}")
    try:
        model.load_state_dict(sd, strict=True)
    except Exception as e:
        raise BridgeError(f"the state_dict does not fit {class_path}: {str(e)[:1000]}")
    kind = _dtype(dtype, device) if dtype is not None else None
    model = model.to(device=device, dtype=kind).eval() if kind else model.to(device).eval()
    positional, names = _signature(model.forward)
    n, d = _parameters(model)
    metadata = {
        "architecture": class_path,
        "parameters": str(n),
        "dtype": d,
        "inputs": _names(names or positional or []),
    }
    return Loaded(lambda a, k: model(*a, **k), metadata, positional, names, kind, kind is not None)


# --- torch.export programs and AOTInductor packages -------------------------


def _is_aoti_package(path):
    try:
        with zipfile.ZipFile(path) as z:
            return any("/aotinductor/" in "/" + n for n in z.namelist())
    except zipfile.BadZipFile:
        raise BridgeError(
            f"'{path}' is not a .pt2 archive (torch.export.save or AOTInductor's package)"
        )


def load_torch_export(path, device, dtype):
    if not os.path.isfile(path):
        raise BridgeError(f"no .pt2 file at '{path}'")
    if _is_aoti_package(path):
        from torch import _inductor

        runner = _inductor.aoti_load_package(path)
        kind = "aoti"
        fn = lambda a, k: runner(*a, **k)  # noqa: E731
        n, d = 0, "compiled"
        target = None
    else:
        ep = torch.export.load(path)
        module = ep.module()
        target = module
        kind = "exported_program"
        n, d = _parameters(module)
        fn = None
    cast = None
    if dtype is not None:
        cast = _dtype(dtype, device)
    if target is not None:
        target = target.to(device)
        if cast is not None:
            target = target.to(cast)
        fn = lambda a, k: target(*a, **k)  # noqa: E731
    metadata = {
        "architecture": kind,
        "parameters": str(n),
        "dtype": d,
    }
    return Loaded(fn, metadata, None, None, cast, cast is not None)


# --- forward ------------------------------------------------------------------


def _flatten(prefix, value, out):
    if isinstance(value, torch.Tensor):
        out.append((prefix, value))
    elif value is None:
        pass
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            _flatten(f"{prefix}.{i}" if prefix else str(i), v, out)
    elif isinstance(value, (bool, int, float)):
        out.append((prefix, torch.tensor(value)))
    elif hasattr(value, "to_tuple") and hasattr(value, "keys"):
        for k in value.keys():
            _flatten(f"{prefix}.{k}" if prefix else str(k), value[k], out)
    else:
        # Caches and other objects transformers returns are no results.
        pass


def outputs(value):
    """A forward result as [(name, tensor)]: one tensor is "output", a
    tuple "0", "1", ..., a dict (or ModelOutput) by its keys; nested ones
    joined with dots ("hidden_states.0")."""
    out = []
    if isinstance(value, torch.Tensor):
        return [("output", value)]
    _flatten("", value, out)
    return out


def forward(loaded, positional, named):
    """Runs `loaded` on positional tensors (a list, "0", "1", ...) and named
    ones (a dict); returns [(name, tensor)]."""
    if loaded.cast_inputs and loaded.dtype is not None:
        positional = [t.to(loaded.dtype) if t.is_floating_point() else t for t in positional]
        named = {k: (t.to(loaded.dtype) if t.is_floating_point() else t) for k, t in named.items()}
    if loaded.names is not None:
        for k in named:
            if k not in loaded.names:
                raise BridgeError(
                    f"unknown input '{k[:120]}'; this model takes: {_names(loaded.names)}"
                )
    if loaded.positional is not None and "*" not in loaded.positional:
        if len(positional) > len(loaded.positional):
            raise BridgeError(
                f"{len(positional)} positional inputs; this model takes at most {len(loaded.positional)} ({_names(loaded.positional)})"
            )
        for i, _ in enumerate(positional):
            if loaded.positional[i] in named:
                raise BridgeError(
                    f"input '{loaded.positional[i]}' is given twice (by name and by position)"
                )
    with torch.no_grad():
        result = loaded.fn(positional, named)
    return outputs(result)


# --- text generation (transformers' own generate) -------------------------------
#
# The Rust side sends a GenerateRequest and the caller's GenerateLimits as
# JSON (mymps_core::model's serde form) and gets a GeneratePlan or a
# GenerateSummary back the same way; each step goes to `emit` (a Rust
# function that hands it to the caller without the GIL and answers whether
# to stop).

MAX_STOP_IDS = 1024
MAX_STOP_STRINGS = 64
MAX_STOP_STRING_BYTES = 1024
DEFAULT_MAX_NEW_TOKENS = 20

# Seeded sampling draws from torch's global generator (transformers'
# `generate` takes no torch.Generator): one seeded generation at a time in
# this interpreter, from `torch.manual_seed(seed)` to its last token.
_SEED_LOCK = threading.Lock()

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.txt",
)


def _load_tokenizer(transformers, path, trust_remote_code):
    """The directory's tokenizer (AutoTokenizer), or None when it has none."""
    if not any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        return None
    try:
        return transformers.AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code, local_files_only=True
        )
    except Exception as e:
        raise BridgeError(
            f"the tokenizer in '{path}' does not load: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        )


def _positive_int(c, *names):
    for n in names:
        v = getattr(c, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


class _TextModel:
    """What generation needs of a decoder-only causal LM: the sizes its KV
    cache and forward passes take, from its config."""

    def __init__(self, model, c, layers, heads, kv_heads, key_dim, value_dim, hidden, inner, vocab,
                 positions):
        self.generation_config = getattr(model, "generation_config", None)
        self.config = c
        self.layers = layers
        self.heads = heads
        self.kv_heads = kv_heads
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.hidden = hidden
        self.inner = inner
        self.vocab = vocab
        self.positions = positions
        p = next(iter(model.parameters()), None)
        self.element = p.element_size() if p is not None else 4
        self.device = p.device if p is not None else torch.device("cpu")


def _text_generation(model, config):
    """A _TextModel when `model` generates text through transformers'
    `generate` (a decoder-only model that `can_generate()`, whose config
    gives its cache's sizes); else None."""
    can = getattr(model, "can_generate", None)
    try:
        if not callable(can) or not can():
            return None
    except Exception:
        return None
    if getattr(config, "is_encoder_decoder", False):
        return None
    c = config
    if hasattr(config, "get_text_config"):
        try:
            c = config.get_text_config(decoder=True)
        except Exception:
            c = config
    layers = _positive_int(c, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    heads = _positive_int(c, "num_attention_heads", "n_head", "num_heads")
    hidden = _positive_int(c, "hidden_size", "n_embd", "d_model")
    vocab = _positive_int(c, "vocab_size")
    if None in (layers, heads, hidden, vocab):
        return None
    kv_heads = _positive_int(c, "num_key_value_heads", "n_head_kv", "num_kv_heads",
                             "multi_query_group_num")
    if kv_heads is None and getattr(c, "multi_query", False) and not getattr(
            c, "new_decoder_architecture", False):
        kv_heads = 1
    kv_heads = kv_heads or heads
    head_dim = _positive_int(c, "head_dim") or max(1, hidden // heads)
    key_dim = value_dim = head_dim
    # Multi-head latent attention (DeepSeek): keys of nope + rope dims.
    nope, rope = _positive_int(c, "qk_nope_head_dim"), _positive_int(c, "qk_rope_head_dim")
    if nope and rope:
        key_dim = nope + rope
        value_dim = _positive_int(c, "v_head_dim") or key_dim
        kv_heads = heads
    inner = _positive_int(c, "intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size",
                          "moe_intermediate_size") or 4 * hidden
    positions = _positive_int(c, "max_position_embeddings", "n_positions", "max_seq_len",
                              "seq_length", "n_ctx")
    emb = getattr(model, "get_input_embeddings", None)
    try:
        e = emb() if callable(emb) else None
        if e is not None and isinstance(getattr(e, "num_embeddings", None), int):
            vocab = e.num_embeddings
    except Exception:
        pass
    tm = _TextModel(model, c, layers, heads, kv_heads, key_dim, value_dim, hidden, inner,
                    vocab, positions)
    tm.measured = _measure_cache(model, tm.device)
    return tm


def _tensor_bytes(value, seen, depth=0):
    """The bytes of the distinct tensors reachable from `value` (a cache
    object: its attributes, lists, tuples and dicts, a few levels deep)."""
    if depth > 6 or id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif hasattr(value, "__dict__") and not isinstance(value, (type, torch.nn.Module)):
        items = list(vars(value).values())
    else:
        return 0
    return sum(_tensor_bytes(v, seen, depth + 1) for v in items)


def _cache_bytes(model, device, n):
    ids = torch.arange(n, dtype=torch.long, device=device).unsqueeze(0)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                    return_dict=True)
    cache = None
    for name in ("cache", "past_key_values", "cache_params"):
        cache = out.get(name) if hasattr(out, "get") else getattr(out, name, None)
        if cache is not None:
            break
    return _tensor_bytes(cache, set()) if cache is not None else None


def _measure_cache(model, device):
    """(bytes per sequence, bytes per sequence and position) of the cache
    transformers' forward pass returns, measured on one sequence of 2 and
    of 3 tokens: what a cache takes whatever the config calls its sizes (a
    state of fixed size, as recurrent models keep, is the first number);
    None when the model does not run on such a prompt or returns no cache."""
    try:
        two, three = _cache_bytes(model, device, 2), _cache_bytes(model, device, 3)
    except Exception:
        return None
    if two is None or three is None or three < two:
        return None
    per_position = three - two
    return max(0, two - 2 * per_position), per_position


def _text(loaded):
    if loaded.text is None:
        arch = loaded.metadata.get("architecture", "this model")
        raise NoSupport(
            f"{arch} does not generate text on the Python engine (a decoder-only causal language model of transformers generates: one whose can_generate() is true)"
        )
    return loaded.text


def _tokenizer(loaded, what):
    if loaded.tokenizer is None:
        raise NoSupport(
            f"{what} needs a tokenizer, and this model's directory has none (tokenizer.json, tokenizer_config.json, ...); send token ids"
        )
    return loaded.tokenizer


def _eos_ids(value):
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        value = value.flatten().tolist()
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value if v is not None]


def _first_set(*values):
    for v in values:
        if v is not None:
            return v
    return None


class _Resolved:
    """A request checked against the model and the limits."""


def _resolve(loaded, request, limits):
    tm = _text(loaded)
    gc = tm.generation_config
    g = lambda name: getattr(gc, name, None) if gc is not None else None  # noqa: E731
    prompts = request.get("prompts") or []
    if not prompts:
        raise BadOption("generate needs at least one prompt")
    if len(prompts) > limits["max_batch"]:
        raise OverLimit(
            f"{len(prompts)} prompts in one request; this server takes at most {limits['max_batch']}"
        )
    add_special = _first_set(request.get("add_special_tokens"), True)
    ids = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            tok = _tokenizer(loaded, "a text prompt")
            row = list(tok(p, add_special_tokens=add_special)["input_ids"])
        else:
            row = [int(x) for x in p]
        if not row:
            raise BadOption(f"prompt {i} has no tokens")
        bad = next((x for x in row if x < 0 or x >= tm.vocab), None)
        if bad is not None:
            raise BadOption(
                f"prompt {i} has token id {bad}, outside the vocabulary [0, {tm.vocab})"
            )
        ids.append(row)
    width = max(len(r) for r in ids)
    max_new = _first_set(request.get("max_new_tokens"), g("max_new_tokens"), DEFAULT_MAX_NEW_TOKENS)
    if max_new < 1:
        raise BadOption("max_new_tokens must be at least 1")
    if max_new > limits["max_new_tokens"]:
        raise OverLimit(
            f"max_new_tokens = {max_new}; this server allows at most {limits['max_new_tokens']}"
        )
    if tm.positions is not None and width + max_new > tm.positions:
        raise BadOption(
            f"a prompt of {width} tokens plus max_new_tokens = {max_new} is more than the model's {tm.positions} positions"
        )
    r = _Resolved()
    r.penalty = float(_first_set(request.get("repetition_penalty"), g("repetition_penalty"), 1.0))
    if not (r.penalty > 0 and r.penalty != float("inf")):
        raise BadOption(f"repetition_penalty must be a positive number, not {r.penalty}")
    r.sample = bool(_first_set(request.get("do_sample"), g("do_sample"), False))
    r.warpers = {}
    if not r.sample:
        set_ = [n for n in ("temperature", "top_k", "top_p") if request.get(n) is not None]
        if set_:
            raise BadOption(
                f"{', '.join(set_)} only apply when sampling: pass do_sample = true (this request is greedy)"
            )
    else:
        t = float(_first_set(request.get("temperature"), g("temperature"), 1.0))
        if not (t > 0 and t != float("inf")):
            raise BadOption(f"temperature must be a positive number, not {t}")
        top_p = float(_first_set(request.get("top_p"), g("top_p"), 1.0))
        if not (0 < top_p <= 1):
            raise BadOption(f"top_p must lie in (0, 1], not {top_p}")
        top_k = int(_first_set(request.get("top_k"), g("top_k"), 50))
        r.warpers = {"temperature": t, "top_k": top_k, "top_p": top_p}
    stop_ids = [int(x) for x in request.get("stop_ids") or []]
    if len(stop_ids) > MAX_STOP_IDS:
        raise BadOption(f"{len(stop_ids)} stop ids; at most {MAX_STOP_IDS}")
    eos = [] if request.get("ignore_eos") else _eos_ids(
        _first_set(g("eos_token_id"), getattr(tm.config, "eos_token_id", None)))
    r.stop_ids = list(dict.fromkeys(stop_ids + eos))
    r.stop_strings = list(request.get("stop_strings") or [])
    if len(r.stop_strings) > MAX_STOP_STRINGS:
        raise BadOption(f"{len(r.stop_strings)} stop strings; at most {MAX_STOP_STRINGS}")
    for s in r.stop_strings:
        n = len(s.encode())
        if n == 0 or n > MAX_STOP_STRING_BYTES:
            raise BadOption(
                f"stop strings must have 1 to {MAX_STOP_STRING_BYTES} bytes, not {n} ('{s[:60]}')"
            )
    if r.stop_strings:
        _tokenizer(loaded, "stop_strings")
    r.skip_special = bool(_first_set(request.get("skip_special_tokens"), True))
    seed = request.get("seed")
    r.seed = (seed if seed is not None else secrets.randbits(63)) if r.sample else None
    pad = _first_set(g("pad_token_id"), getattr(tm.config, "pad_token_id", None))
    if isinstance(pad, (list, tuple)):
        pad = pad[0] if pad else None
    tok = loaded.tokenizer
    prompt_pad = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else None
    r.pad = _first_set(pad, r.stop_ids[0] if r.stop_ids else None, prompt_pad, 0)
    r.prompt_pad = _first_set(prompt_pad, r.pad)
    r.ids, r.width, r.max_new = ids, width, max_new
    batch = len(ids)
    cache, peak = _bytes(tm, batch, width, max_new)
    if peak > limits["max_bytes"]:
        raise OverLimit(
            f"this generation would take {-(-peak // (1 << 20))} MiB on the device (a KV cache of {-(-cache // (1 << 20))} MiB for {batch} sequence(s) of {width} + {max_new} tokens, and the forward passes' transients); this server allows {limits['max_bytes'] >> 20} MiB a request"
        )
    r.plan = {
        "prompt_tokens": [len(x) for x in ids],
        "max_new_tokens": max_new,
        "cache_bytes": cache,
        "peak_bytes": peak,
    }
    return r


def _bytes(tm, batch, width, max_new):
    """(KV cache bytes, peak bytes): an upper estimate.

    The cache: keys and values of every layer for the longest prompt plus
    max_new_tokens positions in the model's dtype, as the config gives
    their sizes, or as measured at load time (`_measure_cache`) where that
    is more (a model that caches more than its config says, as Falcon's
    new decoder architecture caches every query head); transformers'
    dynamic cache grows by concatenation, so one layer's share is counted
    again as the transient of an append. The prompt's forward
    pass: attention scores and probabilities in float32, the MLP's
    activations, a few copies of the residual stream, float32 logits of
    every prompt position (not every model keeps only the last); the
    sampling steps' float32 copies of the last logits; the growing ids and
    mask."""
    b, s, e = batch, width, tm.element
    positions = width + max_new
    config_cache = tm.layers * b * tm.kv_heads * positions * (tm.key_dim + tm.value_dim) * e
    if tm.measured is not None:
        fixed, per_position = tm.measured
        # The larger of the measured and the config's sizes.
        cache = max(b * (fixed + per_position * positions), config_cache)
    else:
        cache = config_cache
    per_layer = -(-cache // tm.layers)
    scores = 2 * b * tm.heads * s * s * 4
    mlp = 3 * b * s * tm.inner * e
    hidden = 8 * b * s * tm.hidden * e
    logits = b * s * tm.vocab * 4 + 8 * b * tm.vocab * 4
    ids = 4 * b * positions * 8
    return cache, cache + per_layer + scores + mlp + hidden + logits + ids


def plan_generate(loaded, request_json, limits_json):
    """A GeneratePlan (JSON) for a GenerateRequest and GenerateLimits (JSON)."""
    return json.dumps(_resolve(loaded, json.loads(request_json), json.loads(limits_json)).plan)


class _TextStream:
    """A sequence's new ids as text pieces, decoded incrementally as
    text-generation-inference does: a window of ids from `prefix` on, whose
    text beyond the window's first part `[prefix, read)` is new once it does
    not end in an incomplete character (U+FFFD)."""

    def __init__(self, tok, skip):
        self.tok, self.skip = tok, skip
        self.ids, self.prefix, self.read = [], 0, 0

    def _decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=self.skip)

    def push(self, id_):
        self.ids.append(id_)
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def finish(self):
        """What is held back at the end (an incomplete character's bytes)."""
        if self.read == len(self.ids):
            return ""
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):] if now.startswith(before) else ""


def _stop_string(text, piece, stops):
    """Whether `text`, whose last `piece` characters are new, now holds one
    of `stops` that ends in the new characters."""
    old = len(text) - piece
    return any(s in text[max(0, old - len(s) + 1):] for s in stops)


def _generation_classes():
    import transformers

    class Steps(transformers.StoppingCriteria):
        """Called by transformers' `generate` after each new token (all
        rows): builds the Step, hands it to `emit`, and says which rows are
        done — those that hit a stop id, a stop string or their length, and
        every row once `emit` answered stop."""

        def __init__(self, r, tok, emit):
            self.r, self.emit = r, emit
            n = len(r.ids)
            self.streams = [_TextStream(tok, r.skip_special) for _ in range(n)] if tok else None
            self.new = [[] for _ in range(n)]
            self.texts = [""] * n if tok else None
            self.finish = [None] * n
            self.steps = 0
            self.stopped = False
            self.stop_ids = set(r.stop_ids)

        def __call__(self, input_ids, scores, **kwargs):
            r = self.r
            if all(f is not None for f in self.finish):
                # A pass after the end (transformers' deferred stop check,
                # on MPS, runs one): no step for it.
                return torch.ones(len(self.finish), dtype=torch.bool, device=input_ids.device)
            last = input_ids[:, -1].tolist()
            tokens = []
            for row, id_ in enumerate(last):
                if self.finish[row] is not None:
                    tokens.append({"id": None, "text": "", "finish": None})
                    continue
                self.new[row].append(id_)
                text, finish = "", None
                if self.streams is not None:
                    text = self.streams[row].push(id_)
                    full = self.texts[row] + text
                    if text and _stop_string(full, len(text), r.stop_strings):
                        finish = "stop_string"
                if id_ in self.stop_ids:
                    finish = "stop_id"
                elif finish is None and len(self.new[row]) == r.max_new:
                    finish = "length"
                if finish is not None:
                    if self.streams is not None:
                        text += self.streams[row].finish()
                    self.finish[row] = finish
                if self.texts is not None:
                    self.texts[row] += text
                tokens.append({"id": id_, "text": text, "finish": finish})
            step = {"index": self.steps, "tokens": tokens}
            self.steps += 1
            if self.emit(json.dumps(step)):
                self.stopped = True
                self.finish = [f if f is not None else "cancelled" for f in self.finish]
            done = [f is not None for f in self.finish]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    class Count(transformers.LogitsProcessor):
        """Counts forward passes (transformers runs its processors once per
        pass) and changes nothing."""

        def __init__(self):
            self.passes = 0

        def __call__(self, input_ids, scores):
            self.passes += 1
            return scores

    return Steps, Count


def generate(loaded, request_json, limits_json, emit):
    """Runs a GenerateRequest (JSON) through transformers' `generate`,
    handing each step (JSON) to `emit`; returns the GenerateSummary
    (JSON)."""
    import transformers

    r = _resolve(loaded, json.loads(request_json), json.loads(limits_json))
    tm = loaded.text
    model, tok = loaded.model, loaded.tokenizer
    Steps, Count = _generation_classes()
    batch, width = len(r.ids), r.width
    ids = torch.full((batch, width), r.prompt_pad, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, row in enumerate(r.ids):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    steps = Steps(r, tok, emit)
    count = Count()
    kwargs = dict(
        input_ids=ids.to(tm.device),
        attention_mask=mask.to(tm.device),
        max_new_tokens=r.max_new,
        do_sample=r.sample,
        num_beams=1,
        num_return_sequences=1,
        repetition_penalty=r.penalty,
        eos_token_id=r.stop_ids or None,
        pad_token_id=r.pad,
        stopping_criteria=transformers.StoppingCriteriaList([steps]),
        logits_processor=transformers.LogitsProcessorList([count]),
        return_dict_in_generate=False,
    )
    if r.sample:
        kwargs.update(r.warpers)
        with _SEED_LOCK:
            torch.manual_seed(r.seed)
            model.generate(**kwargs)
    else:
        model.generate(**kwargs)
    sequences = []
    for row in range(batch):
        finish = steps.finish[row]
        if finish is None:
            # transformers ended it (its own max length): the length.
            finish = "length"
        sequences.append({
            "prompt_ids": r.ids[row],
            "ids": steps.new[row],
            "text": steps.texts[row] if steps.texts is not None else None,
            "finish": finish,
        })
    return json.dumps({
        "sequences": sequences,
        "steps": steps.steps,
        "forward_passes": count.passes,
        "cache_bytes": r.plan["cache_bytes"],
        "seed": r.seed,
    })


def encode(loaded, text, add_special_tokens):
    """`text` as ids by the model's tokenizer."""
    tok = _tokenizer(loaded, "encode")
    return list(tok(text, add_special_tokens=bool(add_special_tokens))["input_ids"])


def decode(loaded, ids, skip_special_tokens):
    """Ids as text by the model's tokenizer."""
    tok = _tokenizer(loaded, "decode")
    n = len(tok)
    bad = next((x for x in ids if x < 0 or x >= n), None)
    if bad is not None:
        raise BadOption(f"token id {bad} is outside the tokenizer's vocabulary [0, {n})")
    return tok.decode(list(ids), skip_special_tokens=bool(skip_special_tokens))
