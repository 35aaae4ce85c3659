#!/usr/bin/env bash
# Fuzz one target for a fixed time, restarting it after each crash.
#
#   fuzz/run_long.sh TARGET SECONDS WORKDIR
#
# TARGET is http or pipeline. New corpus inputs go to WORKDIR/corpus, crash
# inputs to WORKDIR/crash-*, and libFuzzer's output to WORKDIR/log. The loop
# exists because libFuzzer's -fork mode, which would continue after a crash,
# does not work under atheris 3.0.0: every forked job fails at once.
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 http|pipeline SECONDS WORKDIR" >&2
    exit 2
fi
target=$1
budget=$2
workdir=$3
fuzz_dir=$(cd "$(dirname "$0")" && pwd)
case "$target" in
    http|pipeline) ;;
    *) echo "invalid target '$target': expected http or pipeline" >&2; exit 2 ;;
esac

mkdir -p "$workdir/corpus"
deadline=$(( $(date +%s) + budget ))
runs=0
while :; do
    left=$(( deadline - $(date +%s) ))
    [ "$left" -gt 0 ] || break
    runs=$(( runs + 1 ))
    echo "== run $runs, $left s left" >> "$workdir/log"
    # A crash makes libFuzzer exit non-zero, and the loop then starts it again.
    python3 "$fuzz_dir/fuzz_$target.py" -max_total_time="$left" -artifact_prefix="$workdir/" \
        "$workdir/corpus" "$fuzz_dir/seeds/$target" >> "$workdir/log" 2>&1 || true
done
crashes=$(find "$workdir" -maxdepth 1 -name 'crash-*' | wc -l)
echo "fuzz_$target: $runs runs, $crashes crash inputs in $workdir" | tee -a "$workdir/log"
