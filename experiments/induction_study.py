"""The induction study (issues 4 and 12): how far the mechanistic definition of induction heads falls short
of the behavioral one, on every shipped model (or the ones named). Owns the study's configuration and
orchestration; scoring lives in ``scrub.heads.scores``, hypotheses in ``hypotheses/`` (the study's ladder of
them, and the claims it builds itself, in ``experiments/_claims.py``), batched scrubbing in
``experiments/_evaluate.py``, Redwood's REMIX day-3 ladder rung by rung in ``experiments/_remix.py``, the
context-sensitivity hooks in ``experiments/_context.py``, path patching
from the induction heads in ``experiments/_composition.py``, the per-model report in
``experiments/_report.py`` (its sections in ``_report_sections.py`` and ``_report_parts.py``, the figures in
``_report_figures.py``, the results as data in ``_results.py``) and the cross-model report in
``experiments/_cross.py``.

    scrub study [--quick] [--json] [--model M ...] [--seed S] [--window W] [--out DIR] [--report-only] [--resume]
    python experiments/induction_study.py ...   (the same, without the CLI)

``--model`` may be given several times (``--model scrub-attn-2l --model scrub-3l-mlp``); without it every
shipped model (``scrub.model.loading.shipped_models()``) is studied. Each model's report, ``results.json`` and
figures go to ``<out>/<model>/`` (a checkpoint directory is named by its folder name); ``<out>/induction_study.md``
is the cross-model report, written from those ``results.json`` files (with one model, its summary alone).
Default out (``default_out``): experiments/results/ in a source checkout, where the committed results live,
and ./scrub-output/study/ from an installed package, which ships no results (quick mode: ``quick/`` in either).
Every path the results record (``config.out``, figures, hypothesis files) is relative to the output folder or
the package. ``--report-only`` rewrites the cross-model report from the per-model folders already there,
without running anything. While a run goes, each model's finished folder is also kept in
``.<out>.scrub-resume/`` beside the output folder (``experiments/_resume.py``): after a Ctrl-C or a failure,
the same command with ``--resume`` copies those models in instead of recomputing them. The cross-model
report also takes in other model folders under ``<out>`` whose results come from a run of the same kind
(quick or full, same seed), each listed with its command and date. ``--json`` prints one object: the model's
summary (``results.json``) for one model, ``{"models": [...]}`` for several, with ``cross_report`` (its path).
Torch runs on the cores the machine's load leaves free (``study_threads``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

if not __package__:  # run as a script (python experiments/induction_study.py): make scrub, hypotheses and
    ROOT = str(Path(__file__).resolve().parents[1])  # experiments importable from the checkout
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402
from transformer_lens import HookedTransformer  # noqa: E402

from experiments._claims import load_claim, rrt_previous_token, study_claims  # noqa: E402
from experiments._composition import composition, k_paths, natural_metric, rrt_metric  # noqa: E402
from experiments._context import context_sensitivity  # noqa: E402
from experiments._cross import write_cross_report  # noqa: E402
from experiments._discovery import run_discovery  # noqa: E402
from experiments._evaluate import Recovery, effect_split, scrub_many  # noqa: E402
from experiments._remix import run_remix  # noqa: E402
from experiments._report import write_report  # noqa: E402
from experiments._report_figures import write_figures  # noqa: E402
from experiments._results import StudyResults  # noqa: E402
from experiments._resume import ResumeStore, open_store, resume_line  # noqa: E402
from hypotheses._heads import head_roles  # noqa: E402
from scrub.cli.common import UsageError  # noqa: E402
from scrub.cli.output import OutputFolder, PartlyKept  # noqa: E402
from scrub.data.batches import all_positions, induction_candidates, natural_batch, repeated_random_tokens  # noqa: E402
from scrub.model.loading import SHIPPED_NAME, shipped_models  # noqa: E402

BASELINES = ("induction_baseline", "empty")
MODES = ("candidates", "all")


@dataclass(frozen=True)
class StudyConfig:
    """Sizes of one run; ``quick_config()`` is the test-sized variant (under 2 minutes per model)."""

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
    n_patch: int = 96  # examples of each composition matrix (natural text and RRT)
    patch_chunk: int = 8  # examples per chunk: the composition intervals are over chunks
    n_discover: int = 32  # discovery examples per dataset (disjoint from the held-out ones)
    n_discover_heldout: int = 64  # held-out examples of each discovered claim: the first of the study's batches
    out: str = ""  # this model's folder, relative to the study's output folder (--out): results stay portable
    quick: bool = False

    @staticmethod
    def quick_config(**overrides) -> "StudyConfig":
        base = StudyConfig(n_natural=16, seq_len=128, n_rrt=16, rrt_length=32, n_context=8, window=8,
                           batch_size=16, n_bootstrap=200, n_patch=8, patch_chunk=4, n_discover=8,
                           n_discover_heldout=8, quick=True)
        return replace(base, **overrides)


RESULTS = Path(__file__).resolve().parent / "results"  # in a source checkout: the committed results


def default_out(quick: bool) -> Path:
    """The study's output folder without --out: experiments/results in a source checkout (the committed results
    stay where they are), ./scrub-output/study from an installed package (no results folder ships with it);
    quick runs write to its ``quick/`` subfolder."""
    root = RESULTS if RESULTS.is_dir() else Path.cwd() / "scrub-output" / "study"
    return root / "quick" if quick else root


def model_folder(name: str) -> str:
    """The per-model folder name: a shipped or TransformerLens name as it is, a checkpoint directory by its
    folder name."""
    path = Path(str(name).rstrip("/\\"))
    return path.name if path.name not in ("", ".", "..") else "model"


def position_masks():
    return (("candidates", induction_candidates), ("all", all_positions),
            ("other", lambda tokens: ~induction_candidates(tokens)))


def recoveries(losses, names, data: str, cfg: StudyConfig) -> list[Recovery]:
    return [replace(losses.recovery(name, base, mode, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed), data=data)
            for name in names for base in BASELINES for mode in MODES]


def model_info(model: HookedTransformer, name: str) -> dict:
    from experiments._results import training_rrt_share

    c = model.cfg
    return {"name": name, "torch_threads": torch.get_num_threads(), "n_layers": c.n_layers, "n_heads": c.n_heads,
            "d_model": c.d_model, "d_mlp": None if c.attn_only else c.d_mlp, "mlps": not c.attn_only,
            "positions": c.positional_embedding_type,
            "rrt_frac": training_rrt_share(name)}


class _Progress:
    """The run's progress bar and its seconds per stage: ``begin(name)`` when a stage starts (its time since the
    last call goes to the stage before), ``stage(name)`` when a counted step ends and ``name`` runs next,
    ``tick()`` for a step inside a stage. Between stages torch's threads follow the machine's load."""

    def __init__(self, total: int, desc: str, progress: bool):
        self.bar = tqdm(total=total, desc=desc, file=sys.stderr, disable=not progress)
        self.timings: dict[str, float] = {}
        self.clock: list[Any] = [time.time(), "scores"]  # [start, stage]
        self.threads = {torch.get_num_threads()}
        self.bar.set_postfix_str("scores")

    def begin(self, name: str) -> None:
        now = time.time()
        self.timings[self.clock[1]] = self.timings.get(self.clock[1], 0.0) + now - self.clock[0]
        self.clock[:] = [now, name]
        self.bar.set_postfix_str(name)
        if not os.environ.get("OMP_NUM_THREADS"):  # the machine's load changes during a run: look again
            _OWN_LOAD[0] = float(torch.get_num_threads())  # (this run's share of the load average)
            torch.set_num_threads(study_threads())
            self.threads.add(torch.get_num_threads())

    def stage(self, name: str) -> None:
        self.begin(name)
        self.bar.update(1)

    def tick(self) -> None:
        self.bar.update(1)


def patch_pairs(model: HookedTransformer, cfg: StudyConfig) -> dict[str, tuple]:
    """(reference, corrupted, metric) of the path-patching runs, natural text and RRT."""
    exclude = model.cfg.d_vocab // 20
    return {"natural": (natural_batch(cfg.n_patch, cfg.seq_len, seed=cfg.seed),
                        natural_batch(cfg.n_patch, cfg.seq_len, seed=cfg.seed + 1), natural_metric),
            "rrt": tuple(repeated_random_tokens(cfg.n_patch, cfg.rrt_length, 2, seed=cfg.seed + k,
                                                vocab_size=model.cfg.d_vocab, exclude_common=exclude)
                         for k in (0, 1)) + (rrt_metric(cfg.rrt_length),)}


def discovery_batches(model: HookedTransformer, cfg: StudyConfig, natural, rrt) -> dict[str, tuple]:
    """(discovery data, held-out data) per dataset: natural text continues the study's seeded tiling (disjoint
    windows), RRT another seed; held out: the first examples of the study's own batches."""
    held = cfg.n_discover_heldout
    more = natural_batch(cfg.n_natural + cfg.n_discover, cfg.seq_len, seed=cfg.seed)[cfg.n_natural :]  # [m, seq]
    other = repeated_random_tokens(cfg.n_discover, cfg.rrt_length, 2, seed=cfg.seed + 1000,
                                   vocab_size=model.cfg.d_vocab, exclude_common=model.cfg.d_vocab // 20)  # [m, 1 + 2L]
    return {"natural": (more, natural[:held]), "rrt": (other, rrt[:held])}


def run_study(model: HookedTransformer, cfg: StudyConfig, *, command: str, progress: bool = True,
              out: Path | None = None) -> StudyResults:
    """One model: every hypothesis on natural text and RRT, per-head claims and effects, context sensitivity,
    composition with the induction heads; writes the model's report, results.json and figures to ``out``
    (default ``default_out(cfg.quick) / cfg.out``; the results record ``cfg.out``, relative to the output
    folder: ``out`` is where a transactional run stages them). The stages run in the order the report reads,
    one after the other (a longer function than most: it is the study's table of contents)."""
    start = time.time()
    torch.manual_seed(cfg.seed)
    n_ctx = model.cfg.n_ctx  # smaller models (tests) get shorter sequences
    cfg = replace(cfg, seq_len=min(cfg.seq_len, n_ctx), rrt_length=min(cfg.rrt_length, (n_ctx - 1) // 2))
    n_batches = -(-cfg.n_natural // cfg.batch_size) + -(-cfg.n_rrt // cfg.batch_size)
    chunks = -(-cfg.n_patch // cfg.patch_chunk)
    total = 6 + 2 * n_batches + model.cfg.n_layers * model.cfg.n_heads + 4 * chunks
    run = _Progress(total, f"study {model_folder(cfg.model)}", progress)
    roles = head_roles(model)  # the fixed seed of hypotheses/_heads.py: the same heads the files pick on their own
    scores_rrt = rrt_previous_token(model)
    run.stage("hypotheses")
    claims, infos, head_claims = study_claims(model, roles)
    per_head = roles.behavioral_receivers()
    run.stage("natural text")
    natural = natural_batch(cfg.n_natural, cfg.seq_len, seed=cfg.seed)  # [n, seq]
    rrt = repeated_random_tokens(cfg.n_rrt, cfg.rrt_length, 2, seed=cfg.seed, vocab_size=model.cfg.d_vocab,
                                 exclude_common=model.cfg.d_vocab // 20)  # [n, 1 + 2L]
    nat = scrub_many(model, tuple(claims) + tuple(head_claims), natural, position_masks(), seed=cfg.seed,
                     batch_size=cfg.batch_size, step=run.tick)
    run.begin("repeated random tokens")
    rep = scrub_many(model, tuple(claims), rrt, position_masks()[:2], seed=cfg.seed, batch_size=cfg.batch_size,
                     step=run.tick)
    run.begin("REMIX ladder")
    baseline = next(c for c in claims if c.name == "induction_baseline")
    remix = run_remix(model, roles, baseline, {"natural": natural, "rrt": rrt},
                      lambda stem: (lambda ci: (ci[0], ci[1].description))(load_claim(stem, model, roles)),
                      seed=cfg.seed, batch_size=cfg.batch_size, n_bootstrap=cfg.n_bootstrap, step=run.tick)
    run.begin("loss recovered")
    names = [c.name for c in claims]
    rows = recoveries(nat, names, "natural", cfg) + recoveries(rep, names, "rrt", cfg)
    heads = [replace(nat.recovery(f"mechanism {h}", f"baseline {h}", mode, n_bootstrap=cfg.n_bootstrap,
                                  seed=cfg.seed), hypothesis=h, data="natural")
             for h in per_head for mode in (*MODES, "other")]
    splits = tuple(replace(effect_split(nat, f"baseline {h}", n_bootstrap=cfg.n_bootstrap, seed=cfg.seed), name=h)
                   for h in per_head)
    run.stage("context sensitivity")
    sensitivity = context_sensitivity(model, natural[: cfg.n_context], window=cfg.window, seed=cfg.seed,
                                      step=run.tick)
    run.begin("composition")
    pairs = patch_pairs(model, cfg)
    comps = tuple(composition(model, per_head, ref, cor, metric, data=data, chunk=cfg.patch_chunk, step=run.tick)
                  for data, (ref, cor, metric) in pairs.items())
    run.begin("K path")
    candidates = [(r, p) for r in roles.induction  # the claimed previous-token head first, then the other
                  for p in dict.fromkeys([roles.previous_for(r), *roles.early(roles.previous_like, r)])]  # prev-like
    kpaths = tuple(k_paths(model, candidates, ref, cor, metric, data=data, chunk=cfg.patch_chunk, step=run.tick)
                   for data, (ref, cor, metric) in pairs.items())
    run.begin("discovery")
    run.bar.total += 2 * len(per_head)  # one step per head and dataset
    found = run_discovery(model, roles, discovery_batches(model, cfg, natural, rrt), seed=cfg.seed,
                          n_bootstrap=cfg.n_bootstrap, step=run.tick)
    run.stage("figures")
    about = model_info(model, cfg.model)
    about["torch_threads"] = "-".join(str(t) for t in sorted(run.threads))
    results = StudyResults(config=cfg, command=command, roles=roles, scores_rrt=scores_rrt,
                           hypotheses=tuple(infos), rows=tuple(rows), per_head=tuple(heads),
                           sensitivity=sensitivity, elapsed=0.0, figures=(), model=about,
                           splits=splits, composition=comps, k_paths=kpaths, remix=remix, discovery=found)
    if out is None:
        out = default_out(cfg.quick) / (cfg.out or model_folder(cfg.model))
    figures = write_figures(results, out, model)
    run.stage("report")
    results = replace(results, figures=tuple(figures), elapsed=time.time() - start, timings=run.timings)
    write_report(results, out)
    run.stage("done")
    run.bar.close()
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The induction-head study (writes reports and figures).")
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="test-sized run (< 2 min per model), written to the quick/ subfolder of the default "
                             "--out")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON summary object on stdout")
    parser.add_argument("--model", action="append", default=None,
                        help="a shipped model, a checkpoint directory, or a TransformerLens name; repeat for "
                             "several (default: every shipped model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=None, help="context sensitivity: keys more than W tokens back")
    parser.add_argument("--out", default=None, help="output folder (default: experiments/results[/quick] in a "
                                                    "source checkout, ./scrub-output/study[/quick] from an installed "
                                                    "package): one subfolder per model and the cross-model "
                                                    "induction_study.md")
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite <out>/induction_study.md from the per-model folders already in <out>")
    parser.add_argument("--resume", action="store_true", help="reuse the models a stopped run of the same command "
                        "finished (kept in .<out>.scrub-resume); an error if none were kept or the flags differ")


def config_from(args: argparse.Namespace, model: str = SHIPPED_NAME) -> StudyConfig:
    cfg = StudyConfig.quick_config() if args.quick else StudyConfig()
    overrides = {k: v for k, v in (("window", args.window),) if v is not None}
    return replace(cfg, seed=args.seed, model=model, out=model_folder(model), **overrides)


def compatible(folder: Path, base: StudyConfig, seed: int) -> bool:
    """Whether ``folder`` holds another model's results of a run of the same kind (quick or full, same seed):
    the cross-model report takes them in beside the models of this run."""
    try:
        config = json.loads((folder / "results.json").read_text())["config"]
    except (OSError, KeyError, ValueError, TypeError):
        return False
    return config.get("quick") == base.quick and config.get("seed") == seed


def fingerprint(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """What a kept model must share with a run that resumes it: every size of the run (quick or full, window
    included), the seed and the models studied (their results record the command naming them all)."""
    cfg = asdict(replace(config_from(args), model="", out=""))
    return {**{k: v for k, v in cfg.items() if k not in ("model", "out")}, "models": names}


def command_line(cfg: StudyConfig, models: list[str] | None) -> str:
    return ("scrub study" + (" --quick" if cfg.quick else "") + f" --seed {cfg.seed}"
            + "".join(f" --model {m}" for m in (models or [])))


def study_threads() -> int:
    """Torch threads for a stage of the run: the cores other processes leave free (1-minute load average of the
    machine, less the study's own threads), at least 1.
    On a busy 2-core machine two threads contend with the other work and run a forward pass ~10x slower
    than one (measured: 2.7 s against 0.25 s); OMP_NUM_THREADS, when set, decides instead."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = os.cpu_count() or 1
    try:
        busy = max(0.0, os.getloadavg()[0] - _OWN_LOAD[0])
    except OSError:
        busy = 0.0
    return max(1, min(cores, cores - int(busy + 0.5)))


_OWN_LOAD = [0.0]  # what this run adds to the load average (its threads, while it runs)


def main(argv: list[str] | None = None, *, model: HookedTransformer | None = None) -> int:
    """Run the study on each model (``model``: an already-loaded model for a single ``--model``), then write
    the cross-model report. Torch threads: ``study_threads()`` for the run, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(study_threads())
    try:
        return _main(argv, model=model)
    finally:
        torch.set_num_threads(before)
        _OWN_LOAD[0] = 0.0


def _main(argv: list[str] | None, *, model: HookedTransformer | None) -> int:
    args = build_parser().parse_args(argv)
    names = list(dict.fromkeys(args.model)) if args.model else shipped_models()
    if not names:
        raise OSError("no model to study: no shipped model in scrub/assets/ and no --model")
    if model is not None and len(names) != 1:
        raise ValueError("main(model=...) takes exactly one --model")
    base = StudyConfig.quick_config() if args.quick else StudyConfig()
    root = (Path(args.out) if args.out is not None else default_out(args.quick)).absolute()
    folders = [root / model_folder(n) for n in names]
    if len(set(folders)) != len(folders):
        raise ValueError(f"two models would share one folder under {root}: {', '.join(names)}")
    command = command_line(replace(base, seed=args.seed), args.model)
    if args.report_only and (missing := [str(f) for f in folders if not (f / "results.json").is_file()]):
        raise OSError(f"--report-only: no results.json in {', '.join(missing)}; run the study first")
    others = ([f for f in sorted(root.iterdir()) if f not in folders and compatible(f, base, args.seed)]
              if root.is_dir() else [])
    if args.resume and args.report_only:
        raise UsageError("--resume and --report-only: --report-only runs no model; pass one of them")
    summaries: list[dict] = []
    kind = fingerprint(args, names)  # what a kept model must share with this run
    try:
        with OutputFolder(root, "study") as staging:  # locked; replaced only when every model and the report are done
            store = open_store(root, kind, resume=args.resume, report_only=args.report_only)
            for name in [] if args.report_only else names:
                if args.resume and model_folder(name) in store.kept:
                    summaries.append(store.resume(model_folder(name), staging.work))
                else:
                    summaries.append(_study_one(args, name, root, staging.work, command, model))
                    store = store.keep(staging.work / model_folder(name), name, kind)
            cross = write_cross_report(staging.work, [staging.work / f.name for f in folders + others],
                                       command=command + (" --report-only" if args.report_only else ""))
    except BaseException as stop:  # Ctrl-C, SIGTERM or a failure after some models finished: they are kept
        found = ResumeStore.read(root)  # read back: a Ctrl-C held off while a model was kept ends that keep
        kept = found.models(kind) if found else []
        if not kept or args.report_only or isinstance(stop, SystemExit):
            raise
        what = f"{len(kept)} of {len(names)} models kept for --resume ({resume_line(args)})"
        if not isinstance(stop, Exception):  # Ctrl-C, SIGTERM: their one line says it
            raise PartlyKept(what) from stop
        print(f"scrub study: {what}", file=sys.stderr)  # a failure: its error line follows
        raise
    if not args.report_only:
        store.remove()  # every model is in the output folder now
    cross = root / cross.name
    print(f"wrote {cross}", file=sys.stderr)
    if args.json:
        if not summaries:
            summaries = [json.loads((f / "results.json").read_text()) for f in folders]
        out = summaries[0] if len(summaries) == 1 else {"models": summaries}  # one model: its summary itself
        print(json.dumps({**out, "cross_report": str(cross)}))
    return 0


def _study_one(args: argparse.Namespace, name: str, root: Path, work: Path, command: str,
               model: HookedTransformer | None) -> dict:
    """One model's study, written under ``work`` (the staged --out) and recorded as under ``root``."""
    from scrub.model.loading import load_model

    cfg = config_from(args, name)  # cfg.out: the model's folder under root
    if model is None:
        with contextlib.redirect_stdout(sys.stderr):
            model = load_model(name)
    results = run_study(model, cfg, command=command, out=work / model_folder(name))
    print(f"wrote {root / cfg.out / 'induction_study.md'} and {len(results.figures)} figures "
          f"in {results.elapsed:.0f} s", file=sys.stderr)
    return results.summary()


if __name__ == "__main__":
    raise SystemExit(main())
