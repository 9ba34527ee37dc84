"""Checkpoints that survive the training engine: a sharded ZeRO checkpoint consolidated into one safetensors model.

``train(..., save_every=N)`` writes Accelerate's ``save_state`` folders; under DeepSpeed the model and optimizer
live there as per-rank shards (``pytorch_model/zero_pp_rank_*``). ``consolidate_zero_checkpoint`` turns one into an
ordinary Hugging Face folder with DeepSpeed's own ``get_fp32_state_dict_from_zero_checkpoint`` (the logic of the
``zero_to_fp32.py`` script DeepSpeed writes next to every checkpoint). Those shards are pickles: consolidate only
checkpoints your own runs wrote.
"""

from __future__ import annotations

from pathlib import Path

from .errors import LlavaNbError


def consolidate_zero_checkpoint(checkpoint_dir: str | Path, model, out_dir: str | Path) -> Path:
    """Write the full fp32 weights of the ZeRO checkpoint in ``checkpoint_dir`` (an Accelerate ``save_state``
    folder, or the DeepSpeed folder inside it) as ``out_dir/model.safetensors`` with ``model``'s config (a name,
    config or checkpoint folder). Returns ``out_dir``; ``load_model(out_dir)`` reads it."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from .architectures import as_config, build_model

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
