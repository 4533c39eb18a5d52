# switchyard — the commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo
CONFIG ?= config/switchyard.yaml
BIN := target/release/switchyard

.PHONY: all build run serve test test-tools lint fmt bench docker demo clean

all: build

build:
	$(CARGO) build --release --locked

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

# The etcd client's tests run a real etcd server (Debian's etcd-server).
test-tools:
	@command -v etcd >/dev/null 2>&1 || { \
	  echo "installing etcd-server (Debian package) for the etcd tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q etcd-server >/dev/null 2>&1 || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q etcd-server >/dev/null; }; \
	}

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

docker:
	docker build -f deploy/Dockerfile -t switchyard:dev .

clean:
	$(CARGO) clean
