"""Deep models of the zoo: torchvision VGG-16, Inception v3 and ResNet-18 as feature extractors.

Every model takes RGB images as floats: a flat array of ``3*S*S`` values in
channel-first order (what Clipper's clients send; reshaped to [3, S, S]), or an
array already shaped [3, S, S] or [S, S, 3]. ``input_shape`` reports the flat
form. S is 224 for vgg and resnet18, 299 for inception. Outputs are float32:

- ``vgg``: the 4096-wide fc7 features (the classifier up to its second ReLU);
- ``inception``: the 2048-wide pooled features (``fc`` replaced by Identity);
- ``resnet18``: the 512-wide pooled features (``fc`` replaced by Identity).

Weights are a deterministic random init (seed 0, ``weights=None``) unless
``model_path`` names a local ``state_dict`` file (``torch.save(net.state_dict())``
of the full torchvision model; the dropped head's keys and Inception's
``AuxLogits`` may be absent or present). No weights are downloaded.

GPU: ``gpu=N`` runs on ``cuda:N``, N being the index inside this process. The
replica runtime pins a GPU by setting ``CUDA_VISIBLE_DEVICES=<gpu>`` and passes
0 (``pinning.select_gpu``), so a replica of GPU 3 runs on ``cuda:0``. Asking for
a GPU where CUDA is absent, or an index past the visible devices, is an error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torchvision
from torch import nn

from containers.models._validate import image_batch
from schooner.types import InputType

log = logging.getLogger(__name__)

SEED = 0


@dataclass(frozen=True)
class _Arch:
    """How to build one torchvision network and cut it down to its feature head."""

    name: str
    size: int  # images are size x size RGB
    out_width: int
    build: Callable[[], nn.Module]
    cut: Callable[[nn.Module], nn.Module]
    head_keys: tuple[str, ...]  # state_dict prefixes the cut drops: may be absent in a file
    ignored_keys: tuple[str, ...] = ()  # prefixes a file may hold that the net does not have


def _cut_vgg(net: nn.Module) -> nn.Module:
    # classifier = Linear, ReLU, Dropout, Linear, ReLU (fc7 out), Dropout, Linear
    return nn.Sequential(net.features, net.avgpool, nn.Flatten(1), *list(net.classifier.children())[:5])


def _cut_fc(net: nn.Module) -> nn.Module:
    net.fc = nn.Identity()
    return net


_ARCHS = {
    "vgg": _Arch("vgg", 224, 4096, lambda: torchvision.models.vgg16(weights=None), _cut_vgg,
                 head_keys=("classifier.6.",)),
    "inception": _Arch("inception", 299, 2048,
                       lambda: torchvision.models.inception_v3(
                           weights=None, aux_logits=False, init_weights=True, transform_input=False),
                       _cut_fc, head_keys=("fc.",), ignored_keys=("AuxLogits.",)),
    "resnet18": _Arch("resnet18", 224, 512, lambda: torchvision.models.resnet18(weights=None), _cut_fc,
                      head_keys=("fc.",)),
}


class TorchModel:
    """A torchvision feature extractor serving batches of images (one forward pass per batch)."""

    input_type = InputType.FLOATS

    def __init__(self, arch: _Arch, net: nn.Module, device: torch.device) -> None:
        self.name = arch.name
        self.input_shape: list[int] | None = [3 * arch.size * arch.size]
        self.output_width = arch.out_width
        self.device = device
        self._size = arch.size
        self._net = net

    def predict(self, inputs: Sequence[Any]) -> np.ndarray:
        """Features float32 [n, output_width] for a batch of n images."""
        if len(inputs) == 0:
            return np.empty((0, self.output_width), dtype=np.float32)
        batch = torch.from_numpy(image_batch(inputs, self._size, self.name)).to(self.device)
        with torch.inference_mode():
            out = self._net(batch)
        return out.float().cpu().numpy()


def torch_device(gpu: int | None) -> torch.device:
    """The torch device for in-process CUDA index ``gpu`` (None = CPU)."""
    if gpu is None:
        return torch.device("cpu")
    if not isinstance(gpu, int) or gpu < 0:
        raise ValueError(f"gpu must be a non-negative integer or None, got {gpu!r}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"gpu {gpu} was asked for but CUDA is not available on this machine")
    if gpu >= torch.cuda.device_count():
        raise RuntimeError(
            f"gpu {gpu} was asked for but only {torch.cuda.device_count()} CUDA device(s) are visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r})")
    return torch.device(f"cuda:{gpu}")


def _build(arch: _Arch) -> nn.Module:
    # A private RNG stream keeps the init deterministic without touching the caller's seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return arch.build()


def _load_weights(net: nn.Module, arch: _Arch, model_path: str) -> None:
    """Load a state_dict file into the full net; ValueError if it is not one that fits."""
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"{arch.name}: model_path {model_path!r} is not a file")
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise ValueError(f"{arch.name}: cannot read a state_dict from {model_path!r}: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"{arch.name}: {model_path!r} holds a {type(state).__name__}, not a state_dict")
    state = {k: v for k, v in state.items() if not k.startswith(arch.ignored_keys)}
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as err:  # size mismatches
        raise ValueError(f"{arch.name}: state_dict in {model_path!r} does not fit: {err}") from err
    missing = [k for k in result.missing_keys if not k.startswith(arch.head_keys)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{arch.name}: state_dict in {model_path!r} does not fit: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}"
            f"{'...' if len(result.unexpected_keys) > 5 else ''}")


def _load(name: str, model_path: str, num_threads: int, gpu: int | None, opts: dict) -> TorchModel:
    if opts:
        raise ValueError(f"{name}: unknown model options {sorted(opts)}")
    if not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
    arch = _ARCHS[name]
    device = torch_device(gpu)
    torch.set_num_threads(num_threads)
    net = _build(arch)
    if model_path:
        _load_weights(net, arch, model_path)
    net = arch.cut(net).eval().to(device)
    log.info("loaded %s (%s) on %s with %d thread(s)", name, model_path or f"seed {SEED}", device,
             num_threads)
    return TorchModel(arch, net, device)


def load_vgg(model_path: str = "", num_threads: int = 1, gpu: int | None = None, **opts: Any) -> TorchModel:
    """VGG-16 fc7 features (4096) of 224x224 RGB images."""
    return _load("vgg", model_path, num_threads, gpu, opts)


def load_inception(model_path: str = "", num_threads: int = 1, gpu: int | None = None,
                   **opts: Any) -> TorchModel:
    """Inception v3 pooled features (2048) of 299x299 RGB images."""
    return _load("inception", model_path, num_threads, gpu, opts)


def load_resnet18(model_path: str = "", num_threads: int = 1, gpu: int | None = None,
                  **opts: Any) -> TorchModel:
    """ResNet-18 pooled features (512) of 224x224 RGB images."""
    return _load("resnet18", model_path, num_threads, gpu, opts)
