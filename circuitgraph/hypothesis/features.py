"""Features: what an interpretation node claims its model node computes.

A feature maps an input example — and, for *positional* features, the sequence position the
activation sits at — to a hashable value. Two inputs are interchangeable at a node iff the node's
feature agrees on them (at that position). Features are *declarative*: a built-in name with
JSON arguments, or the registered name of a Python function, so a saved hypothesis never carries
code.

Built-ins
    ``whole_input()``                       the whole prompt (no claim: only identical prompts agree)
    ``constant()``                          nothing (every input agrees: "this doesn't matter")
    ``token_at(k)``                         the token k positions from the current one (``k=-1``:
                                            the previous token); ``token_at(k, relative=False)``:
                                            the token at absolute position k (negative: from the end)
    ``answer_label()``                      the task's answer (per example, or per position)
    ``next_after_previous_occurrence()``    the token that followed the previous occurrence of the
                                            current token (the induction target; -1 if none)
    ``seq_length()``                        the number of real (unpadded) tokens

Your own::

    @register_feature("first_token_parity")
    def first_token_parity(example):          # example: Example(index, tokens, position, ...)
        return example.tokens[1] % 2

    Interpretation("parity", first_token_parity)           # or feature("first_token_parity")

Registered functions may take keyword arguments (``feature("shift", k=3)`` calls
``fn(example, k=3)``); the arguments are saved with the hypothesis, the function is not.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import torch

from circuitgraph.errors import HypothesisError
from circuitgraph.files.schema import LIMITS

# -------------------------------------------------------------------------------------------- data


class Example(NamedTuple):
    """What a Python feature function sees.

    index     the example's row in the dataset
    tokens    its real (unpadded) token ids, a tuple
    position  the position the activation sits at (``None`` for a sequence-level call)
    answer    the task's answer id (an int, or a tuple with one id per position), or None
    wrong     the task's wrong-answer id(s), or None
    """

    index: int  # type: ignore[assignment]  # a field named like tuple.index, which it shadows (public name)
    tokens: tuple
    position: int | None
    answer: Any
    wrong: Any


@dataclass
class FeatureData:
    """The dataset the features are evaluated on: a task's clean prompts and answers."""

    tokens: torch.Tensor  # [N, P] long
    mask: torch.Tensor  # [N, P] long, 1 = real token
    answer: torch.Tensor | None = None  # [N] or [N, P]
    wrong: torch.Tensor | None = None
    padded: bool = False

    @classmethod
    def from_task(cls, task) -> FeatureData:
        tokens = task.clean.detach().cpu()
        mask = task.attention_mask.detach().cpu().long() if task.attention_mask is not None else torch.ones_like(tokens)
        ans = task.answer.detach().cpu() if task.answer is not None else None
        wrong = task.wrong.detach().cpu() if task.wrong is not None else None
        return cls(tokens, mask, ans, wrong, padded=task.attention_mask is not None and not bool(mask.all()))

    @property
    def n(self) -> int:
        return self.tokens.shape[0]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1]

    def example(self, i: int, position: int | None) -> Example:
        length = int(self.mask[i].sum())
        toks = tuple(self.tokens[i, :length].tolist())

        def pick(t):
            if t is None:
                return None
            row = t[i]
            return int(row) if row.ndim == 0 else tuple(row.tolist())

        return Example(i, toks, position, pick(self.answer), pick(self.wrong))


@dataclass(frozen=True)
class FeatureValues:
    """A feature evaluated on a dataset: integer class codes, ``[N, 1]`` for a sequence-level
    feature (one value per example) or ``[N, P]`` for a positional one."""

    codes: torch.Tensor
    positional: bool


# -------------------------------------------------------------------------------------------- Feature


