"""Hook names: every kind ``hook_name`` renders is a real TransformerLens hook point."""

from __future__ import annotations

import copy

import pytest

from scrub.claims.sites import Embed, Head, Logits, Mlp, Pos, SiteError, hook_name
from tests.helpers import tiny_model


def test_every_rendered_hook_name_exists_in_a_real_model():
    model = copy.deepcopy(tiny_model(attn_only=False, pos="standard"))
    model.cfg.use_split_qkv_input = True
    model.cfg.use_hook_mlp_in = True
    model.setup()
    head, mlp = Head(1, 2), Mlp(0)
    names = [hook_name(Embed()), hook_name(Pos()), hook_name(head), hook_name(mlp), hook_name(mlp, "mlp_in")]
    names += [hook_name(head, kind) for kind in ("pattern", "q", "k", "v", "q_input", "k_input", "v_input",
                                                  "resid_pre", "resid_post")]
    names += [hook_name(mlp, "resid_pre"), hook_name(mlp, "resid_post")]
    missing = [n for n in names if n not in model.hook_dict]
    assert not missing


def test_a_kind_a_component_does_not_have_is_named():
    for component, kind in ((Logits(), "out"), (Embed(), "pattern"), (Mlp(0), "q")):
        with pytest.raises(SiteError, match="no TransformerLens hook"):
            hook_name(component, kind)
