"""Several processes: batch sharding and reassembly, the torchrun environment, and a 2-process torchrun run
that prints exactly the one-process JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import torch
import torch.distributed as dist

from scrub.claims.hypothesis import add_path
from scrub.cli import main
from scrub.engine.treeify import SamplingOptions
from scrub.experiment import distributed
from scrub.experiment.distributed import World
from scrub.experiment.runner import run
from tests.helpers import tiny_model

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE")


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=2, n_heads=3)


@pytest.fixture
def alone(monkeypatch):
    """A process without torchrun's environment."""
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)


def claim():
    g = nx.DiGraph()
    add_path(g, "embed", ("0.1", "v"), ("1.2", "k"), "logits")
    add_path(g, "embed", ("1.2", "q"), "logits")
    return g


def tokens(n=10, seq=12):
    return torch.randint(0, 20, (n, seq), generator=torch.Generator().manual_seed(0))


# --- sharding and reassembly ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 4, 7])
def test_shards_cover_every_batch_once_and_reassemble_in_order(size, n):
    items = [f"batch{i}" for i in range(n)]
    shards = [distributed.shard(items, World(rank, size)) for rank in range(size)]
    assert sorted(i for shard in shards for i, _ in shard) == list(range(n))
    assert all(i % size == rank for rank, shard in enumerate(shards) for i, _ in shard)
    assert distributed.reassemble(shards[::-1]) == items  # rank order does not matter
    assert distributed.shard(items, None) == list(enumerate(items))


def test_a_batch_computed_twice_is_an_error():
    with pytest.raises(RuntimeError, match="more than one rank"):
        distributed.reassemble([[(0, "a"), (1, "b")], [(1, "b")]])


def test_environment():
    torchrun = {"WORLD_SIZE": "4", "RANK": "5", "LOCAL_RANK": "1"}
    assert distributed.launched(torchrun) and not distributed.launched({})
    assert not distributed.launched({"WORLD_SIZE": "1"})
    assert not distributed.is_main(torchrun) and distributed.is_main({"WORLD_SIZE": "4", "RANK": "0"})
    assert distributed.is_main({}) and distributed.is_main({"RANK": "3"})  # a lone process always prints
    assert distributed.local_rank(torchrun) == 1
    assert distributed.backend("cpu") == "gloo" and distributed.backend("cuda:1") == "nccl"
    assert distributed.device(env={}) == torch.device("cpu")
    expected = torch.device("cuda", 1) if torch.cuda.is_available() else torch.device("cpu")
    assert distributed.device(env=torchrun) == expected
    one_gpu = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert distributed.device(env={"WORLD_SIZE": "1", "LOCAL_RANK": "0"}) == one_gpu  # torchrun --nproc-per-node=1
    meta = torch.nn.Linear(1, 1, device="meta")
    assert distributed.device(meta, env={}) == torch.device("meta")  # alone: the model's device


# --- run as one of several ranks, in one process ------------------------------------------------------

def test_one_process_never_touches_torch_distributed(model, alone, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.distributed was used by a single process")

    for name in ("is_initialized", "init_process_group", "all_gather_object", "get_rank", "get_world_size",
                 "destroy_process_group"):
        monkeypatch.setattr(dist, name, refuse)
    result = run(model, claim(), tokens(), batch_size=4, progress=False)
    assert result.n_examples == 10
    distributed.shutdown()


class Gathered(Exception):
    """A simulated rank other than 0 has handed its batches over: its own result is not needed."""


@pytest.mark.parametrize("size", [2, 3])
def test_ranks_together_return_the_one_process_result(model, alone, monkeypatch, size):
    """Each simulated rank evaluates its own batches; rank 0 gathers them all and returns the one-process
    result exactly (the last batch of one example is skipped, as alone)."""
    options = SamplingOptions(allow_self=True)
    one = run(model, claim(), tokens(), batch_size=3, seed=5, options=options, progress=False)
    computed: dict[int, list] = {}
    checks = []
    for rank in reversed(range(size)):  # the other ranks first, so rank 0 can "gather" theirs
        def gather(mine, current, *, check=None, rank=rank):
            assert current == World(rank, size) and all(i % size == rank for i, _ in mine)
            computed[rank], _ = mine, checks.append(check)
            if rank:
                raise Gathered
            return distributed.reassemble(list(computed.values()))

        monkeypatch.setattr(distributed, "setup", lambda device, rank=rank: World(rank, size))
        monkeypatch.setattr(distributed, "gather", gather)
        try:
            result = run(model, claim(), tokens(), batch_size=3, seed=5, options=options, progress=False)
        except Gathered:
            assert rank
    assert result == one and 0 < one.self_sample_rate < 1
    assert sum(len(v) for v in computed.values()) == 3  # batches 0..2 evaluated; batch 3 (one example) skipped
    assert all(c == checks[0] and c is not None for c in checks)


def test_ranks_with_other_arguments_are_refused(monkeypatch):
    def all_gather_object(out, obj):  # rank 1 was given another seed
        out[:] = [obj, (("other seed",), [])]

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    with pytest.raises(ValueError, match=r"ranks \[1\] were given other arguments"):
        distributed.gather([(0, "a")], World(0, 2), check=("seed 0",))
    monkeypatch.setattr(dist, "all_gather_object",
                        lambda out, obj: out.__setitem__(slice(None), [obj, (obj[0], [(1, "b")])]))
    assert distributed.gather([(0, "a"), (2, "c")], World(0, 2), check=("seed 0",)) == ["a", "b", "c"]


def test_only_rank_0_prints(alone, monkeypatch, capsys):
    monkeypatch.setattr(distributed, "is_main", lambda env=None: False)
    args = ["run", "hypotheses/induction_minimal.py", "--n", "2", "--seq-len", "8", "--json"]
    assert main(args) == 0
    assert capsys.readouterr().out == ""


def test_other_commands_refuse_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(distributed, "shutdown", lambda env=None: None)
    assert main(["heads", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("scrub heads [rank 1]: error: only `scrub run`")


# --- torchrun ------------------------------------------------------------------------------------------

def test_two_process_torchrun_prints_the_one_process_json():
    """``torchrun --nproc-per-node=2 -m scrub run ...`` prints, once, exactly what ``python -m scrub run ...``
    prints (natural text; batches of 2, the ninth example joins the last one; draws may return their own datum)."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV} | {"OMP_NUM_THREADS": "1"}
    command = ["run", "hypotheses/induction_minimal.py", "--examples", "9", "--batch-size", "2", "--seq-len", "32",
               "--allow-self", "--json"]
    torchrun = Path(sys.executable).parent / "torchrun"
    # the standard launch; scrub's --examples stands for --n, which torchrun's own parser would take for --nnodes
    runs = [[sys.executable, "-m", "scrub", *command],
            [str(torchrun), "--standalone", "--nproc-per-node=2", "-m", "scrub", *command]]
    one, two = (subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180) for argv in runs)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert len(one.stdout.splitlines()) == 1 and len(two.stdout.splitlines()) == 1  # one JSON object, rank 0's
    assert two.stdout == one.stdout
    result = json.loads(two.stdout)
    assert result["n_examples"] == 9 and 0 < result["self_sample_rate"] < 1
