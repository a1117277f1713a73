"""The REMIX ladder of the induction study (issue #11): Redwood's REMIX day-3 induction rungs, one by one, on the
model at hand, beside Redwood's numbers, and the refinements the query-key masks allow (this project's own).

Each rung resamples one part of the induction heads' inputs and claims every other input of the model in full
(``hypotheses._build.Remix``); loss recovered is measured against Redwood's induction baseline (every input of
the induction heads resampled, ``hypotheses/induction_baseline.py``), with two metrics (the next-token loss, and
the KL divergence from the clean run's predictions) and two scorings: the study's induction candidates (the current
token occurred earlier in the sequence) and REMIX-comparable scoring (the current token is a good induction
candidate, ``scrub.data.candidates.good_candidates``). All rungs of one dataset are evaluated together with the
baseline (``experiments._evaluate.scrub_metrics``: the draws of ``scrub.run``, common random numbers, both metrics
from one evaluation; 96 separate ``scrub.run`` calls per model would take about half an hour here).

Rungs whose claims the engine cannot evaluate yet (query-key masks before ``scrub.claims.masks`` and the engine support
land) are listed as skipped with the reason, not silently dropped. Results are plain dicts (``results.json``);
the per-model and cross-model reports render them with ``remix_lines`` and ``cross_remix_lines``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Callable

import torch
from transformer_lens import HookedTransformer

from experiments._evaluate import scrub_metrics
from hypotheses._build import Remix, remix_graph
from scrub.claims.hypothesis import Claim, validate
from scrub.data.batches import induction_candidates
from scrub.metrics import MetricName

REMIX_SOURCE = ("Redwood Research, REMIX day 3, \"Replicating Results on Induction Heads\" (github.com/redwoodresearch/"
                "remix_public, remix_d3_instructions.md; Chan et al. 2022, \"Causal scrubbing: results on induction "
                "heads\"): loss recovered on Redwood's own 2-layer attention-only model (OpenWebText, GPT-2 tokenizer, "
                "induction heads 1.5 and 1.6, previous-token head 0.0), scored at the positions whose current token is "
                "in their list of ~10,000 good induction candidates, against the baseline that resamples every input "
                "of the induction heads")
BASELINE = "induction_baseline"


@dataclass(frozen=True)
class Rung:
    """One row of the ladder: ``redwood`` is REMIX's loss recovered (None for this project's own rows); a rung
    with a file is ``hypotheses/<name>.py``, the others are built here from ``build``."""

    name: str
    label: str
    redwood: float | None
    file: bool = True
    build: Callable[[], Remix] | None = None  # called at build time (masks are imported only then)


def _masks():
    from scrub.claims import masks  # noqa: PLC0415 (query-key masks: optional until the engine accepts them)

    return masks


LADDER = (
    Rung("remix_v", "V reads only the token embedding", 0.90),
    Rung("remix_q", "Q reads only the token embedding", 0.51),
    Rung("remix_k", "K reads only the previous-token head (its own inputs intact)", 0.83),
    Rung("remix_k_prev_only", "K as above, the previous-token head's V through the previous position only", 0.82),
    Rung("remix_all", "V + Q + K at once", 0.37),
    Rung("remix_all_prev_only", "V + Q + K, the previous-token head's V through the previous position only", 0.37,
         file=False, build=lambda: Remix(v=True, q=True, k=True, prev_mask=_masks().previous_position())),
)
OWN = (  # this project's refinements (Goldowsky-Dill et al. 2023: a longer query-key window, a second role)
    Rung("remix_k_within2", "K: the previous-token head's V through keys t-2..t (within(2))", None, file=False,
         build=lambda: Remix(k=True, prev_mask=_masks().within(2))),
    Rung("remix_k_within4", "K: the previous-token head's V through keys t-4..t (within(4))", None, file=False,
         build=lambda: Remix(k=True, prev_mask=_masks().within(4))),
    Rung("remix_all_within4", "V + Q + K, the previous-token head's V through keys t-4..t", None, file=False,
         build=lambda: Remix(v=True, q=True, k=True, prev_mask=_masks().within(4))),
    Rung("remix_all_local4_v", "V + Q + K, second role in V: keys t-4..t pass values from every input", None,
         file=False, build=lambda: Remix(v=True, q=True, k=True, local=_masks().within(4), local_channels="v")),
    Rung("remix_all_local4", "V + Q + K, second role in Q, K and V: pairs within 4 keys read every input", None,
         file=False, build=lambda: Remix(v=True, q=True, k=True, local=_masks().within(4))),
    Rung("remix_all_k_embed", "V + Q + K, second role in K: K also reads the token embedding (duplicate-token "
         "matching)", None, file=False, build=lambda: Remix(v=True, q=True, k=True, k_embed=True)),
)
RUNGS = LADDER + OWN
SHORT = {"remix_v": "V", "remix_q": "Q", "remix_k": "K", "remix_k_prev_only": "K with the previous position only",
         "remix_all": "V + Q + K", "remix_all_prev_only": "V + Q + K with the previous position only"}
MODES = ("candidates", "good")  # the study's induction candidates; REMIX-comparable good candidates
METRICS: tuple[MetricName, ...] = ("loss", "kl")


def position_masks():
    from scrub.data.candidates import GoodCandidates  # noqa: PLC0415

    return (("candidates", induction_candidates), ("good", GoodCandidates.shipped()))


@dataclass(frozen=True)
class Built:
    rung: Rung
    claim: Claim
    description: str


@torch.no_grad()
def engine_applies_masks() -> bool:
    """Whether the evaluation path of the study (``scrub_metrics``) applies query-key masks: on a small random
    model, an edge that reads its input through no (query, key) pair must differ from the same edge unmasked.
    (A scrub whose hypotheses accept ``qk_mask`` before its engine evaluates it would silently ignore the
    masks; the masked rungs are then skipped, not reported with wrong numbers.)"""
    try:
        masks = _masks()
    except ImportError:
        return False
    from transformer_lens import HookedTransformerConfig  # noqa: PLC0415

    from scrub.claims.hypothesis import full_graph  # noqa: PLC0415

    cfg = HookedTransformerConfig(n_layers=2, n_heads=2, d_model=16, d_head=4, n_ctx=8, d_vocab=16, act_fn="gelu",
                                  attn_only=True, positional_embedding_type="shortformer", normalization_type="LN",
                                  seed=0, default_prepend_bos=False)
    model = HookedTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    plain = full_graph(model)
    masked = full_graph(model)
    masked.edges["embed", "1.0"]["qk_mask"] = masks.no_keys()  # (embed enters 1.0 through q, k and v)
    claims = tuple(replace(validate(g, model), name=n) for n, g in (("plain", plain), ("masked", masked)))
    tokens = torch.randint(0, 16, (6, 8), generator=gen)  # [6, 8]
    losses = scrub_metrics(model, claims, tokens, (("all", lambda t: torch.ones_like(t, dtype=torch.bool)),),
                           seed=0, batch_size=6)["loss"]
    return not torch.allclose(losses.total[0], losses.total[1])


def _uses_masks(claim: Claim) -> bool:
    return any(getattr(e, "qk_mask", None) is not None for e in claim.edges)


def build_rungs(model: HookedTransformer, roles, load: Callable[[str], tuple[Claim, str]]
                ) -> tuple[list[Built], list[dict]]:
    """The claims of every rung the engine accepts, and the skipped ones with the reason. ``load(stem)`` loads
    ``hypotheses/<stem>.py`` with the study's roles and returns (claim, docstring)."""
    built, skipped = [], []
    masks_work: bool | None = None
    for rung in RUNGS:
        try:
            if rung.file:
                claim, doc = load(rung.name)
            else:
                assert rung.build is not None, rung.name  # a rung is a file or a builder
                spec = rung.build()
                claim = validate(remix_graph(model, roles, spec), model)
                args = ", ".join(f"{f.name}={getattr(spec, f.name)}" for f in fields(spec) if getattr(spec, f.name))
                doc = f"{rung.label}. Built by the study (experiments/_remix.py): hypotheses._build.Remix({args})."
        except (ImportError, ValueError, TypeError, AttributeError) as err:  # masks not there or not accepted yet
            skipped.append({"name": rung.name, "label": rung.label, "reason": " ".join(str(err).split())[:300]})
            continue
        if _uses_masks(claim):
            masks_work = engine_applies_masks() if masks_work is None else masks_work
            if not masks_work:
                skipped.append({"name": rung.name, "label": rung.label, "reason": "this scrub's engine accepts "
                                "query-key masks but does not apply them yet (a probe gave the same losses with and "
                                "without a mask)"})
                continue
        built.append(Built(rung, replace(claim, name=rung.name), " ".join(doc.split())))
    return built, skipped


