#!/usr/bin/env bash
# Runs every test of the workspace, installing first what the tests need on a Debian machine:
# fuse3 and attr (real mounts, xattrs), dbench and stress-ng (stress runs on a mount), git (a clone
# inside a mount), rsync (times kept across runs), b3sum (hash cross-checks), pjdfstest and its dummy
# user `tests` (the POSIX suite on a mount), and for the scale-out server tests PostgreSQL 15,
# nats-server and moto (S3). Run as root: the mount tests mount FUSE filesystems, and the scale-out
# tests run PostgreSQL as the `postgres` user. The tests start and stop their own PostgreSQL
# clusters, moto and nats-server on free loopback ports.
#
#   scripts/test.sh [extra cargo-nextest/cargo-test arguments]
#
# Long modes are opt-in: BVFS_PLANNER_CASES=1000000, BVFS_SIM_SEEDS=100000, BVFS_VFS_SIM_SEEDS=100000,
# BVFS_FSX_OPS=100000, BVFS_KILL9_ROUNDS=200.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v setfattr >/dev/null || need+=(attr)
command -v b3sum >/dev/null || need+=(b3sum)
command -v dbench >/dev/null || need+=(dbench)
command -v stress-ng >/dev/null || need+=(stress-ng)
command -v git >/dev/null || need+=(git)
command -v rsync >/dev/null || need+=(rsync)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null || need+=(nats-server)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "scripts/test.sh: installing ${need[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "scripts/test.sh: missing ${need[*]}; install them (apt-get install ${need[*]}) or run as root" >&2
  fi
fi

if ! command -v moto_server >/dev/null; then
  echo "scripts/test.sh: installing moto (S3 for the scale-out tests)" >&2
  python3 -m pip install --quiet "moto[server]"
fi

# A test killed by a timeout cannot stop its PostgreSQL cluster (pg_ctl detaches it): stop any
# left behind when the run ends, whatever its outcome. (moto and nats-server die with their test.)
stop_leftover_clusters() {
  for data in "${TMPDIR:-/tmp}"/bvfs-pg-*/data; do
    if [ -f "$data/postmaster.pid" ]; then
      runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$data" -m immediate stop >/dev/null 2>&1 || true
    fi
  done
}
trap stop_leftover_clusters EXIT

# pjdfstest (the POSIX suite, tests/pjdfstest.rs) and the dummy user it switches to.
if ! command -v pjdfstest >/dev/null; then
  echo "scripts/test.sh: installing pjdfstest (cargo install)" >&2
  cargo install --locked --quiet pjdfstest
fi
if [ "$(id -u)" = 0 ] && ! id tests >/dev/null 2>&1; then
  echo 'tests:x:::Dummy user for pjdfstest:/:/usr/sbin/nologin' | newusers
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
  cargo test --workspace --doc --quiet
else
  cargo test --workspace --no-fail-fast "$@"
fi
