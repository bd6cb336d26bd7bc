"""The rewards actor: seasons, points, achievements, referrals and multipliers.

Points are ledger state like balances: every node and validator computes them from the
same blocks, so a leaderboard can be checked like the books. All amounts are integers in
millionths of a point (``MICRO``).

* **Seasons** (``SetSeason``, admin): a window of sequenced time and its weights. A fill
  inside the window earns its maker ``maker_weight`` percent of a point and its taker
  ``taker_weight`` percent per whole unit of the season's asset traded (only markets
  quoted in that asset count). Accounts whose name starts with ``@`` (the insurance fund,
  the backstop) earn nothing.
* **Accrual** runs in the settlement phase from the fills the block already produced
  (``AccruePoints``): the work is O(fills + accounts touched), one ``RewardUpdate`` event
  per account whose points moved.
* **Lending**: a claim in the season's asset earns ``lend_weight`` percent of a point per
  whole unit and day, credited at each movement of the claim (``LendMoved``: lends,
  redemptions, the auto-lend sweep) for the time since the one before.
* **Streaks**: the first trade of a UTC day of sequenced time extends the account's streak
  when it traded the day before (else starts it at 1) and earns ``STREAK_POINTS`` per day
  of streak, up to ``STREAK_CAP`` days.
* **Achievements**, each unlocked once a season with the block height: ``first-trade``,
  ``first-maker``, ``streak-3/7/30``, ``volume-10k/100k/1m`` (whole units of the season's
  asset; each with bonus points, ``MILESTONES``), ``first-referral`` (a referee joined),
  ``referred`` (joined with a code), ``first-lend``.
* **Referrals**: an account creates one code (``ReferralCode``); another joins with it once
  (``UseReferral``, never its own); the referrer then earns ``referral_bps`` of the
  referee's trading points as they accrue.
* **Multipliers** (``SetMultiplier``, admin): ``factor`` percent on the trading points
  (maker and taker, not bonuses) of an account, of a tag (the compliance profile's tags: a
  community), or of everyone, over a block range. Several that apply multiply. A range that
  is already past is applied at once to the trading points the accounts earned there: the
  history keeps, per account and season, the blocks it traded in and their points (at
  least the last ``HISTORY`` of them; a multiplier reaching back further than that does
  not reach the blocks forgotten).
"""

from __future__ import annotations

from typing import Any

from sortedcontainers import SortedList

from satchel.core.actor import dispatcher
from satchel.core.errors import Code
from satchel.core.messages import (
    AccruePoints, ConfigChanged, LeaderboardOf, ListAssetSpec, ListMarketSpec, ReferralCode, Restore, RewardsCommand,
    RewardsOf, RewardUpdate, SeasonSpec, SetMultiplier, SetProfile, SetSeason, StateOf, TxRejected, UseReferral,
)
from satchel.core.state import MultiplierState, RewardAccountState, RewardsState

MICRO = 1_000_000
DAY_US = 86_400_000_000
HISTORY = 1_000  # blocks an account traded in, kept per season (between this and twice this)
STREAK_POINTS = 10
STREAK_CAP = 7
MILESTONES = ((10_000, "volume-10k", 100), (100_000, "volume-100k", 1_000), (1_000_000, "volume-1m", 10_000))
STREAKS = ((3, "streak-3"), (7, "streak-7"), (30, "streak-30"))
FIRST_TRADE, FIRST_MAKER, FIRST_REFERRAL, REFERRED = "first-trade", "first-maker", "first-referral", "referred"
FIRST_LEND = "first-lend"
MAX_FACTOR = 10_000  # percent: x100
KINDS = ("maker", "taker", "streak", "milestone", "referral", "multiplier", "lending")


class _Account:
    """One account's season (mutable; private to the actor)."""

    __slots__ = ("points", "volume", "kinds", "last_day", "streak", "achievements", "heights", "traded", "referees",
                 "lent", "lent_since")

    def __init__(self) -> None:
        self.points = 0
        self.volume = 0
        self.kinds: dict[str, int] = {}
        self.last_day = -1
        self.streak = 0
        self.achievements: dict[str, int] = {}
        self.heights: list[int] = []
        self.traded: list[int] = []
        self.referees = 0
        self.lent = 0
        self.lent_since = 0


