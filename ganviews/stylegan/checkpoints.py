"""Reading StyleGAN2 generator checkpoints without executing anything stored in them.

Three formats, detected from the file's first bytes (not its suffix):

* NVIDIA stylegan2-ada-pytorch network snapshots (``network-snapshot-*.pkl``): a pickle
  whose networks are "persistent objects" carrying their own Python source. A restricted
  :class:`pickle.Unpickler` resolves only the globals in :data:`ALLOWED_GLOBALS`; the
  persistent-object constructor is replaced by :func:`_persistent_record`, which keeps the
  tensors and constructor kwargs and never looks at (let alone runs) the embedded source.
* rosinality stylegan2-pytorch ``.pt`` files (``g_ema``, ``latent_avg``): ``torch.load``
  with ``weights_only=True`` and exactly one extra safe global, ``argparse.Namespace``.
* the project's own ``.safetensors`` file (tensors + the ``GeneratorConfig`` JSON in the
  header metadata), which is data only by construction.

Every reader returns a :class:`RawCheckpoint`: a config mapping for ``GeneratorConfig`` and
a state dict with the official NVIDIA key names used by :mod:`ganviews.stylegan.networks`. Any
problem raises :class:`ganviews.core.errors.CheckpointError` naming the file.

Before a pickle or zip is unpickled, :mod:`ganviews.core.file_limits` bounds what it may
expand to (memo indices, declared lengths, zip records) by the file's size; after it, every
tensor must fit its storage and all storages the file. Nothing a ``BUILD`` opcode can reach
is shared with the process: the allow-listed callables are sealed wrappers, ``EasyDict``'s
class refuses attribute assignment and records are frozen, so a refused file leaves no trace.
"""

from __future__ import annotations

import argparse
import collections
import io
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ganviews.core.errors import CheckpointError
from ganviews.core.file_limits import (
    check_pickle_stream,
    check_tensor_extents,
    check_zip_records,
    parse_json_config,
)
from ganviews.core.weights_io import container_format, read_safetensors
from ganviews.stylegan.networks import block_resolutions, make_resample_filter

log = logging.getLogger(__name__)

OWN_FORMAT_NAME = "ganviews.generator"  # value of the "format" key in our safetensors metadata
OWN_FORMAT_VERSION = "1"
_SIMPLE_NUMPY_KINDS = "biuf"  # bool, int, uint, float: the only numpy scalars we rebuild


@dataclass
class RawCheckpoint:
    """What a reader extracted: enough to build and fill a ``Generator``."""

    format: str  # "nvidia-pickle" | "rosinality" | "ganviews-safetensors"
    config: dict[str, Any]  # keyword arguments of GeneratorConfig
    state: dict[str, torch.Tensor]  # official NVIDIA state-dict keys → tensors
    needs_w_avg: bool = False  # True when the file had no average w (estimate it)
    metadata: dict[str, str] = field(default_factory=dict)  # extra provenance, if any


# --------------------------------------------------------------------------- detection


