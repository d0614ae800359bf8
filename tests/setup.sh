#!/usr/bin/env bash
# Test set-up beyond install.sh: system packages some tests need. Safe to run again.
set -euo pipefail
# Headless Chromium + its WebDriver: the listening-report test opens report.html in a real browser.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
fi
