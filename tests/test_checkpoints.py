"""resume=auto and pruning next to half-written checkpoints (a run killed while writing one)."""
import json

import pytest

from ds_videocap.checkpoints import COMPLETE, complete_checkpoints, find_resume, prune_checkpoints
from ds_videocap.errors import UserError


def fake_checkpoint(root, tag, phase_index=0, step=0, complete=True, marker=None):
    folder = root / "checkpoints" / tag
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"\0" * 64)
    (folder / "rng_rank0.pt").write_bytes(b"\0")
    if marker is not None:
        (folder / COMPLETE).write_text(marker)
    elif complete:
        (folder / COMPLETE).write_text(json.dumps({"phase_index": phase_index, "step": step}))
    return folder


@pytest.fixture
def run_dir(tmp_path):
    fake_checkpoint(tmp_path, "ce-0000003", step=3)
    fake_checkpoint(tmp_path, "ce-0000006", step=6)
    # Killed mid-write: shards there, no marker; only the temporary marker; a truncated marker.
    fake_checkpoint(tmp_path, "ce-0000009", step=9, complete=False)
    tmp = fake_checkpoint(tmp_path, "ce-0000012", step=12, complete=False)
    (tmp / (COMPLETE + ".tmp")).write_text('{"phase_index": 0, "step": 12}')
    fake_checkpoint(tmp_path, "scst-0000001", marker='{"phase_index": 1, "st')
    return tmp_path


def test_auto_resume_picks_the_newest_complete_checkpoint(run_dir):
    assert find_resume(run_dir, "auto") == run_dir / "checkpoints" / "ce-0000006"
    assert [p.name for p in complete_checkpoints(run_dir / "checkpoints")] == ["ce-0000003", "ce-0000006"]
    assert find_resume(run_dir, None) is None
    assert find_resume(run_dir / "nothing_yet", "auto") is None


def test_a_half_written_checkpoint_named_explicitly_is_refused(run_dir):
    with pytest.raises(UserError, match="ce-0000009.*not a complete checkpoint"):
        find_resume(run_dir, str(run_dir / "checkpoints" / "ce-0000009"))
    assert find_resume(run_dir, str(run_dir / "checkpoints" / "ce-0000003")).name == "ce-0000003"


def test_phase_order_beats_step_order(tmp_path):
    fake_checkpoint(tmp_path, "ce-0000100", step=100)
    fake_checkpoint(tmp_path, "scst-0000002", phase_index=1, step=2)
    assert find_resume(tmp_path, "auto").name == "scst-0000002"


def test_prune_removes_half_written_folders_and_keeps_the_last_complete(run_dir):
    root = run_dir / "checkpoints"
    prune_checkpoints(root, keep_last=1, protect=("ce-0000003",))
    assert sorted(p.name for p in root.iterdir()) == ["ce-0000003", "ce-0000006"]
    prune_checkpoints(root, keep_last=1)
    assert [p.name for p in root.iterdir()] == ["ce-0000006"]
    assert find_resume(run_dir, "auto").name == "ce-0000006"
