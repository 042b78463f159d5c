# fashion_cnn: `make train` and `make test` each work on a fresh clone; `make help` lists everything.
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
CONFIG   ?= seed
ARGS     ?=
DATA_DIR ?= data
PORT     ?= 6006
RUN      ?=
STUDY    ?= studies/fast_repeats.yaml
# make test on one process per core, at most 4 (pytest-xdist); a test's subprocesses and memory grow with each
TEST_JOBS ?= -n auto --maxprocesses 4
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Study files name no data_dir (their base configs say data/): a DATA_DIR elsewhere reaches their runs this way,
# made absolute by the shell (make's abspath would split a path with spaces). Paths are quoted for the same reason.
STUDY_PY := $(if $(filter-out data,$(DATA_DIR)),FASHION_MNIST_DIR="$$(CDPATH= cd -- "$(DATA_DIR)" 2>/dev/null && pwd \
  || printf %s "$(DATA_DIR)")" )$(PY)

.DEFAULT_GOAL := help
.PHONY: help setup data train study test test-slow test-cluster test-floors tensorboard report bench bench-fast frontier lint clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  Variables: CONFIG=seed|fast|tiny|quick|strong|gpu|FILE  ARGS='--trainer.max_epochs 5 ...'  DATA_DIR=data  PORT=6006  RUN=lightning_logs/version_N  STUDY=studies/FILE.yaml"

setup: $(STAMP) ## Create .venv and install the project (quick when already done)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

data: setup ## Find and verify FashionMNIST; if there is no copy, install the Debian package or download it
	@$(PY) -m fashion_cnn.data_files --data_dir "$(DATA_DIR)"; rc=$$?; \
	if [ $$rc = 3 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing the Debian package dataset-fashion-mnist ..."; \
	  { $(SUDO) apt-get install -y -qq dataset-fashion-mnist || \
	    { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }; } >/dev/null 2>&1 \
	    || echo "apt could not install it; trying torchvision's download"; \
	fi; \
	[ $$rc = 0 ] || { [ $$rc = 3 ] && $(PY) -m fashion_cnn.data_files --data_dir "$(DATA_DIR)" --download; }

train: data ## Train an experiment (default: the notebook's, 40 epochs) into lightning_logs/
	$(PY) -m fashion_cnn.fit --config "$(CONFIG)" --data.data_dir "$(DATA_DIR)" $(ARGS)

study: data ## Run a study file (STUDY=studies/fast_repeats.yaml; a search: studies/fast_search.yaml); resumable
	$(STUDY_PY) -m fashion_cnn.study "$(STUDY)" $(ARGS)

test: setup ## Run the test suite (fast, offline, CPU; TEST_JOBS='' runs it in one process)
	$(PY) -m pytest -q $(TEST_JOBS)

test-slow: setup ## Run only the long tests (full-data training)
	$(PY) -m pytest -q -m slow

# PostgreSQL's driver, the optional extra the cluster tests' studies use (their own stamp: `make setup` leaves it out)
POSTGRES_STAMP := $(VENV)/.installed-postgres
test-cluster: $(POSTGRES_STAMP) ## Run the cluster tests: real PostgreSQL, SLURM and torchrun here (root, apt; ~6 min)
	$(PY) -m pytest -q -m cluster -p no:xdist

$(POSTGRES_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,postgres]'
	@touch $@

FLOORS := .venv-floors
test-floors: $(FLOORS)/.installed ## Run the tests against the lowest dependency versions pyproject allows
	$(FLOORS)/bin/python -m pytest -q $(TEST_JOBS)

$(FLOORS)/.installed: pyproject.toml requirements/floors.txt
	@test -x $(FLOORS)/bin/python || $(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' -c requirements/floors.txt
	@touch $@

tensorboard: setup ## Serve lightning_logs/ with TensorBoard (PORT=6006)
	@echo "TensorBoard: open http://localhost:$(PORT)/"
	$(VENV)/bin/tensorboard --logdir lightning_logs --port $(PORT)

report: setup ## Draw a run's learning curves next to the notebook's, into the run's directory (RUN=newest)
	$(PY) -m fashion_cnn.report $(if $(RUN),--run "$(RUN)") $(ARGS)

bench: data ## Seconds per epoch side by side: notebook loop, bare floor, bare Trainer, project (ratios, JSON)
	$(PY) -m benchmarks.bench --data_dir "$(DATA_DIR)" $(ARGS)

bench-fast: data ## Wall time to 88.5% test accuracy: the notebook's loop vs the fast config
	$(PY) -m benchmarks.bench --time-to 0.885 --variants notebook,project --config fast --epochs 40 --data_dir "$(DATA_DIR)" \
	  --json benchmarks/results/bench_fast.json $(ARGS)

frontier: data ## Time to 88.5..95% test accuracy of the shipped configs (runs their repeat studies first, 1 worker)
	$(STUDY_PY) -m fashion_cnn.study studies/fast_repeats.yaml --workers 1
	$(STUDY_PY) -m fashion_cnn.study studies/tiny_repeats.yaml --workers 1
	$(STUDY_PY) -m fashion_cnn.study studies/quick_repeats.yaml --workers 1
	$(STUDY_PY) -m fashion_cnn.study studies/strong12_repeats.yaml --workers 1
	$(STUDY_PY) -m fashion_cnn.study studies/strong_repeats.yaml --workers 1
	$(PY) -m benchmarks.frontier --json benchmarks/results/frontier.json

lint: setup ## Check the code with ruff
	$(VENV)/bin/ruff check .

clean: ## Remove the virtualenvs and caches (keeps lightning_logs/ and data/)
	rm -rf $(VENV) $(FLOORS) *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
