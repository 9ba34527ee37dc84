"""How each engine wraps the model: the keyword arguments ``Accelerator(...)`` gets for a method.

``ddp``: torch's DistributedDataParallel (``find_unused_parameters`` as asked). DeepSpeed engines: Accelerate's
``DeepSpeedPlugin`` with LLaVA's ZeRO settings (``deepspeed.deepspeed_config``). ``fsdp``: Accelerate's FSDP2 plugin,
``fully_shard`` on every ViT encoder layer and LLM decoder layer, parameters resharded after forward, sharded (DCP)
checkpoints, bf16 compute with fp32 gradient reduction.
"""

from __future__ import annotations

from .registry import Method, get_method


def accelerator_kwargs(method: Method | str, *, mixed_precision: str, gradient_accumulation_steps: int,
                       micro_batch: int, world_size: int, hidden_size: int, block_classes=None,
                       find_unused_parameters: bool = False, max_grad_norm: float | None = None) -> dict:
    """Extra keyword arguments for ``Accelerator(...)`` that make it run ``method``'s engine. ``max_grad_norm``
    only matters to DeepSpeed, which clips inside its own step (its config's ``gradient_clipping``)."""
    engine = get_method(method).engine
    if engine.kind == "deepspeed":
        return _deepspeed_kwargs(engine.name, mixed_precision, gradient_accumulation_steps, micro_batch, world_size,
                                 hidden_size, max_grad_norm)
    if engine.kind == "fsdp":
        return _fsdp_kwargs(mixed_precision, block_classes)
    from accelerate import DistributedDataParallelKwargs

    # find_unused_parameters=True is the escape hatch for parameters that get no gradient (see the Accelerate
    # chapter: an unfrozen ViT's last layer, because LLaVA reads layer -2). It costs an extra graph traversal.
    return {"kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)]}


def _deepspeed_kwargs(name: str, mixed_precision: str, accumulation: int, micro_batch: int, world_size: int,
                      hidden_size: int, max_grad_norm: float | None) -> dict:
    """Accelerate's ``DeepSpeedPlugin`` with LLaVA's ZeRO settings; bf16 follows ``mixed_precision``, gradient
    clipping ``max_grad_norm`` (None: LLaVA's file, ``deepspeed.deepspeed_config``).

    Without GPUs Accelerate must not be given ``cpu=True`` (it would silently drop the plugin and run DDP); the
    process group is gloo instead, and DeepSpeed's CPU accelerator drives it.
    """
    import torch
    from accelerate import DeepSpeedPlugin
    from accelerate.utils import InitProcessGroupKwargs

    from .deepspeed import deepspeed_config

    config = deepspeed_config(name, hidden_size, micro_batch, world_size, accumulation,
                              bf16=mixed_precision == "bf16", max_grad_norm=max_grad_norm)
    out = {"deepspeed_plugin": DeepSpeedPlugin(hf_ds_config=config)}
    if not torch.cuda.is_available():
        out["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    return out


def _fsdp_kwargs(mixed_precision: str, block_classes) -> dict:
    from accelerate import FullyShardedDataParallelPlugin

    from .fsdp import fsdp_mixed_precision

    policy = fsdp_mixed_precision() if mixed_precision == "bf16" else None
    return {"fsdp_plugin": FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=block_classes,
        reshard_after_forward=True, state_dict_type="SHARDED_STATE_DICT", mixed_precision_policy=policy)}


def force_fsdp_on_cpu(accelerator, plugin) -> None:
    """Make a CPU ``Accelerator`` use its FSDP plugin.

    Workaround for Accelerate 1.15: on CPU (``cpu=True``, distributed type MULTI_CPU, gloo) ``AcceleratorState``
    drops the ``fsdp_plugin`` without a word, and ``prepare`` then wraps the model in DDP. FSDP2's ``fully_shard``
    itself runs on CPU over gloo, so the distributed type is set to FSDP by hand, in ``PartialState`` too (each
    ``AcceleratorState()`` copies it from there), and the plugin is attached as Accelerate would on a GPU.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
