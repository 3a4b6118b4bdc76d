#!/usr/bin/env bash
# The mount, side by side with native disk and `rclone mount` (a loopback WebDAV remote,
# --vfs-cache-mode full), in one run. Run as root. Prints each figure and its ratio to native.
#
#   scripts/bench-mount.sh            (BENCH_FILES=100000 BENCH_BIG_MIB=1024 by default)
#
# Measures: cold sequential read of the big file from a loopback server; warm re-read; first-byte
# latency of a 4 KiB read at a random offset of the cold big file; cat of 1,000 small cold files;
# find + stat over BENCH_FILES placeholders; untar of a source tree into the mount; git clone of a
# repository of /usr/share/doc and git status on the second device (time and bytes hydrated); a
# sequential write of the big file; sync under a burst (an untar on one device until the other lists
# every file, beside the same bytes as one file); grep -r over that tree, cold on the other device.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${BENCH_FILES:-100000}
BIG_MIB=${BENCH_BIG_MIB:-1024}
for tool in rclone python3 tar; do
  command -v "$tool" >/dev/null || apt-get install -y -qq "$tool" >/dev/null
done
cargo build --release --quiet
BVFS=$PWD/target/release/bvfs
W=$(mktemp -d /tmp/bvfs-bench.XXXXXX)
PIDS=()
cleanup() {
  for m in "$W"/bvfs-a "$W"/bvfs-b "$W"/rclone; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m" || true
  done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
source scripts/bench-lib.sh
first_byte() { # file offset → seconds for one 4 KiB pread
  python3 - "$1" "$2" <<'PY'
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
t = time.perf_counter(); os.pread(fd, 4096, int(sys.argv[2])); print(f"{time.perf_counter() - t:.4f}")
PY
}
SRC_TAR=$W/src.tar
make_doc_tar "$SRC_TAR"

echo "== setting up: native data, bvfs server + writer device, rclone WebDAV remote"
mkdir -p "$W/native" "$W/srv" "$W/bvfs-a" "$W/bvfs-b" "$W/rclone-src" "$W/rclone"
head -c $((BIG_MIB * 1024 * 1024)) /dev/urandom > "$W/native/big.bin"
make_tree "$W/native/tree" "$FILES"
TA=$("$BVFS" admin add-user --data "$W/srv" bench --device writer 2>/dev/null)
TB=$("$BVFS" admin add-user --data "$W/srv" bench --device reader 2>/dev/null)
"$BVFS" serve --data "$W/srv" --listen 127.0.0.1:0 > "$W/serve.out" 2>"$W/serve.log" &
PIDS+=($!)
URL=$(server_url "$W/serve.out")
"$BVFS" mount --server "$URL" --token "$TA" --device writer --data "$W/state-a" "$W/bvfs-a" >/dev/null
cp "$W/native/big.bin" "$W/bvfs-a/big.bin"
cp -r "$W/native/tree" "$W/bvfs-a/tree"
cp "$W/native/big.bin" "$W/rclone-src/big.bin"
cp -r "$W/native/tree" "$W/rclone-src/tree"
mkdir -p "$W/rclone-src/doc-cold" && tar -C "$W/rclone-src/doc-cold" -xf "$SRC_TAR"
wait_synced "$W/bvfs-a"
"$BVFS" umount "$W/bvfs-a" >/dev/null
rclone serve webdav "$W/rclone-src" --addr 127.0.0.1:18181 >/dev/null 2>&1 &
PIDS+=($!)
sleep 1
rclone mount :webdav: "$W/rclone" --webdav-url http://127.0.0.1:18181 --vfs-cache-mode full \
  --cache-dir "$W/rclone-cache" --daemon
"$BVFS" mount --server "$URL" --token "$TB" --device reader --data "$W/state-b" "$W/bvfs-b" >/dev/null
for _ in $(seq 1 600); do [ -e "$W/bvfs-b/big.bin" ] && [ "$(ls "$W/bvfs-b/tree" 2>/dev/null | wc -l)" = 100 ] && break; sleep 0.5; done

echo "== cold sequential read of ${BIG_MIB} MiB"
declare -A COLD WARM
for name in native bvfs-b rclone; do
  drop_caches
  t0=$(now); cat "$W/$name/big.bin" > /dev/null; t1=$(now)
  COLD[$name]=$(elapsed "$t0" "$t1")
  t0=$(now); cat "$W/$name/big.bin" > /dev/null; t1=$(now)
  WARM[$name]=$(elapsed "$t0" "$t1")
done

echo "== first byte: 4 KiB at a random offset of a cold file"
"$BVFS" umount "$W/bvfs-b" >/dev/null; rm -rf "$W/state-b/chunks"
"$BVFS" mount --server "$URL" --token "$TB" --device reader --data "$W/state-b" "$W/bvfs-b" >/dev/null
umount -l "$W/rclone"; rm -rf "$W/rclone-cache"
rclone mount :webdav: "$W/rclone" --webdav-url http://127.0.0.1:18181 --vfs-cache-mode full \
  --cache-dir "$W/rclone-cache" --daemon
OFFSET=$(( (BIG_MIB / 3) * 1024 * 1024 + 12345 ))
declare -A FIRST
for name in native bvfs-b rclone; do
  drop_caches
  FIRST[$name]=$(first_byte "$W/$name/big.bin" "$OFFSET")
done

echo "== cat of 1,000 small cold files"
declare -A SMALL
for name in native bvfs-b rclone; do
  drop_caches
  mapfile -t small < <(find "$W/$name/tree/d000" "$W/$name/tree/d001" -type f | sort | head -1000)
  t0=$(now); cat "${small[@]}" > /dev/null; t1=$(now)
  SMALL[$name]=$(elapsed "$t0" "$t1")
done

echo "== find + stat over $FILES files"
declare -A FIND
for name in native bvfs-b rclone; do
  drop_caches
  t0=$(now); find "$W/$name/tree" -type f -exec stat -c %s {} + > /dev/null; t1=$(now)
  FIND[$name]=$(elapsed "$t0" "$t1")
done

echo "== untar of /usr/share/doc ($(du -sh "$SRC_TAR" | cut -f1))"
declare -A UNTAR
for name in native bvfs-b rclone; do
  mkdir -p "$W/$name/untar"
  t0=$(now); tar -C "$W/$name/untar" -xf "$SRC_TAR"; sync; t1=$(now)
  UNTAR[$name]=$(elapsed "$t0" "$t1")
done

echo "== sync under a burst: an untar on one device, until the other lists every file"
wait_synced "$W/bvfs-b"
"$BVFS" mount --server "$URL" --token "$TA" --device writer --data "$W/state-a" "$W/bvfs-a" >/dev/null
TAR_BYTES=$(stat -c %s "$SRC_TAR")
# What the server needs to ingest the bytes: the same bytes as one file, until the other device has it.
t0=$(now); cp "$SRC_TAR" "$W/bvfs-b/burst.tar"
until [ "$(stat -c %s "$W/bvfs-a/burst.tar" 2>/dev/null)" = "$TAR_BYTES" ]; do sleep 0.05; done; t1=$(now)
INGEST=$(elapsed "$t0" "$t1")
# The burst: the tree's thousands of files, until the other device lists every one at its size.
mkdir -p "$W/bvfs-b/burst"
t0=$(now); tar -C "$W/bvfs-b/burst" -xf "$SRC_TAR"
WANT=$(cd "$W/bvfs-b/burst" && find . -type f -printf '%p %s\n' -o -printf '%p\n' | sort | md5sum)
until [ "$(cd "$W/bvfs-a/burst" 2>/dev/null && find . -type f -printf '%p %s\n' -o -printf '%p\n' | sort | md5sum)" = "$WANT" ]; do sleep 0.2; done
t1=$(now)
BURST=$(elapsed "$t0" "$t1")
wait_synced "$W/bvfs-a"

echo "== grep -r over a cold tree of $(tar tf "$SRC_TAR" | wc -l) entries"
# The untar's tree: on the other bvfs device it was never read (placeholders); rclone reads its copy
# on the WebDAV side through an empty cache; native reads the native untar after dropping caches.
declare -A GREP
grep_cold() { drop_caches; t0=$(now); grep -r -c "no such text in any file 7f3a" "$1" > /dev/null || true; t1=$(now); elapsed "$t0" "$t1"; }
GREP[native]=$(grep_cold "$W/native/untar")
GREP[bvfs-a]=$(grep_cold "$W/bvfs-a/burst")
GREP[rclone]=$(grep_cold "$W/rclone/doc-cold")
"$BVFS" umount "$W/bvfs-a" >/dev/null

echo "== git: clone a $(find /usr/share/doc -type f | wc -l)-file repository, then git status on another device"
REPO=$W/repo
git init -q "$REPO" && cp -r /usr/share/doc "$REPO/doc" 2>/dev/null
git -C "$REPO" add -A >/dev/null 2>&1 && git -C "$REPO" -c user.name=b -c user.email=b@b commit -qm bench
"$BVFS" mount --server "$URL" --token "$TA" --device writer --data "$W/state-a" "$W/bvfs-a" >/dev/null
declare -A CLONE
for name in native bvfs-a rclone; do
  t0=$(now); git clone -q --no-hardlinks "$REPO" "$W/$name/clone"; t1=$(now)
  CLONE[$name]=$(elapsed "$t0" "$t1")
done
# git's default configuration: every device reports the stat data git recorded. A status a second
# after the clone records the entries written in the index's own second ("racily clean") as clean.
sleep 1.1
git -C "$W/bvfs-a/clone" status --porcelain > /dev/null
wait_synced "$W/bvfs-a"
"$BVFS" umount "$W/bvfs-a" >/dev/null
for _ in $(seq 1 1200); do [ -e "$W/bvfs-b/clone/.git/index" ] && \
  [ "$(getfattr --only-values -n user.bvfs.sync "$W/bvfs-b" 2>/dev/null)" = synced ] && break; sleep 0.5; done
sleep 2
TREE_BYTES=$(du -sb "$REPO/doc" | cut -f1)
CACHED0=$(du -sb "$W/state-b/chunks" | cut -f1)
t0=$(now); git -C "$W/bvfs-b/clone" status --porcelain > "$W/status.out"; t1=$(now)
STATUS_B=$(elapsed "$t0" "$t1")
CACHED1=$(du -sb "$W/state-b/chunks" | cut -f1)
STATUS_CHANGED=$(wc -l < "$W/status.out")
drop_caches
t0=$(now); git -C "$W/native/clone" status --porcelain > /dev/null; t1=$(now)
STATUS_NATIVE=$(elapsed "$t0" "$t1")
HYDRATED_PCT=$(python3 -c "print(f'{100 * ($CACHED1 - $CACHED0) / $TREE_BYTES:.2f}')")

echo "== sequential write of ${BIG_MIB} MiB (+ sync)"
declare -A WRITE
for name in native bvfs-b rclone; do
  t0=$(now); cp "$W/native/big.bin" "$W/$name/written.bin"; sync; t1=$(now)
  WRITE[$name]=$(elapsed "$t0" "$t1")
done

echo "sync under a burst: the untar reached the other device in ${BURST} s; the same bytes as one file in ${INGEST} s (ratio $(python3 -c "print(f'{$BURST / $INGEST:.2f}')"))"
echo "git status on the second device: ${STATUS_B} s (native ${STATUS_NATIVE} s), hydrated ${HYDRATED_PCT} % of the tree's bytes, ${STATUS_CHANGED} paths reported"

python3 - <<PY
rows = [
  ("cat of 1,000 small cold files (s)", ${SMALL[native]}, ${SMALL[bvfs-b]}, ${SMALL[rclone]}),
  ("git clone, $(find "$REPO/doc" -type f | wc -l) files (s)", ${CLONE[native]}, ${CLONE[bvfs-a]}, ${CLONE[rclone]}),
  ("git status, second device (s)", ${STATUS_NATIVE}, ${STATUS_B}, float('nan')),
  ("sequential write ${BIG_MIB} MiB + sync (s)", ${WRITE[native]}, ${WRITE[bvfs-b]}, ${WRITE[rclone]}),
  ("cold sequential read ${BIG_MIB} MiB (s)", ${COLD[native]}, ${COLD[bvfs-b]}, ${COLD[rclone]}),
  ("warm re-read ${BIG_MIB} MiB (s)", ${WARM[native]}, ${WARM[bvfs-b]}, ${WARM[rclone]}),
  ("first byte, 4 KiB at a random offset (s)", ${FIRST[native]}, ${FIRST[bvfs-b]}, ${FIRST[rclone]}),
  ("find + stat over ${FILES} files (s)", ${FIND[native]}, ${FIND[bvfs-b]}, ${FIND[rclone]}),
  ("untar /usr/share/doc (s)", ${UNTAR[native]}, ${UNTAR[bvfs-b]}, ${UNTAR[rclone]}),
  ("grep -r over the cold untarred tree (s)", ${GREP[native]}, ${GREP[bvfs-a]}, ${GREP[rclone]}),
]
print(f"| {'measure':44} | {'native':>8} | {'bvfs':>8} | {'rclone':>8} | bvfs/native | bvfs/rclone |")
print("|" + "---|" * 6)
for name, n, b, r in rows:
    print(f"| {name:44} | {n:8.3f} | {b:8.3f} | {r:8.3f} | {b / n if n else float('nan'):11.2f} | {b / r if r else float('nan'):11.2f} |")
PY
