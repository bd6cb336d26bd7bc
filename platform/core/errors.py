"""Error codes every front end answers with, and the exception that carries them.

Codes are strings that never change meaning (clients dispatch on them); subscription
errors use Backpack's numeric codes (4006 = invalid stream). The deterministic core
raises ``RequestError`` while turning signed parameters into a transaction, so the
gateway, a REST front end and the validator all refuse the same input the same way.
"""

from __future__ import annotations

from enum import StrEnum

class Code(StrEnum):
    """Every error code a request or transaction can be refused with. The values are the
    strings clients see (and events carry); they never change meaning."""

    INVALID_JSON = "INVALID_JSON"
    INVALID_REQUEST = "INVALID_CLIENT_REQUEST"
    UNKNOWN_METHOD = "UNKNOWN_METHOD"
    INVALID_DECIMAL = "INVALID_DECIMAL"
    INVALID_PRICE = "INVALID_PRICE"
    INVALID_QUANTITY = "INVALID_QUANTITY"
    INVALID_SYMBOL = "INVALID_SYMBOL"
    INVALID_ASSET = "INVALID_ASSET"
    INVALID_MARKET = "INVALID_MARKET"
    INVALID_FEES = "INVALID_FEES"
    INVALID_DEPOSIT = "INVALID_DEPOSIT"
    INVALID_LEVERAGE = "INVALID_LEVERAGE"
    INVALID_WINDOW = "INVALID_WINDOW"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    INSUFFICIENT_LIQUIDITY = "INSUFFICIENT_LIQUIDITY"  # a lending pool has not that much cash
    AMOUNT_TOO_SMALL = "AMOUNT_TOO_SMALL"  # worth no share of a lending pool at its index
    BORROW_LIMIT = "BORROW_LIMIT"  # the borrow would leave equity below initial margin
    INSUFFICIENT_MARGIN = "INSUFFICIENT_MARGIN"  # a withdrawal would leave equity below initial margin
    INVALID_CHAIN = "INVALID_CHAIN"
    INVALID_ADDRESS = "INVALID_ADDRESS"
    CHAIN_PAUSED = "CHAIN_PAUSED"  # deposits and withdrawals of the chain are paused; funds stay put
    ALREADY_CREDITED = "ALREADY_CREDITED"  # this (chain, tx hash, log index) was credited before
    INVALID_WITHDRAWAL = "INVALID_WITHDRAWAL"  # no such open withdrawal, or not in a state for this report
    PRODUCT_RESTRICTED = "PRODUCT_RESTRICTED"  # the account may not use this product (compliance)
    TIER_LIMIT = "TIER_LIMIT"  # beyond the account's KYC tier limit (withdrawals a day)
    WITHDRAWAL_LIMIT = "WITHDRAWAL_LIMIT"  # the account has its most withdrawals on their way already
    INVALID_SEASON = "INVALID_SEASON"  # a points season that overlaps another, ends before it starts, ...
    INVALID_MULTIPLIER = "INVALID_MULTIPLIER"
    INVALID_REFERRAL = "INVALID_REFERRAL"  # unknown, taken or own referral code, or already referred
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    UNAUTHORIZED = "UNAUTHORIZED"
    INVALID_SIGNATURE = "INVALID_SIGNATURE"
    EXPIRED = "EXPIRED"
    DUPLICATE_REQUEST = "DUPLICATE_REQUEST"
    TOO_MANY_REQUESTS = "TOO_MANY_REQUESTS"
    RESOURCE_NOT_FOUND = "RESOURCE_NOT_FOUND"
    MAINTENANCE = "MAINTENANCE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


# the names the edges import
INVALID_JSON = Code.INVALID_JSON
INVALID_REQUEST = Code.INVALID_REQUEST
UNKNOWN_METHOD = Code.UNKNOWN_METHOD
INVALID_DECIMAL = Code.INVALID_DECIMAL
INVALID_PRICE = Code.INVALID_PRICE
INVALID_QUANTITY = Code.INVALID_QUANTITY
INVALID_SYMBOL = Code.INVALID_SYMBOL
INVALID_ASSET = Code.INVALID_ASSET
PAYLOAD_TOO_LARGE = Code.PAYLOAD_TOO_LARGE
UNAUTHORIZED = Code.UNAUTHORIZED
INVALID_SIGNATURE = Code.INVALID_SIGNATURE
EXPIRED = Code.EXPIRED
TOO_MANY_REQUESTS = Code.TOO_MANY_REQUESTS
RESOURCE_NOT_FOUND = Code.RESOURCE_NOT_FOUND
MAINTENANCE = Code.MAINTENANCE
INTERNAL_ERROR = Code.INTERNAL_ERROR

# subscription errors keep Backpack's numeric codes
INVALID_STREAM = 4006
INVALID_SUBSCRIPTION = 4000
SUBSCRIPTION_AUTH = 4003


class RequestError(Exception):
    def __init__(self, code: str | int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
