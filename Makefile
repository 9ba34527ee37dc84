# Two commands do all set-up:  `make book`  and  `make test`.
#   make TORCH=system book   keeps the torch already installed in $(PYTHON) (e.g. a CUDA build)
#   make PROFILE=full book   runs the chapters on real checkpoints (GPUs; the weights from the Hub, or from
#                            LLAVA_NB_CHECKPOINTS=DIR: see the "Running on GPUs" page); PROFILE=full test likewise

PYTHON  ?= python3
TORCH   ?= pinned
PROFILE ?= tiny
# JOBS=N runs the unit tests and the chapters in N pytest-xdist workers (a file's tests stay on one worker); 1, the
# default, runs them in one process, as CI does on its 2 cores
JOBS    ?= 1
# (pytest-benchmark, where TORCH=system's site-packages bring it, turns xdist's presence into a warning, an error here)
XDIST   := $(if $(filter-out 1,$(JOBS)),-n $(JOBS) --dist loadfile -p no:benchmark,)
# and each unit-test worker's torch gets its share of the cores (unless OMP_NUM_THREADS is set): N workers at a thread
# per core each oversubscribe the machine N times over (on 16 cores, JOBS=8: 1041 s, with the share: 515 s). The
# chapters keep every core: with the share, 8 at a time on one H200 had 10 of 12 done after ~850 s, against 11 of 12
# in 210 s without it (data/gpu/test_runs.jsonl, runs 6 and 5; chapters 07 and 08 also train runs of their own now)
XDIST_ENV := $(if $(filter-out 1,$(JOBS)),OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(( $$(nproc) / $(JOBS) > 0 ? $$(nproc) / $(JOBS) : 1 ))},)
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(TORCH)
CHAPTERS := $(sort $(wildcard book/*.ipynb))
# not under _build: nbmake skips every notebook whose path has a _build folder. Each profile executes into its own
# folder, and only the tiny profile's chapters go into Jupyter Book's cache (whose key is a chapter's code, whatever
# the profile): a full-profile run never shows up in the tiny book, nor the other way round.
EXECUTED := build/executed$(if $(filter tiny,$(PROFILE)),,-$(PROFILE))

export LLAVA_NB_PROFILE := $(PROFILE)
# WHEELS=DIR installs offline, from the wheels (and DeepSpeed's sdist) in DIR: pip reads these two variables
ifdef WHEELS
export PIP_NO_INDEX := 1
export PIP_FIND_LINKS := $(abspath $(WHEELS))
endif
# The tiny profile is the CPU profile: its chapters run with every GPU hidden, the same test on any machine (a
# chapter's two CPU processes would otherwise ask for two GPUs). The full profile's chapters use the GPUs.
CHAPTER_GPUS := $(if $(filter tiny,$(PROFILE)),CUDA_VISIBLE_DEVICES=,)
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONHASHSEED := 0
# No MPLBACKEND here: set to Agg it would replace the kernels' inline backend, and the chapters' figures would not
# appear in the book (the browser test counts them).

.PHONY: all venv book test unit notebooks built-book browser bench data constraints clean

all: test

venv: $(STAMP)

# The stamp records what was installed; the venv is refreshed only when pyproject.toml or constraints.txt change,
# and rebuilt when TORCH switches between pinned and system. TORCH=system creates the venv with the same
# interpreter and appends the site-packages folder that holds its torch to the venv's path (a .pth file), so the
# venv's own pins come first and torch, with its CUDA libraries, comes from where it is installed. This works
# whether that torch lives in the system Python, a conda env or another venv.
$(STAMP): pyproject.toml constraints.txt
	@if [ -d $(VENV) ] && [ ! -f $(STAMP) ] && ls $(VENV)/.installed-* >/dev/null 2>&1; then \
		echo "TORCH changed: recreating $(VENV)"; rm -rf $(VENV); fi
	@if [ "$(TORCH)" = system ]; then \
		site=$$($(PYTHON) -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))") || \
		{ echo "TORCH=system needs torch importable from PYTHON=$(PYTHON)"; exit 1; }; \
		version=$$($(PYTHON) -c "import importlib.metadata as m; print(m.version('torch'))"); \
		echo "using the installed torch $$version from $$site"; \
		test -x $(PY) || $(PYTHON) -m venv $(VENV); \
		echo "$$site" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_system_torch.pth"; \
		{ grep -v '^torch==' constraints.txt; echo "torch==$$version"; } > $(VENV)/constraints.txt; \
	else \
		test -x $(PY) || $(PYTHON) -m venv $(VENV); \
		cp constraints.txt $(VENV)/constraints.txt; \
	fi
	@# DeepSpeed is an sdist whose build imports torch: install torch first, then build DeepSpeed against it.
	$(PY) -m pip install -q --disable-pip-version-check -c $(VENV)/constraints.txt torch setuptools wheel
	$(PY) -m pip install -q --disable-pip-version-check -c $(VENV)/constraints.txt --no-build-isolation deepspeed
	$(PY) -m pip install -q --disable-pip-version-check -c $(VENV)/constraints.txt -e '.[book]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

# Execute every chapter (cached) and build the HTML book into _build/html; warnings are errors. The cache
# (_build/.jupyter_cache) also holds the chapters `make test` (notebooks) executed: after it, only chapters whose code
# changed since are executed again.
book: venv
ifeq ($(PROFILE),tiny)
	$(CHAPTER_GPUS) $(VENV)/bin/jupyter-book build . --warningiserror --nitpick --keep-going
else
	$(MAKE) notebooks built-book  # its own execution into $(EXECUTED), the HTML in $(EXECUTED)/_build/html
endif

# Unit tests; every chapter under nbmake; the HTML book built from the chapters nbmake has just executed (each runs
# once); then every page of that book checked in headless Chromium, offline (skipped without Chromium, see README).
test: unit notebooks built-book browser

# The CPU suite runs with every GPU hidden and in the tiny profile, so that it is the same test on any machine and
# under any PROFILE (its runs are CPU processes over gloo, two of them where a test asks for two); then the tests
# marked gpu run a few real steps of each method on every GPU (tests/test_gpu.py; skipped without CUDA).
# Both parts run whatever the first's outcome (one recipe line stops at its first failure, even under make -k).
unit: venv
	CUDA_VISIBLE_DEVICES= LLAVA_NB_PROFILE=tiny MPLBACKEND=Agg $(XDIST_ENV) $(PY) -m pytest -q $(XDIST) -m "not gpu" tests; \
		cpu=$$?; MPLBACKEND=Agg $(PY) -m pytest -q -p no:cacheprovider -m gpu tests && exit $$cpu

# nbmake executes copies of the chapters in $(EXECUTED)/book and writes their outputs there (--overwrite); then
# every chapter that ran to its end goes into Jupyter Book's execution cache, for `make book` (even when another failed).
# --nbmake-timeout is per cell, as _config.yml's timeout: a guard against a hung cell, above chapter 04's tiny stage 2
# on a 2-core CPU without bf16 instructions (README).
notebooks: venv
	$(PY) book/_ext/book_build.py copy $(EXECUTED) > /dev/null
	$(CHAPTER_GPUS) $(PY) -m pytest -q $(XDIST) --nbmake --overwrite --nbmake-timeout=1800 -p no:cacheprovider $(EXECUTED)/book/*.ipynb; \
		status=$$?; $(if $(filter tiny,$(PROFILE)),$(PY) book/_ext/book_build.py cache $(EXECUTED) && ,)exit $$status

built-book: venv
	$(CHAPTER_GPUS) $(VENV)/bin/jupyter-book build $(EXECUTED) --warningiserror --nitpick --keep-going

browser: venv
	LLAVA_NB_BUILT_BOOK=$(EXECUTED)/_build/html $(PY) -m pytest -q -p no:cacheprovider tests/test_built_book.py

# Time the tiny pipeline from nothing (data/benchmarks/tiny_pipeline.json), its stages with other seeds
# (tiny_seeds.json), one CPU training step by attention kernel and precision (cpu_step_time.json), the memory
# calculator, the start-up of the pure commands (cli.json) and each chapter's execution (chapters.json).
bench: venv
	$(PY) -m llava_nb.lab.bench pipeline
	$(PY) -m llava_nb.lab.bench seeds
	$(PY) -m llava_nb.lab.bench step-time
	$(PY) -m llava_nb.lab.bench memory
	$(PY) -m llava_nb.lab.bench cli
	$(PY) -m llava_nb.lab.bench_live
	$(PY) -m llava_nb.lab.bench $(CHAPTERS)

# Regenerate committed artefacts: the data sample, the tiny tokenizer, then the pretrained tiny ViT and LLM
# (which depend on it).
data: venv
	$(PY) -m llava_nb regenerate sample
	$(PY) -m llava_nb regenerate tokenizer
	$(PY) -m llava_nb regenerate parts

# Re-pin after a deliberate upgrade: freeze the venv into constraints.txt (keeps the header).
constraints: venv
	@{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v -i -E '^(llava|-e |pip==|setuptools==|wheel==)' | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/'; } > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf _build build .pytest_cache
