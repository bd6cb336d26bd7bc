"""Decimal strings at the edges, integers everywhere else.

Prices are integers in *price units* (10**-price_decimals of the quote asset, always a
multiple of the market's tick), quantities are integers in *quantity units*
(10**-quantity_decimals of the base asset, a multiple of the step), and balances are
integers in each asset's smallest unit. Nothing here reads a clock or a float, so the
deterministic core may use it.

Rounding rule (the only place the ledger rounds): a fee is ``notional * bps // 10_000``
rounded toward zero, for charges and for rebates alike. Charges therefore never exceed
the exact fee (the hold taken on entry always covers them), and a rebate never pays
out more than the exact rebate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


# Every integer in the ledger stays below this, so it fits the journal's 64-bit
# encoding with room for sums: orders and deposits beyond it are refused at the edge
# and again in the engine.
MAX_UNITS = 2**62


class AmountError(ValueError):
    """A decimal string that is malformed, negative, or finer than allowed."""


def asset_decimals(assets: Iterable[Any]) -> dict[str, int]:
    """Each asset's decimals by its symbol, from the configuration's assets or the
    engine's ``AssetSpec`` records alike (anything with ``symbol`` and ``decimals``)."""
    return {a.symbol: a.decimals for a in assets}


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def decimals_of(text: str) -> int:
    """Number of digits after the point in a well-formed decimal string ("0.010" -> 3)."""
    _, _, frac = text.partition(".")
    return len(frac)


def to_units(text: str, decimals: int) -> int:
    """Parse a plain non-negative decimal string into an integer count of 10**-decimals.

    Accepts "12", "12.5", "0.001"; trailing zeros beyond ``decimals`` are fine
    ("1.500" at 1 decimal). Rejects signs, exponents, spaces, empty parts and any
    non-zero digit finer than ``decimals`` -- exactness is the caller's contract.
    """
    if not isinstance(text, str) or not text or len(text) > 64:
        raise AmountError(f"not a decimal string: {text!r}")
    whole, dot, frac = text.partition(".")
    if not _digits(whole) or (dot and not _digits(frac)):
        raise AmountError(f"not a decimal string: {text!r}")
    if len(frac) > decimals:
        extra = frac[decimals:]
        if extra.strip("0"):
            raise AmountError(f"{text} has more than {decimals} decimals")
        frac = frac[:decimals]
    return int(whole) * 10**decimals + (int(frac) * 10 ** (decimals - len(frac)) if frac else 0)


def format_units(units: int, decimals: int) -> str:
    """Integer units back to the shortest exact decimal string (150000, 3 -> "150")."""
    sign = "-" if units < 0 else ""
    units = abs(units)
    if decimals == 0:
        return f"{sign}{units}"
    whole, frac = divmod(units, 10**decimals)
    if not frac:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{decimals}d}".rstrip("0")


def fee(notional: int, bps: int) -> int:
    """Fee in quote units for a notional; negative bps is a rebate. Rounds toward zero."""
    if bps >= 0:
        return notional * bps // 10_000
    return -(notional * -bps // 10_000)
