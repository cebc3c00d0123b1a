"""torch.compile (inductor) of a causal LM's decoder layers, for the training and reference
passes.

Why layers and not the whole model: every decoder layer of a transformers model is the same
module class with the same shapes, so one compiled graph serves all of them (compile time is
paid once, not once per layer), while the parts around them (embedding, masks, the chunked
log-prob pass, the loss) stay eager and free to change. Inductor fuses what eager runs as
separate kernels: RMSNorm, the autocast casts, SiLU x up-projection, the residual adds; on the
CPU that removed about a third of the medium benchmark's update time and most of its
intermediate buffers (docs/benchmarks.md).

Shapes: compiled with symbolic sizes from the start (``dynamic=True``): sequence lengths and
row counts change every step of a real run, and PyTorch's automatic dynamic (static first,
then symbolic) recompiled past dynamo's limit of 8 on the default run (first steps 31 s, 17 s,
4.7 s, then a silent fall-back to eager); with symbolic sizes one graph per kind of pass
(training, no-grad reference) serves every length. The price on the fixed-shape medium
benchmark: update 2.85 s instead of 2.42 s with static shapes.
"""

from __future__ import annotations

import shutil

import torch
from torch import nn

_CHOICES = ("auto", "true", "false")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of ``model``: the longest ``nn.ModuleList`` whose entries are all of
    one class (``model.model.layers`` in Llama, Qwen, Mistral; ``transformer.h`` in GPT-2)."""
    best: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best):
            kinds = {type(m) for m in module}
            if len(kinds) == 1:
                best = list(module)
    return best


def compile_wanted(
    setting: str | bool,
    *,
    device: torch.device,
    distributed: bool,
    deterministic: bool,
    engine_runs_policy: bool,
) -> bool:
    """Whether ``train.compile`` turns compilation on for this run.

    auto: on for a one-process CPU run with a C++ compiler on PATH (inductor's CPU backend
    writes C++), unless ``train.deterministic`` asks for eager's exact kernels or the rollout
    engine decodes with the policy module itself (the transformers engine: a decode step
    of one token with a KV cache would be one more shape to compile, for little gain). Off on
    GPUs and under FSDP2 until it is measured there. true: always (an error from inductor then
    stops the run); false: never."""
    value = _choice("train.compile", setting)
    if value != "auto":
        return value == "true"
    return _plain_cpu(device, distributed, deterministic) and not engine_runs_policy


def static_decode_wanted(
    setting: str | bool, *, device: torch.device, distributed: bool, deterministic: bool
) -> bool:
    """Whether ``rollout.static_decode`` turns the transformers engine's compiled static-cache
    decoding on: auto is on where ``train.compile``'s auto would be (one CPU process, a C++
    compiler, not deterministic); measured only on CPUs so far."""
    value = _choice("rollout.static_decode", setting)
    if value != "auto":
        return value == "true"
    return _plain_cpu(device, distributed, deterministic)


def _choice(key: str, setting: str | bool) -> str:
    value = str(setting).lower()
    if value not in _CHOICES:
        raise ValueError(f"{key} must be one of {', '.join(_CHOICES)}, got {setting!r}")
    return value


def _plain_cpu(device: torch.device, distributed: bool, deterministic: bool) -> bool:
    """One CPU process that may use inductor: its CPU backend writes C++, and train.deterministic
    asks for eager's exact kernels."""
    has_compiler = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
    return device.type == "cpu" and not distributed and not deterministic and has_compiler


def compile_decoder_layers(model: nn.Module) -> int:
    """Compile each decoder layer of ``model`` in place (``nn.Module.compile``: the module, its
    parameters and state dict keys stay as they are, so checkpoints, optimizers and weight
    syncs see the same tensors). Returns how many layers were compiled."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
