# Thin wrappers around cargo, docker and compose. Every binary is static (see .cargo/config.toml),
# so the images are built FROM scratch out of target/ without a registry.

SHELL   := /bin/bash
CARGO   ?= cargo
TARGET  := x86_64-unknown-linux-gnu
RELEASE := target/$(TARGET)/release
TAG     ?= latest
# Compose v2 (`docker compose`) where installed, else v1 (`docker-compose`).
COMPOSE ?= $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; else echo docker-compose; fi)
DEMO_PORT ?= 8443
# make install: $(DESTDIR)$(PREFIX)/bin/{sidecar,spawner} (DESTDIR for staging, e.g. packaging)
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
# The tag of the images `make test` builds (tests/src/docker.rs reads the same variable).
TEST_TAG ?= $(or $(TLS_SIDECAR_TEST_TAG),test)

.PHONY: all build images demo demo-down tools test soak lint deny docs bench bench-quick \
	bench-spawner install uninstall clean-images

all: build

## build: release binaries of the sidecar, the spawner and the demo app
build:
	$(CARGO) build --release --workspace --bins

## images: tls-sidecar/{sidecar,spawner,demo}:$(TAG) from the release binaries; prints their sizes
images: build
	docker build -q -f sidecar/Dockerfile -t tls-sidecar/sidecar:$(TAG) --build-arg BIN=$(RELEASE)/sidecar .
	docker build -q -f spawner/Dockerfile -t tls-sidecar/spawner:$(TAG) --build-arg BIN=$(RELEASE)/spawner .
	docker build -q -f tests/Dockerfile.demo -t tls-sidecar/demo:$(TAG) --build-arg BIN=$(RELEASE)/demo .
	@echo "image sizes (as docker images reports them):"
	@for i in sidecar spawner demo; do \
	  docker image inspect --format "tls-sidecar/$$i:$(TAG) {{.Size}}" tls-sidecar/$$i:$(TAG) | \
	    awk '{ printf "  %s  %.2f MB\n", $$1, $$2 / 1000000 }'; \
	done

## demo: build everything, start the spawner and the demo app, fetch https://localhost:$(DEMO_PORT)/
demo: images
	DEMO_PORT=$(DEMO_PORT) TLS_SIDECAR_TAG=$(TAG) $(COMPOSE) up -d
	@echo "waiting for https://localhost:$(DEMO_PORT)/ (the spawner launches the sidecar)..."
	@for i in $$(seq 1 60); do \
	  if curl -skf https://localhost:$(DEMO_PORT)/ >/dev/null 2>&1; then break; fi; sleep 0.5; \
	done
	curl -sk https://localhost:$(DEMO_PORT)/
	@echo "demo is up: curl -k https://localhost:$(DEMO_PORT)/   stop it with: make demo-down"

## demo-down: stop the demo first (so the spawner removes its sidecar), then everything
demo-down:
	DEMO_PORT=$(DEMO_PORT) TLS_SIDECAR_TAG=$(TAG) $(COMPOSE) stop demo
	DEMO_PORT=$(DEMO_PORT) TLS_SIDECAR_TAG=$(TAG) $(COMPOSE) down

# Reads cargo test's output: sums the "test result:" lines; a binary whose "Running" line is not
# followed by its result (it crashed) counts as one failed test and is named.
export TEST_TOTALS := \
  /^ +(Running|Doc-tests) / { if (open) { crashed++; names = names "\n  " bin } open = 1; runs++; \
    bin = $$0; sub(/^ +/, "", bin) } \
  /^test result:/ { p += $$4; f += $$6; open = 0 } \
  END { if (open) { crashed++; names = names "\n  " bin } \
    if (crashed) printf "note: test binaries that ended without a result (crashed), each counted as 1 failed: %d%s\n", crashed, names; \
    if (!runs && status) print "note: no test binary ran (did the build fail? see above)"; \
    printf "tests: %d passed, %d failed\n", p, f + crashed }

## tools: the host tools the tests start (tests/tools.sh --list): checked, and as root installed
## from Debian's archive when missing; otherwise it stops naming the command that installs them
tools:
	@tests/tools.sh

## test: every test, Docker ones included (they need a running engine); ends with one total line.
## Checks the test tools first (make tools), before anything compiles. The Docker tests leave
## their images, tls-sidecar/*:$(TEST_TAG), for the next run: make clean-images
test: tools
	@mkdir -p target
	@# --no-fail-fast: every test binary runs, so the totals cover all of them. The totals line
	@# comes last whether the tests pass or not, and the exit status is cargo's. A test binary
	@# that ends without its "test result:" line (it crashed: a signal, an abort) counts as one
	@# failed test, and a note names it.
	set -o pipefail; $(CARGO) test --workspace --no-fail-fast 2>&1 | tee target/test-output.log; status=$$?; \
	awk -v status=$$status "$$TEST_TOTALS" target/test-output.log; \
	exit $$status

## soak: the spawner's churn soak at full size (500 random operations on 20 targets, a few
## minutes; make test runs 100); CHURN_OPS, CHURN_TARGETS, CHURN_SEED override
soak:
	CHURN_OPS=$${CHURN_OPS:-500} $(CARGO) test -p tls-sidecar-tests --test integration -- spawner::churn::churn_soak --nocapture

## bench: the full benchmark against nginx, HAProxy, stunnel, hitch (docs/benchmarks.md, ~20 min: three interleaved rounds per row)
bench:
	bench/run

## bench-spawner: the spawner with 10, 100 and 500 running targets (start -> served, engine
## calls and CPU per event, RSS; ~10 min; figures in docs/spawner.md)
bench-spawner: images
	bench/spawner-scale --tag $(TAG)

## bench-quick: one short pass of every scenario (what CI runs)
bench-quick:
	bench/run --quick

## deny: cargo deny check (advisories, licenses, bans, sources; deny.toml), the advisories against
## the newer of the fetched RustSec database and the dated snapshot in ../shared/rustsec
## (RUSTSEC_SNAPSHOT names another); the run prints which it used and its date (.ci/deny)
deny:
	@.ci/deny

## docs: the flag tables of docs/sidecar.md and docs/spawner.md, from the binaries' clap
## definitions (tests/src/bin/flag_docs.rs); a test fails when the committed ones are stale
docs:
	$(CARGO) run -q -p tls-sidecar-tests --bin flag-docs

## install: the sidecar and spawner release binaries (static) to $(DESTDIR)$(BINDIR), building
## them first only if they are missing: run `make build` after a change, then `sudo make install`
install: $(RELEASE)/sidecar $(RELEASE)/spawner
	install -d $(DESTDIR)$(BINDIR)
	install -m 0755 $(RELEASE)/sidecar $(RELEASE)/spawner $(DESTDIR)$(BINDIR)/

$(RELEASE)/sidecar $(RELEASE)/spawner:
	$(CARGO) build --release --workspace --bins

## uninstall: remove what make install put in $(DESTDIR)$(BINDIR) (same PREFIX and DESTDIR)
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/sidecar $(DESTDIR)$(BINDIR)/spawner

## clean-images: remove the images make test builds, tls-sidecar/{sidecar,spawner,demo}:$(TEST_TAG)
## (TEST_TAG=latest removes those of make images); containers still using one keep it
clean-images:
	@for i in sidecar spawner demo; do \
	  if docker image inspect tls-sidecar/$$i:$(TEST_TAG) >/dev/null 2>&1; then \
	    docker image rm tls-sidecar/$$i:$(TEST_TAG) || true; \
	  fi; \
	done

## lint: what CI checks besides the tests
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
