"""Modular arithmetic: the value of an expression modulo ``m``, without or with brackets.

Tokens (``m = task.modulus``): digits ``0 .. m-1``, then ``+ - *`` (``m, m+1, m+2``),
``( )`` (``m+3, m+4``), ``=`` (``m+5``) and the pad token ``m+6``. ``*`` binds tighter
than ``+`` and ``-``; values are taken modulo ``m`` (``2 - 3 = 4`` for ``m = 5``).

``brackets: false`` (a regular language): digits and random operators alternate,
``d op d op d ...``; the target at every digit is the value of the expression so far
(the running value is a finite state: the sum of the closed terms and the open product).
Operators are not scored. Example, ``m = 5``, ``3 + 4 * 2 - 1``::

    inputs   3  5  4  7  2  6  1
    targets  3  -  2  -  1  -  0        (3; 7; 11; 10, all mod 5)

``brackets: true`` (context-free, Deletang et al. 2023's "modular arithmetic"): a random
expression with nested brackets, then ``=``; only the ``=`` token is scored (a prefix
with open brackets has no value). An expression has an odd number of tokens, so every
sequence has an even length (a drawn odd length is moved to a neighbouring even one
within the split's range). Example, ``m = 5``, ``( 1 + 3 ) * 4 =``::

    inputs   8  1  5  3  9  7  4 10
    targets  -  -  -  -  -  -  -  1     (16 mod 5)

Lengths, padding and test scoring: ``carvelab.trials.tasks._lengths``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carvelab.trials.tasks._lengths import LengthGenConfig, LengthGenTask
from carvelab.trials.tasks.base import IGNORE_INDEX

BRACKET_PROBABILITY = 0.3      # a sub-expression of 3+ tokens is bracketed with this probability


@dataclass
class ModularArithmeticConfig(LengthGenConfig):
    name: str = "modular_arithmetic"
    vocab_size: int = 12
    modulus: int = 5
    brackets: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.modulus, int) or isinstance(self.modulus, bool) or self.modulus < 2:
            raise ValueError(f"task.modulus={self.modulus!r} must be an integer >= 2")
        if not isinstance(self.brackets, bool):
            raise ValueError(f"task.brackets={self.brackets!r} must be true or false")


class ModularArithmeticTask(LengthGenTask):
    """Expression values mod ``m``: at every digit (no brackets) or at ``=`` (brackets)."""

    name = "modular_arithmetic"
    Config = ModularArithmeticConfig

    def __init__(self, cfg: ModularArithmeticConfig):
        self.final_only = cfg.brackets
        super().__init__(cfg)

    @classmethod
    def tokens(cls, cfg: ModularArithmeticConfig) -> int:
        return cfg.modulus + 7

    @classmethod
    def validate(cls, cfg: ModularArithmeticConfig) -> None:
        super().validate(cfg)
        if cfg.brackets:
            for lo, hi, keys in ((cfg.min_len, cfg.seq_len, "min_len, seq_len"),
                                 (cfg.test_min_len, cfg.test_seq_len, "test_min_len, test_seq_len")):
                if max(lo, 2) > hi - hi % 2:
                    raise ValueError(f"task.brackets=true needs an even length >= 2 in [task.{keys.replace(', ', ', task.')}]"
                                     f" = [{lo}, {hi}] (an expression has an odd number of tokens, then '=')")

    def data_fields(self, cfg: ModularArithmeticConfig) -> dict:
        return {**super().data_fields(cfg), "modulus": cfg.modulus, "brackets": cfg.brackets}

    def draw_lengths(self, rng: np.random.Generator, lo: int, hi: int, n: int) -> np.ndarray:
        lengths = super().draw_lengths(rng, lo, hi, n)
        if not self.cfg.brackets:
            return lengths
        odd = lengths % 2 == 1
        up = odd & (lengths + 1 <= hi)
        lengths[up] += 1
        lengths[odd & ~up] -= 1
        return np.maximum(lengths, 2)

    def sequences(self, rng: np.random.Generator, lengths: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cfg.brackets:
            return self._bracketed(rng, lengths, T)
        return self._flat(rng, len(lengths), T)

    def _flat(self, rng: np.random.Generator, n: int, T: int) -> tuple[np.ndarray, np.ndarray]:
        m = self.cfg.modulus
        inputs = np.empty((n, T), dtype=np.int64)
        inputs[:, 0::2] = rng.integers(0, m, size=(n, len(range(0, T, 2))))
        inputs[:, 1::2] = m + rng.integers(0, 3, size=(n, len(range(1, T, 2))))
        targets = np.full((n, T), IGNORE_INDEX, dtype=np.int64)
        total = np.zeros(n, dtype=np.int64)
        term = inputs[:, 0] % m
        targets[:, 0] = term
        for t in range(2, T, 2):
            op, digit = inputs[:, t - 1] - m, inputs[:, t]
            closes = op != 2                          # + or -: the open term is added to the total
            total = np.where(closes, (total + term) % m, total)
            term = np.where(op == 2, term * digit, np.where(op == 0, digit, -digit)) % m
            targets[:, t] = (total + term) % m
        return inputs, targets

    def _bracketed(self, rng: np.random.Generator, lengths: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
        m = self.cfg.modulus
        inputs = np.full((len(lengths), T), self.pad, dtype=np.int64)
        targets = np.full((len(lengths), T), IGNORE_INDEX, dtype=np.int64)
        for row, length in enumerate(lengths):
            expr = random_expression(rng, int(length) - 1, m)
            inputs[row, :length - 1] = expr
            inputs[row, length - 1] = m + 5
            targets[row, length - 1] = evaluate(expr, m)
        return inputs, targets


def random_expression(rng: np.random.Generator, length: int, m: int) -> list[int]:
    """A random well-formed expression of exactly ``length`` tokens (odd), digits < ``m``.

    Built top-down: a 1-token part is a digit; a longer part is bracketed with probability
    BRACKET_PROBABILITY, else split into ``left op right`` at a uniform odd left length.
    """
    if length % 2 == 0 or length < 1:
        raise ValueError(f"an expression has an odd number of tokens; got {length}")
    out: list[int] = []
    todo: list = [length]                     # lengths to expand, or literal tokens (as tuples)
    while todo:
        item = todo.pop()
        if isinstance(item, tuple):
            out.append(item[0])
        elif item == 1:
            out.append(int(rng.integers(0, m)))
        elif rng.random() < BRACKET_PROBABILITY:
            todo += [(m + 4,), item - 2, (m + 3,)]
        else:
            left = 2 * int(rng.integers(0, (item - 1) // 2)) + 1
            todo += [item - 1 - left, (m + int(rng.integers(0, 3)),), left]
    return out


def evaluate(tokens: list[int], m: int) -> int:
    """The value mod ``m`` of an expression of digit, ``+ - *`` and bracket tokens, with
    ``*`` before ``+ -`` (a stack of (sum, open term, pending operator) per bracket level)."""
    stack = []
    total, term, op = 0, 0, 0                 # op: the operator before the next operand
    for tok in tokens:
        if tok < m or tok == m + 4:           # an operand: a digit, or a closed bracket's value
            if tok == m + 4:
                value = (total + term) % m
                total, term, op = stack.pop()
            else:
                value = tok
            if op == 2:
                term = term * value % m
            else:
                total = (total + term) % m
                term = value if op == 0 else -value % m
        elif tok == m + 3:
            stack.append((total, term, op))
            total, term, op = 0, 0, 0
        else:
            op = tok - m
    return (total + term) % m