class Rewards:
    def __init__(self) -> None:
        self.seasons: dict[int, SeasonSpec] = {}
        self.accounts: dict[tuple[int, str], _Account] = {}
        self.boards: dict[int, SortedList] = {}  # season -> (-points, account)
        self.codes: dict[str, str] = {}  # referral code -> account
        self.code_of: dict[str, str] = {}  # account -> its code
        self.referrers: dict[str, str] = {}  # account -> its referrer
        self.tags: dict[str, tuple[str, ...]] = {}
        self.multipliers: list[MultiplierState] = []
        self.quotes: dict[str, str] = {}  # market -> quote asset
        self.decimals: dict[str, int] = {}
        self._factors: tuple[int, Any] = (-1, None)  # (height, the multipliers in force there)

    # ------------------------------------------------------------------ configuration

    def _list_asset(self, msg: ListAssetSpec) -> None:
        self.decimals[msg.spec.symbol] = msg.spec.decimals

    def _list_market(self, msg: ListMarketSpec) -> None:
        self.quotes[msg.spec.symbol] = msg.spec.quote

    def _command(self, msg: RewardsCommand) -> list:
        tx = msg.tx
        cls = tx.__class__
        if cls is SetSeason:
            return self._set_season(msg.seq, tx)
        if cls is SetMultiplier:
            return self._set_multiplier(msg.seq, msg.height, tx)
        if cls is ReferralCode:
            return self._referral_code(msg.seq, tx)
        if cls is UseReferral:
            return self._use_referral(msg.seq, msg.height, msg.timestamp, tx)
        if cls is SetProfile:
            if tx.tags:
                self.tags[tx.account] = tuple(sorted(dict.fromkeys(tx.tags)))
            else:
                self.tags.pop(tx.account, None)
            self._factors = (-1, None)
            return []
        raise ValueError(f"rewards: no command {cls.__name__}")

    def _set_season(self, seq: int, tx: SetSeason) -> list:
        s = tx.spec
        problem = ""
        if s.asset not in self.decimals:
            problem = f"Unknown asset {s.asset}"
        elif not 0 <= s.start < s.end:
            problem = "A season ends after it starts"
        elif not (0 <= s.maker_weight <= MAX_FACTOR and 0 <= s.taker_weight <= MAX_FACTOR and 0 <= s.referral_bps <= 10_000
                  and 0 <= s.lend_weight <= MAX_FACTOR):
            problem = "Weights are 0..10000 percent, the referral share 0..10000 bps"
        else:
            clash = [o.id for o in self.seasons.values() if o.id != s.id and o.start < s.end and s.start < o.end]
            if clash:
                problem = f"Overlaps season {clash[0]}"
        if problem:
            return [TxRejected(seq, tx.admin, Code.INVALID_SEASON, problem)]
        self.seasons[s.id] = s
        self.boards.setdefault(s.id, SortedList())
        return [ConfigChanged(seq, "season", str(s.id))]

    def _set_multiplier(self, seq: int, height: int, tx: SetMultiplier) -> list:
        if tx.scope not in ("account", "tag", "all") or (tx.scope == "all") != (tx.who == "") or \
                not 100 <= tx.factor <= MAX_FACTOR or tx.from_height < 1 or (tx.to_height and tx.to_height < tx.from_height):
            return [TxRejected(seq, tx.admin, Code.INVALID_MULTIPLIER, "Bad multiplier (scope, factor 100..10000 %, range)")]
        m = MultiplierState(seq, tx.scope, tx.who, tx.factor, tx.from_height, tx.to_height)
        self.multipliers.append(m)
        self._factors = (-1, None)
        out: list = [ConfigChanged(seq, "multiplier", f"{tx.scope}:{tx.who}")]
        last = min(tx.to_height or height - 1, height - 1)  # the part already past
        if tx.from_height > last or tx.factor == 100:
            return out
        for (season, account), a in self.accounts.items():  # admin transactions are rare: O(accounts)
            if not self._applies(m, account):
                continue
            extra = 0
            heights, traded = a.heights, a.traded
            for i, h in enumerate(heights):
                if tx.from_height <= h <= last:
                    more = traded[i] * tx.factor // 100 - traded[i]
                    traded[i] += more
                    extra += more
            if extra:
                a.kinds["multiplier"] = a.kinds.get("multiplier", 0) + extra
                self._add(season, account, a, extra)
                out.append(RewardUpdate(seq, season, account, a.points, extra))
        return out

    def _referral_code(self, seq: int, tx: ReferralCode) -> list:
        if tx.account in self.code_of:
            return [TxRejected(seq, tx.account, Code.INVALID_REFERRAL, "This account already has a referral code")]
        if tx.code in self.codes:
            return [TxRejected(seq, tx.account, Code.INVALID_REFERRAL, "This referral code is taken")]
        self.codes[tx.code] = tx.account
        self.code_of[tx.account] = tx.code
        return [ConfigChanged(seq, "referralCode", tx.account)]

    def _use_referral(self, seq: int, height: int, timestamp: int, tx: UseReferral) -> list:
        referrer = self.codes.get(tx.code)
        if referrer is None or referrer == tx.account or tx.account in self.referrers:
            why = ("Unknown referral code" if referrer is None else "An account cannot use its own code"
                   if referrer == tx.account else "This account already joined with a code")
            return [TxRejected(seq, tx.account, Code.INVALID_REFERRAL, why)]
        self.referrers[tx.account] = referrer
        out: list = [ConfigChanged(seq, "referral", tx.account)]
        season = self._season_at(timestamp)
        if season is not None:
            for account, name in ((tx.account, REFERRED), (referrer, FIRST_REFERRAL)):
                a = self._account(season.id, account)
                if account == referrer:
                    a.referees += 1
                if name not in a.achievements:
                    a.achievements[name] = height
                    out.append(RewardUpdate(seq, season.id, account, a.points, 0, (name,)))
        return out

    # ------------------------------------------------------------------ accrual

    def _season_at(self, timestamp: int) -> SeasonSpec | None:
        for s in self.seasons.values():
            if s.start <= timestamp < s.end:
                return s
        return None

    def _account(self, season: int, account: str) -> _Account:
        a = self.accounts.get((season, account))
        if a is None:
            a = self.accounts[(season, account)] = _Account()
            self.boards[season].add((0, account))
        return a

    def _add(self, season: int, account: str, a: _Account, delta: int) -> None:
        board = self.boards[season]
        board.remove((-a.points, account))
        a.points += delta
        board.add((-a.points, account))

    def _applies(self, m: MultiplierState, account: str) -> bool:
        return m.scope == "all" or (m.scope == "account" and m.who == account) or (
            m.scope == "tag" and m.who in self.tags.get(account, ()))

    def _factor(self, height: int, account: str) -> int:
        """The product of the multipliers in force for the account at ``height``, percent."""
        at, active = self._factors
        if at != height:
            active = [m for m in self.multipliers if m.from_height <= height and (not m.to_height or height <= m.to_height)]
            self._factors = (height, active)
        factor = 100
        for m in active:
            if self._applies(m, account):
                factor = factor * m.factor // 100
        return factor

    def _accrue(self, msg: AccruePoints) -> list:
        season = self._season_at(msg.timestamp)
        if season is None:
            return []
        asset = season.asset
        unit = 100 * 10 ** self.decimals[asset]
        quotes = self.quotes
        maker_w, taker_w = season.maker_weight * MICRO, season.taker_weight * MICRO
        out: list = self._lending(season, msg) if msg.moves else []
        earned: dict[str, list[int]] = {}  # account -> [maker points, taker points, volume], in order of first fill
        for f in msg.fills:
            if quotes.get(f.symbol) != asset:
                continue
            q = f.quote
            for account, weight, k in ((f.maker_account, maker_w, 0), (f.taker_account, taker_w, 1)):
                if account[:1] == "@":
                    continue
                e = earned.get(account)
                if e is None:
                    e = earned[account] = [0, 0, 0]
                e[k] += q * weight // unit
                e[2] += q
        if not earned:
            return out
        shares: dict[str, int] = {}
        height, sid, seq = msg.height, season.id, msg.last_seq
        day = msg.timestamp // DAY_US
        whole = unit // 100
        for account, (maker, taker, volume) in earned.items():
            a = self._account(sid, account)
            factor = self._factor(height, account) if self.multipliers else 100
            if factor != 100:
                maker, taker = maker * factor // 100, taker * factor // 100
            kinds = a.kinds
            kinds["maker"] = kinds.get("maker", 0) + maker
            kinds["taker"] = kinds.get("taker", 0) + taker
            trading = maker + taker
            if a.heights and a.heights[-1] == height:
                a.traded[-1] += trading
            else:
                a.heights.append(height)
                a.traded.append(trading)
                if len(a.heights) > 2 * HISTORY:
                    del a.heights[:HISTORY], a.traded[:HISTORY]
            a.volume += volume
            delta = trading
            unlocked: list[str] = []
            got = a.achievements
            if FIRST_TRADE not in got:
                got[FIRST_TRADE] = height
                unlocked.append(FIRST_TRADE)
            if maker and FIRST_MAKER not in got:
                got[FIRST_MAKER] = height
                unlocked.append(FIRST_MAKER)
            if a.last_day != day:
                a.streak = a.streak + 1 if a.last_day == day - 1 else 1
                a.last_day = day
                bonus = STREAK_POINTS * min(a.streak, STREAK_CAP) * MICRO
                kinds["streak"] = kinds.get("streak", 0) + bonus
                delta += bonus
                for days, name in STREAKS:
                    if a.streak >= days and name not in got:
                        got[name] = height
                        unlocked.append(name)
            traded_whole = a.volume // whole
            for threshold, name, bonus in MILESTONES:
                if traded_whole >= threshold and name not in got:
                    got[name] = height
                    unlocked.append(name)
                    kinds["milestone"] = kinds.get("milestone", 0) + bonus * MICRO
                    delta += bonus * MICRO
            self._add(sid, account, a, delta)
            out.append(RewardUpdate(seq, sid, account, a.points, delta, tuple(unlocked)))
            referrer = self.referrers.get(account)
            if referrer is not None and season.referral_bps:
                share = trading * season.referral_bps // 10_000
                if share:
                    shares[referrer] = shares.get(referrer, 0) + share
        for referrer, share in shares.items():
            r = self._account(sid, referrer)
            r.kinds["referral"] = r.kinds.get("referral", 0) + share
            self._add(sid, referrer, r, share)
            out.append(RewardUpdate(seq, sid, referrer, r.points, share))
        return out

    def _lending(self, season: SeasonSpec, msg: AccruePoints) -> list:
        """Lending points, credited at each movement of an account's claim in the season's
        asset for the time since the one before: ``lend_weight`` percent of a point per whole
        unit per day, on the claim as it was (O(movements); lenders who do not move wait)."""
        out: list = []
        asset, ts, sid = season.asset, msg.timestamp, season.id
        scale = 100 * 10 ** self.decimals[asset] * DAY_US
        for ev in msg.moves:
            if ev.asset != asset or ev.kind not in ("Lend", "LendRedeem") or ev.account[:1] == "@":
                continue
            a = self._account(sid, ev.account)
            delta = 0
            if a.lent and season.lend_weight:
                since = max(a.lent_since, season.start)
                delta = a.lent * (ts - since) * season.lend_weight * MICRO // scale
            a.lent, a.lent_since = ev.lent, ts
            unlocked: tuple[str, ...] = ()
            if ev.kind == "Lend" and FIRST_LEND not in a.achievements:
                a.achievements[FIRST_LEND] = msg.height
                unlocked = (FIRST_LEND,)
            if delta:
                a.kinds["lending"] = a.kinds.get("lending", 0) + delta
                self._add(sid, ev.account, a, delta)
            if delta or unlocked:
                out.append(RewardUpdate(msg.last_seq, sid, ev.account, a.points, delta, unlocked))
        return out

    # ------------------------------------------------------------------ reads

    def _latest(self, season: int | None) -> SeasonSpec | None:
        if season is not None:
            return self.seasons.get(season)
        return max(self.seasons.values(), key=lambda s: s.start, default=None)

    def _rewards_of(self, msg: RewardsOf) -> dict | None:
        season = self._latest(msg.season)
        if season is None:
            return None
        a = self.accounts.get((season.id, msg.account)) or _Account()
        board = self.boards[season.id]
        rank = board.index((-a.points, msg.account)) + 1 if (season.id, msg.account) in self.accounts else None
        return {
            "season": _season_view(season), "account": msg.account, "points": a.points, "rank": rank,
            "volume": a.volume, "kinds": {k: a.kinds.get(k, 0) for k in KINDS},
            "streak": a.streak, "lastDay": a.last_day, "achievements": dict(sorted(a.achievements.items())),
            "referralCode": self.code_of.get(msg.account), "referrer": self.referrers.get(msg.account),
            "referees": a.referees, "history": list(zip(a.heights, a.traded)), "lent": a.lent, "lentSince": a.lent_since,
            "multipliers": [_multiplier_view(m) for m in self.multipliers if self._applies(m, msg.account)],
        }

    def _leaderboard(self, msg: LeaderboardOf) -> dict | None:
        season = self._latest(msg.season)
        if season is None:
            return None
        rows = [{"rank": i + 1, "account": account, "points": -neg}
                for i, (neg, account) in enumerate(self.boards[season.id].islice(0, max(0, msg.limit)))]
        return {"season": _season_view(season), "accounts": len(self.boards[season.id]), "rows": rows}

    # ------------------------------------------------------------------ state

    def _state(self, msg: StateOf) -> RewardsState | None:
        if not (self.seasons or self.codes or self.tags or self.multipliers):
            return None
        return RewardsState(
            seasons=[self.seasons[i] for i in sorted(self.seasons)],
            accounts=[RewardAccountState(season, account, a.points, a.volume, sorted(a.kinds.items()), a.last_day,
                                         a.streak, sorted(a.achievements.items()), list(a.heights), list(a.traded),
                                         a.referees, a.lent, a.lent_since)
                      for (season, account), a in sorted(self.accounts.items())],
            codes=sorted(self.codes.items()),
            referrers=sorted(self.referrers.items()),
            tags=[(account, list(tags)) for account, tags in sorted(self.tags.items())],
            multipliers=list(self.multipliers),
        )

    def _restore(self, msg: Restore) -> None:
        state: RewardsState | None = msg.state
        if state is None:
            return
        self.seasons = {s.id: s for s in state.seasons}
        self.boards = {s.id: SortedList() for s in state.seasons}
        for row in state.accounts:
            a = _Account()
            a.points, a.volume, a.kinds, a.last_day, a.streak = row.points, row.volume, dict(row.kinds), row.last_day, row.streak
            a.achievements, a.heights, a.traded, a.referees = dict(row.achievements), list(row.heights), list(row.traded), row.referees
            a.lent, a.lent_since = row.lent, row.lent_since
            self.accounts[(row.season, row.account)] = a
            self.boards[row.season].add((-a.points, row.account))
        self.codes = dict(state.codes)
        self.code_of = {account: code for code, account in state.codes}
        self.referrers = dict(state.referrers)
        self.tags = {account: tuple(tags) for account, tags in state.tags}
        self.multipliers = list(state.multipliers)
        self._factors = (-1, None)

    handle = dispatcher({
        AccruePoints: _accrue, RewardsCommand: _command, ListAssetSpec: _list_asset, ListMarketSpec: _list_market,
        RewardsOf: _rewards_of, LeaderboardOf: _leaderboard, StateOf: _state, Restore: _restore,
    })


def _season_view(s: SeasonSpec) -> dict:
    return {"id": s.id, "name": s.name, "start": s.start, "end": s.end, "asset": s.asset,
            "makerWeight": s.maker_weight, "takerWeight": s.taker_weight, "referralBps": s.referral_bps,
            "lendWeight": s.lend_weight}


def _multiplier_view(m: MultiplierState) -> dict:
    return {"seq": m.seq, "scope": m.scope, "who": m.who, "factor": m.factor, "fromHeight": m.from_height,
            "toHeight": m.to_height}
