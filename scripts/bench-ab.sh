#!/usr/bin/env bash
# A/B of two bvfs builds on the write-heavy rows of scripts/bench-mount.sh, each workload run in
# a fresh mount of a fresh loopback server, the two builds alternating round by round (so both see
# the same machine state). Prints each round and the medians, with new ÷ old. Workloads:
#   untar        untar of /usr/share/doc + `sync`
#   clone        `git clone` of a repository of that tree + `sync`
#   small-writes `dd bs=4k` of 200 MB into one file (a FUSE write request per 4 KiB)
#   small-files  5,000 files of 100 bytes, each created, written and closed (no sync)
#   upload       a 256 MiB file of random bytes copied in, until the server has it all
#   cold-read    that file, uploaded and evicted, read back with `cat` (from the server)
#
#   cargo build --release && cp target/release/bvfs /tmp/bvfs-new
#   git stash && cargo build --release && cp target/release/bvfs /tmp/bvfs-old && git stash pop
#   WORKLOADS="untar small-files" scripts/bench-ab.sh /tmp/bvfs-old /tmp/bvfs-new [ROUNDS]
#   (as root: FUSE; default: every workload, 3 rounds; BENCH_DIR=/dev/shm keeps the disk out of it)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$(realpath "$1")
NEW=$(realpath "$2")
ROUNDS=${3:-3}
WORKLOADS=${WORKLOADS:-untar clone small-writes small-files}
W=$(mktemp -d "${BENCH_DIR:-/tmp}/bvfs-ab.XXXXXX")
cleanup() {
  mountpoint -q "$W/mnt" 2>/dev/null && umount -l "$W/mnt" || true
  rm -rf "$W"
}
trap cleanup EXIT
source scripts/bench-lib.sh

make_doc_tar "$W/src.tar"
head -c 256M /dev/urandom > "$W/random.bin"
mkdir -p "$W/repo" && tar -C "$W/repo" -xf "$W/src.tar"
git -C "$W/repo" init -q && git -C "$W/repo" add -A \
  && git -C "$W/repo" -c user.email=b@e -c user.name=b commit -qm tree

# one BVFS WORKLOAD: seconds for WORKLOAD in a fresh mount of a fresh server. Runs in a subshell
# (`$(one …)`), so it stops its own server and mount, also when it fails.
one() {
  local bvfs=$1 workload=$2 token url t0 t1 server
  rm -rf "$W/srv" "$W/state" && mkdir -p "$W/srv" "$W/mnt"
  token=$("$bvfs" admin add-user --data "$W/srv" ab --device a 2>/dev/null)
  "$bvfs" serve --data "$W/srv" --listen 127.0.0.1:0 > "$W/serve.out" 2>/dev/null &
  server=$!
  fail() {
    echo "bench-ab: $bvfs: $1" >&2
    mountpoint -q "$W/mnt" 2>/dev/null && umount -l "$W/mnt"
    kill "$server" 2>/dev/null
    return 1
  }
  url=$(server_url "$W/serve.out") || { fail "the server did not start"; return 1; }
  "$bvfs" mount --server "$url" --token "$token" --device a --data "$W/state" "$W/mnt" >/dev/null \
    && mountpoint -q "$W/mnt" || { fail "the mount did not start"; return 1; }
  if [ "$workload" = cold-read ]; then
    cp "$W/random.bin" "$W/mnt/big.bin"
    wait_synced "$W/mnt" || { fail "the upload did not finish"; return 1; }
    "$bvfs" evict "$W/mnt/big.bin" >/dev/null || { fail "evict refused"; return 1; }
    drop_caches
  fi
  t0=$(now)
  case $workload in
    untar) tar -C "$W/mnt" -xf "$W/src.tar"; sync ;;
    clone) git clone -q "$W/repo" "$W/mnt/repo"; sync ;;
    small-writes) dd if=/dev/zero of="$W/mnt/small-writes.bin" bs=4k count=50000 status=none ;;
    small-files) python3 -c '
import os, sys
for i in range(5000):
    fd = os.open(f"{sys.argv[1]}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"x" * 100)
    os.close(fd)' "$W/mnt" ;;
    upload) cp "$W/random.bin" "$W/mnt/big.bin"
      wait_synced "$W/mnt" || { fail "the upload did not finish"; return 1; } ;;
    cold-read) cat "$W/mnt/big.bin" > /dev/null ;;
    *) fail "unknown workload $workload"; return 1 ;;
  esac
  t1=$(now)
  wait_synced "$W/mnt" || { fail "the mount did not finish syncing"; return 1; }
  "$bvfs" umount "$W/mnt" >/dev/null
  kill "$server" && wait "$server" 2>/dev/null || true
  elapsed "$t0" "$t1"
}

declare -A RESULTS
for round in $(seq 1 "$ROUNDS"); do
  for workload in $WORKLOADS; do
    for side in old new; do
      bin=$OLD; [ "$side" = new ] && bin=$NEW
      t=$(one "$bin" "$workload") || exit 1
      RESULTS[$workload.$side]+="$t "
      echo "round $round: $workload $side ${t} s"
    done
  done
done
echo "| workload | old (s) | new (s) | new ÷ old |"
echo "| --- | --- | --- | --- |"
for workload in $WORKLOADS; do
  python3 - "$workload" "${RESULTS[$workload.old]}" "${RESULTS[$workload.new]}" <<'PY'
import statistics, sys
name, old, new = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
mo, mn = statistics.median(old), statistics.median(new)
print(f"| {name} (median of {len(old)}) | {mo:.3f} | {mn:.3f} | {mn / mo:.2f} |")
PY
done
