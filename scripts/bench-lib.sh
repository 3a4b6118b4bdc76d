# Shell helpers shared by scripts/bench-mount.sh, scripts/profile-mount.sh and scripts/bench-ab.sh
# (sourced, not run).

now() { date +%s.%N; }
# Seconds between two `now` readings, to the millisecond.
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# Waits (up to 30 min) until a mount's root says everything is synced, so that `bvfs umount`, which
# waits only a minute for the last changes, never gives up on a large upload.
wait_synced() {
  for _ in $(seq 1 3600); do
    [ "$(getfattr --only-values -n user.bvfs.sync "$1" 2>/dev/null)" = synced ] && return 0
    sleep 0.5
  done
  echo "$(basename "$0"): $1 did not finish syncing in 30 minutes" >&2
  return 1
}
# make_tree DIR COUNT [varied]: COUNT small files in 100 directories; each holds one line, or with
# `varied` 1 to 50 lines.
make_tree() {
  python3 - "$1" "$2" "${3:-}" <<'PY'
import os, sys
root, n, varied = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "varied"
for i in range(n):
    d = os.path.join(root, f"d{i % 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.txt"), "w") as f:
        f.write(f"file {i}\n" * ((1 + i % 50) if varied else 1))
PY
}
# make_doc_tar FILE: /usr/share/doc as a tarball, links dereferenced (rclone mount cannot make
# symlinks on WebDAV, and BitVault has no hard links).
make_doc_tar() {
  tar -C /usr/share --hard-dereference -chf "$1" doc 2>/dev/null || true
}
# server_url FILE: the address a starting `bvfs serve` printed to FILE (its stdout), once it has
# (up to 10 s); fails when it never does.
server_url() {
  for _ in $(seq 1 100); do
    grep -q http "$1" 2>/dev/null && break
    sleep 0.1
  done
  # -m 1, not `| head -1`: under pipefail, head closing the pipe early can fail the pipeline.
  grep -o -m 1 'http://[0-9.:]*' "$1"
}
