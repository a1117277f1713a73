"""Issue #10: every bad input gets one clear error before any work, and no number is silently wrong.

A table of bad inputs to ``scrub run``, ``scrub heads`` (and ``scrub study``'s numbers) and the ``scrub.run``
API: the CLI exits 2 with one ``scrub <command>: error: ...`` line naming the problem and no traceback; the API
raises a ``ValueError`` subclass with the message. Then the warnings a result carries when its numbers may
mean less than they say: in ``ScrubResult.warnings``, in the JSON, and printed as ``warning:`` lines.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scrub.claims.features import Feature
from scrub.claims.hypothesis import HypothesisError, full_graph
from scrub.cli import main
from scrub.experiment.inputs import RunInputError
from scrub.experiment.runner import ScrubResult, UndefinedRecoveryError, run
from tests.helpers import partial_graph, save_tiny_checkpoint, tiny_model
from tests.helpers import random_tokens as data

REPO = Path(__file__).resolve().parent.parent

CLAIM = '''"""K of 1.1 reads 0.0."""
import networkx as nx
from scrub.claims.hypothesis import add_path


def hypothesis(model):
    g = nx.DiGraph()
    add_path(g, "embed", ("0.0", "v"), ("1.1", "k"), "logits")
    return g
'''

FINE_FEATURE = '''"""0.0 is claimed to depend on the whole sequence: no other example agrees, so every draw is
the datum."""
import networkx as nx
from scrub.claims.features import Feature
from scrub.claims.hypothesis import add_path


def hypothesis(model):
    g = nx.DiGraph()
    add_path(g, "embed", ("0.0", "v"), ("1.1", "k"), "logits")
    g.nodes["0.0"]["feature"] = Feature("whole sequence", lambda tokens: tokens)
    return g
'''


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny checkpoint (2 layers, vocab 2048, n_ctx 64), hypothesis files and --out folders in odd states."""
    root = tmp_path_factory.mktemp("bad")
    save_tiny_checkpoint(root / "ckpt")
    (root / "claim.py").write_text(CLAIM)
    (root / "fine.py").write_text(FINE_FEATURE)
    (root / "afile.txt").write_text("not a folder\n")
    (root / "taken").mkdir()
    (root / "taken" / "notes.txt").write_text("someone else's\n")
    (root / "locked").mkdir()
    (root / "locked" / ".scrub-lock").write_text(f"{os.getpid()}\n")  # a live process holds it
    return root


RUN = ["run", "{root}/claim.py", "--model", "{root}/ckpt"]
HEADS = ["heads", "--model", "{root}/ckpt", "--out", "{root}/figs"]
MEMORY = r"needs about [\d,.]+ GB of memory but [\d,.]+ [GM]B is available; use a smaller --n"

