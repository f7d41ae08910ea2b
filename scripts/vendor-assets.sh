#!/bin/sh
# Refresh the front-end files that are committed under assets/:
#   assets/vendor/htmx.min.js      <- node_modules/htmx.org/dist/htmx.min.js
#   assets/vendor/htmx-ext-sse.js  <- node_modules/htmx-ext-sse/dist/sse.js
#   assets/app.css                 <- Tailwind build of assets/input.css (minified)
# Versions come from package.json / package-lock.json (pinned exactly). To move
# to a new version: edit package.json, run `npm install`, then run this script,
# and update assets/vendor/README.md.
# Needs Node.js + npm and the npm registry; `cargo run` itself never needs Node.
set -eu

cd "$(dirname "$0")/.."

echo "==> npm ci (exact versions from package-lock.json)"
npm ci --no-audit --no-fund

echo "==> copying vendored scripts"
cp node_modules/htmx.org/dist/htmx.min.js assets/vendor/htmx.min.js
cp node_modules/htmx-ext-sse/dist/sse.js assets/vendor/htmx-ext-sse.js

echo "==> building assets/app.css"
BROWSERSLIST_IGNORE_OLD_DATA=1 npx --no-install tailwindcss \
  -c tailwind.config.js -i assets/input.css -o assets/app.css --minify

htmx_version=$(node -p 'require("./node_modules/htmx.org/package.json").version')
sse_version=$(node -p 'require("./node_modules/htmx-ext-sse/package.json").version')
tw_version=$(node -p 'require("./node_modules/tailwindcss/package.json").version')
echo "==> done: htmx.org $htmx_version, htmx-ext-sse $sse_version, tailwindcss $tw_version"
if command -v sha256sum >/dev/null 2>&1; then
  sha256sum assets/vendor/htmx.min.js assets/vendor/htmx-ext-sse.js
fi