def _freeze(value, where: str):
    """JSON value → hashable (lists become tuples, dicts sorted item tuples)."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise HypothesisError(f"{where}: feature arguments must be finite numbers, got {value!r}")
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v, where) for v in value)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise HypothesisError(f"{where}: dict feature arguments need string keys")
        return ("__dict__",) + tuple(sorted((k, _freeze(v, where)) for k, v in value.items()))
    raise HypothesisError(
        f"{where}: feature arguments must be JSON values (numbers, strings, booleans, lists), got {type(value).__name__}"
    )


def _thaw(value):
    if isinstance(value, tuple):
        if value[:1] == ("__dict__",):
            return {k: _thaw(v) for k, v in value[1:]}
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class Feature:
    """A declarative feature: ``fn`` (a built-in or registered name) and its keyword ``args``.

    ``func`` is set only for an *anonymous* feature (a plain callable given directly); those work
    in memory but cannot be saved until registered with :func:`register_feature`."""

    fn: str
    args: tuple = ()
    func: Callable | None = field(default=None, repr=False)

    @classmethod
    def make(cls, fn: str, **kwargs) -> Feature:
        kwargs = {**_DEFAULT_ARGS.get(fn, {}), **kwargs}
        args = tuple(sorted((k, _freeze(v, f"feature {fn!r} argument {k!r}")) for k, v in kwargs.items()))
        return cls(fn, args)

    @classmethod
    def coerce(cls, x) -> Feature:
        """A Feature, a registered function, a registered name, or (anonymous) any callable."""
        if isinstance(x, Feature):
            return x
        if x is None:
            return whole_input()
        if isinstance(x, str):
            return feature(x)
        if callable(x):
            name = getattr(x, "__circuitgraph_feature__", None)
            if name is not None and _REGISTRY.get(name, (None,))[0] is x:
                return cls(name)
            label = getattr(x, "__qualname__", type(x).__name__)
            return cls(f"<unregistered {label}>", (), x)
        raise HypothesisError(
            f"a feature must be a Feature (e.g. token_at(-1)), a registered function or its name, got {type(x).__name__}"
        )

    @property
    def kwargs(self) -> dict:
        return {k: _thaw(v) for k, v in self.args}

    @property
    def anonymous(self) -> bool:
        return self.func is not None

    @property
    def is_whole_input(self) -> bool:
        return self.fn == "whole_input"

    def describe(self) -> str:
        if self.anonymous:
            return self.fn
        defaults = _DEFAULT_ARGS.get(self.fn, {})
        shown = {k: v for k, v in self.kwargs.items() if not (k in defaults and defaults[k] == v)}
        if self.fn == "token_at" and list(shown) == ["k"]:
            return f"token_at({shown['k']})"
        inner = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"{self.fn}({inner})"

    __str__ = describe

    def to_json(self) -> dict:
        if self.anonymous:
            raise HypothesisError(
                f"feature {self.fn} is a plain Python function; saved hypotheses name their features, so register "
                "it first: decorate it with @register_feature('a_name') (and register it again before loading)"
            )
        return {"fn": self.fn, "args": self.kwargs}

    @classmethod
    def from_json(cls, d, where: str = "") -> Feature:
        if not isinstance(d, dict) or not isinstance(d.get("fn"), str) or not isinstance(d.get("args", {}), dict):
            raise HypothesisError(f'{where}feature must be an object {{"fn": name, "args": {{...}}}}, got {d!r}')
        f = cls.make(d["fn"], **d.get("args", {}))
        f.check()
        return f

    def check(self) -> None:
        """Raise if the feature's name is unknown or its arguments are wrong (no evaluation)."""
        if self.anonymous:
            return
        if self.fn in _BUILTINS:
            _BUILTINS[self.fn][1](**self.kwargs)  # argument validation
            return
        if self.fn not in _REGISTRY:
            raise UnknownFeatureError(self.fn)

    def evaluate(self, data: FeatureData) -> FeatureValues:
        """Class codes of every example (and position) of ``data``."""
        self.check()
        if self.fn in _BUILTINS and not self.anonymous:
            codes, positional = _BUILTINS[self.fn][0](data, **self.kwargs)
            return FeatureValues(codes.long().reshape(data.n, -1), positional)
        if self.anonymous:
            fn, positional, vectorized = self.func, None, False
        else:
            fn, positional, vectorized = _REGISTRY[self.fn]
        return _evaluate_python(self.describe(), fn, positional, vectorized, data, self.kwargs)


class UnknownFeatureError(HypothesisError, KeyError):
    """A hypothesis names a feature that is neither built in nor registered."""

    def __init__(self, name: str, where: str = ""):
        self.name = name
        self.where = where
        super().__init__(str(self))

    def __str__(self) -> str:
        return (
            f"{self.where}feature {self.name!r} is neither a built-in ({', '.join(sorted(_BUILTINS))}) nor registered "
            "in this Python session. Loading never runs code from a hypothesis file, so define the function and "
            f"register it before loading:\n\n    from circuitgraph.hypothesis import register_feature\n\n"
            f"    @register_feature({self.name!r})\n    def my_feature(example):   # -> a hashable value\n        ...\n"
        )