def run_remix(model: HookedTransformer, roles, baseline: Claim, datasets: dict[str, torch.Tensor],
              load: Callable[[str], tuple[Claim, str]], *, seed: int, batch_size: int, n_bootstrap: int,
              step: Callable[[], None] | None = None) -> dict:
    """Every rung on every dataset (``{"natural": tokens, "rrt": tokens}``), both metrics, both scorings, against
    ``baseline`` (the induction baseline claim). Returns the JSON-ready section of ``results.json``."""
    built, skipped = build_rungs(model, roles, load)
    metrics = METRICS
    claims = (replace(baseline, name=BASELINE),) + tuple(b.claim for b in built)
    rows = []
    for data, tokens in datasets.items():
        losses = scrub_metrics(model, claims, tokens, position_masks(), seed=seed, batch_size=batch_size,
                               metrics=metrics, step=step)
        for metric, many in losses.items():
            for b in built:
                for mode in MODES:
                    r = many.recovery(b.rung.name, BASELINE, mode, n_bootstrap=n_bootstrap, seed=seed)
                    row = {k: v for k, v in asdict(r).items() if k != "per_example"}
                    rows.append({**row, "data": data, "metric": metric})
    return {"rungs": [{"name": b.rung.name, "label": b.rung.label, "redwood": b.rung.redwood, "own": b.rung in OWN,
                       "file": f"hypotheses/{b.rung.name}.py" if b.rung.file else "", "n_paths": b.claim.n_paths(),
                       "description": b.description} for b in built],
            "rows": rows, "skipped": skipped, "metrics": list(metrics), "modes": list(MODES), "source": REMIX_SOURCE}


