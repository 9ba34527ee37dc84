#!/usr/bin/env bash
# `make TORCH=system PROFILE=full test` on a GPU machine as one command, against a local random-weight stand-in.
#
#   experiments/gpu/full_test.sh WHEELS LOGS [JOBS]
#
# WHEELS holds the pinned wheels and DeepSpeed's sdist (the lent machines reach no package index); LOGS receives
# venv.log, checkpoint.log, test.log (make's whole output), seconds and rc. The venv keeps the machine's CUDA torch
# (TORCH=system); the full profile's chapters load llava-1.5-7b from LLAVA_NB_CHECKPOINTS, written by make-checkpoint.
# `make -k` goes on past a failed part, so that one run reports on all four (unit, notebooks, built-book, browser).
# The built book's offline assets come from the npm registry once (`python book/_ext/book_assets.py`): on a machine
# that reaches none, copy this checkout's .cache/book-assets there first (e.g. as a tar.xz beside the wheels).
set -u
wheels=$1 logs=$2 jobs=${3:-6}
mkdir -p "$logs"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export LLAVA_NB_CHECKPOINTS=${LLAVA_NB_CHECKPOINTS:-/tmp/ckpt}
python=${PYTHON:-/opt/torch/.venv/bin/python3}
[ -f .cache/book-assets/vendor/.pins ] || echo "no .cache/book-assets here: built-book will try the npm registry" >&2
make TORCH=system WHEELS="$wheels" PYTHON="$python" venv > "$logs/venv.log" 2>&1 || { echo venv > "$logs/rc"; exit 1; }
if [ ! -d "$LLAVA_NB_CHECKPOINTS/llava-hf/llava-1.5-7b-hf" ]; then
  .venv/bin/python -m llava_nb make-checkpoint --like llava-1.5-7b \
    --out "$LLAVA_NB_CHECKPOINTS/llava-hf/llava-1.5-7b-hf" > "$logs/checkpoint.log" 2>&1 || { echo checkpoint > "$logs/rc"; exit 1; }
fi
start=$(date +%s)
make -k TORCH=system WHEELS="$wheels" PYTHON="$python" PROFILE=full JOBS="$jobs" test > "$logs/test.log" 2>&1
rc=$?
echo $(( $(date +%s) - start )) > "$logs/seconds"
.venv/bin/python -c "from llava_nb.lab.harness import versions; import json; print(json.dumps(versions()))" \
  > "$logs/versions.json" 2>&1
echo $rc > "$logs/rc"
