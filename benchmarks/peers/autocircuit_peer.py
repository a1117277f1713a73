"""Patch edge sets with auto-circuit 1.0.1 (UFO-101) on a scrub checkpoint; runs in the side virtualenv only.

Reads a scrub checkpoint (config.json + weights.pt) and a ``.pt`` file with ``reference``, ``corrupted``
[n, seq] and ``positions`` [n_pos]; patches each requested edge set (auto-circuit edge names, e.g.
``A0.0->A1.6.K``, ``A1.6->Resid End``) with the corrupted run's source outputs, and prints one JSON
object: the mean loss at ``positions`` per edge set, the seconds spent and the peak RSS. Does not import
scrub (transformer-lens 2.18 here). Usage:
    /work/venv-autocircuit/bin/python benchmarks/peers/autocircuit_peer.py CKPT DATA.pt [--matrix] [--sets JSON]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from auto_circuit.types import AblationType
from auto_circuit.utils.ablation_activations import src_ablations
from auto_circuit.utils.graph_utils import patch_mode, patchable_model
from transformer_lens import HookedTransformer, HookedTransformerConfig


def load(directory: Path) -> HookedTransformer:
    arch = json.loads((directory / "config.json").read_text())["arch"]
    cfg = HookedTransformerConfig(
        n_layers=arch["n_layers"], n_heads=arch["n_heads"], d_model=arch["d_model"], d_head=arch["d_head"],
        n_ctx=arch["n_ctx"], d_vocab=arch["d_vocab"], act_fn="gelu", attn_only=True,
        positional_embedding_type=arch["positional_embedding_type"],
        normalization_type=None if arch["normalization_type"] == "none" else arch["normalization_type"],
        default_prepend_bos=False, use_attn_result=True, use_split_qkv_input=True,
    )
    model = HookedTransformer(cfg)
    state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--matrix", action="store_true", help="every head->head.qkv and head->Resid End edge")
    parser.add_argument("--sets", default="[]", help="JSON list of edge-name lists to patch together")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    data = torch.load(args.data)
    ref, cor, positions = data["reference"], data["corrupted"], data["positions"]  # [n, seq] x2, [n_pos]
    labels = ref[:, positions + 1]  # [n, n_pos]
    model = load(args.checkpoint)
    model = patchable_model(model, factorized=True, slice_output=None, separate_qkv=True, device=torch.device("cpu"))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def loss(logits: torch.Tensor) -> float:
        logprobs = logits[:, positions].log_softmax(-1)  # [n, n_pos, vocab]
        return float(-logprobs.gather(-1, labels[..., None]).mean())

    sets = [list(s) for s in json.loads(args.sets)]
    if args.matrix:
        names = [e.name for e in model.edges]
        sets += [[n] for n in names if n.split("->")[0].startswith("A")]
    start = time.perf_counter()
    patch_outs = src_ablations(model, cor, AblationType.RESAMPLE)  # [srcs, n, seq, d_model]
    clean = loss(model(ref))
    results = {}
    for edges in sets:
        with patch_mode(model, patch_outs, edges=edges):
            results[" + ".join(edges) or "<none>"] = loss(model(ref)) - clean
    seconds = time.perf_counter() - start
    print(json.dumps({"clean": clean, "effects": results, "seconds": seconds, "n_sets": len(sets),
                      "edges": len(model.edges),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_before_mb": rss0 / 1024}))


if __name__ == "__main__":
    main()
