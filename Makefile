# Two commands for a new user: `make demo` and `make test`. Everything else is what they build on.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export RELEASE_GRAPH_FLEET ?= $(CURDIR)/examples/shop/fleet.yaml
# Where scripts/install_tools.sh puts semgrep and checkov (the package never looks inside the checkout itself).
export RELEASE_GRAPH_TOOLS ?= $(CURDIR)/.tools
# uv compiles bytecode at install time; without it every import recompiles when PYTHONDONTWRITEBYTECODE is set.
export UV_COMPILE_BYTECODE := 1
HOST_ENV := /var/lib/release-graph/env
WITH_HOST_ENV := set -a && source $(HOST_ENV) && set +a &&
# The analysis' Prometheus lives in the runtime state folder (resources/state.py), where the deploy target
# writes its scrape targets.
PROMETHEUS_HOME := $(or $(RELEASE_GRAPH_STATE),$(DAGSTER_HOME))/prometheus

.PHONY: setup host venv tools demo-repos prometheus demo test test-containers soak burst lint snapshot bench clean

setup: host venv tools

host:
	bash scripts/setup_host.sh

# semgrep and checkov pin dependencies that clash with Dagster's: each gets its own venv under .tools/.
tools:
	bash scripts/install_tools.sh

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	command -v uv >/dev/null || $(PY) -m pip install -q uv
	test -x $(VENV)/bin/python || uv venv -q --python 3.11 $(VENV)
	uv pip install -q --python $(VENV)/bin/python --require-hashes -r requirements.lock
	uv pip install -q --python $(VENV)/bin/python --no-deps -e .
	touch $@

# The instance configuration linked into $(DAGSTER_HOME): the embedded default (SQLite), or e.g.
# INSTANCE_CONFIG=deploy/postgres/dagster.yaml (docs/operations.md, "Instance storage: Postgres"). Relinked on
# every run, so switching back and forth needs no cleanup.
INSTANCE_CONFIG ?= dagster.yaml
.PHONY: $(DAGSTER_HOME)/dagster.yaml
$(DAGSTER_HOME)/dagster.yaml: $(INSTANCE_CONFIG)
	mkdir -p $(DAGSTER_HOME)
	ln -sfn $(CURDIR)/$(INSTANCE_CONFIG) $@

demo-repos: venv
	$(VENV)/bin/python -m release_graph.demo repos --demo-dir examples/shop

# The demo's secrets, generated once and kept out of the repository: payments' key, and the test key its
# integration stage uses instead (added to a file made before it existed).
.PHONY: $(DAGSTER_HOME)/demo-secrets.env
$(DAGSTER_HOME)/demo-secrets.env:
	mkdir -p $(DAGSTER_HOME)
	umask 077 && touch $@ && for name in SHOP_PAYMENTS_API_KEY SHOP_PAYMENTS_TEST_KEY; do \
	  grep -q "^$$name=" $@ || echo "$$name=demo-$$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" >> $@; done

# Where the demo's notifications go (the inbox `make demo` starts) and the key they are signed with: secrets,
# so they live here, never in the manifest.
$(DAGSTER_HOME)/demo-notify.env:
	mkdir -p $(DAGSTER_HOME)
	umask 077 && { echo "SHOP_NOTIFY_URL=http://127.0.0.1:$(DEMO_INBOX_PORT)/release-notifications"; \
	  echo "SHOP_CDEVENTS_SINK_URL=http://127.0.0.1:$(DEMO_INBOX_PORT)/cdevents"; \
	  echo "SHOP_NOTIFY_KEY=$$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"; } > $@

# The key the demo's image provenance is signed with (examples/shop/fleet.yaml, security.provenance): an ed25519
# PEM, generated once and kept out of the repository like the other demo secrets.
$(DAGSTER_HOME)/demo-provenance.env: | venv
	mkdir -p $(DAGSTER_HOME)
	umask 077 && $(VENV)/bin/python -c 'import shlex; from release_graph.security.provenance import \
	  generate_key_pem; print("SHOP_PROVENANCE_KEY=" + shlex.quote(generate_key_pem()))' > $@.tmp && mv $@.tmp $@

# The rollout analysis' Prometheus (resources/metrics/prometheus_server.py): on 127.0.0.1:9090 unless that is
# taken, scraping what the environments serve; idempotent. Its URL goes to $(PROMETHEUS_HOME)/prometheus.env.
prometheus: venv
	$(VENV)/bin/python -m resources.metrics.prometheus_server ensure --home $(PROMETHEUS_HOME) --port 9090

