#!/usr/bin/env bash
# Installs what the browser tier needs: Debian's chromium (playwright cannot download browsers here),
# plus JupyterLab and playwright into the active virtual environment.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium missing and not root: install Debian's 'chromium' package to run browser tests" >&2
    exit 1
  fi
fi
pip install -q -e ".[browser]"
chromium --version
