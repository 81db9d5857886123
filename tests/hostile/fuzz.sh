#!/bin/sh
# Runs every fuzz target of the module, one after the other, for FUZZTIME
# each (default 10s), and prints one summary line per target:
#   FUZZ <package> <target> <time> execs=<N> interesting=<N> result=<ok|FAIL>
# A crasher is written by `go test` to <package>/testdata/fuzz/<target>/ and
# fails the run. Logs go to $FUZZLOG (default a temporary directory).
# Usage: tests/hostile/fuzz.sh [FUZZTIME]   (run from the module root)
set -u
GO=${GO:-go}
FUZZTIME=${1:-${FUZZTIME:-10s}}
# Minimizing a new input re-runs it many times; with inputs of tens of KiB
# that unlock keyslots, Go's default (60s) stalls short runs.
FUZZMINTIME=${FUZZMINTIME:-5s}
FUZZLOG=${FUZZLOG:-$(mktemp -d /tmp/imgfs-fuzz.XXXXXX)}
mkdir -p "$FUZZLOG"
status=0
summary="$FUZZLOG/summary.txt"
: >"$summary"
for pkg in $($GO list ./...); do
  if ! list=$($GO test -list '^Fuzz' "$pkg" 2>&1); then
    echo "FUZZ $pkg cannot be built: $list" | tee -a "$summary"
    status=1
    continue
  fi
  targets=$(echo "$list" | grep '^Fuzz') || continue
  for t in $targets; do
    log="$FUZZLOG/$(basename "$pkg")-$t.log"
    echo "fuzz $pkg $t for $FUZZTIME (log $log)"
    if $GO test -run '^$' -fuzz "^$t\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINTIME" "$pkg" >"$log" 2>&1; then
      res=ok
    else
      res=FAIL
      status=1
      tail -30 "$log"
    fi
    last=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    interesting=$(grep -o 'new interesting: [0-9]*' "$log" | tail -1 | cut -d' ' -f3)
    echo "FUZZ $pkg $t $FUZZTIME execs=${last:-0} interesting=${interesting:-0} result=$res" | tee -a "$summary"
  done
done
echo "summary: $summary"
exit $status
