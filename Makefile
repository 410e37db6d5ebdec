# Two entry points, each working on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel keeps the install small here; on a GPU machine use e.g. TORCH=torch (a CUDA build).
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_DATA := data/shakespeare_char
DEMO_OUT := out/shakespeare_char_cpu

.PHONY: setup demo test bench lint

setup: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	@echo "setup: a virtual environment in $(VENV), once (a few minutes)"
	$(PYTHON) -m venv $(VENV)
	@echo "setup: installing $(TORCH)"
	$(BIN)/pip install --quiet "$(TORCH)"
	@echo "setup: installing the project and its dependencies"
	$(BIN)/pip install --quiet -e ".[dev,bench,hf]"
	touch $@
	@echo "setup: done"

# Prepare the bundled corpus, train a small character model on the CPU, print a sample, score the
# model on the held-out test split and write the report ($(DEMO_OUT)/report/report.md).
demo: setup
	$(BIN)/python -m data_prep --input data/tinyshakespeare.txt --tokenizer char --out $(DEMO_DATA) --overwrite
	$(BIN)/python train.py configs/shakespeare_char_cpu.yaml train.out_dir=$(DEMO_OUT)
	$(BIN)/python sample.py --checkpoint $(DEMO_OUT) --prompt "ROMEO:" --max-new-tokens 500 --seed 1
	$(BIN)/python -m gpt.evaluate $(DEMO_OUT) --split test --json
	$(BIN)/python -m gpt.report $(DEMO_OUT)

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m bench.run_all

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