# -------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, tuple[Callable, bool | None, bool]] = {}


def register_feature(name: str, positional: bool | None = None, vectorized: bool = False, replace: bool = False):
    """Register a Python feature function under ``name`` (a decorator).

    The function is called as ``fn(example, **args)`` with an :class:`Example` and returns a
    hashable value. ``positional``: True — called once per (example, position) and resampled
    position by position; False — called once per example (``example.position`` is None);
    None (default) — called per position, and treated as sequence-level if its value never varies
    along the sequence. ``vectorized=True``: called once as ``fn(data: FeatureData, **args)``,
    returning a ``[N]`` or ``[N, P]`` integer tensor.
    """
    if not isinstance(name, str) or not name or name.startswith("<"):
        raise HypothesisError(f"a feature name must be a non-empty string, got {name!r}")
    if name in _BUILTINS:
        raise HypothesisError(f"{name!r} is a built-in feature; register yours under another name")

    def deco(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError("register_feature decorates a function")
        old = _REGISTRY.get(name)
        if old is not None and not replace and old[0] is not fn and _qualname(old[0]) != _qualname(fn):
            raise HypothesisError(
                f"feature name {name!r} is already registered to {_qualname(old[0])}; pick another name or pass replace=True"
            )
        _REGISTRY[name] = (fn, positional, vectorized)
        try:
            cast(Any, fn).__circuitgraph_feature__ = name  # (a marker attribute on the user's function)
        except (AttributeError, TypeError):  # e.g. a bound method or builtin
            pass
        return fn

    return deco


def unregister_feature(name: str) -> None:
    _REGISTRY.pop(name, None)


def registered_features() -> dict[str, Callable]:
    return {k: v[0] for k, v in _REGISTRY.items()}


def feature(name: str, **args) -> Feature:
    """A feature by name: a built-in (``feature("token_at", k=-1)``) or a registered function.
    The name is resolved when the feature is evaluated or saved, so it may be registered later."""
    if not isinstance(name, str):
        raise HypothesisError(f"feature() takes a name, got {type(name).__name__}")
    return Feature.make(name, **args)


def _qualname(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# -------------------------------------------------------------------------------------------- built-ins


def whole_input() -> Feature:
    """The whole prompt: only inputs with identical tokens agree (the claim "this matters" with no
    further explanation)."""
    return Feature("whole_input")


def constant() -> Feature:
    """Every input agrees: the node's value is claimed not to matter (beyond its position)."""
    return Feature("constant")


def token_at(k: int, relative: bool = True) -> Feature:
    """The token at position ``current + k`` (``relative``) or at absolute position ``k``
    (negative: counted from the last real token). Out of range / padding: -1."""
    try:
        if isinstance(k, bool):
            raise TypeError
        k = operator.index(k)  # ints, numpy ints; not floats, not booleans
    except TypeError:
        raise HypothesisError(f"token_at needs an integer k, got {k!r}") from None
    f = Feature.make("token_at", k=k, relative=relative)
    f.check()
    return f


def answer_label() -> Feature:
    """The task's answer token (per example, or per position when answers are per position)."""
    return Feature("answer_label")


def next_after_previous_occurrence() -> Feature:
    """The token that followed the previous occurrence of the current token (-1 if it has none)."""
    return Feature("next_after_previous_occurrence")


def seq_length() -> Feature:
    """The number of real (unpadded) tokens of the prompt."""
    return Feature("seq_length")


def _masked_tokens(data: FeatureData) -> torch.Tensor:
    return torch.where(data.mask.bool(), data.tokens, torch.full_like(data.tokens, -1))


def _eval_whole_input(data: FeatureData):
    _, inv = torch.unique(_masked_tokens(data), dim=0, return_inverse=True)
    return inv, False


def _eval_constant(data: FeatureData):
    return torch.zeros(data.n, dtype=torch.long), False


def _eval_seq_length(data: FeatureData):
    return data.mask.sum(1), False


def _eval_answer(data: FeatureData):
    if data.answer is None:
        raise HypothesisError("feature answer_label() needs a task with answers (task.answer is None)")
    a = data.answer.long()
    return (a, a.ndim == 2)


def _eval_token_at(data: FeatureData, k: int, relative: bool = True):
    toks = _masked_tokens(data)
    N, P = toks.shape
    if relative:
        idx = torch.arange(P) + k
        ok = (idx >= 0) & (idx < P)
        out = toks[:, idx.clamp(0, P - 1)]
        return torch.where(ok[None, :], out, torch.full_like(out, -1)), True
    length = data.mask.sum(1)
    idx = torch.full((N,), k) if k >= 0 else length + k
    ok = (idx >= 0) & (idx < length)
    out = toks[torch.arange(N), idx.clamp(0, P - 1)]
    return torch.where(ok, out, torch.full_like(out, -1)), False


def _eval_next_after_prev(data: FeatureData):
    toks = _masked_tokens(data)
    N, P = toks.shape
    same = toks[:, :, None] == toks[:, None, :]  # [N, t, j]
    earlier = torch.ones(P, P, dtype=torch.bool).tril(-1)  # j < t
    hit = same & earlier[None] & (toks[:, :, None] >= 0)
    j = torch.arange(P)
    last = torch.where(hit, j[None, None, :], torch.full_like(hit, -1, dtype=torch.long)).max(-1).values  # [N, t]
    nxt = toks.gather(1, (last + 1).clamp(0, P - 1))
    return torch.where(last >= 0, nxt, torch.full_like(nxt, -1)), True


def _check_token_at(k=None, relative=True):
    if isinstance(k, bool) or not isinstance(k, int):
        raise HypothesisError(f"token_at needs an integer k, got {k!r}")
    if abs(k) > LIMITS.max_positions:
        raise HypothesisError(
            f"token_at's k={k} is beyond any prompt (|k| ≤ {LIMITS.max_positions} positions); "
            "use a position offset within the prompt length"
        )
    if not isinstance(relative, bool):
        raise HypothesisError(f"token_at's relative must be true or false, got {relative!r}")


def _no_args(name):
    def check(**kw):
        if kw:
            raise HypothesisError(f"feature {name}() takes no arguments, got {sorted(kw)}")

    return check


_BUILTINS: dict[str, tuple[Callable, Callable]] = {
    "whole_input": (_eval_whole_input, _no_args("whole_input")),
    "constant": (_eval_constant, _no_args("constant")),
    "seq_length": (_eval_seq_length, _no_args("seq_length")),
    "answer_label": (_eval_answer, _no_args("answer_label")),
    "token_at": (_eval_token_at, _check_token_at),
    "next_after_previous_occurrence": (_eval_next_after_prev, _no_args("next_after_previous_occurrence")),
}
BUILTIN_FEATURES = tuple(_BUILTINS)
# defaults filled in at construction, so that feature("token_at", k=-1) == token_at(-1)
_DEFAULT_ARGS = {"token_at": {"relative": True}}


# -------------------------------------------------------------------------------------------- python features


def _factorize(values: list, what: str) -> torch.Tensor:
    table: dict[Hashable, int] = {}
    out = []
    for v in values:
        try:
            out.append(table.setdefault(v, len(table)))
        except TypeError:
            raise HypothesisError(
                f"feature {what} returned an unhashable {type(v).__name__} ({v!r:.80}); return a hashable value "
                "(a number, string or tuple)"
            ) from None
    return torch.tensor(out, dtype=torch.long)


def _evaluate_python(what: str, fn, positional, vectorized, data: FeatureData, kwargs) -> FeatureValues:
    N, P = data.n, data.seq_len
    if vectorized:
        out = fn(data, **kwargs)
        out = torch.as_tensor(out)
        if out.shape not in ((N,), (N, P)):
            raise HypothesisError(
                f"vectorized feature {what} must return a [{N}] or [{N}, {P}] tensor, got {list(out.shape)}"
            )
        if out.is_floating_point():
            out = _factorize(out.reshape(-1).tolist(), what).reshape(out.shape)
        if out.ndim == 1:
            return FeatureValues(out.long()[:, None], False)
        return FeatureValues(out.long(), True if positional is None else bool(positional))
    if positional is False:
        return FeatureValues(_factorize([fn(data.example(i, None), **kwargs) for i in range(N)], what)[:, None], False)
    values = []
    for i in range(N):
        ex = data.example(i, 0)
        for t in range(P):
            values.append(fn(ex._replace(position=t), **kwargs))
    codes = _factorize(values, what).reshape(N, P)
    if positional is None and bool((codes == codes[:, :1]).all()):
        return FeatureValues(codes[:, :1].contiguous(), False)
    return FeatureValues(codes, True)
