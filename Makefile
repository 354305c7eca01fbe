# QLoRA fine-tuning pipeline; each target is one command you could also type yourself.
# The `## ` lines are what `make help` prints: the header here, then each target's.
## usage: make TARGET [NAME=value ...]; each value reaches the program exactly as your shell passes it
##   CONFIG=path        the run profile (default configs/tiny.yaml)
##   SET='a.b=1 c.d=2'  config overrides separated by spaces; quote a value that has spaces as in a shell:
##                      SET="train.max_steps=50 data.system_prompt='You are a helpful assistant'"
## targets:
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
# Several machines: `make train NNODES=2 NODE_RANK=<0 on the main machine, 1 on the other> MASTER_ADDR=<the
# main machine's address> [MASTER_PORT=29500] NPROC=<processes on each machine>` on each of them.
NNODES ?= 1
NODE_RANK ?= 0
MASTER_ADDR ?=
MASTER_PORT ?= 29500
ROWS ?= 3
ROW ?=
FORMAT ?= text
BESIDE ?=
HOST ?=
PORT ?=
# A value typed after `make` holds anything: spaces, quotes, `$`, backticks, `;`, newlines. Make would
# expand its `$` (even run a $(shell ...) in it) and a shell would re-parse it once written into a
# recipe. So each becomes a simple variable holding the raw text and is exported: recipes read it only
# as "$$NAME", and make only tests whether it is empty or 1.
USER_VARIABLES := PYTHON CONFIG SET MODEL PROMPT PROMPTS_FILE HUB_REPO BENCH NPROC ACCELERATE_CONFIG NNODES \
	NODE_RANK MASTER_ADDR MASTER_PORT ROWS ROW FORMAT BESIDE HOST PORT
$(foreach name,$(USER_VARIABLES),$(eval override $(name) := $$(value $(name))))
export $(USER_VARIABLES)
# `--option=value`, so that a value starting with `-` is not taken for an option; SET goes whole to
# --sets, which splits it by shell rules.
ARGS = --config="$$CONFIG" --sets="$$SET"
STAGE = $(PY) -m $(1) $(ARGS)
# Training on several processes: torchrun (CPU or GPU), or `accelerate launch` with ACCELERATE_CONFIG; on
# several machines (NNODES other than 1), one node of a run that meets at MASTER_ADDR:MASTER_PORT.
TRAIN_LAUNCH = $(if $(ACCELERATE_CONFIG),$(ACCELERATE_LAUNCH),$(if $(filter-out 1,$(NNODES)),$(TORCHRUN_NODE),$(if \
	$(filter-out 1,$(NPROC)),$(PY) -m torch.distributed.run --standalone --nproc_per_node="$$NPROC" -m,$(PY) -m)))
TORCHRUN_NODE = $(MULTI_NODE_CHECK)$(PY) -m torch.distributed.run --nnodes="$$NNODES" --node_rank="$$NODE_RANK" \
	--master_addr="$$MASTER_ADDR" --master_port="$$MASTER_PORT" --nproc_per_node="$$NPROC" -m
# accelerate counts the processes of all machines: NPROC x NNODES, multiplied only when both are whole numbers
# (then neither can hold anything a shell would act on); otherwise NPROC goes as typed, for accelerate to refuse.
ACCELERATE_LAUNCH = $(VENV)/bin/accelerate launch --config_file="$$ACCELERATE_CONFIG" $(if \
	$(filter-out 1,$(NNODES)),$(MULTI_NODE_CHECK)--num_processes="$$(if [[ $$NPROC =~ ^[0-9]+$$ && $$NNODES =~ \
	^[0-9]+$$ ]]; then expr "$$NPROC" \* "$$NNODES"; else printf %s "$$NPROC"; fi)" --num_machines="$$NNODES" \
	--machine_rank="$$NODE_RANK" --main_process_ip="$$MASTER_ADDR" \
	--main_process_port="$$MASTER_PORT",--num_processes="$$NPROC") -m
MULTI_NODE_CHECK = $(if $(MASTER_ADDR),,$(error NNODES=$(NNODES) needs MASTER_ADDR=<the address of the machine \
	with NODE_RANK=0>, the same on every machine))

export TOKENIZERS_PARALLELISM := false
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: help install base data train merge push push-data push-if-configured infer chat inspect compare eval export serve all \
	test test-fast \
	bench bench-docs \
	gpu-check gpu-check-wheels lint clean distclean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^## / {print substr($$0, 4)} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

$(VENV)/.installed: requirements.txt pyproject.toml
	"$$PYTHON" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed ## create .venv and install the pinned requirements and this project

# make export's tools, installed only for `make export` and `make test`: llama-cpp-python, built by pip from its
# sdist (llama.cpp without its multimodal library, on every core: minutes, once; CMAKE_ARGS adds options, e.g.
# -DGGML_CUDA=on), and llama.cpp's converter unpacked from that same sdist into .venv/llama.cpp, so that it
# matches the library and nothing is fetched again.
EXPORT_TOOLS := $(VENV)/llama.cpp
$(VENV)/.export-installed: $(VENV)/.installed requirements-export.txt
	CMAKE_ARGS="-DLLAVA_BUILD=OFF $$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$$(nproc)" \
		$(PY) -m pip install --quiet -r requirements-export.txt
	rm -rf $(EXPORT_TOOLS)
	$(PY) -m pip download --quiet --no-deps -r requirements-export.txt -d $(EXPORT_TOOLS)/dist
	tar -xzf $(EXPORT_TOOLS)/dist/llama_cpp_python-*.tar.gz -C $(EXPORT_TOOLS) --strip-components=3 --wildcards \
		'*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion' '*/vendor/llama.cpp/gguf-py' \
		'*/vendor/llama.cpp/LICENSE'
	rm -rf $(EXPORT_TOOLS)/dist
	touch $@