def detect_format(path: Path) -> str:
    """Name the container format from the first bytes: 'pickle', 'torch-zip',
    'torch-legacy' or 'safetensors'."""
    return container_format(
        path,
        expected="an NVIDIA stylegan2-ada pickle, a rosinality .pt (torch zip) or a ganviews "
        ".safetensors file",
    )


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    """Detect the format of ``path`` and extract config + state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"generator checkpoint not found: {path} (put the weights file there or pass its path)"
        )
    kind = detect_format(path)
    reader = {
        "pickle": read_nvidia_pickle,
        "torch-zip": read_rosinality,
        "torch-legacy": read_rosinality,
        "safetensors": read_own_safetensors,
    }[kind]
    try:
        raw = reader(path)
    except CheckpointError:
        raise
    except Exception as exc:  # a malformed structure the readers did not foresee
        raise CheckpointError(
            f"{path}: malformed {kind} checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if kind != "safetensors":  # safetensors checks its own offsets against the file
        check_tensor_extents(raw.state.items(), path=path, budget=path.stat().st_size)
    return raw


# --------------------------------------------------------------------------- NVIDIA pickle


@dataclass(frozen=True, slots=True)
class PersistentRecord:
    """Stand-in for one NVIDIA persistent object: data only, its source text is dropped."""

    class_name: str  # e.g. 'Generator', 'SynthesisLayer'
    tensors: dict[str, torch.Tensor]  # flattened state dict of this object and its children
    init_kwargs: dict[str, Any]  # constructor kwargs recorded by the persistence mechanism
    attributes: dict[str, Any]  # plain scalar attributes (conv_clamp, bias_gain, …)
    children: dict[str, PersistentRecord]  # sub-modules by attribute name


class _SealedClass(type):
    """Metaclass whose classes refuse attribute assignment (a pickle's BUILD on the class)."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise pickle.UnpicklingError(f"refused to set {cls.__name__}.{name}")

    def __delattr__(cls, name: str) -> None:
        raise pickle.UnpicklingError(f"refused to delete {cls.__name__}.{name}")


class EasyDict(dict, metaclass=_SealedClass):
    """Inert replacement for ``dnnlib.util.EasyDict``: a plain dict subclass."""


class _Sealed:
    """An allow-listed function as the unpickler sees it: callable, with no settable state.

    A BUILD opcode aimed at it (``__defaults__``, ``__code__``, ``__dict__``) fails instead
    of changing the function for the rest of the process.
    """

    __slots__ = ("_fn",)

    def __init__(self, fn: Any) -> None:
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        raise pickle.UnpicklingError(f"refused to set {name} on an allow-listed function")

    def __delattr__(self, name: str) -> None:
        raise pickle.UnpicklingError(f"refused to delete {name} of an allow-listed function")


def _is_plain(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str, type(None), np.generic)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return False


def _persistent_record(meta: Any) -> PersistentRecord:
    """Replacement of ``torch_utils.persistence._reconstruct_persistent_obj``.

    Reads only tensors, child records, constructor kwargs and plain attributes from
    ``meta['state']``; ``meta['module_src']`` is never compiled or executed.
    """
    if not isinstance(meta, dict) or meta.get("type") != "class" or "state" not in meta:
        raise pickle.UnpicklingError("malformed persistent-object metadata")
    class_name, state = meta.get("class_name"), meta["state"]
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise pickle.UnpicklingError("malformed persistent-object metadata (class_name/state)")
    tensors: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise pickle.UnpicklingError(f"{class_name}.{name} is not a tensor")
            tensors[str(name)] = value
    children: dict[str, PersistentRecord] = {}
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise pickle.UnpicklingError(f"{class_name}.{name} is not a persistent network object")
        children[str(name)] = child
        tensors.update({f"{name}.{k}": v for k, v in child.tensors.items()})
    init_kwargs = state.get("_init_kwargs") or {}
    if not isinstance(init_kwargs, dict):
        raise pickle.UnpicklingError(f"{class_name}: _init_kwargs is not a dict")
    attributes = {
        k: v
        for k, v in state.items()
        if isinstance(k, str) and not k.startswith("_") and _is_plain(v)
    }
    return PersistentRecord(class_name, tensors, dict(init_kwargs), attributes, children)


def _storage_from_bytes(blob: Any) -> Any:
    """Replacement of ``torch.storage._load_from_bytes``: parse the legacy one-storage
    ``torch.save`` blob with the weights-only unpickler (torch's own version does not)."""
    if not isinstance(blob, (bytes, bytearray)):
        raise pickle.UnpicklingError(f"storage blob is {type(blob).__name__}, not bytes")
    storage = torch.load(io.BytesIO(bytes(blob)), map_location="cpu", weights_only=True)
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"storage blob holds {type(storage).__name__}, not a storage")
    return storage


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, hooks=None, *rest):
    """Replacement of ``torch._utils._rebuild_tensor_v2`` with argument type checks."""
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    ints = [storage_offset, *size, *stride]
    if not all(isinstance(v, int) and v >= 0 for v in ints) or len(size) != len(stride):
        raise pickle.UnpicklingError("tensor with invalid offset/size/stride")
    tensor = torch._utils._rebuild_tensor_v2(
        storage, storage_offset, tuple(size), tuple(stride), False, None
    )
    if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():  # stride 0
        raise pickle.UnpicklingError(
            f"tensor of shape {list(size)} and stride {list(stride)} addresses more elements "
            f"than its {tensor.untyped_storage().nbytes()}-byte storage holds"
        )
    return tensor


