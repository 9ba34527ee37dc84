"""Checkpoints that survive the training engine: a sharded ZeRO or FSDP checkpoint consolidated into one
safetensors model.

``train(..., save_every=N)`` writes Accelerate's ``save_state`` folders; under DeepSpeed the model and optimizer
live there as per-rank shards (``pytorch_model/zero_pp_rank_*``). ``consolidate_zero_checkpoint`` turns one into an
ordinary Hugging Face folder with DeepSpeed's own ``get_fp32_state_dict_from_zero_checkpoint`` (the logic of the
``zero_to_fp32.py`` script DeepSpeed writes next to every checkpoint). Those shards are pickles: consolidate only
checkpoints your own runs wrote. Under FSDP, ``save_state`` writes ``torch.distributed.checkpoint`` (DCP) folders
(``pytorch_model_fsdp_0/__<rank>_0.distcp`` plus a ``.metadata`` index); ``consolidate_fsdp_checkpoint`` reads one
back whole on a single process with DCP's own loader, no process group needed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import LlavaNbError


def consolidate_zero_checkpoint(checkpoint_dir: str | Path, model, out_dir: str | Path) -> Path:
    """Write the full fp32 weights of the ZeRO checkpoint in ``checkpoint_dir`` (an Accelerate ``save_state``
    folder, or the DeepSpeed folder inside it) as ``out_dir/model.safetensors`` with ``model``'s config (a name,
    config or checkpoint folder). Returns ``out_dir``; ``load_model(out_dir)`` reads it."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from ..models.architectures import as_config, build_model

    folder = Path(checkpoint_dir)
    if not (folder / "latest").exists():
        raise LlavaNbError(f"{folder} is not a DeepSpeed checkpoint folder (no 'latest' file); pass the folder that "
                           "train(save_every=...) wrote, e.g. <output_dir>/checkpoints/step_100")
    state = get_fp32_state_dict_from_zero_checkpoint(str(folder))
    config = as_config(_config_source(model))
    net = build_model(config)
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied_keys(net)]
    if missing or unexpected:
        raise LlavaNbError(f"checkpoint does not match the {getattr(config, 'llava_nb_name', config.model_type)} "
                           f"architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
    out = Path(out_dir)
    net.save_pretrained(out, safe_serialization=True)
    return out


def consolidate_fsdp_checkpoint(checkpoint_dir: str | Path, model, out_dir: str | Path) -> Path:
    """Write the full weights of the FSDP (DCP) checkpoint in ``checkpoint_dir`` (an Accelerate ``save_state`` folder,
    or its ``pytorch_model_fsdp_0`` folder) as ``out_dir/model.safetensors`` with ``model``'s config (a name, config or
    checkpoint folder). Returns ``out_dir``.

    DCP loads in place: a plain model of the right architecture is built, its state dict is the template, and
    ``torch.distributed.checkpoint.load`` fills it from the shards of every rank (with no process group it runs as
    one process). Accelerate saves the model state under the key ``"model"``.
    """
    import torch.distributed.checkpoint as dcp

    from ..models.architectures import as_config, build_model

    folder = Path(checkpoint_dir)
    if (folder / "pytorch_model_fsdp_0").is_dir():
        folder = folder / "pytorch_model_fsdp_0"
    if not (folder / ".metadata").exists():
        raise LlavaNbError(f"{folder} is not an FSDP (torch.distributed.checkpoint) folder (no '.metadata' file); pass "
                           "the folder that train(method='fsdp', save_every=...) wrote, e.g. "
                           "<output_dir>/checkpoints/step_100")
    config = as_config(_config_source(model))
    net = build_model(config)
    saved = set(dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
    state = {"model": net.state_dict()}
    expected = {f"model.{k}" for k in state["model"]}
    if saved != expected:
        raise LlavaNbError(f"checkpoint does not match the {getattr(config, 'llava_nb_name', config.model_type)} "
                           f"architecture: missing {sorted(expected - saved)[:5]}, unexpected {sorted(saved - expected)[:5]}")
    with warnings.catch_warnings():  # torch 2.13 warns "assuming the intent is to load in a single process" even
        warnings.filterwarnings("ignore", "torch.distributed is disabled")  # when no_dist=True says so
        dcp.load(state, checkpoint_id=str(folder), no_dist=True)  # one process reads every rank's shard
    net.load_state_dict(state["model"])
    out = Path(out_dir)
    net.save_pretrained(out, safe_serialization=True)
    return out


def _config_source(model):
    folder = Path(str(model))
    if folder.is_dir():
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(folder))
    return model


def _tied_keys(net) -> set:
    """Parameter names that share storage with another (DeepSpeed saves each tensor once)."""
    seen, tied = {}, set()
    for name, p in net.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.setdefault(id(p), name)
    return tied