base: install ## build the embedded base model (offline, cached; nothing to do for a Hub model)
	$(call STAGE,fine_tune.base)

data: install ## curate the configured sources into runs/<run>/dataset
	$(call STAGE,data_prep)

train: install ## QLoRA fine-tuning into runs/<run>/adapter (resumes; NPROC=N processes; NNODES=M machines)
	$(TRAIN_LAUNCH) fine_tune.train $(ARGS)

merge: install ## merge the adapter into a 16-bit base: runs/<run>/merged
	$(call STAGE,fine_tune.merge)

push: install ## push the adapter (merged model, GGUF with hub.push_merged, hub.push_gguf) to HUB_REPO or hub.model_repo
	$(call STAGE,fine_tune.push) $(if $(HUB_REPO),--set="hub.model_repo=$$HUB_REPO")
	$(call STAGE,export.push) $(if $(HUB_REPO),--set="hub.model_repo=$$HUB_REPO")

push-data: install ## push the curated dataset and its card to HUB_REPO or hub.dataset_repo
	$(call STAGE,data_prep.push) $(if $(HUB_REPO),--set="hub.dataset_repo=$$HUB_REPO")

push-if-configured: install
	$(call STAGE,fine_tune.push) $(if $(HUB_REPO),--set="hub.model_repo=$$HUB_REPO") --if-configured
	$(call STAGE,export.push) $(if $(HUB_REPO),--set="hub.model_repo=$$HUB_REPO") --if-configured
	$(call STAGE,data_prep.push) --if-configured

infer: install ## answer PROMPT="..." (streamed) or PROMPTS_FILE=path with MODEL=new_model|base|<path>|<hub id>
	$(call STAGE,inference) --model="$$MODEL" --prompt="$$PROMPT" $(if $(PROMPTS_FILE),--prompts-file="$$PROMPTS_FILE")

chat: install ## chat with MODEL (multi-turn); /base and /tuned switch model, /clear, /quit
	$(call STAGE,inference.chat) --model="$$MODEL"

inspect: install ## the training rows as the trainer gets them (ROWS=3, ROW=i, PROMPT=..., FORMAT=text|json)
	@$(call STAGE,fine_tune.inspect_rows) --rows="$$ROWS" --prompt="$$PROMPT" --format="$$FORMAT" \
		$(if $(ROW),--row="$$ROW")

compare: install ## base vs MODEL (default new_model), with numbers and make eval: runs/<run>/reports/
	$(call STAGE,inference.compare) --model="$$MODEL"

eval: install ## does MODEL's code pass HumanEval's tests (sandboxed)? runs/<run>/reports/eval.{md,html,json}
	$(call STAGE,inference.evaluate) --model="$$MODEL"

export: install $(VENV)/.export-installed ## GGUF 16-bit, Q8_0, Q4_K_M and an Ollama Modelfile, checked: runs/<run>/gguf
	$(call STAGE,export) --model="$$MODEL"

# Exports first what has no GGUF files yet (or older ones than the model), then serves until Ctrl-C.
serve: install $(VENV)/.export-installed ## OpenAI-compatible API for MODEL [BESIDE=base] on HOST:PORT (127.0.0.1:8000)
	$(call STAGE,export) --model="$$MODEL" --if-missing
	$(if $(BESIDE),$(call STAGE,export) --model="$$BESIDE" --if-missing)
	$(call STAGE,inference.serve) --model="$$MODEL" --beside="$$BESIDE" $(if $(HOST),--host="$$HOST") \
		$(if $(PORT),--port="$$PORT")

all: install base data train merge compare push-if-configured ## every stage, end to end

test: install $(VENV)/.export-installed ## the whole test suite (unit, ML-correctness and end-to-end on the smoke profile)
	$(PY) -m pytest -n auto --durations=25

test-fast: install ## the fast tier: every rule and pure function, no training and no stage run (seconds)
	$(PY) -m pytest -n auto -m "not e2e"

# BENCH is a list of names: split on spaces, never globbed.
bench: install ## benchmarks against baselines done the notebook recipe's way (BENCH=name for one): runs/bench/results.json
	set -f; $(PY) -m benchmarks $$BENCH

bench-docs: install ## write docs/benchmarks.md's table from runs/bench/results.json
	$(PY) -m benchmarks.docs

# No install: a GPU machine may have its own PyTorch and reach no registry. The .venv's Python if there is
# one, else PYTHON (python3); what that Python lacks comes from the wheels of gpu-check-wheels.
gpu-check: ## on one CUDA GPU: a Llama-2-7B-shaped QLoRA run, then the tiny pipeline (on a CPU: says so)
	$(if $(wildcard $(PY)),$(PY),"$$PYTHON") -m gpu_check

gpu-check-wheels: install ## download the wheels gpu-check brings to a GPU machine: .cache/gpu-wheels
	$(PY) -m gpu_check --download-wheels

lint: install ## ruff
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean: ## delete run outputs and the built base models
	rm -rf runs .cache

distclean: clean ## also delete the virtual environment
	rm -rf $(VENV) *.egg-info
