"""The package's structure, read from its source: no import cycle, every torch.distributed collective
in engine.py (whose helpers put tensors on the accelerator's device, as NCCL requires), files at most
300 lines; and the helpers really do use that device."""
import ast
from pathlib import Path
from types import SimpleNamespace

import torch

import ds_videocap.engine as engine

PACKAGE = Path(engine.__file__).parent
COLLECTIVES = {"all_reduce", "broadcast", "all_gather", "all_gather_object", "gather", "scatter", "reduce",
               "reduce_scatter", "all_to_all", "broadcast_object_list", "gather_object", "all_gather_into_tensor",
               "reduce_scatter_tensor", "barrier", "monitored_barrier"}


def modules():
    return {p.stem: ast.parse(p.read_text()) for p in PACKAGE.glob("*.py")}


def test_no_collective_outside_engine():
    found = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if (name != "engine" and isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in COLLECTIVES and ast.unparse(node.func.value) in
                    ("dist", "torch.distributed", "deepspeed.comm", "comm")):
                found.append(f"{name}.py:{node.lineno} {ast.unparse(node.func)}")
    assert not found, "call engine's helpers instead: " + ", ".join(found)


def test_no_import_cycle():
    trees = modules()
    edges = {name: set() for name in trees}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [a.name for a in node.names]
                edges[name] |= {t.split(".")[0] for t in targets if t.split(".")[0] in trees}

    def reaches(start, goal, seen):
        for nxt in edges[start] - seen:
            if nxt == goal or reaches(nxt, goal, seen | {nxt}):
                return True
        return False

    cyclic = sorted(n for n in edges if reaches(n, n, set()))
    assert not cyclic, f"modules on an import cycle: {cyclic}"


def test_files_stay_small():
    long = {p.name: n for p in PACKAGE.glob("*.py") if (n := len(p.read_text().splitlines())) > 300}
    assert not long, f"split these files (over 300 lines): {long}"


def test_collective_helpers_put_tensors_on_the_accelerator_device(monkeypatch):
    """Each tensor handed to a collective was made on collective_device(), which is the accelerator's
    current device (cuda:LOCAL_RANK under NCCL; the CPU accelerator's "cpu" here)."""
    from deepspeed.accelerator import get_accelerator

    assert engine.collective_device() == torch.device(get_accelerator().current_device_name())
    made, seen = [], []
    monkeypatch.setattr(engine, "collective_device", lambda: made.append(1) or torch.device("cpu"))

    def all_reduce(t, *a, **k):  # two ranks holding the same values
        seen.append(t.device)
        t.mul_(2)

    fake = SimpleNamespace(all_reduce=all_reduce, ReduceOp=SimpleNamespace(MAX="max"), get_world_size=lambda: 2,
                           broadcast=lambda t, *a, **k: seen.append(t.device))
    monkeypatch.setattr(engine, "_dist", lambda: fake)
    engine.any_rank(True)
    engine.broadcast_float(1.5)
    engine.sum_over_ranks([1, 2])
    grads = [torch.ones(2, 3, dtype=torch.bfloat16), torch.full((4,), 3.0)]
    engine.average_over_ranks(grads)  # in place, in each tensor's own dtype: the mean of equal copies
    assert grads[0].dtype == torch.bfloat16 and grads[0].eq(1).all() and grads[1].eq(3).all()
    assert len(made) == 4 and seen == [torch.device("cpu")] * 4


def test_helpers_outside_a_distributed_run_return_this_process_values():
    assert engine.any_rank(True) and not engine.any_rank(False)
    assert engine.broadcast_float(2.5) == 2.5
    assert engine.sum_over_ranks([1, 2]) == [1.0, 2.0]
    assert engine.gather_objects({"a": 1}) == [{"a": 1}]
    assert engine.rank_and_world() == (0, 1)
