"""Issue #21: no number is silently wrong. Non-finite checkpoints through every command, hypothesis files that
end the process or change the model, device and dtype errors, data warnings, batch-size independence and
patch pairs that cannot connect. Each case asserts the exit code or exception type, no traceback, and a
message naming the problem."""

from __future__ import annotations

import json
import re

import networkx as nx
import pytest
import torch

from scrub.claims.hypothesis import HypothesisError, add_path
from scrub.cli import main
from scrub.errors import ScrubError
from scrub.experiment.runner import run
from scrub.model.finite import NonFiniteError
from scrub.model.loading import ModelLoadError, load_model, save_checkpoint
from tests.helpers import save_tiny_checkpoint, tiny_model

CLAIM = '''import networkx as nx
from scrub.claims.hypothesis import add_path


def hypothesis(model):
    g = nx.DiGraph()
    add_path(g, "embed", ("0.0", "v"), ("1.1", "k"), "logits")
    return g
'''
HEADER = "import sys\nimport torch\nimport networkx as nx\nfrom scrub.claims.hypothesis import add_path\n"
BODY = '    g = nx.DiGraph()\n    add_path(g, "embed", ("0.0", "v"), ("1.1", "k"), "logits")\n    return g\n'
BAD_FILES = {  # name -> (source, regex of the error)
    "exit_at_import": (HEADER + "sys.exit(0)\ndef hypothesis(model):\n" + BODY,
                       r"exit_at_import.py:5: importing the file called sys.exit\(0\)"),
    "exit_in_hypothesis": (HEADER + "def hypothesis(model):\n    raise SystemExit(3)\n",
                           r"exit_in_hypothesis.py:6: hypothesis\(model\) called sys.exit\(3\)"),
    "zeroes_weight": (HEADER + "def hypothesis(model):\n    with torch.no_grad():\n"
                      "        model.blocks[0].attn.W_Q.zero_()\n" + BODY,
                      r"zeroes_weight.py: hypothesis\(model\) changed the model: weight blocks.0.attn.W_Q"),
    "edits_cfg": (HEADER + "def hypothesis(model):\n    model.cfg.n_heads = 2\n" + BODY,
                  r"edits_cfg.py: hypothesis\(model\) changed the model: model.cfg.n_heads \(4 -> 2\)"),
}


def _poison(directory, value: float):
    """A copy of the tiny checkpoint with one weight set to ``value`` (NaN or infinity)."""
    model = load_model(save_tiny_checkpoint(directory))
    with torch.no_grad():
        model.blocks[1].attn.W_V[0, 0, 0] = value
    return save_checkpoint(model, directory)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    save_tiny_checkpoint(root / "ckpt")
    _poison(root / "nan", float("nan"))
    _poison(root / "inf", float("inf"))
    (root / "claim.py").write_text(CLAIM)
    for name, (source, _) in BAD_FILES.items():
        (root / f"{name}.py").write_text(source)
    return root


