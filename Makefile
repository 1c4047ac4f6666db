# Two commands: `make demo` (train, analyse, serve) and `make test` (lint, types, every test).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PRESET ?= demo

.PHONY: install demo test test-sae-avx2 lint bench serve wheel clean

install: $(VENV)/.installed

# torch is installed first and pinned: its CPU wheel (a looser range pulls a multi-GB CUDA build).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,corpus,postgres,hf]"
	touch $@

demo: install
	$(BIN)/monosemantic demo --preset $(PRESET)

serve: install
	$(BIN)/monosemantic serve

# Security: bandit over the shipped code (each finding fixed or justified in place with `# nosec`),
# and a dependency audit, online or against the pinned snapshot tools/advisories.json.
lint: install
	$(BIN)/ruff check monosemantic trainer app tests bench tools setup.py
	$(BIN)/ruff format --check monosemantic trainer app tests bench tools setup.py
	$(BIN)/mypy
	$(BIN)/bandit -q -r monosemantic trainer app tools
	$(PY) tools/audit_deps.py

test: lint
	$(BIN)/pytest
	$(MAKE) test-sae-avx2

# The SAE tests again on other CPU kernels, so that no statistical bound is tuned to one CPU (a bound
# that held on AMD failed on an Intel AMX machine, issue 22): PyTorch's AVX2 kernels in place of
# AVX-512, and oneDNN's AVX2 bf16 matmul (bf16 emulated in fp32) in place of AVX512-BF16 / AMX.
test-sae-avx2: install
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/pytest tests/trainer/sae

# The sdist and the wheel a release ships, in dist/ (tests/test_wheel.py installs one and serves it).
wheel: install
	$(PY) -m build --outdir dist

bench: install
	for script in bench/bench_*.py; do $(PY) $$script; done

clean:
	rm -rf runs dist $(VENV)
