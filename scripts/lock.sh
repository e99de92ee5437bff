#!/usr/bin/env bash
# Regenerate requirements.lock from pyproject.toml (every extra) with uv's universal resolver: one file with
# environment markers for every platform. Torch and its CUDA runtime are left out: `make setup` installs the
# pinned CPU torch first, and a GPU user installs the CUDA build of the same version (README, "GPU").
# The versions already in requirements.lock are kept where they still fit (uv's preferences); pass
# UPGRADE=1 to take the newest. Needs uv (`pip install uv`).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=${TORCH:-2.13.0}
UV=${UV:-uv}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "torch==$TORCH" > "$tmp/torch.txt"
[ -e requirements.lock ] && cp requirements.lock "$tmp/out.txt"
$UV pip compile pyproject.toml --extra all --universal --python-version 3.11 --no-header --no-annotate \
  -c "$tmp/torch.txt" ${UPGRADE:+--upgrade} -o "$tmp/out.txt" --quiet
{
  echo "# The tested set of dp's dependencies, every extra, with markers (scripts/lock.sh writes it; torch==$TORCH"
  echo "# and its CUDA runtime are installed first and apart, by \`make setup\`)."
  grep -vE "^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==" "$tmp/out.txt"
} > requirements.lock
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) pins)"
