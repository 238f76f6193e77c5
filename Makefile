# Everything starts from nothing but python3: the first target that needs the
# environment creates .venv, installs the pinned CPU torch first (so the range in
# pyproject.toml is already satisfied and pip pulls no CUDA wheels), then nfit.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: venv demo test docs bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,ray,docs]"
	touch $(STAMP)

# The demo: the default fit (gauss sigma 10, held-out pixels, early stopping) on a
# half-size copy of kodim23, at most 1000 steps and 30 s of training, so it ends within a
# minute on a 2-core CPU with or without fast bf16; the full-size default fit is the same
# command on samples/kodim23.png.
demo: $(STAMP)
	$(VENV)/bin/nfit image samples/kodim23-384.png --steps 1000 --time-budget 30s --out runs/demo --force
	@echo "look in runs/demo/: report.html (open it in a browser: truth, fit and error with a slider, the curves),"
	@echo "recon.png, error.png, curve.png (held-out PSNR by step: the fit keeps its best step),"
	@echo "report.json (scores, best_step, why it stopped), model.safetensors"

test: $(STAMP)
	$(PY) -m pytest

# the manual: docs/ built into site/; --strict turns a broken link or reference into a failure
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# Every benchmark within a time limit each; bf16 only where the CPU runs it natively.
# BENCH_ARGS="--quick --limit 300" shortens it; "--fp32-only" checks the path of a CPU
# without fast bf16 on any CPU.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check nfit tests bench
	$(VENV)/bin/mypy nfit
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs site .pytest_cache .mypy_cache .ruff_cache
