# One target per way of building. `make book` and `make test` work from a clean clone.
PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PROFILE ?= default
STAMP   := $(VENV)/.installed-stamp
# torch is pinned to the release on this machine's disk; requirements.lock pins everything else.
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: deps test test-fast book strict publish lab lock benchmark clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c requirements.lock $(TORCH)
	$(BIN)/pip install -q -c requirements.lock -e '.[book,test,ray]'
	touch $(STAMP)

deps: $(STAMP)            ## create .venv and install mmlib with its book, test and ray extras

test: deps                ## run the test suite
	$(BIN)/python -m pytest -q

test-fast: deps           ## the tests that train nothing (no study, no book build): for development
	$(BIN)/python -m pytest -q -m "not slow"

book: deps                ## run the study with PROFILE (papermill) and render the HTML book
	$(BIN)/python -m mmlib.build --profile $(PROFILE)

strict: deps              ## the same, with Sphinx warnings as errors (what CI does with the smoke profile)
	$(BIN)/python -m mmlib.build --profile $(PROFILE) --strict

publish: deps             ## build PROFILE with warnings as errors, then commit its HTML onto gh-pages (ghp-import)
	$(BIN)/python -m mmlib.build --profile $(PROFILE) --strict
	$(BIN)/python -m mmlib.publish --profile $(PROFILE)

lab: deps                 ## open the notebooks in JupyterLab
	$(BIN)/jupyter lab book/

benchmark: deps           ## print wall time and memory of each stage
	$(BIN)/python benchmarks/bench_experiment.py

lock:                     ## record the resolved versions of everything installed
	$(BIN)/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean:                    ## remove outputs (results, cohorts, built book), keep .venv
	rm -rf _build results cohorts
