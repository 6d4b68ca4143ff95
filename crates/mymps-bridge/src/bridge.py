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
import zipfile

import torch

_CLASS_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class BridgeError(Exception):
    """A load or forward error meant for the client, as it is."""


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
    use_cache = names is None or "use_cache" in names
    return_dict = names is None or "return_dict" in names

    def fn(args, kwargs):
        if use_cache and "use_cache" not in kwargs:
            kwargs["use_cache"] = False
        if return_dict and "return_dict" not in kwargs:
            kwargs["return_dict"] = True
        return model(*args, **kwargs)

    return Loaded(fn, metadata, positional, names, kind, True)


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
