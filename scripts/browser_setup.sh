#!/usr/bin/env bash
# What `make browser-test` needs beside the course's venv: Debian's Chromium and ChromeDriver (a
# browser download by a test tool fails on a machine without network), and JupyterLab + Selenium in
# ./.venv. Fast when already there.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! [ -x /usr/bin/chromium ] || ! [ -x /usr/bin/chromedriver ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if ! .venv/bin/python -c "import jupyterlab, selenium" 2>/dev/null; then
  .venv/bin/python -m pip --disable-pip-version-check -q install "jupyterlab>=4.4,<5" "selenium>=4.30,<5" 2>&1 \
    | grep -v '^WARNING: Location' || true
fi
/usr/bin/chromium --version
