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

demo: $(STAMP)
	$(VENV)/bin/nfit image samples/kodim23.png --encoding gauss --sigma 10 --split paper --steps 300 --out runs/demo --force
	@echo "outputs in runs/demo/: report.html (open it in a browser) recon.png error.png curve.png report.json model.safetensors"

test: $(STAMP)
	$(PY) -m pytest

# the manual: docs/ built into site/; --strict turns a broken link or reference into a failure
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(PY) bench/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check nfit tests bench
	$(VENV)/bin/mypy nfit
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs site .pytest_cache .mypy_cache .ruff_cache
