# imgfs — see README.md. `make demo` and `make test` work on a fresh Debian machine.
GO        ?= go
BIN       := bin/imgfs
GOFLAGS_T ?= -count=1 -timeout 40m
FUZZTIME  ?= 10s
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@latest

.PHONY: all build deps test test-unit bench fuzz fuzz-long lint demo clean

all: build

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/imgfs

deps:
	tests/install-deps.sh

# The whole suite: unit tests beside the code, end-to-end tests under tests/,
# with real qemu-img, cryptsetup, FUSE and a local OpenStack cloud.
test: deps build
	tests/with-cloud.sh $(GO) test $(GOFLAGS_T) ./...

test-unit: build
	$(GO) test $(GOFLAGS_T) ./...

bench: deps build
	tests/bench.sh

# Short, bounded fuzzing of every fuzz target (FUZZTIME each).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; done

fuzz-long:
	$(MAKE) fuzz FUZZTIME=10m

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

demo: deps build
	tests/demo.sh

clean:
	rm -rf bin
