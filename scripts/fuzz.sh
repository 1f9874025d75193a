#!/bin/sh
# Long fuzz run of one target: scripts/fuzz.sh TARGET [RUNS] (default 1000000 inputs).
# Grows a scratch copy of the seed corpus in build/fuzz/TARGET (the checked-in corpus is not
# touched); FUZZ_TIME=SECONDS also bounds the run by time. Crashes land in build/fuzz/TARGET-artifacts/. Prints inputs/s at the end.
set -eu
cd "$(dirname "$0")/.."
T=${1:?usage: scripts/fuzz.sh TARGET [RUNS]}
RUNS=${2:-1000000}
PY=${PYTHON:-/work/venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p "build/fuzz/$T" "build/fuzz/$T-artifacts"
cp -n fuzz/corpus/"$T"/* "build/fuzz/$T/" 2>/dev/null || true
START=$(date +%s)
set +e
PYTHONPATH=src "$PY" fuzz/run.py "$T" -runs="$RUNS" ${FUZZ_TIME:+-max_total_time=$FUZZ_TIME} -timeout=10 -rss_limit_mb=2048 \
    -max_len=4096 -print_final_stats=1 -artifact_prefix="build/fuzz/$T-artifacts/" \
    "build/fuzz/$T" 2>&1 | tee "build/fuzz/$T.log" | grep -E "^(#[0-9]+ +(INITED|DONE|pulse))|ERROR|Exception|stat::" 
RC=$?
set -e
END=$(date +%s)
N=$(grep -o "stat::number_of_executed_units: [0-9]*" "build/fuzz/$T.log" | awk '{print $2}')
DT=$((END - START)); [ "$DT" -gt 0 ] || DT=1
echo "$T: ${N:-?} inputs in ${DT}s = $(( ${N:-0} / DT )) inputs/s; crashes: $(ls "build/fuzz/$T-artifacts" | wc -l)"
grep -q "Done [0-9]* runs\|DONE" "build/fuzz/$T.log"
