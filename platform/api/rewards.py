"""Points seasons at the edge: the public ``leaderboard`` stream and the payloads of the
rewards requests and of the private ``account.rewardUpdate`` stream.

``Leaderboard`` is a node subscriber like ``PlatformStats``: when a durable block moved
someone's points (``RewardUpdate`` events) and its timestamp is at least a second of
sequenced time past the last frame's, it reads the season's top accounts from the rewards
actor (one typed read queued behind the block, so the frame describes exactly the state
after a published block) and sends one frame, encoded once, to every subscriber; a new
subscriber first gets the last frame. So the stream is throttled by sequenced time, never
by the wall clock, and a node whose points stand still sends nothing.

Points are kept in millionths (``actors.rewards.MICRO``) and shown as decimal strings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import trio

from satchel.api.caller import Caller, Replies, Signature
from satchel.api.marketdata import MarketData
from satchel.api.requests import Requests, acked, request
from satchel.core import instructions
from satchel.core.amounts import format_units
from satchel.core.errors import RESOURCE_NOT_FOUND
from satchel.core.messages import BlockHeader, LeaderboardOf, Query, RewardsOf, RewardUpdate

STREAM = "leaderboard"
PRIVATE_STREAM = "account.rewardUpdate"
EVERY_US = 1_000_000
TOP = 20  # accounts in a stream frame
POINT_DECIMALS = 6  # as ``marketdata.reward_frame`` shows them

Read = Callable[[Query, Callable[[Any], None]], None]


def points(micro: int) -> str:
    return format_units(micro, POINT_DECIMALS)


def board_view(answer: dict | None) -> dict | None:
    """A ``LeaderboardOf`` answer as the API shows it (points as decimal strings)."""
    if answer is None:
        return None
    return {**answer, "rows": [{**r, "points": points(r["points"])} for r in answer["rows"]]}


def rewards_view(answer: dict | None) -> dict | None:
    """A ``RewardsOf`` answer as the API shows it."""
    if answer is None:
        return None
    view = dict(answer)
    view["points"] = points(answer["points"])
    view["kinds"] = {k: points(v) for k, v in answer["kinds"].items()}
    view["history"] = [{"height": h, "points": points(p)} for h, p in answer["history"]]
    return view


class Leaderboard:
    def __init__(self, marketdata: MarketData, read: Read, *, every_us: int = EVERY_US, top: int = TOP):
        self.md = marketdata
        self._read = read
        self.every_us = every_us
        self.top = top
        self._frame: str | None = None
        self._next = 0
        self._moved = False  # points moved since the last frame
        self._pending = False
        self._ts = 0
        marketdata.add_feed(STREAM, lambda: [] if self._frame is None else [self._frame])

    def publish(self, header: BlockHeader, events: list) -> None:
        if not self._moved:
            self._moved = any(ev.__class__ is RewardUpdate for ev in events)
        self._ts = header.timestamp
        if self._moved and header.timestamp >= self._next and not self._pending:
            self._take()

    def _take(self) -> None:
        self._pending = True
        self._moved = False
        try:
            self._read(Query("rewards", LeaderboardOf(None, self.top)), self._taken)
        except trio.ClosedResourceError:  # shutting down
            self._pending = False

    def _taken(self, answer: Any) -> None:
        self._pending = False
        if answer is None:
            return
        self._next = self._ts + self.every_us
        data = {"e": "leaderboard", "E": self._ts, **board_view(answer)}
        self._frame = msgspec.json.encode({"stream": STREAM, "data": data}).decode()
        self.md.broadcast(STREAM, self._frame)


class RewardsParams(msgspec.Struct):
    account: str | None = None
    season: str | None = None


class LeaderboardParams(msgspec.Struct):
    season: str | None = None
    limit: str | None = None


class RewardsRequests(Requests):
    """Points seasons, referrals and the leaderboard."""

    # points seasons (``actors.rewards``)
    adminSetSeason = acked("adminSetSeason", """A points season (``{"id", "name", "start", "end"
        (ms of sequenced time), "asset", "makerWeight", "takerWeight" (percent of a point per
        whole unit traded), "referralBps"}``; admin).""")
    adminSetMultiplier = acked("adminSetMultiplier", """A points multiplier (``{"factor"
        (decimal), "fromHeight", "toHeight", "account" or "tag" or neither for everyone}``;
        admin); a range already past applies to the points earned there.""")
    referralCodeCreate = acked("referralCodeCreate", """The account's referral code (``{"code"}``).""")
    referralCodeUse = acked("referralCodeUse", """Join under a referrer's code (``{"code"}``), once.""")

    @request
    def rewardsQuery(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """The account's points in a season (``season``, default the latest): total and by
        source, rank, volume, streak, achievements with their block heights, referral code,
        referrer and referees, the points of each block it traded in (the last 1,000 at
        least) and the multipliers that apply. The admin key may name another ``account``."""
        params = instructions.params_of(RewardsParams, texts)
        season = instructions.uint(params.season, "season", 2**32)
        signed = self.check_signature("rewardsQuery", texts, sig)
        account = self._subject(signed.account, params.account, "rewards")
        query = Query("rewards", RewardsOf(account, season))
        replies = caller.replies
        caller.verified(req_id, signed, lambda m: self._read([query], lambda a: self._found(replies, req_id,
                                                                                             rewards_view(a[0]))))

    @request
    def leaderboard(self, caller: Caller, req_id: Any, texts: Mapping[str, str], sig: Signature) -> None:
        """A season's leaderboard (``season``, default the latest; ``limit`` 1..1000, default
        100): ``{season, accounts, rows: [{rank, account, points}]}`` as of the last block."""
        params = instructions.params_of(LeaderboardParams, texts)
        season = instructions.uint(params.season, "season", 2**32)
        limit = instructions.page_limit(params.limit, self.max_page, 100)
        replies = caller.replies
        self._read([Query("rewards", LeaderboardOf(season, limit))],
                   lambda a: self._found(replies, req_id, board_view(a[0])))

    @staticmethod
    def _found(replies: Replies, req_id: Any, answer: Any) -> None:
        if answer is None:
            replies.error(req_id, RESOURCE_NOT_FOUND, "No such season")
        else:
            replies.result(req_id, answer)
