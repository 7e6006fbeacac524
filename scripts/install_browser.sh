#!/usr/bin/env bash
# Installs what the browser tier needs: Debian's chromium (playwright cannot download browsers here),
# plus JupyterLab and playwright into the active virtual environment, then checks that they work:
# chromium renders a page headless, and the Python packages import.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium missing and not root: install Debian's 'chromium' package to run browser tests" >&2
    exit 1
  fi
fi
pip install -q -e ".[browser]"
# the same flags as tests/browser use; a crash here means the browser tier cannot run on this machine
if ! chromium --headless --no-sandbox --disable-gpu --no-first-run --dump-dom "data:text/html,<p>ok</p>" \
    2>/dev/null | grep -q "<p>ok</p>"; then
  echo "chromium is installed but cannot render a page headless (--no-sandbox --headless --disable-gpu)" >&2
  exit 1
fi
python - <<'EOF'
import importlib.metadata as md
import jupyterlab  # noqa: F401
import playwright.sync_api  # noqa: F401
print("jupyterlab", md.version("jupyterlab"), "| playwright", md.version("playwright"))
EOF
chromium --version 2>/dev/null
