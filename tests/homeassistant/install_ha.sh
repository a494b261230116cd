#!/usr/bin/env bash
# Install Home Assistant Core into a virtualenv for tests/homeassistant/ha_check.py.
# Usage: tests/homeassistant/install_ha.sh [VENV_DIR]   (default /work/ha-venv)
# Then:  export PBX2MQTT_TEST_HA_PYTHON=VENV_DIR/bin/python
# Optional screenshot support: VENV_DIR/bin/pip install playwright, plus Debian's
# `chromium` package (no browser download: the check uses /usr/bin/chromium).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-/work/ha-venv}"
py="${PYTHON:-python3}"
"$py" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)' \
  || { echo "Home Assistant 2024.3 needs Python >= 3.11" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip wheel
# First HA's wheel alone, for its package_constraints.txt; then everything under those constraints.
"$venv/bin/pip" install -q --no-deps "homeassistant==2024.3.3"
constraints="$("$venv/bin/python" -c 'import homeassistant, os; print(os.path.join(os.path.dirname(homeassistant.__file__), "package_constraints.txt"))')"
"$venv/bin/pip" install -q -c "$constraints" -r "$here/requirements-ha.txt"
"$venv/bin/pip" check
"$venv/bin/python" -c 'from homeassistant.const import __version__; print("Home Assistant", __version__, "in", "'"$venv"'")'
