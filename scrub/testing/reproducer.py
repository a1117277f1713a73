"""What a failed property prints: the model, the claim as ``add_path`` lines, the seed and the data.

``Reproducer.text()`` is code where it can be (a ``ModelSpec`` model, the kit's features and masks, small token
batches) and a description otherwise (a user's model is named by its config, a user's function by its name).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from torch import Tensor
from transformer_lens import HookedTransformer

from scrub.claims.features import Feature
from scrub.claims.hypothesis import Claim, ClaimEdge
from scrub.claims.masks import QKMask
from scrub.engine.treeify import SamplingOptions
from scrub.testing.models import spec_of

MAX_LITERAL = 256  # token batches up to this many ids are printed as a tensor literal
CONFIG_FIELDS = ("n_layers", "n_heads", "d_model", "d_head", "d_mlp", "attn_only", "positional_embedding_type",
                 "normalization_type", "n_key_value_heads", "parallel_attn_mlp", "gated_mlp", "act_fn", "rotary_dim",
                 "d_vocab", "n_ctx", "dtype")


def model_line(model: HookedTransformer) -> str:
    """``model = ModelSpec(...).build()`` for a kit model, else the config fields that say its architecture."""
    spec = spec_of(model)
    if spec is not None:
        return f"model = {spec!r}.build()"
    cfg = model.cfg
    return "model: HookedTransformerConfig(" + ", ".join(f"{f}={getattr(cfg, f, None)!r}" for f in CONFIG_FIELDS) + ")"


def _function(fn: object) -> str:
    """Code for a kit function (its repr), or ``<name from module>`` for any other."""
    if type(fn).__module__ == "scrub.testing.pieces":
        return repr(fn)
    return f"<{getattr(fn, '__qualname__', type(fn).__name__)} from {getattr(fn, '__module__', '?')}>"


def feature_code(feature: Feature) -> str:
    if type(feature.fn).__module__ == "scrub.testing.pieces":
        return f"feature({feature.fn!r})"
    flag = ", per_position=True" if feature.per_position else ""
    return f"Feature({feature.name!r}, {_function(feature.fn)}{flag})"


def mask_code(mask: QKMask) -> str:
    if type(mask.fn).__module__ == "scrub.testing.pieces":
        return f"qk_mask({mask.fn!r})"
    if type(mask.fn).__module__ == "scrub.claims.masks" or getattr(mask.fn, "__module__", "") == "scrub.claims.masks":
        return mask.name if "(" in mask.name else f"{mask.name}()"
    return f"QKMask({mask.name!r}, {_function(mask.fn)})"


def positions_code(fn: object) -> str:
    return _function(getattr(fn, "fn", fn))  # unwrap hypothesis.CheckedPositions


def claim_lines(claim: Claim) -> list[str]:
    """The claim as code: ``g.add_node`` for aliases and features, one ``add_path`` per plain edge (its channels
    merged) and one ``g.add_edge`` per edge with ``positions`` or a ``qk_mask``."""
    lines = ["g = nx.DiGraph()"]
    for node in claim.nodes:
        attrs = []
        if node.id != str(node.component):
            attrs.append(f"component={str(node.component)!r}")
        if node.feature is not None:
            attrs.append(f"feature={feature_code(node.feature)}")
        if attrs:
            lines.append(f"g.add_node({node.id!r}, {', '.join(attrs)})")
    grouped: dict[tuple[str, str], list[ClaimEdge]] = {}
    for edge in claim.edges:
        grouped.setdefault((edge.source, edge.target), []).append(edge)
    for (source, target), edges in grouped.items():
        via = "".join(e.channel.value for e in edges if e.channel.value != "in")
        step = f"({target!r}, {via!r})" if via else repr(target)
        extra = _edge_extras(edges)
        if extra:
            lines.append(f"g.add_edge({source!r}, {target!r}{f', via={via!r}' if via else ''}, {extra})")
        else:
            lines.append(f"add_path(g, {source!r}, {step})")
    return lines


def _edge_extras(edges: list[ClaimEdge]) -> str:
    positions = edges[0].positions
    if positions is not None:
        return f"positions={positions_code(positions)}"
    masks = {e.channel.value: e.qk_mask for e in edges if e.qk_mask is not None}
    if not masks:
        return ""
    if len(masks) == len(edges) and len({id(m) for m in masks.values()}) == 1:
        return f"qk_mask={mask_code(next(iter(masks.values())))}"
    return "qk_mask={" + ", ".join(f"{c!r}: {mask_code(m)}" for c, m in masks.items() if m is not None) + "}"


def tokens_code(tokens: Tensor) -> str:
    """``tokens = torch.tensor([...])`` for a small batch, else its shape and first row."""
    if tokens.numel() <= MAX_LITERAL:
        return f"tokens = torch.tensor({tokens.tolist()})  # [{tokens.shape[0]}, {tokens.shape[1]}]"
    return f"tokens: shape {list(tokens.shape)}, first row {tokens[0].tolist()}"


def options_code(options: SamplingOptions) -> str:
    parts = [f"{k}={v.value!r}" if isinstance(v, Enum) else f"{k}={v!r}" for k, v in vars(options).items()
             if v != getattr(SamplingOptions(), k)]
    return f"SamplingOptions({', '.join(parts)})"


@dataclass(frozen=True)
class Reproducer:
    """The inputs of one property check, printable as the lines that rerun it."""

    model: str
    claim: tuple[str, ...]
    seed: int
    tokens: str
    options: str = "SamplingOptions()"

    @classmethod
    def of(cls, model: HookedTransformer, claim: Claim | None, tokens: Tensor, seed: int,
           options: SamplingOptions = SamplingOptions()) -> Reproducer:
        lines = tuple(claim_lines(claim)) if claim is not None else ()
        return cls(model_line(model), lines, seed, tokens_code(tokens), options_code(options))

    def text(self) -> str:
        body = [self.model, *self.claim, self.tokens, f"seed = {self.seed}", f"options = {self.options}"]
        return "reproducer:\n" + "\n".join(f"    {line}" for line in body)


def fail(what: str, reproducer: Reproducer) -> AssertionError:
    """The AssertionError of a broken contract: what broke, then the reproducer."""
    return AssertionError(f"{what}\n{reproducer.text()}")
