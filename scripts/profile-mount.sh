#!/usr/bin/env bash
# Where the mount's time goes, for the workloads of scripts/bench-mount.sh that miss issue 10's
# targets. Run as root (perf, FUSE). For each workload: wall time, a system-wide CPU profile
# (`perf record -a -g`) summarised by process and by symbol, and the mount daemon's syscalls
# (`strace -c -f`, in a second run of the workload: strace slows it down).
#
#   scripts/profile-mount.sh            (BENCH_FILES=20000 BENCH_BIG_MIB=512 by default)
#   ONLY="find-stat" BENCH_FILES=100000 scripts/profile-mount.sh   (some workloads only: untar,
#   small-cold-files, find-stat, cold-read, warm-re-read)
#
# Writes every report under $OUT (default /tmp/bvfs-profile) and prints the summaries.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${BENCH_FILES:-20000}
BIG_MIB=${BENCH_BIG_MIB:-512}
OUT=${OUT:-/tmp/bvfs-profile}
for tool in perf strace python3 tar; do
  command -v "$tool" >/dev/null || { echo "profile-mount: needs $tool (apt-get install linux-perf strace)" >&2; exit 2; }
done
cargo build --release --quiet
BVFS=$PWD/target/release/bvfs
W=$(mktemp -d /tmp/bvfs-profile.XXXXXX)
mkdir -p "$OUT"
PIDS=()
cleanup() {
  for m in "$W"/a "$W"/b; do mountpoint -q "$m" 2>/dev/null && umount -l "$m" || true; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
source scripts/bench-lib.sh
daemon_of() { # mountpoint → pid of the mount daemon serving it
  pgrep -f -- "bvfs mount .*$1\$" | tail -1
}
# profile NAME MOUNTPOINT COMMAND...: runs COMMAND under perf (system-wide), then again under strace
# on the daemon when REPEAT=1 (the command must be repeatable then).
profile() {
  local name=$1 mnt=$2; shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return 0; fi
  local pid; pid=$(daemon_of "$mnt")
  [ -n "${PREPARE:-}" ] && eval "$PREPARE"
  perf record -q -a -g -F 499 -o "$OUT/$name.perf" -- sleep 3600 >/dev/null 2>&1 &
  local perf_pid=$!
  sleep 1
  local t0 t1; t0=$(now); "$@"; t1=$(now)
  kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
  echo "== $name: $(elapsed "$t0" "$t1") s"
  { perf report -q -i "$OUT/$name.perf" --no-children --sort pid --stdio -g none 2>/dev/null \
    | grep -v '^$' | head -8 || true; } | tee "$OUT/$name.by-process.txt"
  { perf report -q -i "$OUT/$name.perf" --no-children --pid "$pid" --sort dso,symbol --stdio -g none 2>/dev/null \
    | grep -v '^$' | sed 's/  *-  *-  *$//' | head -30 || true; } > "$OUT/$name.daemon-symbols.txt"
  echo "-- the daemon's hottest symbols:"; head -12 "$OUT/$name.daemon-symbols.txt"
  if [ "${REPEAT:-0}" = 1 ]; then
    [ -n "${PREPARE:-}" ] && eval "$PREPARE"
    strace -c -f -p "$pid" -o "$OUT/$name.strace.txt" &
    local strace_pid=$!
    sleep 1
    "$@"
    kill -INT "$strace_pid"; wait "$strace_pid" 2>/dev/null || true
    echo "-- the daemon's syscalls:"; head -14 "$OUT/$name.strace.txt"
  fi
}

"$BVFS" admin add-user --data "$W/srv" prof --device a > "$W/ta" 2>/dev/null
"$BVFS" admin add-user --data "$W/srv" prof --device b > "$W/tb" 2>/dev/null
"$BVFS" serve --data "$W/srv" --listen 127.0.0.1:0 > "$W/serve.out" 2>"$W/serve.log" &
PIDS+=($!)
URL=$(server_url "$W/serve.out")
mkdir -p "$W/a" "$W/b" "$W/native"
"$BVFS" mount --server "$URL" --token "$(cat "$W/ta")" --device a --data "$W/state-a" "$W/a" >/dev/null
"$BVFS" mount --server "$URL" --token "$(cat "$W/tb")" --device b --data "$W/state-b" "$W/b" >/dev/null
make_doc_tar "$W/src.tar"

# Writes: untar (every created file), on device A.
n=0
PREPARE='n=$((n + 1)); mkdir -p "$W/a/untar$n"'
untar() { tar -C "$W/a/untar$n" -xf "$W/src.tar"; sync; }
REPEAT=1 profile untar "$W/a" untar
PREPARE=''

# Reads on device B of what A wrote: small cold files, find + stat, a big cold file.
make_tree "$W/a/tree" "$FILES" varied
head -c $((BIG_MIB * 1024 * 1024)) /dev/urandom > "$W/a/big.bin"
wait_synced "$W/a"
for _ in $(seq 1 1200); do
  [ "$(stat -c %s "$W/b/big.bin" 2>/dev/null)" = $((BIG_MIB * 1024 * 1024)) ] \
    && [ "$(find "$W/b/tree" -type f 2>/dev/null | wc -l)" = "$FILES" ] && break
  sleep 0.5
done

mapfile -t small < <(cd "$W/b" && find tree/d000 tree/d001 -type f | sort | head -1000)
cat_small() { (cd "$W/b" && cat "${small[@]}" > /dev/null); }
PREPARE=drop_caches profile small-cold-files "$W/b" cat_small
find_stat() { find "$W/b/tree" -type f -exec stat -c %s {} + > /dev/null; }
PREPARE=drop_caches REPEAT=1 profile find-stat "$W/b" find_stat
cat_big() { cat "$W/b/big.bin" > /dev/null; }
PREPARE=drop_caches profile cold-read "$W/b" cat_big
profile warm-re-read "$W/b" cat_big
echo "reports in $OUT"
