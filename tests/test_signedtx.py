"""A validator rebuilds each transaction from its signed parameters: a reused signature fails."""

from __future__ import annotations

import msgspec
import pytest

from conftest import LISTING, signed_order
from satchel import config
from satchel.core import instructions
from satchel.core.errors import RequestError
from satchel.core.messages import AssetSpec, CancelOrder, ChainDeposit, block_encoder
from satchel.verify.signedtx import matches
from satchel.signing import Keypair, auth_for, batch_auth_for, signed_message, signing_string, verify


def test_matching_transactions_pass():
    key = Keypair.generate()
    assert matches(signed_order(key), LISTING)
    assert matches(signed_order(key, clientId=7, timeInForce="IOC", postOnly=False), LISTING)
    cancel = CancelOrder(key.api_key, "SOL_USDC", 42, None, auth_for(key, "orderCancel", {"symbol": "SOL_USDC", "orderId": 42}))
    assert matches(cancel, LISTING)


def test_altered_transactions_fail():
    key = Keypair.generate()
    tx = signed_order(key)
    # (another account is caught by the signature itself: it is checked against tx.account's key)
    for change in ({"price": tx.price + 1}, {"quantity": 1}, {"side": 1}, {"tif": 1}, {"symbol": "ETH_USDC"}):
        assert not matches(msgspec.structs.replace(tx, **change), LISTING), change
    cancel = CancelOrder(key.api_key, "SOL_USDC", 42, None, tx.auth)  # an order's signature on a cancel
    assert not matches(cancel, LISTING)


@pytest.mark.parametrize("note", ["a&b", "x=y&z=w", "a b/c:%", "&timestamp=1&window=2", "ünï&cøde"])
def test_reserved_characters_in_values_rebuild_exactly(note):
    """Audit finding 2: a value holding '&' or '=' once made every validator stop for good."""
    key = Keypair.generate()
    tx = signed_order(key, note=note)
    assert matches(tx, LISTING)
    message = signed_message("orderExecute", tx.auth)
    assert verify(key.public, (message,), tx.auth.signature) == message


def test_percent_encoded_signing_is_understood():
    key = Keypair.generate()
    tx = signed_order(key, note="x y/z:%")
    texts = dict(tx.auth.params)
    msg = signing_string("orderExecute", texts, tx.auth.timestamp, tx.auth.window, encoded=True)
    assert b"note=x%20y%2Fz%3A%25" in msg  # Python's quote(safe=''), as ccxt signs
    auth = msgspec.structs.replace(tx.auth, encoded=True, signature=key.sign(msg))
    assert signed_message("orderExecute", auth) == msg
    assert matches(msgspec.structs.replace(tx, auth=auth), LISTING)


@pytest.mark.parametrize("client_id", ["1e3", "1.0", "-1", "4294967296", " 7", "0x10", "true"])
def test_client_id_must_be_a_uint32_integer(client_id):
    """Audit finding 12: '1e3' and 1.0 were taken as client ids."""
    key = Keypair.generate()
    texts = {"symbol": "SOL_USDC", "side": "Bid", "orderType": "Limit", "price": "150", "quantity": "1", "clientId": client_id}
    with pytest.raises(RequestError) as err:
        instructions.build("orderExecute", texts, key.api_key, LISTING)
    assert err.value.code == "INVALID_CLIENT_REQUEST"
    texts["clientId"] = "4294967295"
    assert instructions.build("orderExecute", texts, key.api_key, LISTING).client_id == 2**32 - 1


def test_only_the_canonical_spelling_of_a_key_is_an_account():
    """Audit finding 11: one public key had four valid base64 spellings, each its own account."""
    import base64

    key = Keypair.generate()
    canonical = key.api_key
    last = canonical[42]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    respelled = canonical[:42] + alphabet[alphabet.index(last) + 1] + "="
    assert base64.b64decode(respelled) == key.public  # base64 itself accepts it...
    assert instructions.is_api_key(canonical) and not instructions.is_api_key(respelled)  # ...Satchel does not
    admin = Keypair.generate()
    with pytest.raises(RequestError):
        instructions.build("deposit", {"account": respelled, "asset": "USDC", "quantity": "1"}, admin.api_key, LISTING)


def test_genesis_listings_rebuild_from_their_signed_parameters():
    admin = Keypair.generate()
    for tx in config.genesis(config.load(), admin):
        assert matches(tx, LISTING), tx
    assert LISTING.assets["USDC"] == AssetSpec("USDC", 6)


def _report(key: Keypair, quantity: str) -> ChainDeposit:
    """A chain adapter's report of three deposits, built and signed as the gateway takes it."""
    account = Keypair.generate().api_key
    items = [{"chain": "sim", "txHash": f"0x{i:064x}", "logIndex": str(i), "account": account, "symbol": "USDC",
              "quantity": quantity} for i in range(3)]
    tx = instructions.build("depositConfirmed", items, key.api_key, LISTING)
    return msgspec.structs.replace(tx, auth=batch_auth_for(key, "depositConfirmed", items))


DECIMALS = {symbol: asset.decimals for symbol, asset in LISTING.assets.items()}


def _signature_holds(key: Keypair, tx: ChainDeposit) -> bool:
    auth = instructions.full_auth(tx, LISTING)
    return verify(key.public, (signed_message("depositConfirmed", auth),), auth.signature) is not None


def test_a_report_in_canonical_texts_is_journaled_once_and_rebuilt():
    key = Keypair.generate()
    tx = _report(key, "3.5")
    journaled = instructions.compact(tx, DECIMALS)
    assert journaled.auth.batch == () and journaled.auth.params == ()
    assert len(block_encoder.encode([journaled])) < 0.6 * len(block_encoder.encode([tx]))
    assert instructions.full_auth(journaled, LISTING) == tx.auth
    assert matches(journaled, LISTING) and _signature_holds(key, journaled)
    # a deposit changed in the record: the texts rebuilt from it are not what was signed
    first = msgspec.structs.replace(journaled.deposits[0], amount=10**12)
    altered = msgspec.structs.replace(journaled, deposits=(first, *journaled.deposits[1:]))
    assert not _signature_holds(key, altered)


def test_a_report_in_other_texts_keeps_them_as_signed():
    key = Keypair.generate()
    tx = _report(key, "3.50")  # 3.5 is written back "3.5": the record keeps what was signed
    assert instructions.compact(tx, DECIMALS) is tx
    assert matches(tx, LISTING) and _signature_holds(key, tx)
