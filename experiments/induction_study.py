"""The induction study (issue 4): how far the mechanistic definition of induction heads falls short of the
behavioral one, on the shipped model. Owns the study's configuration and orchestration; scoring lives in
``scrub.scores``, hypotheses in ``hypotheses/``, batched scrubbing in ``experiments/_evaluate.py``, the
context-sensitivity hooks in ``experiments/_context.py`` and the report text in ``experiments/_report.py``.

    python experiments/induction_study.py [--quick] [--json] [--model M] [--seed S] [--out DIR]
    scrub study [--quick] [--json] ...          (the same, through the CLI)

Writes ``<out>/induction_study.md``, ``<out>/results.json`` and PNG figures (default out:
experiments/results/, quick mode: experiments/results/quick/).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make scrub, hypotheses and experiments importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402
from transformer_lens import HookedTransformer  # noqa: E402

from experiments._context import context_sensitivity  # noqa: E402
from experiments._evaluate import Recovery, scrub_many  # noqa: E402
from experiments._report import HypothesisInfo, StudyResults, write_figures, write_report  # noqa: E402
from hypotheses._build import Mechanism, induction_baseline, mechanism_graph  # noqa: E402
from hypotheses._heads import N_SEQUENCES, SEED, head_roles  # noqa: E402
from scrub.data import all_positions, induction_candidates, natural_batch, repeated_random_tokens  # noqa: E402
from scrub.hypothesis import Claim, validate  # noqa: E402
from scrub.model import SHIPPED_NAME  # noqa: E402
from scrub.scores import head_scores  # noqa: E402

HYPOTHESES = (  # (file stem in hypotheses/, label), in ladder order
    ("full", "full graph"),
    ("induction_v_only", "V only"),
    ("induction_q_only", "Q only"),
    ("induction_k_only", "K only"),
    ("induction_minimal", "minimal mechanism (Q+K+V)"),
    ("induction_prev_heads", "+ prev-token-like heads into K"),
    ("induction_positions", "+ positions into Q/K"),
    ("induction_long_prefix", "+ longer-prefix heads into K"),
    ("induction_layer0_qv", "+ layer-0 heads into Q/V"),
    ("induction_direct_k", "+ embedding into K"),
    ("induction_restricted", "+ all K/V at no-match keys"),
    ("induction_refined", "all refinements"),
    ("induction_behavioral", "behavioral heads only"),
    ("induction_baseline", "Redwood induction baseline"),
    ("empty", "empty"),
)
BASELINES = ("induction_baseline", "empty")
MODES = ("candidates", "all")


@dataclass(frozen=True)
class StudyConfig:
    """Sizes of one run; ``quick()`` is the test-sized variant (under 2 minutes)."""

    model: str = SHIPPED_NAME
    seed: int = 0
    n_natural: int = 192
    seq_len: int = 256
    n_rrt: int = 96
    rrt_length: int = 64
    n_context: int = 64
    window: int = 16
    batch_size: int = 32
    n_bootstrap: int = 1000
    out: str = "experiments/results"
    quick: bool = False

    @staticmethod
    def quick_config(**overrides) -> "StudyConfig":
        base = StudyConfig(n_natural=16, seq_len=128, n_rrt=16, rrt_length=32, n_context=8, window=8,
                           batch_size=16, n_bootstrap=200, out="experiments/results/quick", quick=True)
        return replace(base, **overrides)


def load_claim(stem: str, model: HookedTransformer, roles) -> tuple[Claim, HypothesisInfo]:
    """Import ``hypotheses/<stem>.py`` and build its graph with the study's roles (one score computation)."""
    path = ROOT / "hypotheses" / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(f"study_hypothesis_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    takes_roles = "roles" in inspect.signature(module.hypothesis).parameters
    graph = module.hypothesis(model, roles) if takes_roles else module.hypothesis(model)
    claim = validate(graph, model, origin=str(path))
    doc = (module.__doc__ or "").strip()
    return claim, HypothesisInfo(stem, "", doc, claim.n_paths(), f"hypotheses/{stem}.py", graph)


def position_masks():
    return (("candidates", induction_candidates), ("all", all_positions))


def recoveries(losses, names, data: str, cfg: StudyConfig) -> list[Recovery]:
    return [replace(losses.recovery(name, base, mode, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed), data=data)
            for name in names for base in BASELINES for mode in MODES]


def run_study(model: HookedTransformer, cfg: StudyConfig, *, command: str, progress: bool = True) -> StudyResults:
    start = time.time()
    torch.manual_seed(cfg.seed)
    n_ctx = model.cfg.n_ctx  # smaller models (tests) get shorter sequences
    cfg = replace(cfg, seq_len=min(cfg.seq_len, n_ctx), rrt_length=min(cfg.rrt_length, (n_ctx - 1) // 2))
    batches = lambda n: -(-n // cfg.batch_size)  # noqa: E731
    total = 5 + batches(cfg.n_natural) + batches(cfg.n_rrt) + model.cfg.n_layers * model.cfg.n_heads
    bar = tqdm(total=total, desc="induction study", file=sys.stderr, disable=not progress)

    def stage(name: str) -> None:  # one finished step; ``name`` is what runs next
        bar.set_postfix_str(name)
        bar.update(1)

    tick = lambda: bar.update(1)  # noqa: E731
    bar.set_postfix_str("scores")
    roles = head_roles(model)  # the fixed seed of hypotheses/_heads.py: the same heads the files pick on their own
    scores_rrt = head_scores(model, data="rrt", n=N_SEQUENCES, seed=SEED, exclude_common=model.cfg.d_vocab // 20)
    stage("hypotheses")
    infos, claims = [], []
    for stem, label in HYPOTHESES:
        claim, info = load_claim(stem, model, roles)
        claims.append(replace(claim, name=stem))
        infos.append(replace(info, label=label))
    per_head = roles.behavioral_receivers()
    head_claims = []
    for head in per_head:
        for name, graph in ((f"mechanism {head}", mechanism_graph(model, roles, Mechanism(), (head,))),
                            (f"baseline {head}", induction_baseline(model, roles, (head,)))):
            head_claims.append(replace(validate(graph, model), name=name))
    stage("natural text")
    natural = natural_batch(cfg.n_natural, cfg.seq_len, seed=cfg.seed)  # [n, seq]
    rrt = repeated_random_tokens(cfg.n_rrt, cfg.rrt_length, 2, seed=cfg.seed, vocab_size=model.cfg.d_vocab,
                                 exclude_common=model.cfg.d_vocab // 20)  # [n, 1 + 2L]
    nat = scrub_many(model, tuple(claims) + tuple(head_claims), natural, position_masks(), seed=cfg.seed,
                     batch_size=cfg.batch_size, step=tick)
    bar.set_postfix_str("repeated random tokens")
    rep = scrub_many(model, tuple(claims), rrt, position_masks(), seed=cfg.seed, batch_size=cfg.batch_size, step=tick)
    bar.set_postfix_str("loss recovered")
    names = [stem for stem, _ in HYPOTHESES]
    rows = recoveries(nat, names, "natural", cfg) + recoveries(rep, names, "rrt", cfg)
    heads = [replace(nat.recovery(f"mechanism {h}", f"baseline {h}", mode, n_bootstrap=cfg.n_bootstrap,
                                  seed=cfg.seed), hypothesis=h, data="natural")
             for h in per_head for mode in MODES]
    stage("context sensitivity")
    sensitivity = context_sensitivity(model, natural[: cfg.n_context], window=cfg.window, seed=cfg.seed, step=tick)
    bar.set_postfix_str("figures")
    results = StudyResults(config=cfg, command=command, roles=roles, scores_rrt=scores_rrt,
                           hypotheses=tuple(infos), rows=tuple(rows), per_head=tuple(heads),
                           sensitivity=sensitivity, elapsed=0.0, figures=())
    out = ROOT / cfg.out if not Path(cfg.out).is_absolute() else Path(cfg.out)
    figures = write_figures(results, out, model)
    stage("report")
    results = replace(results, figures=tuple(figures), elapsed=time.time() - start)
    write_report(results, out)
    stage("done")
    bar.close()
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The induction-head study (writes a report and figures).")
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="test-sized run (< 2 min), written to experiments/results/quick/")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON summary object on stdout")
    parser.add_argument("--model", default=None, help="'scrub-attn-2l' (default), a checkpoint directory, or a TransformerLens name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=None, help="context sensitivity: keys more than W tokens back")
    parser.add_argument("--out", default=None, help="output folder (default experiments/results[/quick])")


def config_from(args: argparse.Namespace) -> StudyConfig:
    cfg = StudyConfig.quick_config() if args.quick else StudyConfig()
    overrides = {k: v for k, v in (("model", args.model), ("window", args.window), ("out", args.out)) if v is not None}
    return replace(cfg, seed=args.seed, **overrides)


def main(argv: list[str] | None = None, *, model: HookedTransformer | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from(args)
    if model is None:
        from scrub.model import load_model

        with contextlib.redirect_stdout(sys.stderr):
            model = load_model(cfg.model)
    command = "scrub study" + (" --quick" if cfg.quick else "") + f" --seed {cfg.seed}" + (
        f" --model {cfg.model}" if cfg.model != StudyConfig().model else "")
    results = run_study(model, cfg, command=command)
    if args.json:
        print(json.dumps(results.summary()))
    else:
        print(f"wrote {Path(cfg.out) / 'induction_study.md'} and {len(results.figures)} figures "
              f"in {results.elapsed:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
