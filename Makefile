# kdmobile: `make demo` (set up + the main job on the embedded default) and `make test` (set up + the suite).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
KD     := $(VENV)/bin/kdmobile
STAMP  := $(VENV)/.kdmobile-installed
DEMO   ?= runs/demo-ammkd

.PHONY: venv demo test test-slow clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)
	$(KD) train ammkd --out $(dir $(DEMO)) --name $(notdir $(DEMO))
	@echo "outputs: $(DEMO)/ (metrics.json, student.pt, teachers/, class_vectors.npz, log.jsonl)"

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs bundles .pytest_cache
