#!/usr/bin/env bash
# Rebuild the web UI's YAML editor: src/tideflow/service/static/vendor/editor.js (CodeMirror 6
# and its YAML mode, one minified script) and editor.LICENSES.txt (their licences).
# Reproducible: npm installs exactly what package-lock.json pins (by integrity hash) and
# esbuild writes the same bytes for the same inputs; `bash build.sh --check` rebuilds into a
# temporary folder and fails if the committed files differ.
# Needs node and npm (the npm registry); run it after changing editor.mjs or the versions
# in package.json (then `npm install` first, to update package-lock.json).
set -euo pipefail
cd "$(dirname "$0")"
out=../../src/tideflow/service/static/vendor
check=false
if [ "${1:-}" = "--check" ]; then
  check=true
  target=$(mktemp -d)
  trap 'rm -rf "$target"' EXIT
else
  target=$out
fi
mkdir -p "$target"
# --ignore-scripts: nothing from the registry runs at install time (esbuild works without
# its optional postinstall step).
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
node_modules/.bin/esbuild editor.mjs --bundle --minify --format=iife --target=es2020 \
  --legal-comments=none --charset=utf8 --log-level=warning \
  --metafile="$target/meta.json" --outfile="$target/editor.js"
node licenses.mjs "$target/meta.json" "$target/editor.LICENSES.txt"
rm "$target/meta.json"
if $check; then
  cmp "$target/editor.js" "$out/editor.js"
  cmp "$target/editor.LICENSES.txt" "$out/editor.LICENSES.txt"
  echo "editor.js and editor.LICENSES.txt match their sources"
fi
