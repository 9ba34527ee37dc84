"""Workarounds for known incompatibilities between the pinned libraries. Each one says why and when to drop it.

* peft 0.21 reads ``model.is_gradient_checkpointing``, which transformers 5 deprecated in favour of
  ``is_activation_checkpointing``; every ``get_peft_model`` then emits a ``FutureWarning`` that is not ours to fix
  and that would fail a build which treats warnings as errors. We silence exactly that message. Drop this once
  peft reads the new attribute.
"""

import warnings

KNOWN_WARNINGS = [
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
]


def silence_known_warnings() -> None:
    """Ignore exactly the warnings above, and turn off transformers' progress bars (e.g. "Writing model shards"),
    which would print to stderr in every saving cell of the book."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    from transformers.utils import logging

    logging.disable_progress_bar()
