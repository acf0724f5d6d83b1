#!/usr/bin/env bash
# Creates or refreshes a virtual environment holding exactly the versions a lock file names
# (`uv pip sync`: adds, upgrades and removes until the environment equals the lock), then
# the project itself, editable, without resolving anything.
#   scripts/venv.sh [VENV=.venv] [LOCK=requirements.lock]
# uv takes the files from PyPI (or the index its own settings name: UV_INDEX_URL, uv.toml);
# it does not read pip's configuration. Handing it a machine's local wheel mirrors beside
# PyPI made it pick soundfile's pure-Python wheel, which lacks libsndfile.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
VENV=${1:-.venv}
LOCK=${2:-requirements.lock}
uv_version=$(sed -n 's/^uv==\([^ ;]*\).*/\1/p' "$LOCK")
[[ -n $uv_version ]] || { echo "scripts/venv.sh: $LOCK pins no uv" >&2; exit 2; }
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
if [[ $("$VENV/bin/python" -m uv --version 2>/dev/null) != "uv $uv_version"* ]]; then
  "$VENV/bin/python" -m pip install -q "uv==$uv_version"
fi
uv=("$VENV/bin/python" -m uv pip)
"${uv[@]}" sync -q --python "$VENV/bin/python" "$LOCK"
"${uv[@]}" install -q --python "$VENV/bin/python" --no-deps -e .
# the proof: every distribution but the project (and pip, which venv seeds) is as locked
"$VENV/bin/python" - "$LOCK" <<'PYEOF'
import re
import sys
from importlib import metadata

from packaging.markers import Marker

locked = {}  # a universal lock names a package once per platform / Python (markers)
for line in open(sys.argv[1]):
    m = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;]+)\s*(?:;\s*(.+))?$", line.strip())
    if m and (not m[3] or Marker(m[3]).evaluate()):
        locked[re.sub(r"[-_.]+", "-", m[1]).lower()] = m[2]
wrong = []
for dist in metadata.distributions():
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
    if name in ("audio-wgan", "pip", "setuptools", "wheel"):
        continue
    if locked.get(name) != dist.version:
        wrong.append(f"{name} {dist.version} (locked: {locked.get(name, 'not locked')})")
if wrong:
    sys.exit("scripts/venv.sh: not as locked: " + "; ".join(sorted(wrong)))
PYEOF