# --- report ------------------------------------------------------------------------------------------------

def remix_row(remix: dict, name: str, data: str, mode: str, metric: str) -> dict | None:
    return next((r for r in remix.get("rows", []) if (r["hypothesis"], r["data"], r["positions"], r["metric"])
                 == (name, data, mode, metric)), None)


def _fmt(r: dict | None) -> str:
    return "—" if r is None else f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def _redwood(rung: dict) -> str:
    return f"{rung['redwood']:.2f}" if rung.get("redwood") is not None else "— (ours)"


def remix_lines(remix: dict | None) -> list[str]:
    """The per-model report's REMIX section (Markdown lines) from ``results.json``'s ``remix`` entry."""
    if not remix or not remix.get("rungs"):
        return ["Not computed."] + _skipped(remix or {})
    metrics = remix.get("metrics", ["loss"])
    L = [f"Redwood's numbers: {remix.get('source', REMIX_SOURCE)}. **Their model is not this one**: the column is "
         "context, not a target. Every row here is claimed against the induction baseline (0) and the full model "
         "(1). *Candidates*: the study's induction candidates (the current token occurred earlier in the sequence); "
         "*good*: REMIX-comparable scoring, the current token is a good induction candidate "
         "(`scrub.data.candidates.good_candidates`: a list chosen on the shipped validation stream with the scored "
         "text left out, see its docstring; about 17% of this tokenizer's tokens against REMIX's ~20% of GPT-2's). KL: "
         "KL divergence from the clean run's predictions, recovered = (KL_baseline - KL_scrubbed) / KL_baseline. "
         "Rows marked *ours* are this project's refinements, not Redwood's.", ""]
    for metric in metrics:
        name = "loss" if metric == "loss" else "KL"
        L += [f"**{name} recovered** (95% bootstrap intervals over sequences):", "",
              "| rung | Redwood (their model, loss) | natural, candidates | natural, good | RRT, candidates | "
              "RRT, good |",
              "|---|---:|---|---|---|---|"]
        for rung in remix["rungs"]:
            cells = [_fmt(remix_row(remix, rung["name"], d, m, metric))
                     for d in ("natural", "rrt") for m in ("candidates", "good")]
            where = f"`{rung['file']}`" if rung["file"] else f"`{rung['name']}` (built by the study)"
            L.append(f"| {rung['label']} ({where}) | {_redwood(rung)} | " + " | ".join(cells) + " |")
        L.append("")
    if "kl" not in metrics:
        L += ["KL columns: not computed (this run's scrub has no `scrub.metrics.token_kl`); rerun the study once it "
              "does.", ""]
    first = remix["rungs"][0]["name"]
    gaps = [f"{d}, {m}: {r['loss_baseline'] - r['loss_clean']:.4f} nats over {r['n_tokens']} tokens"
            for d in ("natural", "rrt") for m in ("candidates", "good")
            if (r := remix_row(remix, first, d, m, "loss")) is not None]
    L += ["Induction baseline - clean loss at the scored positions (the denominator of every loss row): "
          + "; ".join(gaps) + ".", ""]
    L += ["What the numbers say (loss, natural text at good candidates unless said otherwise):", ""] + _findings(remix)
    L += ["", "What differs from REMIX's setting:", ""] + [f"- {d}" for d in DIFFERENCES]
    L += ["", "What each rung claims on this model:", ""]
    L += [f"- `{r['name']}` ({r['n_paths']} paths){' — ours' if r['own'] else ''}: {r['description']}"
          for r in remix["rungs"]]
    return L + _skipped(remix)


