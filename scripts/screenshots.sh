#!/usr/bin/env bash
# Regenerate the README's screenshots (docs/images/console.png, model-page.png, api-docs.png): the
# browser test starts a fresh `apiinone serve`, makes the quickstart's admin, runs two tasks and the
# playground in headless Debian chromium, and writes its pictures here instead of test-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
mkdir -p docs/images
APIINONE_SCREENSHOTS_DIR="$PWD/docs/images" .venv/bin/pytest -q -p no:cacheprovider \
  tests/e2e/test_docs_and_screenshots.py
ls -l docs/images