CLI_CASES = [  # (id, argv, regex of the error line)
    ("run: baseline is the hypothesis", RUN + ["--baseline", "{root}/claim.py"],
     r"--baseline .*claim.py is the hypothesis itself"),
    ("run: --seq-len 2", RUN + ["--seq-len", "2"], r"--seq-len must be at least 3 \(got 2\): position 0 is BOS"),
    ("run: --seq-len 0", RUN + ["--seq-len", "0"], r"--seq-len must be at least 3 \(got 0\)"),
    ("run: --seq-len -5", RUN + ["--seq-len", "-5"], r"--seq-len must be at least 3 \(got -5\)"),
    ("run: candidates at --seq-len 4", RUN + ["--positions", "candidates", "--seq-len", "4", "--n", "8"],
     r"no position is scored: positions='candidates' .* use longer sequences \(--seq-len\)"),
    ("run: --batch-size 0", RUN + ["--batch-size", "0"], r"--batch-size must be a whole number ≥ 2, got 0"),
    ("run: --batch-size 1", RUN + ["--batch-size", "1"], r"--batch-size must be a whole number ≥ 2, got 1"),
    ("run: --batch-size -4", RUN + ["--batch-size", "-4"], r"--batch-size must be a whole number ≥ 2, got -4"),
    ("run: --seed 10**23", RUN + ["--seed", str(10**23)], r"--seed must be between 0 and 2\*\*63 - 1 \(got 10{23}\)"),
    ("run: --seed -1", RUN + ["--seed", "-1"], r"--seed must be between 0 and 2\*\*63 - 1 \(got -1\)"),
    ("run: --n 10**9", RUN + ["--n", str(10**9)], MEMORY),
    ("run: --n 1", RUN + ["--n", "1"], r"--n must be at least 2 \(got 1\): resampling draws"),
    ("run: --n 1e9", RUN + ["--n", "1e9"],
     r"argument --n/--examples: invalid int value: '1e9' \(see scrub run --help\)"),
    ("run: --seq-len beyond n_ctx", RUN + ["--seq-len", "100", "--n", "4"],
     r"longer than the model's n_ctx 64; use --seq-len ≤ 64"),
    ("run: rrt beyond n_ctx", RUN + ["--data", "rrt", "--seq-len", "64", "--n", "4"],
     r"--data rrt uses 1 \+ 2 x \(seq-len // 2\) = 65 tokens, more than the model's n_ctx 64; use --seq-len ≤ 63"),
    ("run: missing hypothesis file", ["run", "{root}/nope.py", "--model", "{root}/ckpt"],
     r"hypothesis file .*nope.py does not exist"),
    ("run: missing baseline file", RUN + ["--baseline", "{root}/nope.py"], r"--baseline file .*nope.py does not exist"),
    ("run: baseline is a folder", RUN + ["--baseline", "{root}/ckpt"],
     r"--baseline file .*ckpt does not exist \(it is a folder\)"),
    ("run: missing model folder",
     ["run", "{root}/claim.py", "--model", "{root}/nomodel", "--n", "4", "--seq-len", "16"],
     r"nomodel"),
    ("run: unknown --unit", RUN + ["--unit", "edge"], r"argument --unit: invalid choice: 'edge'"),
    ("run: unknown --positions", RUN + ["--positions", "first"], r"argument --positions: invalid choice: 'first'"),
    ("run: unknown --metric", RUN + ["--metric", "nll"],
     r"argument --metric: invalid choice: 'nll' \(choose from '?loss'?, '?kl'?\)"),
    ("heads: --n 0", HEADS + ["--n", "0"], r"--n must be at least 1 \(got 0\)"),
    ("heads: --n -3", HEADS + ["--n", "-3"], r"--n must be at least 1 \(got -3\)"),
    ("heads: --n 10**9", HEADS + ["--n", str(10**9)], MEMORY),
    ("heads: --seq-len 2", HEADS + ["--seq-len", "2"], r"--seq-len must be at least 3 \(got 2\)"),
    ("heads: --seq-len beyond n_ctx", HEADS + ["--seq-len", "65", "--n", "2"], r"use --seq-len ≤ 64"),
    ("heads: --seq-len with rrt", HEADS + ["--data", "rrt", "--seq-len", "16"],
     r"--seq-len sets the natural-text length"),
    ("heads: --seed 2**64", HEADS + ["--seed", str(2**64)], r"--seed must be between 0 and 2\*\*63 - 1"),
    ("heads: --exclude-common -1", HEADS + ["--exclude-common", "-1"],
     r"--exclude-common must be at least 0 \(got -1\)"),
    ("heads: --prev-threshold nan", HEADS + ["--prev-threshold", "nan"], r"--prev-threshold must be a finite number"),
    ("heads: --out is a file", ["heads", "--model", "{root}/ckpt", "--out", "{root}/afile.txt"],
     r"is a file, not a folder"),
    ("heads: --out holds other files", ["heads", "--model", "{root}/ckpt", "--out", "{root}/taken"],
     r"already holds 1 file\(s\) .*'notes.txt'.* or pass --overwrite"),
    ("heads: --out locked", ["heads", "--model", "{root}/ckpt", "--out", "{root}/locked", "--overwrite"],
     r"in use by another scrub run \(.*\.scrub-lock exists\)"),
    ("heads: unknown model", ["heads", "--model", "no-such-model"], r"unknown model 'no-such-model'"),
    ("unknown subcommand", ["scrub-everything"], r"argument COMMAND: invalid choice: 'scrub-everything'"),
    ("study: --window 0", ["study", "--quick", "--window", "0"], r"--window must be between 1 and \d+ \(got 0\)"),
    ("study: --seed -2", ["study", "--quick", "--seed", "-2"], r"--seed must be between 0 and 2\*\*63 - 1 \(got -2\)"),
]


@pytest.mark.parametrize("argv, pattern", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_with_one_line(root, capsys, argv, pattern):
    code = main([a.format(root=root) for a in argv])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.out == ""
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if ": error: " in line]
    assert len(errors) == 1, captured.err  # (stderr may also hold the model loader's "Moving model" note)
    assert errors[0].startswith("scrub"), errors[0]
    assert re.search(pattern, errors[0]), errors[0]


