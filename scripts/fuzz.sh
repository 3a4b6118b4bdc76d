#!/usr/bin/env bash
# The long fuzzing mode (issue 14): every libFuzzer target in fuzz/ for a bounded time each, with
# cargo fuzz on the nightly toolchain (installed with `cargo install cargo-fuzz` when missing). The
# README's test command runs the same entry points as bounded property passes instead
# (engine/tests/decode_props.rs, server/tests/commit_props.rs, proto/tests/names_props.rs).
#
#   scripts/fuzz.sh                 # 5 minutes per target
#   FUZZ_SECONDS=3600 scripts/fuzz.sh commit
#
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script; replay it with
# `cargo +nightly fuzz run <target> <file>`, fix it, and keep it as a regression test.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${FUZZ_SECONDS:-300}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
for target in "${targets[@]}"; do
  echo "== $target for ${SECONDS_EACH}s"
  cargo +nightly fuzz run "$target" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096
done
