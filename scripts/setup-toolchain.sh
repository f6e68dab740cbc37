#!/usr/bin/env bash
# Makes sure the Rust tools CI uses are present (rustfmt, clippy). Idempotent and quick when
# they are already installed.
set -euo pipefail
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done
cargo --version
