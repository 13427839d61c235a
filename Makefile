# kdmobile: `make demo` (set up + the main job on the embedded default) and `make test` (set up + the suite).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
KD     := $(VENV)/bin/kdmobile
STAMP  := $(VENV)/.kdmobile-installed
DEMO   ?= runs/demo-ammkd

.PHONY: venv demo test test-slow clean android-tools web-demo android apk tmux

# The environment takes ~7.5 GB (torch 2.14.1 from PyPI is a CUDA build): check the disk first for a one-line error
# instead of pip's OSError halfway; --no-cache-dir keeps pip from storing a second copy of what it downloads.
MIN_FREE_KB ?= 8000000
$(STAMP): pyproject.toml constraints.txt
	@free=$$(df -Pk . | awk 'NR==2 {print $$4}'); if [ "$$free" -lt $(MIN_FREE_KB) ]; then \
		echo "kdmobile: setting up .venv needs about 8 GB of free disk here; $$((free / 1048576)) GB free" >&2; exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir --upgrade pip
	$(PY) -m pip install --quiet --no-cache-dir -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

NAME   := $(notdir $(DEMO))

# The main job: distil on the embedded dataset -> export ONNX and TFLite, fp32 and int8 -> benchmark vs teachers.
demo: $(STAMP)
	rm -rf $(DEMO) bundles/$(NAME)-* bench/$(NAME)
	$(KD) train ammkd --out $(dir $(DEMO)) --name $(NAME)
	$(KD) export $(DEMO) --target onnx,tflite --precision fp32,int8 --out bundles
	$(KD) bench $(DEMO) --runs 100 --out bench/$(NAME)
	@echo "outputs: $(DEMO)/ (run: metrics.json, student.safetensors, teachers/), bundles/$(NAME)-*/ (bundles),"
	@echo "         bench/$(NAME)/ (report.md, report.json, latency_vs_accuracy.png)"

# Android demo tools (apt + bullseye dx/android.jar + npm ci), idempotent: checks before installing.
android-tools:
	android_demo/tools.sh

# The terminal acceptance test (tests/test_terminal_tmux.py) drives the CLI in tmux; install it once if missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
tmux:
	@command -v tmux >/dev/null 2>&1 || $(SUDO) apt-get install -y tmux || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y tmux)

# `make test` runs the whole suite, which includes the Android demo's JVM tests, the page in headless Chromium and
# the APK build + apksigner/aapt checks (tests/test_android_demo.py); CI=1 makes a missing tool a failure.
test: $(STAMP) android-tools tmux
	CI=$${CI:-1} $(PY) -m pytest -q

# Serve the inference page with the demo's ONNX bundles on 127.0.0.1 (prints the address).
WEB_BUNDLES ?= $(wildcard bundles/$(NAME)-onnx-*)
web-demo: $(STAMP) android-tools
	$(PY) android_demo/serve.py $(WEB_BUNDLES)

# Copy the demo's ONNX bundles into the app's assets and build the signed debug APK (android_demo/build/).
android: $(STAMP) android-tools
	$(PY) -m kdmobile.export.android android_demo/app/assets $(WEB_BUNDLES)
	android_demo/build_apk.sh

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs bundles .pytest_cache android_demo/build
