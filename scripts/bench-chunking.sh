#!/usr/bin/env bash
# Chunk + hash throughput of `bvfs hash` on one core, side by side with `b3sum --num-threads 1` on the
# same file in the same run (the hashing limit). Prints both times and the ratio.
#
#   scripts/bench-chunking.sh [SIZE_MIB]      (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
command -v b3sum >/dev/null || apt-get install -y b3sum
command -v hyperfine >/dev/null || apt-get install -y hyperfine
cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
file="$work/random.bin"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom > "$file"
cat "$file" > /dev/null   # warm the page cache: both tools read from memory
[ "$(./target/release/bvfs hash "$file" | cut -d' ' -f1)" = "$(b3sum "$file" | cut -d' ' -f1)" ] \
  || { echo "bvfs hash and b3sum disagree" >&2; exit 1; }
hyperfine --warmup 2 --runs 10 --export-json "$work/result.json" \
  -n "b3sum --num-threads 1" "taskset -c 0 b3sum --num-threads 1 $file" \
  -n "bvfs hash (FastCDC + chunk ids + content hash)" "taskset -c 0 ./target/release/bvfs hash $file"
python3 - "$work/result.json" "$size_mib" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
mib = int(sys.argv[2])
b3, bv = r[0]["mean"], r[1]["mean"]
gb = mib * 1024 * 1024 / 1e9
print(f"b3sum --num-threads 1: {gb / b3:.2f} GB/s")
print(f"bvfs hash (one core):  {gb / bv:.2f} GB/s")
print(f"ratio bvfs/b3sum:      {b3 / bv:.2f}x")
PY