def refused(capsys, argv) -> str:
    """The one error line of a refused command (exit 2, nothing on stdout, no traceback)."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.out == "" and "Traceback" not in captured.err, captured.err
    errors = [line for line in captured.err.splitlines() if ": error: " in line]
    assert len(errors) == 1, captured.err
    return errors[0]


BAD_MODEL = r"checkpoint .*/{kind}: weight blocks.1.attn.W_V \[4, 32, 8\] holds 1 non-finite value"
COMMANDS = {  # every command on a checkpoint: argv after --model
    "run": lambda r, m: ["run", f"{r}/claim.py", "--model", m, "--n", "4", "--seq-len", "16", "--json"],
    "patch": lambda r, m: ["patch", "--model", m, "--n", "2", "--length", "4", "--out", f"{r}/out-patch", "--json"],
    "heads": lambda r, m: ["heads", "--model", m, "--n", "2", "--out", f"{r}/out-heads", "--json"],
    "study": lambda r, m: ["study", "--quick", "--model", m, "--out", f"{r}/out-study", "--json"],
}


@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_non_finite_checkpoint_is_refused_by_every_command(root, capsys, command, kind):
    line = refused(capsys, COMMANDS[command](root, str(root / kind)))
    assert re.search(BAD_MODEL.format(kind=kind), line), line
    assert "hypothesis" not in line  # never blamed on a hypothesis file
    assert not any(root.glob("out-*"))  # nothing written


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_hypothesis_file_cannot_end_the_process_or_change_the_model(root, capsys, name):
    line = refused(capsys, ["run", str(root / f"{name}.py"), "--model", str(root / "ckpt"), "--n", "4",
                            "--seq-len", "16", "--json"])
    assert re.search(BAD_FILES[name][1], line), line


def test_a_hypothesis_file_that_changes_the_model_is_refused_by_the_api(root):
    model = load_model(root / "ckpt")
    with pytest.raises(HypothesisError, match=BAD_FILES["zeroes_weight"][1]):
        run(model, root / "zeroes_weight.py", torch.randint(0, 2048, (4, 16)), progress=False)


def _meta_model():
    return tiny_model().to("meta")


def _nan_model():
    model = tiny_model()
    with torch.no_grad():
        model.blocks[0].attn.W_K[1, 2, 3] = float("nan")
    return model


def _graph():
    g = nx.DiGraph()
    add_path(g, "embed", ("0.1", "v"), ("1.2", "k"), "logits")
    return g


def _tokens(n=8, seq=10):
    return torch.randint(0, 20, (n, seq), generator=torch.Generator().manual_seed(0))


def _head_scores(model):
    from scrub.heads.scores import head_scores

    return head_scores(model, data="rrt", n=2)


def _icl(model):
    from scrub.heads.scores import in_context_learning

    return in_context_learning(model, _tokens(2, 64))


def _patch_matrix(model):
    from scrub.patching.paths import make_metric, patch_matrix

    tokens = _tokens(2, 9)
    metric = make_metric("loss", tokens, tokens.flip(0), torch.tensor([5, 6, 7]))
    return patch_matrix(model, tokens, tokens.flip(0), metric, progress=False)


def _a_file(tmp_path):
    (tmp_path / "afile").write_text("not a folder\n")
    return tmp_path / "afile"


def _save(dtype):
    def save(tmp_path):
        return save_checkpoint(tiny_model(), tmp_path / "ckpt", dtype=dtype)
    return save


API_CASES = [  # (id, call(tmp_path), exception type, regex)
    ("load_model(None)", lambda t: load_model(None), ModelLoadError, r"load_model takes a model name .* got None"),
    ("load_model(3)", lambda t: load_model(3), ModelLoadError, r"got int"),
    ("load_model(device='gpu')", lambda t: load_model(device="gpu"), ModelLoadError,
     r"device 'gpu' is not a torch device.*'cpu'"),
    ("run: NaN weight in memory", lambda t: run(_nan_model(), _graph(), _tokens(), progress=False), NonFiniteError,
     r"the model: weight blocks.0.attn.W_K \[3, 16, 4\] holds 1 non-finite"),
    ("run: model on meta", lambda t: run(_meta_model(), nx.DiGraph(), _tokens(), progress=False), ScrubError,
     r"weights are on the meta device"),
    ("run: tokens on meta", lambda t: run(tiny_model(), _graph(), _tokens().to("meta"), progress=False), ScrubError,
     r"token ids are on the meta device"),
    ("head_scores: NaN weight in memory", lambda t: _head_scores(_nan_model()), NonFiniteError,
     r"the model: weight blocks.0.attn.W_K \[3, 16, 4\] holds 1 non-finite"),
    ("patch_matrix: NaN weight in memory", lambda t: _patch_matrix(_nan_model()), NonFiniteError,
     r"the model: weight blocks.0.attn.W_K \[3, 16, 4\] holds 1 non-finite"),
    ("head_scores: model on meta", lambda t: _head_scores(_meta_model()), ScrubError,
     r"weights are on the meta device .* load real weights"),
    ("head_scores: model.half()", lambda t: _head_scores(tiny_model(n_ctx=128).half()), ScrubError,
     r"weights are float16 but model.cfg.dtype is float32 .* model.to\(torch.float16\)"),
    ("head_scores: a name, not a model", lambda t: _head_scores("scrub-attn-2l"), ScrubError,
     r"head_scores takes a HookedTransformer .* got str"),
    ("in_context_learning: model.half()", lambda t: _icl(tiny_model(n_ctx=128).half()), ScrubError,
     r"weights are float16 but model.cfg.dtype is float32"),
    ("run: model.half()", lambda t: run(tiny_model().half(), _graph(), _tokens(), progress=False), ScrubError,
     r"weights are float16 but model.cfg.dtype is float32 .* model.to\(torch.float16\)"),
    ("save_checkpoint(dtype=int8)", _save(torch.int8), ScrubError, r"dtype int8 is not a floating-point dtype"),
    ("save_checkpoint(dtype='int64')", _save("int64"), ScrubError, r"dtype int64 is not a floating-point dtype"),
    ("save_checkpoint(dtype='float17')", _save("float17"), ScrubError, r"dtype 'float17' is not a torch dtype"),
    ("save_checkpoint(dtype='float16') beyond its range", lambda t: save_checkpoint(
        tiny_model(scale=1e5), t / "ckpt", dtype="float16"), ScrubError,
     r"weight embed.W_E holds values up to 3.15e\+05, beyond the range of float16 \(largest 6.55e\+04\); save in "
     r"float32"),
    ("save_checkpoint(a name, not a model)", lambda t: save_checkpoint("scrub-attn-2l", t / "ckpt"), ScrubError,
     r"save_checkpoint takes a HookedTransformer .* got str"),
    ("save_checkpoint(model on meta)", lambda t: save_checkpoint(_meta_model(), t / "ckpt"), ScrubError,
     r"weights are on the meta device .* nothing to save"),
    ("save_checkpoint(into a file)", lambda t: save_checkpoint(tiny_model(), _a_file(t)), ScrubError,
     r"afile is a file; a checkpoint is a folder"),
]
if not torch.cuda.is_available():
    API_CASES.append(("load_model(device='cuda') without CUDA", lambda t: load_model(device="cuda"), ModelLoadError,
                      r"device 'cuda' is not available on this machine.*device='cpu'"))


@pytest.mark.parametrize("call, kind, pattern", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_refuses_with_a_named_fix(tmp_path, call, kind, pattern):
    with pytest.raises(kind, match=pattern):
        call(tmp_path)


@pytest.mark.parametrize("dtype, stored", [(None, torch.float32), ("float16", torch.float16),
                                           (torch.bfloat16, torch.bfloat16), ("torch.float32", torch.float32)])
def test_save_checkpoint_keeps_the_dtype_unless_told(tmp_path, dtype, stored):
    model = tiny_model()
    save_checkpoint(model, tmp_path, **({} if dtype is None else {"dtype": dtype}))
    weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert {v.dtype for v in weights.values()} == {stored}
    if dtype is None:  # a save and a load change no logit
        tokens = _tokens()
        assert torch.equal(load_model(tmp_path)(tokens), model(tokens))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_head_scores_work_in_half_precision(dtype):
    from scrub.heads.scores import head_scores

    model = load_model().to(dtype)
    scores = head_scores(model, n=2, seq_len=32)
    for name, values in scores.per_head().items():
        assert all(v is None or v == v for v in values.values()), name  # finite numbers, no NaN


PATCH_CASES = [  # (id, --senders/--receivers argv, regex of the error line, or of a stdout line where it runs)
    ("receiver computed before the sender", ["--senders", "1.3", "--receivers", "0.3"],
     r"error: no sender feeds any receiver: 0.3 \(layer 0\) is computed before 1.3 \(layer 1\); choose the pair the "
     r"other way round \(--senders 0.3 --receivers 1.3\); no head or MLP feeds 0.3, which reads only the embeddings"),
    ("one layer", ["--senders", "0.3", "--receivers", "0.2"],
     r"error: no sender feeds any receiver: 0.3 and 0.2 are in one layer, and 0.2 reads the residual stream before "
     r"0.3 writes; choose receivers after the senders \(e.g. --receivers 1.0\)"),
    ("a head into itself", ["--senders", "1.3", "--receivers", "1.3"],
     r"error: no sender feeds any receiver: 1.3 cannot feed itself; choose senders before the receivers \(e.g. "
     r"--senders 0.0\); leave --receivers out for the paths of 1.3 straight to the logits"),
    ("layer-0 receivers from every sender", ["--receivers", "0.3"],
     r"error: no sender feeds any receiver: 0.0 and 0.3 are in one layer"),
    ("a last-layer sender into every receiver", ["--senders", "1.3"],
     r"^no receiver comes after 1.3: only the paths straight to the logits$"),
]


@pytest.mark.parametrize("argv, pattern", [c[1:] for c in PATCH_CASES], ids=[c[0] for c in PATCH_CASES])
def test_patch_names_why_a_pair_cannot_connect(root, tmp_path, capsys, argv, pattern):
    out = tmp_path / "out"
    command = ["patch", "--model", str(root / "ckpt"), *argv, "--n", "2", "--length", "4", "--out", str(out)]
    if "error" in pattern:
        assert re.search(pattern, refused(capsys, command))
        assert not out.exists()
        return
    assert main(command) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert any(re.search(pattern, line) for line in captured.out.splitlines()), captured.out
    assert re.search(r"^1.3 +-?\d+\.\d{3}$", captured.out, re.M)  # its path to the logits


# --- data warnings -----------------------------------------------------------------------------------------

def _natural(n=24, seq=16):
    from scrub.data.batches import natural_batch

    return natural_batch(n, seq)


WARNING_CASES = [  # (id, data(model), run keyword arguments, regex of the warning)
    ("no BOS", lambda: _natural()[:, 1:], {}, r"24 of 24 examples do not start with the BOS token \(id 0\)"),
    ("duplicate rows", lambda: _natural(2).repeat(12, 1), {}, r"22 of 24 examples are copies of another example "
                                                                r"\(2 distinct sequences\)"),
    ("few examples", lambda: _natural(4), {}, r"the interval is bootstrapped from 4 example\(s\)"),
    ("pool larger than the data", lambda: _natural(), {"pool": 100},
     r"the pool of 100 is larger than the dataset of 24 examples: draws come from all 24"),
]


@pytest.mark.parametrize("data, options, pattern", [c[1:] for c in WARNING_CASES], ids=[c[0] for c in WARNING_CASES])
def test_data_that_make_numbers_meaningless_are_warned_about(root, data, options, pattern):
    from scrub.engine.treeify import SamplingOptions

    model = load_model(root / "ckpt")
    result = run(model, root / "claim.py", data(), options=SamplingOptions(**options), progress=False, n_bootstrap=50)
    assert any(re.search(pattern, w) for w in result.warnings), result.warnings
    assert re.search(pattern, result.summary())
    assert any(re.search(pattern, w) for w in result.to_dict()["warnings"])


def test_copies_count_as_self_draws_only_when_there_are_copies(root):
    model = load_model(root / "ckpt")
    distinct = run(model, root / "claim.py", _natural(), progress=False, n_bootstrap=50)
    copies = run(model, root / "claim.py", _natural(2).repeat(12, 1), progress=False, n_bootstrap=50)
    assert distinct.self_sample_rate == 0.0
    assert copies.self_sample_rate > 0.25  # 11 of the 23 others are copies of each datum: draws of them count
    assert not any("copies" in w or "BOS" in w or "bootstrapped" in w for w in distinct.warnings)


def test_the_demo_data_get_no_data_warning():
    from scrub.data import sanity

    model = load_model()
    data = _natural(64, 128)
    assert sanity.data_warnings(model, data, 64, None) == []


@pytest.mark.parametrize("positions", ["good-candidates", "candidates"])
def test_batch_size_changes_no_field_of_the_json(root, capsys, positions):
    outs = []
    for size in (3, 5, 16):
        assert main(["run", str(root / "claim.py"), "--model", str(root / "ckpt"), "--n", "16", "--seq-len", "48",
                     "--positions", positions, "--batch-size", str(size), "--json"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    for out in outs:
        out.pop("batch_size")
    assert outs[0] == outs[1] == outs[2]


def test_the_pool_actually_used_is_recorded(root, capsys):
    assert main(["run", str(root / "claim.py"), "--model", str(root / "ckpt"), "--n", "24", "--seq-len", "16",
                 "--pool", "100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pool"] == 100 and out["pool_used"] == 24
    assert any("the pool of 100 is larger than the dataset of 24 examples" in w for w in out["warnings"])


# --- torchrun: the claim's content, not its name ------------------------------------------------------------

def _rank_check(graph, tokens):
    from scrub.engine.treeify import SamplingOptions
    from scrub.experiment.checks import rank_check
    from scrub.experiment.inputs import as_claim

    model = tiny_model()
    claim, base = as_claim(graph, model, name="same name"), as_claim(nx.DiGraph(), model, name="empty")
    return rank_check(claim, base, tokens, tokens[:4], seed=0, batch_size=4, options=SamplingOptions(),
                      n_bootstrap=10, metric="loss", positions="all")


def _other_edge():
    g = nx.DiGraph()
    add_path(g, "embed", ("0.0", "v"), ("1.2", "k"), "logits")
    return g


RANK_CASES = [  # (id, what rank 1 runs, the part of the check that differs)
    ("another edge under the same name", lambda: (_other_edge(), _tokens()), "hypothesis edges"),
    ("other data", lambda: (_graph(), _tokens().flip(0)), "data"),
]


@pytest.mark.parametrize("other, part", [c[1:] for c in RANK_CASES], ids=[c[0] for c in RANK_CASES])
def test_ranks_that_run_other_claims_are_stopped_naming_what_differs(monkeypatch, other, part):
    import torch.distributed as dist

    from scrub.experiment import distributed
    from scrub.experiment.distributed import World

    mine, theirs = _rank_check(_graph(), _tokens()), _rank_check(*other())
    assert [k for k in mine if mine[k] != theirs[k]] == [part]
    monkeypatch.setattr(dist, "all_gather_object", lambda out, obj: out.__setitem__(slice(None), [obj, (theirs, [])]))
    with pytest.raises(ScrubError, match=rf"ranks \[1\] were given other arguments than rank 0 \({part} differ\)"):
        distributed.gather([(0, "a")], World(0, 2), check=mine)


RANK_DEPENDENT = '''"""The claimed K source depends on the process: rank 0 and rank 1 would run different claims."""
import os
import networkx as nx
from scrub.claims.hypothesis import add_path


def hypothesis(model):
    g = nx.DiGraph()
    add_path(g, "embed", (f"0.{os.environ.get('RANK', '0')}", "v"), ("1.1", "k"), "logits")
    return g
'''


@pytest.mark.slow  # a real 2-process torchrun (~40 s); the rank checks above run by default
def test_torchrun_stops_a_claim_that_depends_on_the_rank(root, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "rank.py").write_text(RANK_DEPENDENT)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")} | {"OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node=2", "-m", "scrub", "run",
                           str(tmp_path / "rank.py"), "--model", str(root / "ckpt"), "--examples", "8", "--seq-len",
                           "16", "--batch-size", "4", "--json"], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode != 0 and done.stdout == "", done.stderr
    assert "Traceback" not in done.stderr.split("scrub run [rank")[0], done.stderr  # (torchrun's own comes after)
    errors = sorted(line for line in done.stderr.splitlines() if line.startswith("scrub run [rank"))
    assert len(errors) == 2, done.stderr  # one line from each rank
    for rank, line in enumerate(errors):
        assert line.startswith(f"scrub run [rank {rank}]: error: ranks [1] were given other arguments than rank 0 "
                               f"(hypothesis edges differ)"), line
