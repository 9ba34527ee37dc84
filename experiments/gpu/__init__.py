"""The GPU experiments behind the book's committed measurements, one module each, run from the repository root::

    python -m experiments.gpu --help
    python -m experiments.gpu <experiment> [options]

Each module is named after the data file it writes (``engines_gpu`` -> ``data/gpu/engines_gpu.jsonl``,
``memory_gpu`` -> ``data/measurements/memory_gpu.jsonl``, ...), defines ``add_arguments(parser)`` and
``main(args)``, and imports neither torch nor ``llava_nb`` until ``main`` runs (see ``common``).
"""
