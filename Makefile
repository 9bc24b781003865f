# The two set-up commands of the README: `make demo` and `make test`. Both install what is
# missing first (Debian packages, kernel headers fallback, .venv), and only once.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo setup proto bench clean-host manifest

setup: $(STAMP)
	@bash scripts/setup-host.sh

$(STAMP): pyproject.toml
	@bash scripts/setup-host.sh
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q -ra tests

demo: setup
	$(VENV)/bin/podflow demo

# Every benchmark, one after the other (each prints its own table; about 20 minutes, of which
# churn takes 10-12: three rates x 60 s plus each agent's drain).
BENCHES := datapath observer enrich exporter drops tui demo churn
bench: setup
	@for b in $(BENCHES); do echo "== bench.$$b"; $(PY) -m bench.$$b || exit 1; done

# Regenerate proto/podflow_api/v1/*_pb2*.py from the .proto files (checked in; a test
# fails when they are stale).
proto: setup
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto \
	  --grpc_python_out=proto proto/podflow_api/v1/flow.proto proto/podflow_api/v1/observer.proto

# Re-render deploy/podflow.yaml from the Helm chart (checked in; a test fails when stale).
manifest: setup
	$(PY) scripts/render-manifest.py

# Remove anything a crashed test or demo left on this host.
clean-host: setup
	$(VENV)/bin/podflow demo --down
