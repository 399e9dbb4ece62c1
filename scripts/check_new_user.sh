#!/usr/bin/env bash
# Tried as a new user would, on a machine with only Python: in a temporary directory, a fresh `python3 -m venv`
# with nothing installed runs the quickstart notebook's install cell and its cells up to and including the first
# training cell (the first one calling `jax.jit(train)`), with JAXSAFE_SOURCE pointing to a local `git clone` of
# this checkout's main HEAD (committed work only), so pip installs jaxsafe from that clone and its dependencies
# from PyPI. Prints the wall time of each step; exits non-zero on the first failure.
#
#   scripts/check_new_user.sh              # PYTHON=python3.12 scripts/check_new_user.sh for another interpreter
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NOTEBOOK="notebooks/quickstart.ipynb"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

step() {  # step NAME COMMAND...: run, print its wall time, stop the script if it fails
  local name="$1" start end
  shift
  start=$EPOCHREALTIME
  if ! "$@"; then
    echo "FAILED: $name" >&2
    exit 1
  fi
  end=$EPOCHREALTIME
  awk -v name="$name" -v s="$start" -v e="$end" 'BEGIN { printf "== %-46s %7.1f s\n", name, e - s }'
}

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), f"jaxsafe needs Python 3.11+, this is {sys.version}"'
echo "python: $("$PYTHON" --version), repository HEAD $(git -C "$REPO" rev-parse --short main)"

step "git clone (main HEAD)" git clone --quiet --branch main "$REPO" "$WORK/clone"
step "python3 -m venv (nothing installed)" "$PYTHON" -m venv "$WORK/venv"
VENV_PYTHON="$WORK/venv/bin/python"

# The cells to run, one file each (stdlib json only: the fresh venv has nothing else).
mkdir "$WORK/cells" "$WORK/run"
"$VENV_PYTHON" - "$WORK/clone/$NOTEBOOK" "$WORK/cells" <<'EOF'
import json, sys

notebook, out = sys.argv[1], sys.argv[2]
cells = [c for c in json.load(open(notebook))["cells"] if c["cell_type"] == "code"]
sources = ["".join(c["source"]) for c in cells]
tags = [c.get("metadata", {}).get("tags", []) for c in cells]
if not tags or "install" not in tags[0]:
    sys.exit(f"{notebook}: the first code cell is not the install cell")
first_training = next((i for i, s in enumerate(sources) if "jax.jit(train)" in s), None)
if first_training is None:
    sys.exit(f"{notebook}: no training cell (one calling jax.jit(train))")
for i, source in enumerate(sources[: first_training + 1]):
    open(f"{out}/{i:02d}.py", "w").write(source + "\n")
print(f"{first_training + 1} code cells: the install cell to the first training cell")
EOF

# All cells share one interpreter (as in a kernel); each is timed on its own.
cat > "$WORK/cells/run_cells.py" <<'EOF'
import glob, os, sys, time

namespace = {"__name__": "__main__"}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "[0-9][0-9].py"))):
    source = open(path).read()
    first = next((line for line in source.splitlines() if line and not line.startswith("#")), "")
    print(f"-- cell {os.path.basename(path)[:2]}: {first[:70]}", flush=True)
    start = time.perf_counter()
    exec(compile(source, f"cell {os.path.basename(path)}", "exec"), namespace)
    print(f"== {'cell ' + os.path.basename(path)[:2]:<46} {time.perf_counter() - start:7.1f} s", flush=True)
EOF
# Run away from the clone (the script's folder and the working directory are on sys.path; a folder named jaxsafe
# there would shadow the installed package), so only what pip installed can be imported.
cd "$WORK/run"
step "notebook cells (install + first training)" env -u PYTHONPATH JAXSAFE_SOURCE="$WORK/clone" MPLBACKEND=Agg \
  "$VENV_PYTHON" "$WORK/cells/run_cells.py" "$WORK/cells"
echo "new-user check passed"
