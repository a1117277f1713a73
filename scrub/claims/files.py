"""Hypothesis files: import one, call its ``hypothesis(model)`` and validate the graph it returns.

Errors (syntax, an exception while importing or inside ``hypothesis``, a wrong signature, a bad graph) are
one-line ``HypothesisError``s naming the file and, where there is one, the line; whatever the file prints
goes to stderr, so stdout stays the command's output. The graph rules are in ``scrub.claims.validation``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
import traceback
from dataclasses import replace
from pathlib import Path

from transformer_lens import HookedTransformer

from scrub.claims.features import one_line
from scrub.claims.hypothesis import Claim, HypothesisError, check_paths, validate
from scrub.model.fingerprint import ModelFingerprint


def _where_in(path: Path, err: BaseException) -> str:
    """``path:line`` of the deepest frame of ``err``'s traceback that is in ``path`` (``path`` if none)."""
    target = str(path.resolve())
    line = None
    for frame in traceback.extract_tb(err.__traceback__):
        with contextlib.suppress(OSError):
            if str(Path(frame.filename).resolve()) == target:
                line = frame.lineno
    return f"{path}:{line}" if line is not None else str(path)


def _raised(path: Path, err: BaseException, doing: str) -> HypothesisError:
    if isinstance(err, SystemExit):  # the file would end the whole command (with --json: empty stdout, exit 0)
        return HypothesisError(f"{_where_in(path, err)}: {doing} called sys.exit({err.code!r}); a hypothesis file "
                               f"must not end the process: remove the call (scrub imports the file and calls "
                               f"hypothesis(model))")
    if isinstance(err, SyntaxError):  # also a syntax error in a module the file imports
        file = err.filename or str(path)
        text = f"{err.msg}" + (f": {err.text.strip()}" if err.text and err.text.strip() else "")
        return HypothesisError(f"{file}:{err.lineno}: {type(err).__name__} while {doing}: {text}; fix the file")
    if isinstance(err, HypothesisError):
        return HypothesisError(f"{_where_in(path, err)}: {err}")
    return HypothesisError(f"{_where_in(path, err)}: {doing} raised {one_line(err)}")


def load_hypothesis(path: str | Path, model: HookedTransformer) -> Claim:
    """Import a hypothesis file, call its ``hypothesis(model)`` and validate the graph it returns.

    Errors (syntax, an exception while importing or inside ``hypothesis``, a wrong signature, a bad graph)
    are one-line ``HypothesisError``s naming the file and, where there is one, the line. Whatever the file
    prints goes to stderr, so stdout stays the command's output. A file that calls ``sys.exit`` or changes the
    model (its weights, config, hooks or mode: fingerprinted before and compared after) is refused."""
    path = Path(path)
    before = ModelFingerprint.of(model)
    if not path.is_file():
        raise HypothesisError(f"no hypothesis file at {path}: pass a .py file that defines hypothesis(model)")
    module_name = f"scrub_hypothesis_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise HypothesisError(f"{path}: not a Python file; a hypothesis file is a .py module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # the file's folder and its parent are importable while it loads (e.g. `from hypotheses import _heads`)
    extra = [str(path.resolve().parent), str(path.resolve().parent.parent)]
    sys.path[:0] = extra
    try:
        with contextlib.redirect_stdout(sys.stderr):
            spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - whatever the file raises: one line naming file and line
        raise _raised(path, err, "importing the file") from None
    finally:
        sys.modules.pop(module_name, None)
        for entry in extra:
            sys.path.remove(entry)
    fn = getattr(module, "hypothesis", None)
    if not callable(fn):
        raise HypothesisError(f"{path}: defines no function hypothesis(model) -> networkx.DiGraph; add one")
    try:
        inspect.signature(fn).bind(model)
    except TypeError:
        line = getattr(getattr(fn, "__code__", None), "co_firstlineno", None)
        raise HypothesisError(f"{path}{f':{line}' if line else ''}: hypothesis{inspect.signature(fn)} cannot be called "
                              f"with the model; write def hypothesis(model): (scrub calls it with the model as its one "
                              f"argument)") from None
    except ValueError:  # no signature to inspect (a builtin): just call it
        pass
    try:
        with contextlib.redirect_stdout(sys.stderr):
            graph = fn(model)
    except (Exception, SystemExit) as err:  # noqa: BLE001 - as above
        raise _raised(path, err, "hypothesis(model)") from None
    changed = before.changes(ModelFingerprint.of(model))
    if changed:
        raise HypothesisError(f"{path}: hypothesis(model) changed the model: {'; '.join(changed[:3])}"
                              f"{'; ...' if len(changed) > 3 else ''}; a hypothesis must leave the model as it was "
                              f"(scrub scores the model you gave it): work on a copy (copy.deepcopy(model))")
    claim = validate(graph, model, origin=str(path))
    check_paths(claim)
    return replace(claim, description=(module.__doc__ or "").strip())
