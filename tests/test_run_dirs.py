"""One run-directory policy for every command: a new run into a non-empty directory refuses with a clear message and
leaves the directory byte-identical (nothing is appended, overwritten or deleted)."""

import pytest

from jaxsafe import cli


def snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def occupied(tmp_path):
    out = tmp_path / "taken"
    (out / "checkpoints").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"run": 0, "chunk": 0}\n')
    (out / "notes.txt").write_text("a user's own file\n")
    (out / "checkpoints" / "blob").write_bytes(b"\x00\x01")
    return out


COMMANDS = {
    "train": ["train", "ppo", "--env", "SafeCartPole"],
    "sweep": ["sweep", "ppo_lag", "--env", "SafeCartPole", "--grid", "cost_limit=1,2"],
    "demo": ["demo", "--quick"],
    "bilevel": ["bilevel", "--problem", "four_rooms", "--estimator", "bchg", "--seeds", "1", "--iters", "2"],
    "align": ["align", "sacpo", "--quick"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_new_run_refuses_a_non_empty_directory(command, occupied, capsys):
    before = snapshot(occupied)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(COMMANDS[command] + ["--out", str(occupied)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "already exists" in error and "--resume" in error, error
    assert snapshot(occupied) == before
