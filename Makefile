# Two entry points, each working on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
# The lock holds the tested versions of everything, torch included; make installs torch's CPU build
# of that version here. On a GPU machine pick your build with e.g. TORCH=torch (a CUDA build).
TORCH_VERSION := $(shell sed -n 's/^torch==//p' $(LOCK))
TORCH ?= torch==$(TORCH_VERSION)
DEMO_DATA := data/shakespeare_char
DEMO_OUT := out/shakespeare_char_cpu
TEST_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline

.PHONY: setup demo test bench lint lock

setup: $(BIN)/.installed

# The locked versions: $(LOCK) is a constraints file, so pip installs exactly those versions of
# whatever the project needs. torch comes first, alone, so that TORCH can choose its build.
$(BIN)/.installed: pyproject.toml $(LOCK)
	@echo "setup: creating $(VENV) and installing the locked versions of $(LOCK) (about 2 minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	@echo "setup: installing $(TORCH)"
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH)"
	@echo "setup: installing the project and its locked dependencies"
	grep -v '^torch==' $(LOCK) > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt -e ".[dev,bench,hf]"
	@# what tests/test_locked_versions.py checks the environment against
	printf '%s\n%s\n' "$$(sha256sum $(LOCK) | cut -d' ' -f1)" "$(TORCH)" > $(VENV)/installed-from-lock
	touch $@
	@echo "setup: done"

# Refresh the lock to the newest versions pyproject.toml allows (torch stays at TORCH_VERSION), for
# the platform CI runs on; then run `make test`, and commit $(LOCK) if it passes.
lock: setup
	printf 'torch==%s\n' "$(TORCH_VERSION)" > $(VENV)/torch-pin.txt
	$(BIN)/uv pip compile pyproject.toml --all-extras --upgrade --constraints $(VENV)/torch-pin.txt \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
		--quiet -o $(LOCK)

# Prepare the bundled corpus, train a small character model on the CPU, print a sample, score the
# model on the held-out test split and write the report ($(DEMO_OUT)/report/report.md).
demo: setup
	$(BIN)/python -m data_prep --input data/tinyshakespeare.txt --tokenizer char --out $(DEMO_DATA) --overwrite
	$(BIN)/python train.py configs/shakespeare_char_cpu.yaml train.out_dir=$(DEMO_OUT)
	$(BIN)/python sample.py --checkpoint $(DEMO_OUT) --prompt "ROMEO:" --max-new-tokens 500 --seed 1
	$(BIN)/python -m gpt.evaluate $(DEMO_OUT) --split test --json
	$(BIN)/python -m gpt.report $(DEMO_OUT)

# The suite on every core (pytest-xdist); tests/conftest.py gives each worker its own ports and folders.
# worksteal: a worker that runs out of tests takes some of the other's, so no long test ends alone.
test: setup
	$(TEST_ENV) $(BIN)/python -m pytest -q -n auto --dist worksteal

bench: setup
	$(BIN)/python -m bench.run_all

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
