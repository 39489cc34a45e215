# hsmbackup — see README.md. Every target works on a fresh machine with Go,
# gcc and openssl; `make tools` installs whatever else the tests need.

GO        ?= go
BIN       := bin/hsmbackup
TOOLS_DIR := $(CURDIR)/.tools
FUZZTIME  ?= 10s
BENCHTIME ?= 1x

export PATH := $(TOOLS_DIR)/bin:$(PATH)

.PHONY: all build test demo tools fuzz bench soak vet clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/hsmbackup

demo: build
	./$(BIN) demo

# tools: what the tests need beyond Go. openssl, an outside check of
# AES-KWP and the SP 800-108 KDF, ships with the machine, so this only
# checks for it. MinIO, the S3 server the store tests start, is built once
# into $(TOOLS_DIR)/bin (2-3 minutes cold, ~1.5 GB RAM) and reused after.
# MinIO is AGPLv3: it is a test binary only, never imported or shipped.
# SoftHSMv2, the PKCS#11 HSM the interop/softhsm tests move keys to and
# from, is Debian's softhsm2: installed with apt-get when its module is
# missing and we are root, else named.
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
SOFTHSM2_MODULE ?= /usr/lib/softhsm/libsofthsm2.so

tools:
	@command -v openssl >/dev/null || { echo "openssl is required (apt-get install openssl)"; exit 1; }
	@test -x $(TOOLS_DIR)/bin/minio || { \
	  echo "building minio $(MINIO_VERSION) into $(TOOLS_DIR)/bin (takes a few minutes once)"; \
	  GOBIN=$(TOOLS_DIR)/bin $(GO) install github.com/minio/minio@$(MINIO_VERSION); }
	@test -f $(SOFTHSM2_MODULE) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing softhsm2 with apt-get (SoftHSMv2, for interop/softhsm)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq softhsm2 >/dev/null || \
	      { apt-get update -qq && apt-get install -y -qq softhsm2 >/dev/null; } || exit 1; \
	  fi; \
	  test -f $(SOFTHSM2_MODULE) || { echo "SoftHSMv2 is required ($(SOFTHSM2_MODULE)): install the Debian package softhsm2 (apt-get install softhsm2) or point SOFTHSM2_MODULE at its module"; exit 1; }; }

vet:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	GO=$(GO) ./scripts/layering.sh

# test: all tests, with the race detector; a test that would skip for a
# missing component fails instead. Then every benchmark once, with -short
# (smaller sizes): not to time them, only to keep them working. Then every
# fuzz target for a second (about 1.5 minutes in all): `make fuzz` runs
# them longer.
test: tools vet
	HSMBACKUP_TEST_DISALLOW_SKIP=1 $(GO) test -race -count=1 ./...
	HSMBACKUP_TEST_DISALLOW_SKIP=1 $(GO) test -short -count=1 -run '^$$' -bench . -benchtime 1x ./...
	FUZZTIME=1s GO=$(GO) ./scripts/fuzz.sh

# fuzz: every fuzz target for FUZZTIME each (scripts/fuzz.sh).
fuzz:
	FUZZTIME=$(FUZZTIME) GO=$(GO) ./scripts/fuzz.sh

# soak: the soak test longer than in `make test` (SOAK_OPS operations, not
# 8: about a minute for every 12), under the race detector; its counts go
# to docs/RELIABILITY.md.
SOAK_OPS ?= 40
soak: tools
	HSMBACKUP_TEST_DISALLOW_SKIP=1 HSMBACKUP_SOAK_OPS=$(SOAK_OPS) $(GO) test -race -count=1 -timeout 60m -run '^TestSoak$$' -v ./integration

# bench: the benchmarks behind docs/BENCHMARKS.md.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./...

clean:
	rm -rf bin
