# Everything runs in a project-local virtualenv so a fresh machine needs only python3.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_CKPT ?= fixtures/demo/resnet18_acnet
DEMO_OUT ?= build/resnet18_deploy

.PHONY: install install-test demo test bench clean

# the package and what it runs on (Paddle, onnx, ONNX Runtime): what `make demo` needs
$(BIN)/acnet-convert: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# and the test extras (pytest, hypothesis, OpenVINO, torch, ...), at the versions the suite pins
$(VENV)/.test-extras: $(BIN)/acnet-convert
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/acnet-convert

install-test: $(VENV)/.test-extras

# trained on small images to be quick: the weights do not depend on the input size
$(DEMO_CKPT): | install
	$(BIN)/python fixtures/make_checkpoint.py make $(DEMO_CKPT) --depth 18 --classes 1000 --format vars --input-size 64

demo: install $(DEMO_CKPT)
	mkdir -p $(dir $(DEMO_OUT))
	$(BIN)/acnet-convert fuse $(DEMO_CKPT) $(DEMO_OUT) --onnx --force
	$(BIN)/acnet-convert verify $(DEMO_OUT)

# one worker per CPU (tests/conftest.py pins each to its own); a file's tests share a worker and its fixtures
test: install-test
	$(BIN)/python -m pytest -q -n auto --dist loadfile

bench: install-test
	$(BIN)/python bench/run_all.py

clean:
	rm -rf build .pytest_cache fixtures/demo
