#!/usr/bin/env bash
# The mount, side by side with native disk and `rclone mount` (a loopback WebDAV remote,
# --vfs-cache-mode full), in one run. Run as root. Prints each figure and its ratio to native.
#
#   scripts/bench-mount.sh            (BENCH_FILES=100000 BENCH_BIG_MIB=1024 by default)
#
# Measures: cold sequential read of the big file from a loopback server; warm re-read; first-byte
# latency of a 4 KiB read at a random offset of the cold big file; find + stat over BENCH_FILES
# placeholders; untar of a source tree into the mount.
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
now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
first_byte() { # file offset → seconds for one 4 KiB pread
  python3 - "$1" "$2" <<'PY'
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
t = time.perf_counter(); os.pread(fd, 4096, int(sys.argv[2])); print(f"{time.perf_counter() - t:.4f}")
PY
}
make_tree() { # dir → FILES small files in 100 directories
  python3 - "$1" "$FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i % 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.txt"), "w") as f:
        f.write(f"file {i}\n")
PY
}
SRC_TAR=$W/src.tar
# Links dereferenced: rclone mount cannot make symlinks on WebDAV, and BitVault has no hard links.
tar -C /usr/share --hard-dereference -chf "$SRC_TAR" doc 2>/dev/null || true

echo "== setting up: native data, bvfs server + writer device, rclone WebDAV remote"
mkdir -p "$W/native" "$W/srv" "$W/bvfs-a" "$W/bvfs-b" "$W/rclone-src" "$W/rclone"
head -c $((BIG_MIB * 1024 * 1024)) /dev/urandom > "$W/native/big.bin"
make_tree "$W/native/tree"
TA=$("$BVFS" admin add-user --data "$W/srv" bench --device writer 2>/dev/null)
TB=$("$BVFS" admin add-user --data "$W/srv" bench --device reader 2>/dev/null)
"$BVFS" serve --data "$W/srv" --listen 127.0.0.1:0 > "$W/serve.out" 2>"$W/serve.log" &
PIDS+=($!)
sleep 1
URL=$(grep -o 'http://[0-9.:]*' "$W/serve.out" | head -1)
"$BVFS" mount --server "$URL" --token "$TA" --device writer --data "$W/state-a" "$W/bvfs-a" >/dev/null
cp "$W/native/big.bin" "$W/bvfs-a/big.bin"
cp -r "$W/native/tree" "$W/bvfs-a/tree"
cp "$W/native/big.bin" "$W/rclone-src/big.bin"
cp -r "$W/native/tree" "$W/rclone-src/tree"
"$BVFS" umount "$W/bvfs-a" >/dev/null   # waits for the last uploads
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

python3 - <<PY
rows = [
  ("cold sequential read ${BIG_MIB} MiB (s)", ${COLD[native]}, ${COLD[bvfs-b]}, ${COLD[rclone]}),
  ("warm re-read ${BIG_MIB} MiB (s)", ${WARM[native]}, ${WARM[bvfs-b]}, ${WARM[rclone]}),
  ("first byte, 4 KiB at a random offset (s)", ${FIRST[native]}, ${FIRST[bvfs-b]}, ${FIRST[rclone]}),
  ("find + stat over ${FILES} files (s)", ${FIND[native]}, ${FIND[bvfs-b]}, ${FIND[rclone]}),
  ("untar /usr/share/doc (s)", ${UNTAR[native]}, ${UNTAR[bvfs-b]}, ${UNTAR[rclone]}),
]
print(f"| {'measure':44} | {'native':>8} | {'bvfs':>8} | {'rclone':>8} | bvfs/native | bvfs/rclone |")
print("|" + "---|" * 6)
for name, n, b, r in rows:
    print(f"| {name:44} | {n:8.3f} | {b:8.3f} | {r:8.3f} | {b / n if n else float('nan'):11.2f} | {b / r if r else float('nan'):11.2f} |")
PY