def _rebuild_parameter(data, requires_grad=False, hooks=None, *rest):
    """Replacement of ``torch._utils._rebuild_parameter``: keeps the plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter rebuilt from something that is not a tensor")
    return data


def _numpy_dtype(name, align=False, copy=False):
    """Replacement of ``numpy.dtype`` for pickled dtypes: simple numeric types only."""
    if not isinstance(name, str):
        raise pickle.UnpicklingError(f"numpy dtype {name!r} is not a type string")
    dtype = np.dtype(name)
    if dtype.kind not in _SIMPLE_NUMPY_KINDS or dtype.hasobject or dtype.fields is not None:
        raise pickle.UnpicklingError(f"numpy dtype {name!r} is not a simple numeric type")
    return dtype


def _numpy_scalar(dtype, data=None):
    """Replacement of ``numpy.core.multiarray.scalar``: numeric scalars from raw bytes."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _SIMPLE_NUMPY_KINDS:
        raise pickle.UnpicklingError(f"numpy scalar of unsupported dtype {dtype!r}")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar with malformed data")
    return np.frombuffer(data, dtype=dtype)[0]


# (module, name) → the harmless object that stands in for it. Nothing else resolves.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _Sealed(_persistent_record),
    ("torch.storage", "_load_from_bytes"): _Sealed(_storage_from_bytes),
    ("torch._utils", "_rebuild_tensor_v2"): _Sealed(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Sealed(_rebuild_parameter),
    ("collections", "OrderedDict"): collections.OrderedDict,  # a built-in type: immutable
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("numpy.core.multiarray", "scalar"): _Sealed(_numpy_scalar),
    ("numpy._core.multiarray", "scalar"): _Sealed(_numpy_scalar),
    ("numpy", "dtype"): _Sealed(_numpy_dtype),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS` and no persistent ids."""

    def __init__(self, fh, path: Path) -> None:
        super().__init__(fh)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in ALLOWED_GLOBALS)
            if module.startswith("dnnlib.tflib"):
                raise CheckpointError(
                    f"{self._path}: this is a TensorFlow-era StyleGAN pickle ({module}.{name}), "
                    "which is not supported; convert it to a stylegan2-ada-pytorch snapshot "
                    "with NVIDIA's legacy.py first; nothing from the file was executed"
                ) from None
            raise CheckpointError(
                f"{self._path}: refused to load: the pickle references the global "
                f"'{module}.{name}', which is not on the allow-list ({allowed}); "
                "nothing from the file was executed"
            ) from None


def load_nvidia_snapshot(path: Path) -> Any:
    """Unpickle the whole snapshot with the restricted unpickler (no code from the file runs)."""
    check_pickle_stream(path)
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(fh, path).load()
    except CheckpointError:
        raise
    except Exception as exc:  # truncated data, malformed opcodes, bad storages, …
        raise CheckpointError(
            f"{path}: not a readable NVIDIA network pickle ({type(exc).__name__}: {exc})"
        ) from exc


def read_nvidia_pickle(path: Path) -> RawCheckpoint:
    """``G_ema`` of an NVIDIA stylegan2-ada-pytorch snapshot (or a pickled Generator alone)."""
    data = load_nvidia_snapshot(path)
    if isinstance(data, PersistentRecord):
        record = data
    elif isinstance(data, dict) and "G_ema" in data:
        record = data["G_ema"]
    else:
        what = (
            f"a dict with keys {sorted(map(str, data))}"
            if isinstance(data, dict)
            else type(data).__name__
        )
        raise CheckpointError(
            f"{path}: the pickle holds {what}, not an NVIDIA network snapshot with a 'G_ema' generator"
        )
    if not isinstance(record, PersistentRecord) or record.class_name != "Generator":
        got = record.class_name if isinstance(record, PersistentRecord) else type(record).__name__
        raise CheckpointError(f"{path}: 'G_ema' is a {got}, expected a StyleGAN2 'Generator'")
    config, state = _nvidia_config_and_state(record, path)
    return RawCheckpoint(format="nvidia-pickle", config=config, state=state)


def _kwarg(mapping: Any, key: str, default: Any) -> Any:
    return mapping.get(key, default) if isinstance(mapping, dict) else default


def _nvidia_config_and_state(record: PersistentRecord, path: Path) -> tuple[dict, dict]:
    kw = record.init_kwargs
    missing = [k for k in ("z_dim", "w_dim", "img_resolution", "img_channels") if k not in kw]
    if missing:
        raise CheckpointError(
            f"{path}: G_ema init kwargs lack {missing}; cannot infer the architecture"
        )
    mk, sk = kw.get("mapping_kwargs") or {}, kw.get("synthesis_kwargs") or {}
    arch = _kwarg(sk, "architecture", "skip")
    if arch != "skip":
        raise CheckpointError(
            f"{path}: synthesis architecture {arch!r} is not supported (only 'skip', config-f)"
        )
    if _kwarg(mk, "activation", "lrelu") != "lrelu":
        raise CheckpointError(
            f"{path}: mapping activation {mk['activation']!r} is not supported (only 'lrelu')"
        )
    tensors = dict(record.tensors)
    expected_filter = make_resample_filter()
    for key in [k for k in tensors if k.endswith("resample_filter")]:
        f = tensors.pop(key).float()
        if f.shape != expected_filter.shape or not torch.allclose(f, expected_filter, atol=1e-6):
            raise CheckpointError(
                f"{path}: {key} is not the [1,3,3,1] binomial filter this implementation uses"
            )
    resolution = int(kw["img_resolution"])
    channels = []
    for res in block_resolutions(resolution) if resolution >= 4 else []:
        key = f"synthesis.b{res}.conv1.weight"
        if key not in tensors:
            raise CheckpointError(
                f"{path}: G_ema has no '{key}' (shape inference of block b{res} failed)"
            )
        channels.append(int(tensors[key].shape[0]))
    num_layers = 0
    while f"mapping.fc{num_layers}.weight" in tensors:
        num_layers += 1
    mapping = record.children.get("mapping")
    fc0 = mapping.children.get("fc0") if mapping is not None else None
    lr = fc0.attributes.get("bias_gain") if fc0 is not None else None
    lr = float(lr) if lr is not None else float(_kwarg(mk, "lr_multiplier", 0.01))
    c_dim = int(kw.get("c_dim", 0))
    config = {
        "z_dim": int(kw["z_dim"]),
        "w_dim": int(kw["w_dim"]),
        "c_dim": c_dim,
        "img_resolution": resolution,
        "img_channels": int(kw["img_channels"]),
        "mapping_layers": num_layers,
        "mapping_lr_multiplier": lr,
        "embed_features": int(tensors["mapping.embed.weight"].shape[0])
        if "mapping.embed.weight" in tensors
        else None,
        "layer_features": int(tensors["mapping.fc0.weight"].shape[0]) if num_layers > 1 else None,
        "w_avg_beta": _kwarg(mk, "w_avg_beta", 0.995),
        "channels": channels,
        "conv_clamp": _kwarg(sk, "conv_clamp", None),
    }
    if config["conv_clamp"] is not None:
        config["conv_clamp"] = float(config["conv_clamp"])
    if config["w_avg_beta"] is not None:
        config["w_avg_beta"] = float(config["w_avg_beta"])
    return config, tensors


# --------------------------------------------------------------------------- rosinality


def read_rosinality(path: Path) -> RawCheckpoint:
    """``g_ema`` (+ ``latent_avg``) of a rosinality stylegan2-pytorch checkpoint."""
    if detect_format(path) == "torch-zip":
        check_zip_records(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: torch.load(weights_only=True) refused or failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); only tensors, containers and "
            "argparse.Namespace are accepted"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("g_ema"), dict):
        what = (
            f"a dict with keys {sorted(map(str, data))}"
            if isinstance(data, dict)
            else type(data).__name__
        )
        raise CheckpointError(
            f"{path}: holds {what}, not a rosinality checkpoint with a 'g_ema' state dict"
        )
    sd = data["g_ema"]
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: 'g_ema' contains entries that are not tensors")
    latent_avg = data.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise CheckpointError(
            f"{path}: 'latent_avg' is a {type(latent_avg).__name__}, not a tensor"
        )
    config, state = _RosinalityConverter(sd, path).convert()
    if latent_avg is not None:
        state["mapping.w_avg"] = latent_avg.reshape(-1)
    else:
        log.warning("%s has no latent_avg; the mean w will be estimated from 4096 random z", path)
    return RawCheckpoint(
        format="rosinality", config=config, state=state, needs_w_avg=latent_avg is None
    )


class _RosinalityConverter:
    """rosinality key names and shapes → NVIDIA ones (fixture README section 5.3)."""

    def __init__(self, sd: dict[str, torch.Tensor], path: Path) -> None:
        self.sd, self.path, self.used = sd, path, set()
        self.filter4 = make_resample_filter() * 4.0  # rosinality stores the ×4 kernel

    def get(self, key: str, ndim: int | None = None) -> torch.Tensor:
        if key not in self.sd:
            raise CheckpointError(f"{self.path}: rosinality g_ema lacks '{key}'")
        t = self.sd[key]
        if ndim is not None and t.ndim != ndim:
            raise CheckpointError(
                f"{self.path}: '{key}' has shape {list(t.shape)}, expected {ndim} dims"
            )
        self.used.add(key)
        return t

    def check_kernel(self, key: str) -> None:
        k = self.get(key).float()
        if k.shape != self.filter4.shape or not torch.allclose(k, self.filter4, atol=1e-5):
            raise CheckpointError(f"{self.path}: '{key}' is not 4·outer([1,3,3,1])/64 as expected")

    def unbatched(self, key: str, ndim: int) -> torch.Tensor:
        t = self.get(key, ndim + 1)
        if t.shape[0] != 1:
            raise CheckpointError(
                f"{self.path}: '{key}' has shape {list(t.shape)}, expected a leading 1"
            )
        return t[0]

    def styled_conv(self, dst: str, src: str, noise: str, up: bool) -> dict[str, torch.Tensor]:
        if up:
            self.check_kernel(f"{src}.conv.blur.kernel")
        strength = self.get(f"{src}.noise.weight")
        if strength.numel() != 1:
            raise CheckpointError(f"{self.path}: '{src}.noise.weight' must hold one value")
        return {
            f"{dst}.weight": self.unbatched(f"{src}.conv.weight", 4),
            f"{dst}.affine.weight": self.get(f"{src}.conv.modulation.weight", 2),
            f"{dst}.affine.bias": self.get(f"{src}.conv.modulation.bias", 1),
            f"{dst}.noise_strength": strength.reshape([]),
            f"{dst}.bias": self.get(f"{src}.activate.bias", 1),
            f"{dst}.noise_const": self.get(noise, 4).reshape(self.sd[noise].shape[-2:]),
        }

    def to_rgb(self, dst: str, src: str, up: bool) -> dict[str, torch.Tensor]:
        if up:
            self.check_kernel(f"{src}.upsample.kernel")
        return {
            f"{dst}.weight": self.unbatched(f"{src}.conv.weight", 4),
            f"{dst}.affine.weight": self.get(f"{src}.conv.modulation.weight", 2),
            f"{dst}.affine.bias": self.get(f"{src}.conv.modulation.bias", 1),
            f"{dst}.bias": self.get(f"{src}.bias").reshape(-1),
        }

    def convert(self) -> tuple[dict, dict]:
        n_mlp = 0
        while f"style.{n_mlp + 1}.weight" in self.sd:
            n_mlp += 1
        if n_mlp == 0:
            raise CheckpointError(
                f"{self.path}: rosinality g_ema lacks 'style.1.weight' (no mapping network)"
            )
        num_up = 0
        while f"to_rgbs.{num_up}.conv.weight" in self.sd:
            num_up += 1
        resolution = 4 * 2**num_up
        state: dict[str, torch.Tensor] = {}
        for i in range(n_mlp):
            state[f"mapping.fc{i}.weight"] = self.get(f"style.{i + 1}.weight", 2)
            state[f"mapping.fc{i}.bias"] = self.get(f"style.{i + 1}.bias", 1)
        state["synthesis.b4.const"] = self.unbatched("input.input", 3)
        state.update(self.styled_conv("synthesis.b4.conv1", "conv1", "noises.noise_0", up=False))
        state.update(self.to_rgb("synthesis.b4.torgb", "to_rgb1", up=False))
        channels = [int(state["synthesis.b4.const"].shape[0])]
        for k, res in enumerate(block_resolutions(resolution)[1:], start=1):
            b = f"synthesis.b{res}"
            state.update(
                self.styled_conv(
                    f"{b}.conv0", f"convs.{2 * k - 2}", f"noises.noise_{2 * k - 1}", up=True
                )
            )
            state.update(
                self.styled_conv(
                    f"{b}.conv1", f"convs.{2 * k - 1}", f"noises.noise_{2 * k}", up=False
                )
            )
            state.update(self.to_rgb(f"{b}.torgb", f"to_rgbs.{k - 1}", up=True))
            channels.append(int(state[f"{b}.conv1.weight"].shape[0]))
        unused = sorted(set(self.sd) - self.used)
        if unused:
            raise CheckpointError(f"{self.path}: unexpected keys in rosinality g_ema: {unused[:8]}")
        style_dim = int(state["mapping.fc0.weight"].shape[1])
        config = {
            "z_dim": style_dim,
            "w_dim": int(state[f"mapping.fc{n_mlp - 1}.weight"].shape[0]),
            "c_dim": 0,
            "img_resolution": resolution,
            "img_channels": int(state["synthesis.b4.torgb.weight"].shape[0]),
            "mapping_layers": n_mlp,
            "mapping_lr_multiplier": 0.01,
            "layer_features": int(state["mapping.fc0.weight"].shape[0]) if n_mlp > 1 else None,
            "channels": channels,
            "conv_clamp": None,
        }
        return config, state


# --------------------------------------------------------------------------- own format


def read_own_safetensors(path: Path) -> RawCheckpoint:
    """Our own format: safetensors tensors + ``GeneratorConfig`` JSON in the metadata."""
    metadata, state = read_safetensors(path)
    if metadata.get("format") != OWN_FORMAT_NAME or "config" not in metadata:
        raise CheckpointError(
            f"{path}: safetensors file without a ganviews generator config in its metadata "
            f"(format={metadata.get('format')!r}); save it with ganviews.stylegan.generator.save_generator"
        )
    if metadata.get("format_version") != OWN_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: generator format version {metadata.get('format_version')!r} is not supported "
            f"(this code reads version {OWN_FORMAT_VERSION})"
        )
    config = parse_json_config(metadata["config"], path=path, what="config")
    extra = {k: v for k, v in metadata.items() if k not in ("format", "format_version", "config")}
    return RawCheckpoint(format="ganviews-safetensors", config=config, state=state, metadata=extra)
