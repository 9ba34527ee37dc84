"""One command line for the GPU experiments, run from the repository root::

    python -m experiments.gpu <experiment> [options]
    python -m experiments.gpu <experiment> --help

Each experiment appends (or writes) its records under data/, in the file its line below names.
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
from pathlib import Path

#: the sub-commands, each a module of this package named after the data file it writes
EXPERIMENTS = ("activations_gpu", "chapters_gpu", "engines_gpu", "host_gpu", "memory_gpu", "paged_probe", "peft_gpu", "sweep_compute",
               "sweep_data", "sweep_recipe", "sweep_stage2", "tiny_pipeline_gpus", "train_full")


def summary(module) -> str:
    """The first line of ``module``'s docstring: what it measures, and its data file."""
    return module.__doc__.strip().splitlines()[0]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m experiments.gpu``: one sub-command per module in ``EXPERIMENTS``, listed in the
    description one line each (as written: argparse would wrap them), each parsed by its module's
    ``add_arguments`` and run by its ``main``."""
    modules = {name: importlib.import_module(f".{name}", __package__) for name in EXPERIMENTS}
    listing = "\n".join(f"  {name:<20}{summary(module)}" for name, module in modules.items())
    parser = argparse.ArgumentParser(prog="python -m experiments.gpu",
                                     description=f"{__doc__}\nexperiments:\n{listing}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", metavar="DIR", help="scratch folder for caches and stand-in checkpoints, kept "
                        "(default: a new temporary folder, removed when the experiment ends)")
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="<experiment>",
                                help="one of the experiments above; <experiment> --help says more")
    for name, module in modules.items():
        command = sub.add_parser(name, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(run=module.main)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llava_nb-gpu-") as tmp:
        args.work = Path(args.work or tmp)  # every experiment's scratch files go under it
        args.work.mkdir(parents=True, exist_ok=True)
        args.run(args)


if __name__ == "__main__":
    main()
