#!/usr/bin/env bash
# Test set-up beyond install.sh: system packages some tests need. Safe to run again.
set -euo pipefail
true
