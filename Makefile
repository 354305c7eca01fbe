# QLoRA fine-tuning pipeline. Every target takes CONFIG=<profile> (default configs/tiny.yaml) and
# SET="section.field=value ..." overrides; each is one command you could also type yourself.
SHELL := /bin/bash
.DEFAULT_GOAL := help
.NOTPARALLEL:

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/tiny.yaml
SET ?=
MODEL ?= new_model
PROMPT ?=
PROMPTS_FILE ?=
HUB_REPO ?=
BENCH ?=
NPROC ?= 1
ACCELERATE_CONFIG ?=
ARGS = --config $(CONFIG) $(foreach override,$(SET),--set $(override))
STAGE = $(PY) -m $(1) $(ARGS)
# Training on several processes: torchrun (CPU or GPU), or `accelerate launch` with ACCELERATE_CONFIG.
TRAIN_LAUNCH = $(if $(ACCELERATE_CONFIG),$(VENV)/bin/accelerate launch --config_file $(ACCELERATE_CONFIG) \
	--num_processes $(NPROC) -m,$(if $(filter-out 1,$(NPROC)),$(PY) -m torch.distributed.run --standalone \
	--nproc_per_node $(NPROC) -m,$(PY) -m))

export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: help install base data train merge push push-data push-if-configured infer chat compare all test bench lint \
	clean distclean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed ## create .venv and install the pinned requirements and this project

base: install ## build the embedded base model (offline, cached; nothing to do for a Hub model)
	$(call STAGE,fine_tune.base)

data: install ## curate the configured sources into runs/<run>/dataset
	$(call STAGE,data_prep)

train: install ## QLoRA fine-tuning into runs/<run>/adapter (resumes; NPROC=N for N processes)
	$(TRAIN_LAUNCH) fine_tune.train $(ARGS)

merge: install ## merge the adapter into a 16-bit base: runs/<run>/merged
	$(call STAGE,fine_tune.merge)

push: install ## push the adapter (and merged model with hub.push_merged) to HUB_REPO or hub.model_repo
	$(call STAGE,fine_tune.push) $(if $(HUB_REPO),--set hub.model_repo=$(HUB_REPO))

push-data: install ## push the curated dataset and its card to HUB_REPO or hub.dataset_repo
	$(call STAGE,data_prep.push) $(if $(HUB_REPO),--set hub.dataset_repo=$(HUB_REPO))

push-if-configured: install
	$(call STAGE,fine_tune.push) $(if $(HUB_REPO),--set hub.model_repo=$(HUB_REPO)) --if-configured
	$(call STAGE,data_prep.push) --if-configured

infer: install ## answer PROMPT="..." (streamed) or PROMPTS_FILE=path with MODEL=new_model|base|<path>|<hub id>
	$(call STAGE,inference) --model "$(MODEL)" --prompt "$(PROMPT)" $(if $(PROMPTS_FILE),--prompts-file "$(PROMPTS_FILE)")

chat: install ## chat with MODEL (multi-turn); /base and /tuned switch model, /clear, /quit
	$(call STAGE,inference.chat) --model "$(MODEL)"

compare: install ## base vs MODEL (default new_model), with numbers: runs/<run>/reports/compare.{md,html,json}
	$(call STAGE,inference.compare) --model "$(MODEL)"

all: install base data train merge compare push-if-configured ## every stage, end to end

test: install ## run the test suite (unit, ML-correctness and end-to-end on the smoke profile)
	$(PY) -m pytest

bench: install ## benchmarks against seed-style baselines (BENCH=name for one): runs/bench/results.json
	$(PY) -m benchmarks $(BENCH)

lint: install ## ruff
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean: ## delete run outputs and the built base models
	rm -rf runs .cache

distclean: clean ## also delete the virtual environment
	rm -rf $(VENV) *.egg-info
