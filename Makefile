# ptmpack: `make demo` runs the main job on a bundled model, `make test` runs the suite.
# Both set up the virtualenv on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PTMPACK := $(VENV)/bin/ptmpack
STAMP := $(VENV)/.installed-dev
DEMO := demo-out

.PHONY: install demo test test-no-torch lint fuzz bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,ir,distribution]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(PTMPACK) init $(DEMO)/tree --from-hf fixtures/tiny-bert --name tiny-bert
	$(PTMPACK) pack $(DEMO)/tree -o $(DEMO)/tiny-bert.ptm
	$(PTMPACK) pack $(DEMO)/tree -o $(DEMO)/tiny-bert.zstd.ptm --compress zstd
	$(PTMPACK) inspect $(DEMO)/tiny-bert.ptm --tensors
	$(PTMPACK) verify $(DEMO)/tiny-bert.zstd.ptm
	$(PTMPACK) unpack $(DEMO)/tiny-bert.zstd.ptm -o $(DEMO)/unpacked
	diff -r $(DEMO)/tree $(DEMO)/unpacked
	$(PTMPACK) graph check $(DEMO)/tiny-bert.zstd.ptm
	$(PTMPACK) run $(DEMO)/tiny-bert.zstd.ptm --tokens 2,7,8,9,3
	@echo "demo: packed, inspected, verified, unpacked (byte-exact), checked and ran $(DEMO)/tiny-bert.zstd.ptm"

test: lint
	$(PY) -m pytest -q

# The torch-optional paths in a venv that really lacks torch: numpy methods run, torch methods
# exit 6 with the install hint. CI runs this right after `make install`, before it adds torch.
test-no-torch: $(STAMP)
	@if $(PY) -c 'import torch' 2>/dev/null; then echo "test-no-torch: torch is importable in $(VENV); run it in a venv without torch" >&2; exit 1; fi
	$(PY) -m pytest -q -p no:cacheprovider tests/compress tests/ir tests/cli

# ruff, and the import contract (cli → api → engines → storage → leaves; nothing points up).
lint: $(STAMP)
	$(PY) -m ruff check ptmpack tests bench fuzz fixtures
	$(PY) -m pytest -q -p no:cacheprovider tests/architecture

bench: $(STAMP)
	$(PY) bench/run.py

# The long reader fuzzer (coverage-guided with atheris when it installs; random mutation otherwise).
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	-$(PY) -m pip install --quiet atheris
	$(PY) fuzz/fuzz_reader.py --seconds $(FUZZ_SECONDS) --out .cache/fuzz

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache .hypothesis