DIFFERENCES = (
    "The model and data: Redwood's 2-layer attention-only model on OpenWebText (GPT-2 tokenizer, 300-token "
    "sequences, two induction heads and one previous-token head); here a model trained on Shakespeare (2,048 "
    "tokens, 256-token windows of held-out plays, and repeated random tokens), with the heads its roles name.",
    "Scoring: REMIX's fixed list of ~10,000 GPT-2 tokens chosen on OpenWebText; here a list chosen on the shipped "
    "validation stream by the statistic of `scrub.data.candidates` (about 17% of the vocabulary), with the scored "
    "batch's own text left out, so it can differ slightly from batch to batch.",
    "Draws: REMIX runs every scrubbed path on one other sequence (`toks_int_var_other`), shared by both induction "
    "heads (one node, `a1.ind`) and every rung's paths; here every hypothesis node draws its own other sequence per "
    "datum (scrub's default unit), so the two induction heads, and the previous-token head's masked copy, read "
    "different other sequences. REMIX samples 2,048-4,096 sequences from 104,091 and draws the other sequences from "
    "all of them; here a fixed set of windows, the other sequences drawn from that set.",
    "The previous-position rung: REMIX splits the previous-token head's output as attn_probs * mask + attn_probs * "
    "(1 - mask) and runs the second half, attention pattern included, on the other sequence; here the mask is on "
    "the head's V input only (`scrub.claims.masks`), so the attention pattern stays the clean one and only the values "
    "passed through the other keys are resampled.",
    "Both metrics: REMIX reports the loss only; the KL rows are this project's.",
    "Deeper models: \"the token embedding\" is the model's (with mlp.0 reading the embedding where the roles say "
    "so), and the previous-token head keeps all its own inputs (earlier heads and MLPs included), as REMIX's "
    "layer-0 head does trivially.",
)


def _findings(remix: dict) -> list[str]:
    """Generated bullets: each REMIX rung against Redwood's number, and what the refinements changed."""
    rungs = {r["name"]: r for r in remix["rungs"]}
    row = lambda n, d="natural", m="good": remix_row(remix, n, d, m, "loss")  # noqa: E731
    out = []
    for r in LADDER:
        x = row(r.name)
        if x is None or r.redwood is None:
            continue
        inside = x["ci_low"] <= r.redwood <= x["ci_high"]
        rrt = row(r.name, "rrt", "candidates")
        out.append(f"- {SHORT.get(r.name, r.name)}: {_fmt(x)} against Redwood's {r.redwood:.2f} "
                   + ("(inside our interval)" if inside else
                      f"(our interval is {'above' if x['ci_low'] > r.redwood else 'below'} it)")
                   + (f"; on RRT {_fmt(rrt)}" if rrt else "") + ".")
    k, prev = row("remix_k"), row("remix_k_prev_only")
    if k and prev:
        drop = k["value"] - prev["value"]
        text = (f"- Reading only the previous position {'lowers' if drop >= 0 else 'raises'} the K rung by "
                f"{abs(drop):.3f} here ({k['value']:.3f} -> {prev['value']:.3f}; Redwood: 0.83 -> 0.82)")
        for name, keys in (("remix_k_within2", "t-2..t"), ("remix_k_within4", "t-4..t")):
            w = row(name)
            if w is not None:
                text += f"; reading keys {keys} instead (ours), {_fmt(w)}"
        out.append(text + ".")
    base = row("remix_all")
    for name in ("remix_all_within4", "remix_all_local4_v", "remix_all_local4", "remix_all_k_embed"):
        w = row(name)
        if base and w is not None:
            out.append(f"- {rungs[name]['label']} (ours): {_fmt(w)}, {w['value'] - base['value']:+.3f} against "
                       f"V + Q + K ({base['value']:.3f}).")
    return out or ["- No rung was evaluated."]


