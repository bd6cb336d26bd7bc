"""Does a signed request say what the transaction says?

A valid signature only proves the account signed *some* parameters. A validator also
rebuilds the transaction from the signed parameters kept in the journal -- with the
same core function the gateway used (``instructions.build``) -- and requires it to
equal the journaled transaction, so a node cannot reuse a signature for a different
price, quantity, side or account.
"""

from __future__ import annotations

from typing import Any

import msgspec

from satchel.core import instructions
from satchel.core.errors import RequestError


def matches(tx: Any, listing: instructions.Listing) -> bool:
    """True if the transaction is exactly what its signed parameters ask for."""
    decl = instructions.BY_TX.get(tx.__class__)
    if decl is None or tx.auth is None:
        return False
    try:
        auth = instructions.full_auth(tx, listing)
        expected = instructions.build(decl.name, instructions.signed_params(auth), decl.signer(tx), listing)
    except RequestError:
        return False
    return expected == msgspec.structs.replace(tx, auth=None)
