# The two commands: `make train` and `make test`. Each builds .venv when it is
# missing (or when setup.py / requirements.lock changed) and reuses it after.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONDONTWRITEBYTECODE ?= 1

.PHONY: train test lint format bench bench-gpu .venv clean

$(STAMP): setup.py requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

.venv: $(STAMP)

MODEL_DIR ?= runs/quickstart

train: $(STAMP)
	$(BIN)/t5lite data prepare
	$(BIN)/python -m t5lite.train --gin_file=experiments/quickstart.gin --gin.MODEL_DIR=\"$(MODEL_DIR)\"

# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file whole in one of them
# (--dist loadfile: module fixtures such as a shared training run are built once); 0 runs it in
# this process. Most tests are single-threaded compiles, so 2 workers on 2 cores halve the time.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile

# One style for the package (ruff.toml: 2-space indentation, lines up to 120) and
# pyflakes (unused imports, undefined names).
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m t5lite.bench.data --task pydocs_span_corruption --examples 2000
	$(BIN)/python -m t5lite.bench.data --task pydocs_lm --examples 2000
	$(BIN)/python -m t5lite.bench.train_step --preset tiny --batch 8 --inputs 512 --targets 114 --steps 10
	$(BIN)/python -m t5lite.bench.decode --preset tiny --batch 8 --inputs 512 --max_decode_len 64 --methods greedy,beam4
	$(BIN)/t5lite data prepare
	$(BIN)/python -m t5lite.bench.moe --output runs/bench-moe.jsonl

# The one-shot GPU benchmark (docs/performance.md); `--smoke` runs it tiny on the CPU.
bench-gpu: $(STAMP)
	$(BIN)/python -m t5lite.bench.gpu --output runs/bench-gpu.jsonl

clean:
	rm -rf $(VENV) *.egg-info
