"""The network of a fitted ConvFeatureExtractor: its device, its placement, its output channels, its
compilation, and its rebuilding (checked against the fitted checksum) after unpickling."""

from __future__ import annotations

from selconv.extraction.backbones import Backbone, build_backbone, module_checksum
from selconv.extraction.weights import state_dict_from_bytes


def resolve_device(device: str) -> str:
    """``device`` (``"auto"``, ``"cpu"``, ``"cuda:1"``, ...) as the torch device to use; a ValueError if unusable."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device={device!r} is not a torch device ('auto', 'cpu', 'cuda', 'cuda:1', ...).") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use device='auto' or 'cpu'.")
    return str(resolved)


def output_channels(module) -> int:
    """Channels of the module's output, from shapes only on the meta device (no arithmetic): bad hypercolumns
    fail here, at fit, not mid-run."""
    import torch

    meta = {k: torch.empty_like(v, device="meta") for k, v in module.state_dict().items()}
    probe = torch.func.functional_call(module, meta, (torch.zeros(1, 3, 224, 224, device="meta"),))
    return int(probe.shape[1])


def check_paddable(module, backbone) -> None:
    """A ValueError naming ``backbone`` unless ``module`` runs zero-padded batches exactly
    (``pad_to_multiple``): a ``SequentialTaps`` whose layers all allow it."""
    from selconv.extraction.backbones import SequentialTaps

    try:
        if not isinstance(module, SequentialTaps):
            raise ValueError("it is not a plain chain of layers (only 'vgg16' and 'alexnet' are)")
        module.check_paddable()
    except ValueError as exc:
        raise ValueError(f"pad_to_multiple needs exact padded batches, but backbone={backbone!r}: {exc}.") from None


def place(module, device: str, precision: str):
    """The module on ``device`` in the dtype of ``precision`` (channels_last on CUDA)."""
    import torch

    device = torch.device(device)
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(precision, torch.float32)
    module = module.to(device=device, dtype=dtype)
    if device.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    return module


def compile_network(module):
    """``torch.compile(module)`` as the extractor (``compile=True``) and the GPU benchmark run it: default mode,
    ``dynamic=True``.

    Shapes vary by design (both orientations of a photo collection, tail batches and early batches of any size
    up to ``batch_size``), and torch keeps at most ``torch._dynamo.config.recompile_limit`` (8) compiled
    graphs for the forward frame that every compiled module shares, for the whole process. With
    ``dynamic=False`` each (batch, height, width) compiles a graph of its own, so a mixed collection reaches
    the limit within a run; with the default ``dynamic=None`` the first shape compiles a static graph and the
    second recompiles it with the changed sizes symbolic. ``dynamic=True`` compiles one graph for many shapes
    from the start, plus one more for a batch of one image (torch specialises sizes of 1): two graphs per
    network architecture counted on the CPU with torch 2.14 (each precision is another input dtype, so two
    more). On an H100 with torch 2.11 the graphs also specialised on the parity of sizes after pooling, and the
    Oxford files' many shapes reached the limit (benchmarks/results/gpu_pipeline.md, section 5). Past the limit
    torch warns once ("hit config.recompile_limit") and runs the inputs that match no compiled graph eagerly: same maps,
    eager speed, no error. The compiled code belongs to the module's forward, not to the wrapper: wrapping
    the same module again (a later ``transform``) compiles nothing new.
    """
    import torch

    return torch.compile(module, dynamic=True)


def normalize_pixels(pixels, shift, scale, dtype):
    """(B, H, W, 3) uint8 pixels -> the network's (B, 3, H, W) input in ``dtype``: ``(x - shift) * scale`` in
    float32 (x / 255 and the mean and std folded into one subtract and one multiply). The NHWC pixels viewed as
    NCHW are channels_last, and stay so."""
    x = pixels.permute(0, 3, 1, 2).float()
    return ((x - shift) * scale).to(dtype)


def compile_normalization():
    """:func:`normalize_pixels` through ``torch.compile`` (``compile=True``, ``dynamic=True``): one fused kernel
    instead of four passes over the batch (to float, subtract, multiply, to ``dtype``), which took 2.8 % of the GPU's
    kernel time per image JPEG files -> codes on an H100 (``benchmarks/profile_pipeline.py --kernel-profile``). The
    same values: the fused kernel computes the same float32 expression."""
    import torch

    return torch.compile(normalize_pixels, dynamic=True)


def rebuild(extractor) -> Backbone:
    """The backbone of an unpickled extractor, from its stored weights or its weights source again; a ValueError
    when they are not the weights it was fitted with."""
    stored = getattr(extractor, "_weights_bytes", None)
    built = build_backbone(extractor.backbone, extractor.layers, None if stored is not None else extractor.weights)
    if stored is not None:
        built.module.load_state_dict(state_dict_from_bytes(stored))
        built.checksum = module_checksum(built.module)
    if built.checksum != extractor.weights_checksum_:
        raise ValueError(
            f"The weights found now ({built.weights_source}) differ from those this extractor was fitted "
            f"with ({extractor.weights_source_}): checksum {built.checksum[:12]} != "
            f"{extractor.weights_checksum_[:12]}. Refit, or pickle with store_weights=True."
        )
    return built