def _skipped(remix: dict) -> list[str]:
    if not remix.get("skipped"):
        return []
    return ["", "Not run (the engine did not accept the claim in this run): " + "; ".join(
        f"`{s['name']}` ({s['reason']})" for s in remix["skipped"]) + "."]


def cross_remix_lines(results: list[tuple[str, dict]]) -> list[str]:
    """The cross-model REMIX table: natural text at both scorings and RRT at induction candidates, per model."""
    have = [(m, r["remix"]) for m, r in results if r.get("remix") and r["remix"].get("rungs")]
    if not have:
        return ["No model's results have the REMIX ladder yet (rerun `scrub study`)."]
    names = list(dict.fromkeys(rung["name"] for _, x in have for rung in x["rungs"]))
    rungs = {rung["name"]: rung for _, x in have for rung in x["rungs"]}
    L = ["Redwood's REMIX day-3 rungs on each model, against the induction baseline (Redwood's numbers: their own "
         "model, scored at their good induction candidates; see each model's report for the sources, the KL columns "
         "and the claims). *Good*: REMIX-comparable scoring (`scrub.data.candidates.good_candidates`); *candidates*: "
         "the study's induction candidates. Rows marked *ours* are this project's refinements.", ""]
    for metric in ("loss", "kl"):
        if not any(metric in x.get("metrics", []) for _, x in have):
            continue
        L += [f"**{'loss' if metric == 'loss' else 'KL'} recovered**:", "",
              "| rung | Redwood | " + " | ".join(
                  f"`{m}` natural, good | `{m}` natural, candidates | `{m}` RRT, candidates" for m, _ in have) + " |",
              "|---|---:|" + "---|---|---|" * len(have)]
        for n in names:
            cells = [_fmt(remix_row(x, n, d, mode, metric)) for _, x in have
                     for d, mode in (("natural", "good"), ("natural", "candidates"), ("rrt", "candidates"))]
            L.append(f"| {rungs[n]['label']} | {_redwood(rungs[n])} | " + " | ".join(cells) + " |")
        L.append("")
    return L


def remix_figure(remix: dict | None, path, *, title: str):
    """Loss recovered of every rung (natural text at good candidates and at the study's candidates, RRT at
    candidates) with Redwood's numbers as marks; values and intervals cut at [-1, 2] (said in the title).
    None when there is nothing to draw."""
    from scrub.views.plots import recovery_ladder  # noqa: PLC0415

    if not remix or not remix.get("rungs") or not remix.get("rows"):
        return None
    series = (("natural", "good"), ("natural", "candidates"), ("rrt", "candidates"))
    names = [r["name"] for r in remix["rungs"]]
    nan = {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    rows = [[remix_row(remix, n, d, m, "loss") or nan for n in names] for d, m in series]
    t = lambda key: torch.tensor([[r[key] for r in rs] for rs in rows]).clamp(-1.0, 2.0)  # noqa: E731
    labels = [r["label"] + (" (ours)" if r["own"] else "") for r in remix["rungs"]]
    return recovery_ladder(labels, t("value"), t("ci_low"), t("ci_high"),
                           ["natural text, good candidates", "natural text, study candidates", "RRT, study candidates"],
                           path, title=title + " (cut at [-1, 2])", reference=[r["redwood"] for r in remix["rungs"]],
                           reference_label="Redwood REMIX (their model)")


def remix_sentence(remix: dict | None) -> str:
    """One sentence for the cross-model conclusion: every REMIX rung on natural text at good candidates (loss
    recovered, Redwood's number beside it), and what this project's refinements changed there."""
    if not remix or not remix.get("rungs"):
        return ""
    rungs = {r["name"]: r for r in remix["rungs"]}

    def value(name: str, data: str = "natural") -> str:
        r = remix_row(remix, name, data, "good", "loss")
        return "—" if r is None else f"{r['value']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"

    theirs = [f"{SHORT.get(r.name, r.name)} {value(r.name)} (Redwood {r.redwood:.2f})"
              for r in LADDER if r.name in rungs and r.redwood is not None]
    text = ("Redwood's REMIX rungs on this model (loss recovered against the induction baseline, natural text at good "
            "induction candidates): " + "; ".join(theirs) + ". ")
    ours = [f"{rungs[r.name]['label']}: {value(r.name)}" for r in OWN if r.name in rungs]
    if ours:
        text += "This project's refinements there: " + "; ".join(ours) + ". "
    return text
