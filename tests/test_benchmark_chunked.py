"""The long benchmarks' chunked cells (benchmarks/chunked.py): a cell resumed in a fresh run root from the
committed store ends bit-identical to one run straight through, and the schedules pick the documented cell."""

import json
import shutil

import pytest

from benchmarks import chunked
from jaxsafe import runner
from jaxsafe.examples import constrained_bandit as cb

cb.register()

UPDATES, CHUNKS = 50, 5  # 10 steps per chunk


def make_spec():
    return runner.make_spec("bandit_lag", "three_arms", seeds=2, grid={"cost_limit": [0.2, 0.5]}, num_chunks=CHUNKS,
                            overrides={"num_updates": UPDATES})


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    chunked.run_cells([chunked.Cell("cell", UPDATES, make_spec)], root, hours=1.0)
    return root / "cell"


def test_resumed_from_store_in_a_fresh_root_equals_a_straight_run(straight, tmp_path):
    cell = chunked.Cell("cell", UPDATES, make_spec)
    first, store = tmp_path / "first", tmp_path / "store"
    chunked.advance(cell, first)
    chunked.advance(cell, first)
    chunked.save_to_store(first / "cell", store / "cell", keep_checkpoint=True)
    assert chunked.steps_done(store / "cell") == 2 * UPDATES // CHUNKS
    shutil.rmtree(first)  # the checkout is gone; only the store survives

    fresh = tmp_path / "fresh"
    chunked.run_cells([cell], fresh, hours=1.0, store_root=store)
    assert chunked.steps_done(fresh / "cell") == UPDATES
    assert rows(fresh / "cell") == rows(straight)
    # a finished cell keeps no checkpoint in the store unless asked to; its metrics are mirrored in full
    assert not (store / "cell" / "checkpoints").exists()
    assert rows(store / "cell") == rows(straight)
    assert set(json.loads((store / "wall_seconds.json").read_text())) == {"cell"}
    assert chunked.newest(cell, tmp_path / "elsewhere", store) == store / "cell"


def test_keep_final_keeps_the_finished_cells_checkpoint(tmp_path):
    cell = chunked.Cell("cell", UPDATES, make_spec, keep_final=True)
    chunked.run_cells([cell], tmp_path / "root", hours=1.0, store_root=tmp_path / "store")
    stored = [p.name for p in (tmp_path / "store" / "cell" / "checkpoints").iterdir() if p.is_dir()]
    assert stored == [str(chunked._newest_checkpoint(tmp_path / "root" / "cell"))]


def test_schedules_pick_the_first_unfinished_or_the_least_advanced(straight, tmp_path):
    shutil.copytree(straight, tmp_path / "done")
    chunked.advance(chunked.Cell("half", UPDATES, make_spec), tmp_path)
    cells = [chunked.Cell(name, UPDATES, make_spec) for name in ("done", "half", "new")]
    assert chunked.next_cell(cells, tmp_path, "finish").name == "half"
    assert chunked.next_cell(cells, tmp_path, "round-robin").name == "new"
    assert chunked.next_cell(cells[:1], tmp_path, "finish") is None
    with pytest.raises(ValueError, match="schedule must be one of"):
        chunked.next_cell(cells, tmp_path, "fastest")


def test_wall_seconds_keep_the_larger_value_of_root_and_store(tmp_path):
    """Two calls running different cells into one store each hold the other's older timings: the newer (larger,
    since timings only accumulate) value wins whichever file holds it."""
    root, store = tmp_path / "root", tmp_path / "store"
    root.mkdir(), store.mkdir()
    (root / "wall_seconds.json").write_text(json.dumps({"a": 30.0, "b": 5.0}))
    (store / "wall_seconds.json").write_text(json.dumps({"a": 10.0, "b": 20.0, "c": 1.0}))
    assert chunked.wall_seconds(root, store) == {"a": 30.0, "b": 20.0, "c": 1.0}
    assert chunked.wall_seconds(root, None) == {"a": 30.0, "b": 5.0}
