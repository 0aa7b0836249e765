#!/usr/bin/env bash
# Installs Debian's chromium for tests/test_report.py, which drives it headless with the
# playwright package (the test extra) through executable_path=/usr/bin/chromium: no
# chromedriver, selenium or `playwright install` browser download needed. Idempotent: does
# nothing when /usr/bin/chromium is already there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || true)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q chromium
/usr/bin/chromium --version
