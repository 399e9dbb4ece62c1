"""The plotting module draws off-screen in scripts but leaves a notebook's (or a user's) backend alone."""

import os
import subprocess
import sys

PROBE = "import matplotlib, jaxsafe.plotting as p; p._pyplot(); print(matplotlib.get_backend())"


def _backend(env_backend=None, preimport=False):
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    if env_backend:
        env["MPLBACKEND"] = env_backend
    code = ("import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot; " if preimport else "") + PROBE
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip().lower()


def test_scripts_draw_off_screen_and_notebooks_keep_their_backend():
    assert _backend() == "agg"
    assert _backend(env_backend="svg") == "svg"  # ipykernel sets MPLBACKEND to its inline backend
    assert _backend(preimport=True) == "svg"
