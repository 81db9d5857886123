# imgfs — see README.md. `make demo` and `make test` work on a fresh Debian machine.
GO        ?= go
BIN       := bin/imgfs
GOFLAGS_T ?= -count=1 -timeout 40m
FUZZTIME  ?= 10s
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build deps test test-unit bench fuzz fuzz-long reliability lint demo demo-ceph clean

all: build

build:
	$(GO) build -trimpath -buildvcs=auto -o $(BIN) ./cmd/imgfs

deps:
	tests/install-deps.sh

# The whole suite: unit tests beside the code, end-to-end tests under tests/,
# with real qemu-img, cryptsetup, FUSE and a local OpenStack cloud.
test: deps build lint
	tests/with-cloud.sh $(GO) test $(GOFLAGS_T) ./...

test-unit: build
	$(GO) test $(GOFLAGS_T) ./...

bench: deps build
	tests/bench.sh

# Short, bounded fuzzing of every fuzz target (FUZZTIME each), one target
# at a time; prints executions per target. Crashers land in
# <pkg>/testdata/fuzz/<target>/ and fail the run.
fuzz:
	FUZZTIME=$(FUZZTIME) GO=$(GO) tests/hostile/fuzz.sh

fuzz-long:
	$(MAKE) fuzz FUZZTIME=10m

# The figures of RELIABILITY.md: the hostile-image suite (cat, info and the
# Go API on every malicious image, bounded time and memory), the 1 TiB
# sparse qcow2+LUKS read, key hygiene and leak checks, the seeded network
# fault schedule at scale (IMGFS_FAULT_RUNS, default 500; IMGFS_FAULT_SEED,
# default 1; with the local cloud for its Glance runs), then short fuzzing.
reliability: build
	@$(GO) test -count=1 -v -run 'Hostile|KDFLimit|ZipBomb|Sparse1TiB|Dumpable|KeyMaterial|Leak' ./tests/ >bin/reliability.log 2>&1; \
	  s=$$?; grep -E 'FIGURE|^(---|ok|FAIL|PASS)' bin/reliability.log; echo "log: bin/reliability.log"; exit $$s
	@IMGFS_FAULT_RUNS=$${IMGFS_FAULT_RUNS:-500} tests/with-cloud.sh $(GO) test -count=1 -timeout 40m -v -run 'TestFaultSchedule|TestTokenExpiresMidRead' ./tests/ >bin/reliability-faults.log 2>&1; \
	  s=$$?; grep -E 'FIGURE|^ *(---|ok|FAIL|PASS)' bin/reliability-faults.log; echo "log: bin/reliability-faults.log"; exit $$s
	$(MAKE) fuzz FUZZTIME=$(FUZZTIME)

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

demo: deps build
	tests/demo.sh

# The demo on Glance's rbd store (a single-node Ceph): direct reads from RADOS.
demo-ceph: deps build
	DEMO_STORE=rbd tests/demo.sh

clean:
	rm -rf bin
