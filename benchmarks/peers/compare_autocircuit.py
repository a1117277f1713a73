"""Agreement of scrub's path patching with auto-circuit 1.0.1 on the same weights, inputs and edge sets.

Runs in the main virtualenv and calls ``autocircuit_peer.py`` in the side virtualenv
(``AUTOCIRCUIT_PYTHON``, default /work/venv-autocircuit/bin/python; see requirements.txt). For each model
(the shipped 2-layer model if trained, else a random-init one of its shape, and a random-init 3-layer
model) it patches edge sets with auto-circuit and the matching path sets with scrub, and prints the change
in loss at second-repeat positions from both. An auto-circuit edge ``src -> dest`` is scrub's
``edge_paths`` (every path through that edge); the column ``direct path`` is the single path
``src -> dest -> logits``, which differs once something sits between dest and the logits.
    OMP_NUM_THREADS=1 /work/venv/bin/python benchmarks/peers/compare_autocircuit.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformer_lens import HookedTransformer  # noqa: E402

from scrub.claims.sites import Channel, Embed, Head, Pos  # noqa: E402
from scrub.data.batches import repeated_random_tokens  # noqa: E402
from scrub.model.loading import SHIPPED_DIR, ArchSpec, load_model, save_checkpoint  # noqa: E402
from scrub.patching.paths import PatchPath, edge_paths, make_metric, patch_effects, second_repeat_positions  # noqa: E402

PEER_PYTHON = os.environ.get("AUTOCIRCUIT_PYTHON", "/work/venv-autocircuit/bin/python")


def node(name: str):
    return Embed() if name == "Resid Start" else Head(*map(int, name[1:].split(".")))


def to_paths(model: HookedTransformer, edge: str, *, direct: bool) -> list[PatchPath]:
    """One auto-circuit edge as scrub paths (edge semantics, or only the direct path if ``direct``)."""
    src, dest = edge.split("->")
    with_pos = src == "Resid Start" and model.cfg.positional_embedding_type == "standard"
    senders = [node(src)] + ([Pos()] if with_pos else [])
    if dest == "Resid End":
        return [PatchPath(s) for s in senders]
    receiver, chan = dest[1:].rsplit(".", 1)
    r, c = Head(*map(int, receiver.split("."))), Channel(chan.lower())
    return [p for s in senders for p in ([PatchPath(s, ((r, c),))] if direct else edge_paths(model, s, r, c))]


def edge_sets(model: HookedTransformer) -> list[list[str]]:
    top = model.cfg.n_layers - 1
    return [
        [], ["A0.0->A1.0.K"], ["A0.1->A1.2.Q"], ["A0.3->A1.5.V"], [f"A{top}.6->Resid End"], ["Resid Start->A1.4.K"],
        ["Resid Start->Resid End"], ["A0.0->A1.0.K", "A0.3->A1.0.K", "A0.5->A1.0.V"],
        ["A0.0->A1.0.K", "A1.0->Resid End"],  # the edge into logits covers the path through it
        ["Resid Start->Resid End"] + [f"A{layer}.{h}->Resid End" for layer in range(top + 1) for h in range(8)],
    ]


def compare(directory: Path, tmp: Path) -> list[tuple]:
    model = load_model(directory)
    ref = repeated_random_tokens(16, 40, 2, seed=0, vocab_size=model.cfg.d_vocab)  # [16, 81]
    cor = repeated_random_tokens(16, 40, 2, seed=1, vocab_size=model.cfg.d_vocab)  # fresh random sequences
    positions = second_repeat_positions(40)
    torch.save({"reference": ref, "corrupted": cor, "positions": positions}, tmp / "data.pt")
    sets = edge_sets(model)
    done = subprocess.run([PEER_PYTHON, str(Path(__file__).with_name("autocircuit_peer.py")), str(directory),
                           str(tmp / "data.pt"), "--sets", json.dumps(sets)], capture_output=True, text=True,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    theirs = json.loads(done.stdout.strip().splitlines()[-1])["effects"]
    metric = make_metric("loss", ref, cor, positions)
    rows = []
    for direct in (False, True):
        path_sets = [[p for e in s for p in to_paths(model, e, direct=direct)] for s in sets]
        values = patch_effects(model, ref, cor, path_sets, metric, positions=positions)
        rows.append(values - values[0])
    return [(" + ".join(s) or "<none>", float(a), float(b), theirs[" + ".join(s) or "<none>"])
            for s, a, b in zip(sets, *rows, strict=True)]


def main() -> None:
    torch.set_grad_enabled(False)
    tmp = Path(tempfile.mkdtemp(prefix="scrub-peer-"))
    models = {}
    if SHIPPED_DIR.exists():
        models["shipped 2-layer"] = SHIPPED_DIR
    else:
        save_checkpoint(HookedTransformer(ArchSpec().to_config()), tmp / "random-2l")
        models["random-init 2-layer"] = tmp / "random-2l"
    save_checkpoint(HookedTransformer(ArchSpec(n_layers=3, seed=1).to_config()), tmp / "random-3l")
    models["random-init 3-layer"] = tmp / "random-3l"
    for label, directory in models.items():
        print(f"\n{label} ({directory}): change in loss at second-repeat positions, 16 x 81 RRT, "
              "fresh random corruption")
        print(f"{'auto-circuit edge set':<60} {'scrub edge':>11} {'scrub path':>11} {'auto-circ':>11} {'|edge-ac|':>9}")
        for name, edge, direct, theirs in compare(directory, tmp):
            short = name if len(name) <= 60 else name[:44] + f"... ({name.count('+') + 1} edges)"
            print(f"{short:<60} {edge:>11.6f} {direct:>11.6f} {theirs:>11.6f} {abs(edge - theirs):>9.1e}")


if __name__ == "__main__":
    main()
