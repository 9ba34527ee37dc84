"""What ``train()`` checks in the launching process, before any worker starts or any weight loads.

* ``check_model``: a checkpoint folder's files (``models.checkpoint_check``): config, processor, tokenizer with
  ``<image>`` at the config's ``image_token_index``, image sizes (and v1.6's grid) that match the vision tower.
* ``check_data``: every training sample, and every held-out question evaluation will use, fits ``max_length`` with
  its image tokens counted (``data.lengths``), with the tokenizer and template the workers will use.

Each failure is a one-line ``LlavaNbError`` (the CLI prints it as ``error: ...``). Reading JSON files and image
headers only, they take well under a second on the tiny models (``tests/test_checkpoint_errors.py`` times them).
"""

from __future__ import annotations

from pathlib import Path


def check_model(model: str) -> None:
    """A checkpoint folder's ``CheckpointError``, if any; a name that is neither a known model, a folder nor a Hub id
    (``owner/name``) is an ``UnknownModelError`` that suggests the closest known name. Hub ids pass (their files
    are fetched later)."""
    if Path(model).is_dir():
        from ..models.checkpoint_check import check_checkpoint

        check_checkpoint(model)
    elif "/" not in model:
        from ..models.specs import resolve_name

        resolve_name(model)  # "tiny-llava-1.55": unknown model (did you mean 'tiny-llava-1.5'?)


def check_data(model: str, stage: int, cfg, data, image_folder, eval_data=None) -> None:
    """A ``DataError`` (``SampleTooLongError`` for a sample over ``cfg.max_length``) for the first bad record of
    ``data`` or of the first ``cfg.eval_max`` records of ``eval_data``."""
    from ..data.lengths import check_lengths
    from ..data.records import load_conversations
    from .loading import _model_config, default_template, load_text_tokenizer

    config = _model_config(model)
    template = cfg.template or default_template(config, stage)
    tokenizer = load_text_tokenizer(model)
    for path, keep in ((data, None), (eval_data, cfg.eval_max)):
        if path:
            records = load_conversations(path, image_folder, images_outside=cfg.images_outside_folder)[:keep]
            check_lengths(tokenizer, config, records, template, cfg.max_length, source=path)
