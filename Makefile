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

# Every benchmark, one after the other (each prints its own table; about 15 minutes, of which
# churn takes 6-7: three rates x 60 s plus the agent's drain).
BENCHES := datapath observer filters enrich exporter drops tui demo churn
bench: setup
	@for b in $(BENCHES); do echo "== bench.$$b"; $(PY) -m bench.$$b || exit 1; done

# Regenerate the *_pb2*.py modules beside the .proto files: podflow's own API
# (proto/podflow_api/v1) and the Hubble-compatible one (proto/podflow_hubble). They are
# checked in; tests/test_proto.py fails when they are stale.
PROTOS := podflow_api/v1/flow.proto podflow_api/v1/observer.proto \
  podflow_hubble/flow/flow.proto podflow_hubble/relay/relay.proto \
  podflow_hubble/peer/peer.proto podflow_hubble/observer/observer.proto
proto: setup
	cd proto && ../$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
	  --grpc_python_out=. $(PROTOS)

# Re-render deploy/podflow.yaml from the Helm chart (checked in; a test fails when stale).
manifest: setup
	$(PY) scripts/render-manifest.py

# Remove anything a crashed test or demo left on this host.
clean-host: setup
	$(VENV)/bin/podflow demo --down
