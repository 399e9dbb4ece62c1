"""Every loader rejects malformed input with a clear error, and nothing in the package is ever unpickled."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

import jaxsafe
from jaxsafe.llm import convert

PACKAGE = Path(jaxsafe.__file__).parent


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def test_nothing_is_loaded_with_pickle():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "cloudpickle", "dill", "joblib") for n in names):
                    offenders.append(f"{path.name}:{node.lineno} imports a pickle module")
        for call in _calls(tree):
            name = ast.unparse(call.func)
            keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
            if name.endswith("np.load") or name == "numpy.load":
                if keywords.get("allow_pickle") != "False":
                    offenders.append(f"{path.name}:{call.lineno} np.load without allow_pickle=False")
            if name.endswith("torch.load") or name.endswith("pd.read_pickle"):
                offenders.append(f"{path.name}:{call.lineno} {name}")
    assert not offenders, offenders


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"not a safetensors file at all", b"\xff" * 64])
def test_malformed_safetensors_is_a_named_error(tmp_path, content):
    (tmp_path / "config.json").write_text(json.dumps(convert.config_to_hf(
        __import__("jaxsafe.llm.model", fromlist=["preset"]).preset("tiny"))))
    (tmp_path / convert.SINGLE_FILE).write_bytes(content)
    with pytest.raises(convert.CheckpointError, match=convert.SINGLE_FILE):
        convert.load_hf_checkpoint(tmp_path)


def test_malformed_hf_config_is_a_named_error(tmp_path):
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(convert.CheckpointError, match="config.json"):
        convert.load_hf_checkpoint(tmp_path)
