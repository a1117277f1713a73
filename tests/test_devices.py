"""GPU readiness (issue #20): the engine creates every tensor where it means to. A torch function mode records
each tensor factory call made from scrub's own code without an explicit ``device=`` during ``scrub.run``,
``patch_matrix`` and ``scrub.discover``: on a CPU-only machine such a call works by accident (the default
device is the CPU) and on a GPU it leaves a tensor behind on the CPU. A model on the meta device is refused."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
import torch
from torch.overrides import TorchFunctionMode

import scrub
from scrub.claims.masks import previous_position, within
from scrub.engine.treeify import SamplingOptions, Unit
from scrub.errors import ScrubError
from scrub.patching.paths import every_path_to_logits, make_metric, patch_effects, patch_matrix
from tests.helpers import partial_graph, random_tokens, tiny_model

FACTORIES = {getattr(torch, name) for name in (
    "zeros", "ones", "empty", "full", "arange", "tensor", "as_tensor", "randint", "randperm", "rand", "randn", "eye",
    "linspace")}


class FactoryCalls(TorchFunctionMode):
    """Records ``file:line`` of every factory call (not ``*_like``) whose nearest non-torch caller is a scrub
    module and that names no device. ``tensor``/``as_tensor`` of a tensor keep its device and are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.offenders: set[str] = set()
        self.calls = 0  # factory calls seen from scrub, with or without a device: the mode is really active

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES:
            frame = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__", "").startswith("torch"):
                frame = frame.f_back
            module = "" if frame is None else frame.f_globals.get("__name__", "")
            copies = func in (torch.tensor, torch.as_tensor) and args and isinstance(args[0], torch.Tensor)
            if module.startswith("scrub.") and frame is not None:
                self.calls += 1
                if kwargs.get("device") is None and not copies:
                    self.offenders.add(f"{frame.f_code.co_filename.split('/scrub/', 1)[-1]}:{frame.f_lineno} "
                                       f"torch.{func.__name__}")
        return func(*args, **kwargs)


def offenders(work: Callable[[], object]) -> FactoryCalls:
    with FactoryCalls() as mode:
        work()
    return mode


def check(mode: FactoryCalls) -> None:
    assert mode.calls > 0, "no factory call from scrub was seen: the mode did not record anything"
    assert not mode.offenders, "tensors created without a device (pass the model's device, or device='cpu' with " \
        "a comment saying why):\n" + "\n".join(sorted(mode.offenders))


@pytest.mark.parametrize("options,metric", [
    (SamplingOptions(), "loss"),
    (SamplingOptions(unit=Unit.COPY, independent=True), "kl"),
    (SamplingOptions(pool=4, allow_self=True), "loss"),
])
def test_run_creates_every_tensor_on_a_named_device(options, metric):
    model = tiny_model(n_layers=2, n_heads=3)
    tokens = random_tokens(12, 10, seed=1)
    check(offenders(lambda: scrub.run(model, partial_graph(), tokens, batch_size=5, options=options, metric=metric,
                                      n_bootstrap=50, progress=False)))


def test_run_with_query_key_masks_creates_every_tensor_on_a_named_device():
    """A masked head is computed alone, its main and resampled inputs split by the mask: that path too."""
    model = tiny_model(n_layers=2, n_heads=3)
    g = partial_graph()
    g.edges["embed", "0.1"]["qk_mask"] = previous_position()
    g.edges["0.1", "1.2"]["qk_mask"] = within(1)
    check(offenders(lambda: scrub.run(model, g, random_tokens(12, 10, seed=1), batch_size=5, n_bootstrap=50,
                                      progress=False)))


def test_run_with_a_per_position_feature_creates_every_tensor_on_a_named_device():
    """A per-position draw reads its child per position: rows [rows, seq] gathered with a position index."""
    from scrub.testing.pieces import TokenMod, feature

    model = tiny_model(n_layers=2, n_heads=3)
    g = partial_graph()
    g.nodes["0.1"]["feature"] = feature(TokenMod(2, None))
    add = g.copy()
    add.add_edge("0.1", "logits")
    for graph in (g, add):
        check(offenders(lambda graph=graph: scrub.run(model, graph, random_tokens(12, 10, seed=1), batch_size=5,
                                                      n_bootstrap=50, progress=False)))


@pytest.mark.parametrize("positions", ["candidates", "good_candidates"])
def test_run_with_positions_and_a_baseline_creates_every_tensor_on_a_named_device(positions):
    model = tiny_model(n_layers=2, n_heads=3, attn_only=False, pos="standard", d_vocab=2048)
    tokens = random_tokens(8, 10, seed=2)
    check(offenders(lambda: scrub.run(model, partial_graph(), tokens, baseline=partial_graph(), positions=positions,
                                      batch_size=4, n_bootstrap=20, progress=False)))


@pytest.mark.parametrize("kind", ["loss", "logit_diff"])
def test_patch_matrix_creates_every_tensor_on_a_named_device(kind):
    model = tiny_model(n_layers=2, n_heads=3, attn_only=False)
    gen = torch.Generator().manual_seed(0)
    ref, cor = (torch.randint(0, 20, (4, 10), generator=gen) for _ in range(2))
    metric = make_metric(kind, ref, cor, torch.arange(2, 9))
    check(offenders(lambda: patch_matrix(model, ref, cor, metric, include_mlps=True, progress=False)))
    paths = [[], every_path_to_logits(model)]
    check(offenders(lambda: patch_effects(model, ref, cor, paths, metric, positions=metric.positions)))


@pytest.mark.parametrize("method", ["acdc", "eap-ig+verify"])
def test_discover_creates_every_tensor_on_a_named_device(method):
    model = tiny_model(dtype=torch.float64, scale=0.4)
    check(offenders(lambda: scrub.discover(model, random_tokens(16, 8, seed=7), method=method, metric="kl",
                                           threshold=0.02, draws=1, n_bootstrap=50, curve=True)))


def test_paired_discover_creates_every_tensor_on_a_named_device():
    model = tiny_model(dtype=torch.float64, scale=0.4)
    tokens, corrupted = random_tokens(16, 8, seed=7), random_tokens(16, 8, seed=8)
    check(offenders(lambda: scrub.discover(model, tokens, corrupted=corrupted, method="eap-ig+verify", metric="loss",
                                           threshold=0.02, n_bootstrap=50, curve=False)))


def test_the_recorder_names_a_factory_call_without_a_device():
    """The mode catches what it is for: code of a scrub module calling torch.zeros without a device is named by
    file and line; the same call with a device, a copy of a tensor, and a call from a test frame are not."""
    space = {"__name__": "scrub.fake", "torch": torch}
    exec(compile("def make(t):\n    torch.zeros(2, device='cpu'); torch.as_tensor(t)\n    return torch.zeros(3)\n",
                 "/x/scrub/fake.py", "exec"), space)
    mode = offenders(lambda: space["make"](torch.ones(1)))
    assert mode.calls == 3 and mode.offenders == {"fake.py:3 torch.zeros"}
    seen = offenders(lambda: torch.zeros(3))  # a test frame, not scrub: never counted
    assert seen.calls == 0 and not seen.offenders


def test_a_model_on_the_meta_device_is_refused_before_any_work():
    model = tiny_model().to("meta")  # shapes without values
    with pytest.raises(ScrubError, match="meta device"):
        scrub.run(model, partial_graph(), random_tokens(4, 10), progress=False)