def test_cli_bad_inputs_do_not_leave_folders_behind(root):
    assert not (root / "figs").exists()  # heads refused before writing, and removed the folder it had made
    assert sorted(p.name for p in (root / "taken").iterdir()) == ["notes.txt"]  # untouched, no lock left
    assert (root / "locked" / ".scrub-lock").exists()  # someone else's lock stays


SUBPROCESS_CASES = [  # the real command: no traceback after the model loads (the pipe test below covers the rest)
    ("run candidates --seq-len 4", RUN + ["--positions", "candidates", "--seq-len", "4", "--n", "4"],
     r"no position is scored"),
]


@pytest.mark.parametrize("argv, pattern", [c[1:] for c in SUBPROCESS_CASES], ids=[c[0] for c in SUBPROCESS_CASES])
def test_python_m_scrub_refuses_without_traceback(root, argv, pattern):
    done = subprocess.run([sys.executable, "-m", "scrub", *(a.format(root=root) for a in argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert re.search(pattern, done.stderr.strip().splitlines()[-1]), done.stderr


def test_a_closed_pipe_ends_quietly(root, tmp_path):
    """`scrub heads | head`: the reader is gone before scrub prints; no BrokenPipeError, exit code 141."""
    proc = subprocess.Popen([sys.executable, "-m", "scrub", "heads", "--model", str(root / "ckpt"), "--n", "2",
                             "--out", str(tmp_path / "figs")], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err and "Broken pipe" not in err


# --- the scrub.run API ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=2, n_heads=3)  # d_vocab 20, n_ctx 12




def scrub(model, hypothesis=None, tokens=None, **kwargs):
    hypothesis = full_graph(model) if hypothesis is None else hypothesis
    return run(model, hypothesis, data() if tokens is None else tokens, progress=False, n_bootstrap=50, **kwargs)


def with_id(value, row, col):
    tokens = data()
    tokens[row, col] = value
    return tokens


SAME = partial_graph()

API_CASES = [  # (id, call(model), exception type, regex)
    ("model as a string", lambda m: run("scrub-attn-2l", full_graph(m), data()), RunInputError,
     r"model must be a TransformerLens HookedTransformer, got str; load it first: scrub.run\(scrub.load_model"),
    ("model as a path", lambda m: run(Path("ckpt"), full_graph(m), data()), RunInputError,
     r"got PosixPath|got WindowsPath"),
    ("seed None", lambda m: scrub(m, seed=None), RunInputError, r"seed must be a whole number .* got None"),
    ("seed 1.5", lambda m: scrub(m, seed=1.5), RunInputError, r"seed must be a whole number .* got 1.5"),
    ("seed True", lambda m: scrub(m, seed=True), RunInputError, r"seed must be a whole number"),
    ("seed -1", lambda m: scrub(m, seed=-1), RunInputError, r"seed must be between 0 and 2\*\*63 - 1 \(got -1\)"),
    ("seed 10**23", lambda m: scrub(m, seed=10**23), RunInputError, r"seed must be between 0 and 2\*\*63 - 1"),
    ("zero-length sequences", lambda m: scrub(m, tokens=torch.zeros(8, 0, dtype=torch.long)), RunInputError,
     r"sequences of length 0 have no next token to predict"),
    ("one-token sequences", lambda m: scrub(m, tokens=data(seq=1)), RunInputError,
     r"sequences of length 1 have no next token"),
    ("all examples identical", lambda m: scrub(m, tokens=data()[:1].repeat(8, 1)), RunInputError,
     r"all 8 examples are the same sequence"),
    ("float token ids", lambda m: scrub(m, tokens=data().float() + 0.7), RunInputError,
     r"token ids must be integers, got a float32 tensor .* data.long\(\)"),
    ("bool tokens", lambda m: scrub(m, tokens=data() > 3), RunInputError,
     r"token ids must be integers, got a bool tensor"),
    ("negative token id", lambda m: scrub(m, tokens=with_id(-3, 2, 5)), RunInputError,
     r"token id -3 \(example 2, position 5; 1 such ids\) is outside the model's vocabulary of 20"),
    ("token id beyond the vocabulary", lambda m: scrub(m, tokens=with_id(25, 1, 0)), RunInputError,
     r"token id 25 \(example 1, position 0; 1 such ids\)"),
    ("numpy tokens", lambda m: scrub(m, tokens=data().numpy()), RunInputError,
     r"got ndarray; convert it with torch.as_tensor"),
    ("1-D tokens", lambda m: scrub(m, tokens=data()[0]), RunInputError, r"got shape \[12\]; add the batch dimension"),
    ("one example", lambda m: scrub(m, tokens=data(n=1)), RunInputError, r"need at least 2 examples, got 1"),
    ("sequences beyond n_ctx", lambda m: scrub(m, tokens=data(seq=13)), RunInputError,
     r"longer than the model's n_ctx 12"),
    ("batch_size 0", lambda m: scrub(m, batch_size=0), RunInputError, r"batch_size must be a whole number ≥ 2, got 0"),
    ("batch_size 1", lambda m: scrub(m, batch_size=1), RunInputError, r"batch_size must be a whole number ≥ 2, got 1"),
    ("batch_size 4.0", lambda m: scrub(m, batch_size=4.0), RunInputError,
     r"batch_size must be a whole number ≥ 2, got 4.0"),
    ("n_bootstrap 0", lambda m: run(m, full_graph(m), data(), progress=False, n_bootstrap=0), RunInputError,
     r"n_bootstrap must be a whole number ≥ 1, got 0"),
    ("options as a string", lambda m: scrub(m, options="copy"), RunInputError,
     r"options must be a scrub.SamplingOptions"),
    ("unknown positions", lambda m: scrub(m, positions="first"), RunInputError,
     r"positions must be 'all', 'candidates'"),
    ("positions mask of floats", lambda m: scrub(m, positions=lambda t: (t > 3).float()), RunInputError,
     r"returned a float32 tensor of shape \[8, 12\]: it must return a bool mask"),
    ("positions function fails", lambda m: scrub(m, positions=lambda t: t.no_such_thing), RunInputError,
     r"the positions function '<lambda>' failed on tokens of shape \[8, 12\]: AttributeError"),
    ("no position scored", lambda m: scrub(m, positions=lambda t: torch.zeros_like(t, dtype=torch.bool)), RunInputError,
     r"no position is scored"),
    ("no induction candidate", lambda m: scrub(m, tokens=torch.stack([torch.randperm(20)[:6] for _ in range(4)]),
                                               positions="candidates"), RunInputError,
     r"no position is scored: positions='candidates' selects none of the 5 prediction positions"),
    ("baseline is the hypothesis", lambda m: scrub(m, SAME, baseline=SAME), RunInputError,
     r"the baseline is the hypothesis itself"),
    ("baseline as good as clean", lambda m: scrub(m, partial_graph(), baseline=full_graph(m)), UndefinedRecoveryError,
     r"the baseline loss equals the clean loss .* loss recovered is 0/0"),
    ("unknown metric", lambda m: scrub(m, metric="nll"), RunInputError,
     r"metric must be one of 'loss', 'kl', got 'nll': 'loss' is next-token cross-entropy"),
    ("metric of the wrong type", lambda m: scrub(m, metric=None), RunInputError, r"metric must be one of .* got None"),
    ("KL baseline as good as clean", lambda m: scrub(m, partial_graph(), baseline=full_graph(m), metric="kl"),
     UndefinedRecoveryError, r"the baseline's KL divergence from the clean run is 0 .* KL recovered is 0/0"),
    ("device mismatch", lambda m: scrub(m, device="meta"), RunInputError, r"the model is on cpu but device='meta'"),
    ("hypothesis of the wrong type", lambda m: scrub(m, 3), HypothesisError, r"a hypothesis is a networkx.DiGraph"),
]


@pytest.mark.parametrize("call, kind, pattern", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_refuses(model, call, kind, pattern):
    with pytest.raises(kind, match=pattern) as caught:
        call(model)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)


def test_enough_distinct_bad_inputs():
    assert len(CLI_CASES) + len(API_CASES) >= 30


# --- warnings: numbers that may mean less than they say -------------------------------------------------

def test_baseline_below_clean_warns(model):
    result = scrub(model, partial_graph(), data(n=16, seed=1), seed=1)  # resampling happens to help this model here
    assert result.loss_baseline < result.loss_clean
    assert any(w.startswith("the baseline loss is not above the clean loss") for w in result.warnings)
    assert "\nwarning: the baseline loss is not above the clean loss" in result.summary()


def test_baseline_gap_within_noise_warns(model):
    result = scrub(model, partial_graph(), data(n=16, seed=0), seed=0)
    assert result.loss_baseline > result.loss_clean
    assert any("within 2 standard errors" in w for w in result.warnings), result.warnings


def test_examples_without_a_scored_position_are_reported(model):
    def first_two(tokens):
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        mask[:2] = True  # the first two examples of each batch
        return mask

    result = scrub(model, partial_graph(), data(n=8), positions=first_two, batch_size=4)
    assert result.n_examples == 4
    assert any(w.startswith("4 of 8 examples have no scored position") for w in result.warnings)


def test_a_last_batch_of_one_example_is_kept(model):
    result = scrub(model, partial_graph(), data(n=9), batch_size=4)
    assert result.n_examples == 9 and len(result.per_example_scrubbed) == 9
    assert not any("no scored position" in w for w in result.warnings)


def test_self_draws_per_node_and_warning(model):
    g = partial_graph()
    g.nodes["0.1"]["feature"] = Feature("whole sequence", lambda tokens: tokens)  # no other example agrees
    result = scrub(model, g, data(n=8))
    assert result.self_draws["0.1"] == 1.0
    assert result.self_draws["1.2"] == 0.0 and result.self_draws["logits"] == 0.0
    assert any(w.startswith("hypothesis 'graph' node '0.1': 100% of its feature draws returned the datum itself")
               for w in result.warnings)
    assert result.to_dict()["self_draws"]["0.1"] == 1.0


def test_a_coarse_feature_does_not_warn(model):
    g = partial_graph()
    g.nodes["0.1"]["feature"] = Feature("first token parity", lambda tokens: tokens[:, :1] % 2)
    tokens = data(n=8)
    tokens[:, 0] = torch.arange(8)  # four examples of each parity
    result = scrub(model, g, tokens)
    assert result.self_draws["0.1"] == 0.0
    assert not any("feature draws" in w for w in result.warnings)


def test_summary_prints_each_warning_on_its_own_line_and_json_has_no_nan():
    result = ScrubResult("h", "b", 1.0, 1.0, 1.0, float("nan"), float("nan"), float("nan"), 2, 4, 0.0,
                         (1.0, 1.0), (1.0, 1.0), (1.0, 1.0), warnings=("first", "second"), self_draws={"1.3": 0.5})
    lines = result.summary().splitlines()
    assert lines[1:] == ["warning: first", "warning: second"]
    out = result.to_dict()
    assert out["loss_recovered"] is None and out["warnings"] == ["first", "second"]
    assert out["self_draws"] == {"1.3": 0.5}
    json.dumps(out, allow_nan=False)


def test_cli_run_reports_warnings_in_json_and_text(root, capsys):
    argv = ["run", str(root / "fine.py"), "--model", str(root / "ckpt"), "--n", "6", "--seq-len", "16",
            "--batch-size", "4", "--seed", "3"]
    assert main(argv + ["--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)  # exactly one JSON object
    assert out["self_draws"]["0.0"] == 1.0 and out["self_draws"]["1.1"] == 0.0
    assert any("node '0.0': 100% of its feature draws" in w for w in out["warnings"])
    assert out["n_examples"] == 6  # 4 + 2: nothing dropped
    for key, value in (("seq_len", 16), ("batch_size", 4), ("seed", 3), ("n", 6), ("unit", "node"),
                       ("independent", False), ("allow_self", False), ("positions", "all"), ("n_bootstrap", 1000)):
        assert out[key] == value, key
    assert main(argv) == 0
    text = capsys.readouterr().out.splitlines()
    warnings = [line for line in text if line.startswith("warning: ")]
    assert len(warnings) == len(out["warnings"]) and any("node '0.0'" in w for w in warnings)
    assert "feature draws that returned the datum itself, per node: 0.0 100.0%" in text


# --- output folders -----------------------------------------------------------------------------------

def heads(root, out, *extra):
    return main(["heads", "--model", str(root / "ckpt"), "--n", "2", "--json", "--out", str(out), *extra])


def test_heads_out_folder_is_replaced_never_mixed(root, tmp_path, capsys):
    out = tmp_path / "figs"
    assert heads(root, out) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["seq_len"] == 64 and first["n"] == 2 and first["seed"] == 0  # what reproduces the run
    names = sorted(p.name for p in out.iterdir())
    assert heads(root, out, "--seed", "1") == 0  # a second heads run replaces the first one's figures
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == names  # no lock left, nothing else
    (out / "path_patching.png").write_bytes(b"another command's figure")
    assert heads(root, out) == 2
    err = capsys.readouterr().err
    assert "already holds 1 file(s) that `scrub heads` does not write (e.g. 'path_patching.png'" in err
    assert heads(root, out, "--overwrite") == 0  # written anyway; the other file stays
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["path_patching.png"])


def test_a_stale_lock_is_taken_over(root, tmp_path, capsys):
    out = tmp_path / "figs"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout  # a process that has ended
    (out / ".scrub-lock").write_text(dead)
    assert heads(root, out) == 0, capsys.readouterr().err
    assert not (out / ".scrub-lock").exists()
