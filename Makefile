# Two commands on a fresh machine: `make demo` and `make test`. Each environment is set up once, and
# updated only when pyproject.toml changes:
#   .venv       Python 3.10 with every extra (torch, lava, producers, test): the demo, the full suite
#   .venv-core  the newest Python the core supports, without Lava: the suite of everything else
PYTHON ?= python3.10
# Newest first; the first one that runs becomes the core environment's Python. Inside this checkout
# pyenv's `python3.X` shim refuses a version that .python-version (3.10) does not name, so pyenv's
# own interpreters are tried before PATH.
CORE_VERSIONS ?= 3.13 3.12 3.11
CORE_PYTHON ?= $(shell for v in $(CORE_VERSIONS); do \
	for p in $$(ls -d "$$(pyenv root 2>/dev/null)"/versions/$$v.*/bin/python$$v 2>/dev/null | sort -V -r) \
	         "$$(command -v python$$v)"; do \
	  if [ -n "$$p" ] && "$$p" -c 'import venv' >/dev/null 2>&1; then echo "$$p"; exit 0; fi; \
	done; done)

VENV      := .venv
CORE_VENV := .venv-core
# torch is in the core test environment on purpose: the producer tests (models from torch's two
# exporters, Brevitas and onnxruntime's quantize_static) are the bit-exactness checks on real
# producer graphs, and they must also run on the newest onnxruntime, which needs Python >= 3.11.
FULL_EXTRAS := torch,lava,producers,ray,test
CORE_EXTRAS := torch,producers,test
# Extras each suite must find installed (tests/conftest.py): a missing one fails the run, never
# skips its tests.
FULL_REQUIRES := torch,lava,producers,ray
CORE_REQUIRES := torch,producers

# $(call step,VENV,WHAT,COMMAND): one line per set-up step, printed when it ends (the two
# environments are set up side by side); the command's output, pip's warnings included, goes to
# VENV/setup.log and is shown only when the step fails.
step = start=$$(date +%s); \
	if $(3) >>$(1)/setup.log 2>&1; then echo "$(1): $(2): done ($$(( $$(date +%s) - start )) s)"; \
	else echo "$(1): $(2): FAILED"; tail -n 60 $(1)/setup.log; echo "(whole log: $(1)/setup.log)"; exit 1; fi

# $(call setup,VENV,PYTHON,EXTRAS). --no-compile: Python compiles a module when it is first imported;
# compiling all of torch at install time cost 75 s of CPU per environment (measured).
define setup
	@test -x $(1)/bin/python || { mkdir -p $(1) && : > $(1)/setup.log && \
	  $(call step,$(1),create a virtual environment with $$($(2) -V 2>&1),$(2) -m venv $(1)); }
	@: > $(1)/setup.log; $(call step,$(1),upgrade pip,$(1)/bin/python -m pip install --upgrade pip)
	@$(call step,$(1),install pmsm-export[$(3)] in editable mode,$(1)/bin/python -m pip install --no-compile -e '.[$(3)]')
	@$(1)/bin/python -c "$$VERSIONS" $(1)
	@touch $(1)/.installed
endef

# $(call suite,VENV,REQUIRED EXTRAS,PYTEST ARGUMENTS): run in the background, output to VENV/test.log
suite = ( PMSM_TEST_EXTRAS=$(2) $(1)/bin/python -m pytest -q -o cache_dir=$(1)/.pytest_cache $(3) $(PYTEST_ARGS) \
	  >$(1)/test.log 2>&1; echo $$? >$(1)/test.status ) &

# The two suites run side by side, one per core, each with its own log; both logs are printed in
# full when both have finished, and the exit status says whether both passed.
define suites
	@echo "running the full suite ($(VENV)/test.log) and the core suite ($(CORE_VENV)/test.log) side by side ..."
	@$(call suite,$(VENV),$(FULL_REQUIRES),$(1)) $(call suite,$(CORE_VENV),$(CORE_REQUIRES),$(2)) wait; \
	echo "== full suite ($(VENV): every extra)"; cat $(VENV)/test.log; \
	echo "== core suite ($(CORE_VENV): everything that does not need Lava)"; cat $(CORE_VENV)/test.log; \
	test "$$(cat $(VENV)/test.status)" = 0 && test "$$(cat $(CORE_VENV)/test.status)" = 0
endef

# What each environment resolved to: the versions bit-exactness was tested on.
export VERSIONS := import sys, numpy, onnx, onnxruntime; print(f"{sys.argv[1]}: Python {sys.version.split()[0]}, onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, numpy {numpy.__version__}")

.PHONY: demo environments test test-all bench clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; Lava needs Python 3.10 (pyenv reads .python-version)"; exit 2; }
	$(call setup,$(VENV),$(PYTHON),$(FULL_EXTRAS))

$(CORE_VENV)/.installed: pyproject.toml
	@test -n "$(CORE_PYTHON)" || { echo "error: none of Python $(CORE_VERSIONS) found for $(CORE_VENV): install one (pyenv install 3.13) or give make CORE_PYTHON=/path/to/python3"; exit 2; }
	$(call setup,$(CORE_VENV),$(CORE_PYTHON),$(CORE_EXTRAS))

demo: $(VENV)/.installed
	@mkdir -p out
	$(VENV)/bin/pmsm-export samples/digits_cnn_pmsm_L2.onnx --target lava --verify \
		--data samples/digits_test.npz --timesteps 1,2 -o out/digits_cnn_pmsm_L2.nir --report out/report.json

# Both environments are set up side by side (`-j2`): the downloads overlap.
environments:
	@$(MAKE) -s --no-print-directory -j2 $(VENV)/.installed $(CORE_VENV)/.installed

test: environments
	$(call suites,,-m 'not slow and not lava')

test-all: environments
	$(call suites,-m '',-m 'not lava')

bench: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/run.py
	$(VENV)/bin/python benchmarks/reference_speed.py
	$(VENV)/bin/python benchmarks/vit.py
	$(VENV)/bin/python benchmarks/lean.py speed
	$(VENV)/bin/python benchmarks/lean.py startup
	$(VENV)/bin/python benchmarks/lean.py report
	$(VENV)/bin/python benchmarks/lava_speed.py
	$(VENV)/bin/python benchmarks/lava_interrupt.py
	$(VENV)/bin/python benchmarks/input_checks.py
	$(VENV)/bin/python benchmarks/verify_scale.py
	$(VENV)/bin/python benchmarks/verify_scale.py memory

clean:
	rm -rf $(VENV) $(CORE_VENV) out .pytest_cache
