"""Execution profiles: ``tiny`` (CPU, small random or locally pretrained models) and ``full`` (real checkpoints on GPUs).

The profile comes from the ``LLAVA_NB_PROFILE`` environment variable (default ``tiny``); the command line's
``--profile`` flag overrides it.
"""

from __future__ import annotations

import os
from typing import Sequence

from ..errors import ProfileError

PROFILES = ("tiny", "full")
ENV_VAR = "LLAVA_NB_PROFILE"

#: The model each profile uses for each LLaVA version.
PROFILE_MODELS = {
    "tiny": {"v1": "tiny-llava-v1", "v1.5": "tiny-llava-1.5", "v1.6": "tiny-llava-v1.6"},
    "full": {"v1": "llava-v1-7b", "v1.5": "llava-1.5-7b", "v1.6": "llava-v1.6-mistral-7b"},
}


def _check(profile: str, source: str) -> str:
    if profile not in PROFILES:
        raise ProfileError(
            f"unknown profile {profile!r} from {source}; choose one of {', '.join(PROFILES)} "
            f"(e.g. {ENV_VAR}=tiny or --profile tiny)"
        )
    return profile


def profile_from_argv(argv: Sequence[str]) -> str | None:
    """The value of ``--profile X`` or ``--profile=X`` in ``argv``, or None."""
    for i, arg in enumerate(argv):
        if arg == "--profile":
            if i + 1 >= len(argv):
                raise ProfileError(f"--profile needs a value: one of {', '.join(PROFILES)}")
            return _check(argv[i + 1], "--profile")
        if arg.startswith("--profile="):
            return _check(arg.split("=", 1)[1], "--profile")
    return None


def get_profile(argv: Sequence[str] | None = None) -> str:
    """The active profile: ``--profile`` in ``argv`` if given, else ``$LLAVA_NB_PROFILE``, else ``tiny``."""
    if argv is not None:
        from_flag = profile_from_argv(argv)
        if from_flag is not None:
            return from_flag
    return _check(os.environ.get(ENV_VAR, "tiny"), f"${ENV_VAR}")


def profile_model(version: str, profile: str | None = None) -> str:
    """The model name the active (or given) profile uses for a LLaVA version: ``"v1"``, ``"v1.5"`` or ``"v1.6"``."""
    profile = _check(profile, "the profile argument") if profile else get_profile()
    models = PROFILE_MODELS[profile]
    if version not in models:
        raise ProfileError(f"unknown LLaVA version {version!r}; choose one of {', '.join(models)}")
    return models[version]


def model_and_processor(version: str, profile: str | None = None):
    """The model and processor a chapter uses for a LLaVA version under the active profile.

    ``tiny``: the tiny model with random weights (seed 0) and the locally built processor, on CPU.
    ``full``: the public checkpoint from the Hub in bfloat16 with ``device_map="auto"`` (needs a GPU and the
    weights, downloaded or cached), and its own processor.
    """
    from .architectures import build_model, hub_id, load_model
    from .processors import build_processor, load_processor

    profile = _check(profile, "the profile argument") if profile else get_profile()
    name = profile_model(version, profile)
    if profile == "tiny":
        return build_model(name, seed=0).eval(), build_processor(name)
    source = hub_id(name)
    if source is None:
        raise ProfileError(f"{name} has no public transformers checkpoint; the full profile cannot load it")
    import torch

    return load_model(source, dtype=torch.bfloat16, device_map="auto").eval(), load_processor(source)
