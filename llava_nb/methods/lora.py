"""LoRA from first principles, LLaVA's adapter recipe, and adapters that load back.

A LoRA layer keeps the pretrained weight W0 (out, in) frozen and learns a low-rank update (Hu et al. 2021)::

    h = W0 x + (alpha / r) * B A x          A: (r, in), B: (out, r), r << min(in, out)

A starts random (Kaiming-uniform, as torch's own Linear and peft do) and B starts at zero, so at step 0 the layer
is exactly the pretrained one and the first gradients flow into B. Only A and B train: r (in + out) parameters
instead of in x out. ``merge`` folds the update into the weight, W = W0 + (alpha / r) B A, after which inference
costs nothing extra.

LLaVA's recipe (``scripts/v1_5/finetune_lora.sh``): r = 128, alpha = 256, dropout 0.05, on every Linear of the LLM
except ``lm_head``, and the projector trained in full beside the adapters. The LLaVA repository saves that
projector apart from the adapter (``non_lora_trainables.bin``), which is the most common reason a fine-tuned LoRA
LLaVA "will not load": the adapter alone brings back the base projector. ``lora_config`` here names the projector
in peft's ``modules_to_save``, so one ``save_pretrained`` folder holds both, and ``load_lora`` checks that an
adapter meets the base it was trained on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from ..errors import LlavaNbError

LLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """``base`` (frozen) plus the low-rank update (alpha / r) B A, with dropout on the update's input as peft does."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank r must be at least 1, got {r}")
        self.base = base.requires_grad_(False)
        self.r, self.scaling = r, alpha / r
        self.A = nn.Parameter(torch.empty(r, base.in_features))  # (r, in)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))  # (out, r): zero, so step 0 is the base model
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # torch's Linear init, as peft's "init_lora_weights=True"
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in)
        update = self.dropout(x) @ self.A.T @ self.B.T  # (..., r) -> (..., out)
        return self.base(x) + self.scaling * update

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain Linear with W = W0 + (alpha / r) B A."""
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        merged.weight.copy_(self.base.weight + self.scaling * self.B @ self.A)
        if self.base.bias is not None:
            merged.bias.copy_(self.base.bias)
        return merged


def lora_parameter_counts(model, r: int, targets=("q_proj", "v_proj"), within: str | None = None) -> dict:
    """Adapter parameters r (in + out) over every Linear whose name ends in one of ``targets`` (optionally only
    under the module path ``within``), and the model's total, from the module structure (build it on meta)."""
    adapters = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[-1] in targets and (within is None or within in name):
            adapters += r * (module.in_features + module.out_features)
    total = sum(p.numel() for p in model.parameters())
    return {"adapter": adapters, "base": total, "fraction": adapters / (total + adapters)}


def llava_lora_config(r: int = 128, alpha: int = 256, dropout: float = 0.05, save_projector: bool = True):
    """LLaVA's LoRA as a peft ``LoraConfig``: every LLM Linear but ``lm_head``. With ``save_projector`` (the default)
    the projector is in ``modules_to_save``: peft trains a full copy of it and saves it inside the adapter folder.
    Without, the projector must be saved by hand, as LLaVA's ``non_lora_trainables.bin``."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                      target_modules=r".*language_model.*\.(" + "|".join(LLM_TARGETS) + ")",
                      modules_to_save=["multi_modal_projector"] if save_projector else None)


def _fingerprint(model) -> dict:
    """What an adapter needs from its base: the architecture and every LoRA target's shape."""
    config = model.config
    text = getattr(config, "text_config", config)
    return {"model_type": config.model_type, "llm_hidden_size": text.hidden_size,
            "llm_layers": text.num_hidden_layers, "vocab_size": text.vocab_size}


def save_lora(peft_model, out_dir: str | Path, state_dict: dict | None = None) -> Path:
    """``save_pretrained`` of the adapter (with the projector, via ``modules_to_save``) plus the base's fingerprint,
    so that ``load_lora`` can refuse a wrong base with a clear message. ``state_dict``: the model's full state
    gathered from its shards (ZeRO-3, FSDP), from which peft takes the adapter's tensors."""
    out = Path(out_dir)
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    peft_model.save_pretrained(out, safe_serialization=True, **extra)
    (out / "llava_nb_base.json").write_text(json.dumps(_fingerprint(peft_model.get_base_model()), indent=1) + "\n")
    return out


def load_lora(base, adapter_dir: str | Path, merge: bool = False):
    """The adapter in ``adapter_dir`` on ``base`` (a LLaVA model); merged into plain weights with ``merge``.

    Raises ``LlavaNbError`` naming both models when the adapter was trained on another base (peft alone fails with
    a wall of size-mismatch lines, or, for equal shapes, loads silently onto the wrong weights)."""
    from peft import PeftModel

    folder = Path(adapter_dir)
    if not (folder / "adapter_config.json").exists():
        raise LlavaNbError(f"{folder} holds no LoRA adapter (no adapter_config.json); pass the folder save_lora or "
                           "train(method='lora') wrote")
    saved = folder / "llava_nb_base.json"
    if saved.exists():
        expected, actual = json.loads(saved.read_text()), _fingerprint(base)
        if expected != actual:
            diff = {k: (expected.get(k), actual.get(k)) for k in expected if expected.get(k) != actual.get(k)}
            raise LlavaNbError(f"the adapter in {folder} was trained on another base model: (adapter's base, this "
                               f"base) differ in {diff}; load the base model it was trained from")
    model = PeftModel.from_pretrained(base, str(folder))
    return model.merge_and_unload() if merge else model


def qlora_quantization_config(compute_dtype=None):
    """NF4 with double quantization, computing in ``compute_dtype`` (default bf16). LLaVA computes its 4-bit layers
    in bf16 under ``--bf16 True`` and in fp32 without it (haotian-liu/LLaVA@c121f04 llava/train/train.py:795,810):
    ``methods.setup.load_kwargs`` follows the run's ``mixed_precision`` the same way. transformers 5 matches
    ``llm_int8_skip_modules`` by prefix or suffix, not substring, so the modules are named by their full path
    ("multi_modal_projector" alone would not match ``model.multi_modal_projector.linear_1``; see the QLoRA chapter)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16,
                              llm_int8_skip_modules=["model.vision_tower", "model.multi_modal_projector", "lm_head"])
