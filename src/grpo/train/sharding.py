"""FSDP2 data parallel: sharding the policy and the reference, and gathering full weights.

``fully_shard`` (torch.distributed.fsdp, FSDP2 on DTensor) wraps every decoder layer and then
the root, so at most one layer's full parameters exist at a time besides the root's own
(embeddings, final norm, lm-head). The root is the log-prob module (``PolicyLogprobs``), so
the lean log-prob pass runs inside an FSDP forward and its lm-head projection sees the
gathered head weight.

Gradients: every rank's loss is ``sum(its terms) / global normaliser`` (train/update.py), so
the full gradient is the SUM of the ranks' gradients. FSDP2 averages by default (it divides
the reduce-scatter by the world size); the divide factor is set to 1 here, which makes N ranks
compute exactly the gradient one process computes on the same batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from grpo.train.distributed import World

# Gather this many bytes of full weights at once when sending them to an engine: the all-gathers
# of one bucket run concurrently (asynchronous DTensor redistribution) and at most one bucket
# of full tensors is alive beside the shards.
DEFAULT_BUCKET_BYTES = 256 * 2**20


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model (``_no_split_modules`` names their class)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"cannot find the decoder layers of {type(model).__name__} to shard: it declares "
            "no _no_split_modules"
        )
    return layers


def shard(model: nn.Module, world: World, compute_dtype: torch.dtype | None) -> nn.Module:
    """``model`` (a ``PolicyLogprobs``) sharded over the world's ranks, in place.

    With a compute dtype (bf16) the gathered parameters are cast to it and gradients are
    reduced in fp32 (``MixedPrecisionPolicy``); the master weights and Adam stay fp32 shards.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(world.device().type, (world.world_size,))
    kw: dict = {"mesh": mesh}
    if compute_dtype is not None:
        kw["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=compute_dtype, reduce_dtype=torch.float32
        )
    for layer in decoder_layers(model):
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # the loss is already normalised globally
            # plain SUM collectives (gloo has no pre-multiplied sum; NCCL copies less with SUM)
            m.set_force_sum_reduction_for_comms(True)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def checkpoint_name(name: str) -> str:
    """A state-dict name as the checkpoint on disk spells it (no wrapper prefixes)."""
    for prefix in ("lm.", "_orig_mod."):
        name = name.removeprefix(prefix)
    return name


def full_weights(
    model: nn.Module, dtype: torch.dtype, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, full tensor in ``dtype``) for every entry of ``model.state_dict()``.

    Sharded parameters are cast to ``dtype`` first (half the traffic in bf16) and all-gathered
    bucket by bucket; every rank must consume the iterator to the end in the same order, since
    each gather is a collective. A plain model yields its tensors cast one at a time.
    """
    from torch.distributed.tensor import DTensor, Replicate

    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        if isinstance(tensor, DTensor):
            local = tensor.to(dtype)
            tensor = local.redistribute(
                placements=[Replicate()] * local.device_mesh.ndim, async_op=True
            ).to_local()
        else:
            tensor = tensor.to(dtype)
        bucket.append((checkpoint_name(name), tensor))
        size += tensor.numel() * tensor.element_size()
        if size >= bucket_bytes:
            yield from _waited(bucket)
            bucket, size = [], 0
    yield from _waited(bucket)


def _waited(bucket: list[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in bucket:
        wait = getattr(tensor, "wait", None)  # an AsyncCollectiveTensor until its gather is done
        yield name, (wait() if callable(wait) else tensor)
