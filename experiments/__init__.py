"""The experiments that produced the book's committed measurements (not part of the installed ``llava_nb``).

Run from the repository root: ``python -m experiments.gpu --help``.
"""