# The main job: host setup, the demo fleet's git repos, and the Dagster UI with the sensors running; beside it
# the demo's shoppers on prod's gateway (examples/shop/fleet.yaml publishes it on 18080) for its canaries to
# measure, and the team's inbox on 18090 for the release notifications the manifest sends (a signed webhook)
# and its deployment events (CDEvents).
# Both stop with the UI; what they see goes to $(DAGSTER_HOME)/shoppers.log and $(DAGSTER_HOME)/inbox.log.
DEMO_SHOPPERS_PORT ?= 18080
DEMO_INBOX_PORT ?= 18090
# The demo's repos are local: the Git sensor asks them at every look of the daemon (release_graph/wiring.py).
DEMO_GIT_POLL_SECONDS ?= 4
# glibc gives each thread that allocates its own malloc arena (up to 8 per core). Idle at 200 services for 30
# minutes the daemon ended at 462 MiB with glibc's default and at 322 MiB with two arenas; it still grows with two,
# for a reason not found yet (docs/operations.md, "The orchestrator's cost at 200 services"). deploy/Dockerfile too.
ORCHESTRATOR_MALLOC_ARENAS ?= 2
demo: setup demo-repos prometheus $(DAGSTER_HOME)/dagster.yaml $(DAGSTER_HOME)/demo-secrets.env \
      $(DAGSTER_HOME)/demo-notify.env $(DAGSTER_HOME)/demo-provenance.env
	$(WITH_HOST_ENV) set -a && source $(DAGSTER_HOME)/demo-secrets.env && \
	  source $(DAGSTER_HOME)/demo-notify.env && source $(DAGSTER_HOME)/demo-provenance.env && source $(PROMETHEUS_HOME)/prometheus.env && set +a && \
	  { $(VENV)/bin/python -m release_graph.demo shoppers --port $(DEMO_SHOPPERS_PORT) \
	      >$(DAGSTER_HOME)/shoppers.log 2>&1 & shoppers=$$!; } && \
	  { $(VENV)/bin/python -m release_graph.demo inbox --port $(DEMO_INBOX_PORT) \
	      >$(DAGSTER_HOME)/inbox.log 2>&1 & inbox=$$!; } && \
	  trap 'kill $$shoppers $$inbox 2>/dev/null' EXIT && \
	  RELEASE_GRAPH_GIT_POLL_SECONDS=$(DEMO_GIT_POLL_SECONDS) MALLOC_ARENA_MAX=$(ORCHESTRATOR_MALLOC_ARENAS) \
	  env --default-signal=INT,TERM $(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

# Every test, against the real engine, registry and git.
test: setup demo-repos $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(WITH_HOST_ENV) $(VENV)/bin/pytest -n 3 --dist loadgroup --no-loadscope-reorder --durations=25 \
	  -m "not user_code_image and not burst and not kubernetes_cluster"

# The orchestrator from its own image: every run in a container (DockerRunLauncher) and the compose stack
# (docs/operations.md, "Run launchers"). Builds the 1.8 GB user-code image first (3-6 min on 2 cores).
test-containers: setup demo-repos $(DAGSTER_HOME)/dagster.yaml
	$(WITH_HOST_ENV) $(VENV)/bin/pytest -s -m user_code_image --durations=5

# A burst of commits with the daemon killed in its middle (tests/stories/test_bursts.py): 20 commits over 4 services
# here (4-5 min); `make bench` runs 200 over 20.
burst: setup demo-repos $(DAGSTER_HOME)/dagster.yaml
	$(WITH_HOST_ENV) RELEASE_GRAPH_BURST_SERVICES=$${RELEASE_GRAPH_BURST_SERVICES:-4} \
	  RELEASE_GRAPH_BURST_COMMITS=$${RELEASE_GRAPH_BURST_COMMITS:-20} $(VENV)/bin/pytest -s -m burst

# The live story on the real daemon, longer: five rounds of consumer and provider commits before the breaks.
soak: setup demo-repos $(DAGSTER_HOME)/dagster.yaml
	$(WITH_HOST_ENV) RELEASE_GRAPH_SOAK_ROUNDS=$${RELEASE_GRAPH_SOAK_ROUNDS:-5} $(VENV)/bin/pytest -s \
	  tests/stories/test_live_demo.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# Rewrite the committed graph snapshot after an intended change of the asset graph.
snapshot: venv
	$(VENV)/bin/python -m release_graph.snapshot --fleet examples/shop/fleet.yaml --write tests/release_graph/graph_snapshot.json

bench: setup
	$(WITH_HOST_ENV) $(VENV)/bin/python -m benchmarks.run

# Environments keep running when the orchestrator stops (as real ones do); clean removes the demo's too.
clean:
	-test -x $(VENV)/bin/release-graph && test -f $(HOST_ENV) && $(WITH_HOST_ENV) $(VENV)/bin/release-graph teardown --all
	-test -x $(VENV)/bin/python && $(VENV)/bin/python -m resources.metrics.prometheus_server stop --home $(PROMETHEUS_HOME)
	rm -rf $(VENV) .dagster_home .demo
