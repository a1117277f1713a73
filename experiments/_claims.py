"""The study's claims: the hypothesis files of its ladder (imported as ``hypotheses.<stem>``) built with the
study's head roles, the two claims it builds itself for models with MLPs, each behavioral head's mechanism and
baseline, and the repeated-random-token previous-token scores the report shows beside the roles."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, replace

import torch
from transformer_lens import HookedTransformer

from experiments._results import K_VIA_MLP0, OTHER_EMBEDDING, HypothesisInfo, claimed_inputs
from hypotheses._build import Mechanism, claim_k_via_mlp0, induction_baseline, mechanism_graph
from hypotheses._heads import N_SEQUENCES, SEED
from scrub.claims.hypothesis import Claim, validate
from scrub.data.batches import repeated_random_tokens
from scrub.heads.scores import attention_patterns, previous_token_score

HYPOTHESES = (  # (file stem in hypotheses/, label), in ladder order
    ("full", "full graph"),
    ("induction_v_only", "V only"),
    ("induction_q_only", "Q only"),
    ("induction_k_only", "K only"),
    ("induction_minimal", "minimal mechanism (Q+K+V)"),
    ("induction_prev_heads", "+ prev-token-like heads into K (ours)"),  # refinements: this project's, not Redwood's
    ("induction_positions", "+ positions into Q/K (ours)"),
    ("induction_long_prefix", "+ longer-prefix heads into K (ours)"),
    ("induction_layer0_qv", "+ other earlier heads/MLPs into Q/V (ours)"),
    ("induction_direct_k", "+ embedding into K (ours)"),
    ("induction_restricted", "+ all K/V at no-match keys (ours)"),
    ("induction_refined", "all refinements (ours)"),
    ("induction_behavioral", "behavioral heads only"),
    ("induction_baseline", "Redwood induction baseline"),
    ("empty", "empty"),
)
# (+ OTHER_EMBEDDING, the minimal mechanism with the other choice of "token embedding", and K_VIA_MLP0, the
# previous-token heads through mlp.0 into K: built here for models with MLPs, after the minimal mechanism)

def load_claim(stem: str, model: HookedTransformer, roles) -> tuple[Claim, HypothesisInfo]:
    """Import ``hypotheses.<stem>`` and build its graph with the study's roles (one score computation)."""
    module = importlib.import_module(f"hypotheses.{stem}")
    takes_roles = "roles" in inspect.signature(module.hypothesis).parameters
    graph = module.hypothesis(model, roles) if takes_roles else module.hypothesis(model)
    claim = validate(graph, model, origin=str(module.__file__))
    doc = (module.__doc__ or "").strip()
    return claim, HypothesisInfo(stem, "", doc, claim.n_paths(), f"hypotheses/{stem}.py", graph,
                                 claimed_inputs(graph, roles, model))


def other_embedding_claim(model: HookedTransformer, roles) -> tuple[Claim, HypothesisInfo]:
    """The minimal mechanism with the other "token embedding": with mlp.0 if the roles left it out, without
    it if they put it in."""
    other = ("embed",) if "mlp.0" in roles.embedding else ("embed", "mlp.0")
    flipped = replace(roles, embedding=other)
    graph = mechanism_graph(model, flipped)
    claim = validate(graph, model)
    what = ("embedding and mlp.0 (reading the embedding only)" if "mlp.0" in other
            else "embedding alone, mlp.0 not claimed")
    label = "minimal, token embedding " + ("+ mlp.0" if "mlp.0" in other else "without mlp.0") + " (ours)"
    doc = (f"The minimal mechanism with the other choice of token embedding than the roles made: wherever it "
           f"claims the token embedding, this one claims the {what}. Built by the study "
           f"(experiments/induction_study.py), not a hypothesis file.")
    return claim, HypothesisInfo(OTHER_EMBEDDING, label, doc, claim.n_paths(), "", graph,
                                 claimed_inputs(graph, roles, model))


@dataclass(frozen=True)
class RrtScores:
    previous_token: torch.Tensor  # [n_layers, n_heads]


def rrt_previous_token(model: HookedTransformer) -> RrtScores:
    """Previous-token scores on the repeated random tokens of ``scrub.heads.scores.head_scores(data="rrt")`` (same
    batch and seed), without recomputing the scores that do not depend on that batch."""
    length = min(25, (model.cfg.n_ctx - 1) // 4)
    rrt = repeated_random_tokens(N_SEQUENCES, length, 4, seed=SEED, vocab_size=model.cfg.d_vocab,
                                 exclude_common=model.cfg.d_vocab // 20)  # [n, 1 + 4L]
    return RrtScores(previous_token_score(attention_patterns(model, rrt)))


def k_via_mlp0_claim(model: HookedTransformer, roles) -> tuple[Claim, HypothesisInfo]:
    """The minimal mechanism plus the route layer-0 previous-token-like heads -> mlp.0 -> induction head K."""
    graph = claim_k_via_mlp0(mechanism_graph(model, roles), model, roles)
    claim = validate(graph, model)
    doc = ("The minimal mechanism, and K also reads a copy of mlp.0 that reads the token embedding and the layer-0 "
           "previous-token-like heads (each as the mechanism's copy: V the token embedding, Q/K positions): the "
           "previous token can reach K through the first MLP. Built by the study "
           "(hypotheses._build.claim_k_via_mlp0), not a hypothesis file.")
    return claim, HypothesisInfo(K_VIA_MLP0, "+ prev-token heads through mlp.0 into K (ours)", doc, claim.n_paths(), "",
                                 graph, claimed_inputs(graph, roles, model))


def study_claims(model: HookedTransformer, roles) -> tuple[list[Claim], list[HypothesisInfo], list[Claim]]:
    """The ladder's claims in ``HYPOTHESES`` order (with the two built for models with MLPs after the minimal
    one), their descriptions, and each behavioral head's mechanism and baseline."""
    infos, claims = [], []
    for stem, label in HYPOTHESES:
        claim, info = load_claim(stem, model, roles)
        claims.append(replace(claim, name=stem))
        infos.append(replace(info, label=label))
        if stem == "induction_minimal" and roles.mlp0_token_share is not None:
            for claim, info in (other_embedding_claim(model, roles), k_via_mlp0_claim(model, roles)):
                claims.append(replace(claim, name=info.name))
                infos.append(info)
    head_claims = []
    for head in roles.behavioral_receivers():
        for name, graph in ((f"mechanism {head}", mechanism_graph(model, roles, Mechanism(), (head,))),
                            (f"baseline {head}", induction_baseline(model, roles, (head,)))):
            head_claims.append(replace(validate(graph, model), name=name))
    return claims, infos, head_claims
