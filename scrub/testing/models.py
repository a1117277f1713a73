"""Tiny random models over every architecture scrub supports, described by a frozen ``ModelSpec``.

A spec names one point of the supported space (positions standard, shortformer or rotary; LN, LNPre, RMS,
RMSPre or no norm; no MLP, a plain or a gated MLP; parallel attention and MLP; grouped-query attention), and
``build`` makes a random-init HookedTransformer from it with large weights, so that resampling visibly moves
the logits. The model remembers its spec (``spec_of``), so a failing property prints the line that rebuilds it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields, replace
from enum import Enum

import torch
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from scrub.errors import ScrubError

SPEC_ATTRIBUTE = "scrub_testing_spec"  # where a built model keeps its spec (an instance attribute)


class ModelSpecError(ScrubError):
    """A ``ModelSpec`` that describes no model TransformerLens can build."""


class Positions(str, Enum):
    """How positions enter: added to the residual (standard), to q and k only (shortformer), or rotated (rotary)."""

    STANDARD = "standard"
    SHORTFORMER = "shortformer"
    ROTARY = "rotary"


class Norm(str, Enum):
    """The normalisation of every block and of the final residual (NONE: no normalisation at all)."""

    LN = "LN"
    LN_PRE = "LNPre"
    RMS = "RMS"
    RMS_PRE = "RMSPre"
    NONE = "none"


class MlpKind(str, Enum):
    """Whether blocks have an MLP, and which kind."""

    NONE = "none"
    PLAIN = "plain"
    GATED = "gated"


@dataclass(frozen=True)
class ModelSpec:
    """One tiny model: its architecture, sizes, weight seed and dtype. ``repr`` is the code that rebuilds it."""

    n_layers: int = 2
    n_heads: int = 3
    positions: Positions = Positions.SHORTFORMER
    norm: Norm = Norm.LN
    mlp: MlpKind = MlpKind.NONE
    parallel: bool = False  # attention and MLP read the same residual (needs an MLP)
    n_kv_heads: int | None = None  # grouped-query attention: this many key/value heads
    rotary_dim: int | None = None  # rotary: rotated dimensions per head (None: all of d_head)
    d_head: int = 4
    d_vocab: int = 20
    n_ctx: int = 12
    seed: int = 0
    scale: float = 0.5  # weight standard deviation: large, so that resampling moves the logits
    float64: bool = False

    def __post_init__(self) -> None:
        if self.parallel and self.mlp == MlpKind.NONE:
            raise ModelSpecError("ModelSpec: parallel attention and MLP blocks need an MLP (mlp='plain' or 'gated')")
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ModelSpecError(f"ModelSpec: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")

    def __repr__(self) -> str:
        default = ModelSpec()
        changed = [f"{f.name}={_code(getattr(self, f.name))}" for f in fields(self)
                   if getattr(self, f.name) != getattr(default, f.name)]
        return f"ModelSpec({', '.join(changed)})"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.float64 else torch.float32

    def config(self) -> HookedTransformerConfig:
        """The TransformerLens config of this spec (d_model 16; d_mlp 24 with an MLP)."""
        gated = self.mlp == MlpKind.GATED
        return HookedTransformerConfig(
            n_layers=self.n_layers, n_heads=self.n_heads, d_model=16, d_head=self.d_head, n_ctx=self.n_ctx,
            d_vocab=self.d_vocab, act_fn="silu" if gated else "gelu", attn_only=self.mlp == MlpKind.NONE,
            d_mlp=None if self.mlp == MlpKind.NONE else 24, positional_embedding_type=self.positions.value,
            normalization_type=None if self.norm == Norm.NONE else self.norm.value, seed=None,
            default_prepend_bos=False, dtype=self.dtype, n_key_value_heads=self.n_kv_heads,
            parallel_attn_mlp=self.parallel, gated_mlp=gated,
            rotary_dim=self.rotary_dim if self.positions == Positions.ROTARY else None,
        )

    def build(self) -> HookedTransformer:
        """A random-init model of this spec, in eval mode, that remembers its spec (``spec_of``)."""
        model = HookedTransformer(self.config()).eval()
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * self.scale)
        object.__setattr__(model, SPEC_ATTRIBUTE, self)  # plain attribute: not a parameter or submodule
        return model

    def with_float64(self) -> ModelSpec:
        return replace(self, float64=True)


def _code(value: object) -> str:
    return repr(value.value) if isinstance(value, Enum) else repr(value)


def spec_of(model: HookedTransformer) -> ModelSpec | None:
    """The spec a model was built from by ``ModelSpec.build`` (None for any other model)."""
    spec = getattr(model, SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, ModelSpec) else None


def tiny_model(**spec) -> HookedTransformer:
    """``ModelSpec(**spec).build()``: e.g. ``tiny_model(n_layers=3, mlp="gated", positions="rotary")``."""
    coerced = {"positions": Positions, "norm": Norm, "mlp": MlpKind}
    return ModelSpec(**{k: coerced[k](v) if k in coerced else v for k, v in spec.items()}).build()


def random_tokens(n: int = 8, seq: int = 12, *, seed: int = 0, vocab: int = 20) -> Tensor:
    """Seeded token ids below ``vocab`` (a spec's default vocabulary): [n, seq]."""
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))


def architectures() -> tuple[ModelSpec, ...]:
    """One spec per value of every architecture axis, small enough for the naive reference: the fixed set a
    test runs on every supported kind of model."""
    return (
        ModelSpec(positions=Positions.STANDARD),
        ModelSpec(n_heads=2, mlp=MlpKind.PLAIN),
        ModelSpec(n_heads=2, positions=Positions.ROTARY, rotary_dim=2, norm=Norm.RMS, n_kv_heads=1,
                  mlp=MlpKind.GATED),
        ModelSpec(n_heads=2, positions=Positions.ROTARY, norm=Norm.LN_PRE, mlp=MlpKind.PLAIN, parallel=True),
        ModelSpec(n_heads=2, positions=Positions.STANDARD, norm=Norm.NONE, n_kv_heads=1, mlp=MlpKind.GATED,
                  parallel=True, float64=True),
        ModelSpec(n_heads=2, norm=Norm.RMS_PRE, mlp=MlpKind.PLAIN, parallel=True),
    )


def float64_copy(model: HookedTransformer) -> HookedTransformer:
    """A float64 copy of ``model`` (itself if it is float64 already), keeping its spec: the oracles compare two
    summation orders of the same maths, which float32 alone moves by ~1e-3 on large logits."""
    if model.cfg.dtype == torch.float64:
        return model
    cfg = copy.deepcopy(model.cfg)
    cfg.dtype = torch.float64
    cfg.device = str(next(model.parameters()).device)
    wide = HookedTransformer(cfg).eval()
    wide.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    spec = spec_of(model)
    if spec is not None:
        object.__setattr__(wide, SPEC_ATTRIBUTE, spec.with_float64())
    return wide
