# restic-manager tasks. `just --list` shows them.
# The README's two commands (cargo run / cargo test --workspace) need no `just`.

# Workspace package version, from [workspace.package] in Cargo.toml.
version := `sed -n 's/^version[[:space:]]*=[[:space:]]*"\(.*\)"/\1/p' Cargo.toml | head -n 1`

# Run the server (defaults: 127.0.0.1:8080, ./data, SQLite).
run *args:
    cargo run -- {{args}}

# Unit and integration tests (SQLite; set TEST_DATABASE_URL for Postgres).
# The integration tests are one binary: `just test --test it jobs::` runs one area.
test *args:
    cargo test --workspace {{args}}

# End-to-end suite: real binaries at two versions, agents under a supervisor loop.
e2e *args:
    bash scripts/e2e.sh {{args}}

# Browser tests in headless Chromium (needs Debian's chromium + chromium-driver).
browser *args:
    cargo test --workspace --features browser-tests --test browser {{args}}

# Rebuild assets/app.css after changing Tailwind classes in src/ (commit the result).
css:
    test -d node_modules/tailwindcss || npm ci --no-audit --no-fund
    BROWSERSLIST_IGNORE_OLD_DATA=1 npx --no-install tailwindcss -i assets/input.css -o assets/app.css --minify

# Refresh vendored htmx + SSE extension and rebuild the CSS (npm ci).
vendor:
    sh scripts/vendor-assets.sh

# Release build of server and agent at VERSION: `just build v1.2.3` or `just build VERSION=v1.2.3`.
build VERSION=version:
    RM_VERSION={{quote(trim_start_match(VERSION, "VERSION="))}} cargo build --release --workspace

# Benchmarks of the release server over real sockets (see BENCHMARKS.md): `just bench --only agents,dashboard`.
# One `cargo build` for the server, the agent and the tool (a `cargo run --example` would
# unify features differently and rebuild half the tree on each switch).
bench *args:
    cargo build --release --workspace --bins --examples
    ./target/release/examples/bench --no-build {{args}}

# What CI checks before the tests.
lint:
    cargo fmt --all -- --check && cargo clippy --all-targets --all-features -- -D warnings
