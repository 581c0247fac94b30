#!/usr/bin/env bash
# Run the test suite once per Keras backend (the backend is fixed when keras is imported, so
# each needs its own process). Extra arguments go to pytest. Exit 5 (no tests) counts as a pass.
set -u
# The browser tests drive Debian's Chromium with Playwright (Playwright's own browser download
# cannot be fetched here): install it once where it is missing.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null
fi
status=0
for backend in ${CAMLENS_BACKENDS:-tensorflow jax torch}; do
    echo "=== KERAS_BACKEND=$backend"
    KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider "$@"
    rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
        status=$rc
    fi
done
exit $status
