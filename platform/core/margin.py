"""Margin arithmetic on integers: margin fractions, collateral weights, equity terms.

Shared by the margin engine (which enforces it) and the edges (which show it), so a
position's IMF on the wire is the one pre-trade used. Fractions are in parts per
billion (``PPB``); notionals are in the quote asset's smallest units, and the square
roots of Backpack's ``sqrt`` functions are taken of the notional in whole quote units
(``isqrt``, rounded down).

Rounding: a margin requirement ``notional x fraction / PPB`` rounds up (the exchange
never asks for less than the exact requirement); a collateral value rounds down (it
never counts more than the exact value). Both directions favour solvency.
"""

from __future__ import annotations

from math import isqrt

from satchel.core.messages import PPB, AssetSpec, PerpSpec


def div0(a: int, b: int) -> int:
    """a / b rounded toward zero (b > 0)."""
    return a // b if a >= 0 else -(-a // b)


def share(total: int, part: int, whole: int) -> int:
    """``total * part / whole`` rounded toward zero: a share of a signed amount."""
    return div0(total * part, whole)


def _root(notional: int, quote_unit: int) -> int:
    return isqrt(max(notional, 0) // quote_unit)


def imf(spec: PerpSpec, notional: int, quote_unit: int, leverage: int = 0) -> int:
    """Initial margin fraction (PPB): max(base, 1/leverage, factor x sqrt(notional))."""
    lev = leverage if 0 < leverage < spec.max_leverage else spec.max_leverage
    return max(spec.imf_base, PPB // lev, spec.imf_factor * _root(notional, quote_unit))


def mmf(spec: PerpSpec, notional: int, quote_unit: int) -> int:
    """Maintenance margin fraction (PPB): max(base, factor x sqrt(notional))."""
    return max(spec.mmf_base, spec.mmf_factor * _root(notional, quote_unit))


def requirement(notional: int, fraction: int) -> int:
    """Margin needed for a notional at a fraction, rounded up."""
    return -(-notional * fraction // PPB)


def collateral_weight(asset: AssetSpec, notional: int, quote_unit: int) -> int:
    """An asset's collateral weight (PPB) at a holding's notional: the configured weight,
    shrinking with size as min(weight, 1.1 / (penalty x sqrt(notional) + 1))."""
    if not asset.collateral_weight:
        return 0
    if not asset.haircut_penalty:
        return asset.collateral_weight
    shrunk = 11 * PPB * PPB // (10 * (asset.haircut_penalty * _root(notional, quote_unit) + PPB))
    return min(asset.collateral_weight, shrunk)


def notional(size: int, price: int, notional_mult: int) -> int:
    """|size| x price in quote units."""
    return abs(size) * price * notional_mult


def autoclose(maintenance_fraction: int, divisor: int, offset: int) -> int:
    """The auto-close margin fraction (PPB): max(MMF / divisor, MMF - offset)."""
    return max(maintenance_fraction // divisor if divisor else 0, maintenance_fraction - offset)
