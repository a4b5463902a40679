# Two commands a new user needs: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install demo test test-other-cpu browser docs clean

install: $(VENV)/.installed

# constraints.txt pins the tested set (torch 2.14.1 + torchvision 0.29.1 install quickly
# here; an unpinned torch would pull the newest release and several GB more).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,lite]'
	touch $@

# The integrations' extras (export formats: OpenVINO, TFLite, Core ML, Triton; Ray; MLflow; W&B), so that their
# tests run: `make test` adds them, `make demo` does not need them (TensorFlow alone is about 2 GB).
$(VENV)/.installed-extras: $(VENV)/.installed pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,lite,deploy,ray,mlflow,wandb]'
	touch $@

demo: install
	$(BIN)/imgclass demo

# -rs: the summary names any skipped test and why (the browser test, when Chromium is missing)
# The int8 tests run in a pytest process of their own: with NNCF's and ONNX Runtime's quantization loaded into the
# one long test process, it died by SIGSEGV at a later test (three runs, 2026-12-02; not seen in any user command).
# The main run is spread over 2 processes (pytest-xdist), each test file whole in one of them (--dist loadfile: a
# file's module fixtures are built once): 12.5 min in one process, 8.0 min in two on machine A's 2 cores (much of
# a test's time is a child process starting, a kernel, a server, or waiting on one), 2026-12-02.
test: install $(VENV)/.installed-extras browser
	$(BIN)/python -m pytest -q -rs -n 2 --dist loadfile --ignore=tests/prediction/test_quantize.py
	$(BIN)/python -m pytest -q -rs tests/prediction/test_quantize.py

# The quick suite as a CPU without AVX-512 computes it (the AMD EPYC kind without AVX-512 or bf16 this project has
# met): PyTorch's, oneDNN's and MKL's AVX2 kernels selected on whatever CPU runs it, so a machine with AVX-512 or AMX
# sees the last bits another kind of machine computes (tests compare floats with tolerances sized to the precision
# in play, never bitwise across kernels). OTHER_CPU=default selects PyTorch's plain kernels instead. The tests that
# compute no float kernels (the data layer's readers and decoders, the service's HTTP guards, fuzzing) are left out:
# they compute alike on every CPU, and CI stays under 20 minutes (the whole quick suite took 4.4 min here).
OTHER_CPU ?= avx2
NO_KERNELS := --ignore=tests/prediction/test_quantize.py --ignore=tests/data --ignore=tests/serving/test_fuzz.py \
	--ignore=tests/serving/test_guard.py --ignore=tests/serving/test_protocol.py --ignore=tests/serving/test_batcher.py
test-other-cpu: install $(VENV)/.installed-extras
	ATEN_CPU_CAPABILITY=$(OTHER_CPU) ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
	  $(BIN)/python -m pytest -q -rs -n 2 --dist loadfile -m "not slow" $(NO_KERNELS)

# The documentation site from docs/ (mkdocs.yml) into site/, offline, with --strict: a broken link, a missing page or
# an API reference that no longer resolves fails the build. The CLI reference is generated from the parser (docs/hooks.py).
$(VENV)/.installed-docs: $(VENV)/.installed pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,lite,docs]'
	touch $@

docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# Debian's Chromium for the end-to-end test of the upload page: installed when missing and this user may
# (root, or sudo without a password); otherwise that one test is skipped and says how to enable it.
# .ci/run sets IMGCLASS_REQUIRE_BROWSER=1, which turns the skip into a failure.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "note: could not install chromium; the browser test will be skipped"; \
	elif sudo -n true 2>/dev/null; then \
	  (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "note: could not install chromium; the browser test will be skipped"; \
	else echo "note: Chromium is not installed (sudo apt-get install chromium enables the browser test)"; fi

clean:
	rm -rf $(VENV) runs demo-data
