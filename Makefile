# attnc: `make demo` and `make test` work from a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

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

clean:
	rm -rf $(VENV) build *.egg-info
