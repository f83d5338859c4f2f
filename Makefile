# Two entry points for a fresh machine: `make demo` (whole workflow on the synthetic default config)
# and `make test`. The virtual environment lives outside the clone, keyed by a hash of the lock file,
# so a second clone or a second run reuses it instead of reinstalling torch (about 5 GB).
SHELL := /bin/bash
PYTHON ?= python3
LOCK_HASH := $(shell cat requirements.lock | sha256sum | cut -c1-12)
VENV ?= $(HOME)/.cache/medflow/venv-$(LOCK_HASH)
CORES ?= 2
export PATH := $(VENV)/bin:$(PATH)
export PYTHONPATH := $(CURDIR)/src$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: env demo test lint report clean mutation plant-bugs bench-gpu
env: $(VENV)/.ok
# No prerequisite: the lock's hash is in the path, so a changed lock means a new environment, while a
# fresh clone (whose files are all newer than the environment) reuses the one it finds.
$(VENV)/.ok:
	@mkdir -p $(dir $(VENV))
	rm -rf $(VENV).tmp && $(PYTHON) -m venv $(VENV).tmp
	# Install, then move into place, so a killed install never leaves a half-made environment
	# under the final name.
	$(VENV).tmp/bin/pip install --quiet --disable-pip-version-check -r requirements.lock
	rm -rf $(VENV) && mv $(VENV).tmp $(VENV)
	# venv scripts carry the build path in their shebangs: rewrite them to the final path.
	grep -rlI --null '$(VENV).tmp' $(VENV)/bin | xargs -0 -r sed -i 's|$(VENV).tmp|$(VENV)|g'
	touch $@

demo: env
	snakemake --cores $(CORES) --resources gpu=1 --workflow-profile profiles/local

# Lint first: a test run on unformatted or unlinted code fails, as CI (.ci/run = make test) does.
test: env lint
	pytest -q --durations=12 tests

# By hand, never in CI (see docs/testing.md): mutation scores of the modules users' numbers come from,
# and the known bugs planted one at a time. mutmut must import its mutated copy, not src/: no PYTHONPATH.
mutation: env
	env -u PYTHONPATH mutmut run --max-children $(CORES) > mutants.log 2>&1 || (tail -30 mutants.log; exit 1)
	env -u PYTHONPATH python dev/mutation_scores.py

plant-bugs: env
	python dev/plant_bugs.py

lint: env
	ruff format --check .
	ruff check .
	snakefmt --check Snakefile rules
	snakemake --lint

# Every GPU path measured in one run (docs/benchmarks.md; at most 8 minutes): table on stdout, JSON under
# results/benchmarks/. Without a GPU it refuses with one line (exit 2); SMOKE=1 runs the same code on the
# CPU at tiny sizes in under a minute (tests/test_bench_gpu.py runs that).
bench-gpu: env
	@python benchmarks/bench_gpu.py $(if $(filter 1,$(SMOKE)),--smoke)

report: env
	snakemake --cores $(CORES) --report results/report.zip

clean:
	rm -rf results .snakemake
