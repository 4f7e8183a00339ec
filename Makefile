# `make test` / `make demo` on a fresh clone: create .venv if missing, install, run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.natsdeploy-installed
DEMO_OUT ?= out/demo

.PHONY: test demo docs install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[all,dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --durations=25

demo: $(STAMP)
	$(VENV)/bin/natsdeploy check examples/resnet50_nats_c.json
	$(VENV)/bin/natsdeploy export examples/resnet18_nats_c.json --input-shape 1x3x320x480 --out $(DEMO_OUT)

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d out/site

clean:
	rm -rf $(VENV) out .pytest_cache
