#!/usr/bin/env bash
# End-to-end: builds both binaries at three versions (one target dir; only
# the version-stamped crates rebuild), then runs tests/e2e.rs against them:
# real server processes, real agents under a restart-on-exit loop, real
# downloads and binary swaps.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=$(mktemp -d "${TMPDIR:-/tmp}/rm-e2e.XXXXXX")
trap 'rm -rf "$out"' EXIT
target="${CARGO_TARGET_DIR:-target}"
for v in a b c; do
  echo "== building restic-manager and restic-manager-agent at v0.0.1-e2e-$v"
  RM_VERSION="v0.0.1-e2e-$v" cargo build --workspace --bins --quiet
  mkdir -p "$out/$v"
  cp "$target/debug/restic-manager" "$target/debug/restic-manager-agent" "$out/$v/"
done
echo "== running the end-to-end test"
RM_VERSION="v0.0.1-e2e-c" RM_E2E_DIR="$out" cargo test --workspace --features e2e-tests --test e2e -- --nocapture
