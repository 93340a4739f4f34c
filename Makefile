# Two commands on a fresh machine: `make demo` and `make test`. Both provision .venv once.
PYTHON ?= python3.10
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; Lava needs Python 3.10 (pyenv reads .python-version)"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	@mkdir -p out
	$(BIN)/pmsm-export samples/digits_cnn_pmsm_L2.onnx --target lava --verify \
		--data samples/digits_test.npz --timesteps 1,2 -o out/digits_cnn_pmsm_L2.nir --report out/report.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/vit.py
	$(BIN)/python benchmarks/lava_speed.py

clean:
	rm -rf $(VENV) out .pytest_cache
