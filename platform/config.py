"""Node configuration: the packaged defaults, an optional TOML file, and the genesis.

Markets and assets are written as decimal strings for people; ``market_spec`` turns
them into the integer ``MarketSpec`` the engine uses, refusing any combination whose
notional would not be a whole number of the quote asset's smallest unit. They reach
the engine only as admin transactions in the genesis block, so a journal carries its
own configuration and replays without this file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

if TYPE_CHECKING:
    from satchel.signing import Keypair

from satchel.core.amounts import asset_decimals, decimals_of, to_units
from satchel.core.lending import LendingSpec, spec_problem
from satchel.core.messages import (
    AssetSpec, ChainSpec, ListAsset, ListMarket, MarginSpec, MarketSpec, PerpSpec, SetAdmin, SetChain, SetLending, SetMargin,
)


DEFAULTS = Path(__file__).with_name("defaults.toml")


class ConfigError(ValueError):
    pass


class NodeSettings(msgspec.Struct, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8765
    block_max_txs: int = 4096
    segment_bytes: int = 64 << 20
    snapshot_blocks: int = 10_000


class GatewaySettings(msgspec.Struct, frozen=True):
    max_frame_bytes: int = 16384
    rate_per_second: float = 2000.0
    rate_burst: float = 4000.0
    send_buffer_frames: int = 4096
    send_buffer_bytes: int = 4 << 20
    max_page: int = 1000
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    verify_processes: int = 1  # 0 = verify in threads of this process instead
    max_backlog: int = 100_000  # signed requests are refused while more than this wait
    max_connections: int = 10_000  # WebSocket connections at once; more are answered HTTP 503
    # an empty depth delta to a quiet book's subscribers this often (0: never); see defaults.toml
    depth_heartbeat_ms: Annotated[int, msgspec.Meta(ge=0)] = 100


class AssetConfig(msgspec.Struct, frozen=True):
    symbol: str
    decimals: int
    collateral_weight: str = "0"  # fraction of its value that counts as collateral
    haircut_penalty: str = "0"  # the weight shrinks with size: min(weight, 1.1 / (penalty * sqrt(notional) + 1))


class PerpConfig(msgspec.Struct, frozen=True):
    """A perpetual's risk parameters as people write them (fractions as decimals)."""

    imf_base: str = "0.02"
    imf_factor: str = "0.0001275"
    mmf_base: str = "0.0125"
    mmf_factor: str = "0.0000765"
    max_leverage: int = 50
    open_interest_limit: str = "1000000"  # in the base asset
    band_min: str = "0.9"  # limit prices within mark * [band_min, band_max]
    band_max: str = "1.1"
    impact_max: str = "1.05"  # a taker bid fills no higher than best ask * impact_max
    impact_min: str = "0.95"
    mark_band: str = "0.05"  # the mark stays within index +- index * mark_band
    funding_interval_s: int = 3600
    funding_floor: str = "-0.01"  # per interval (100 bps)
    funding_cap: str = "0.01"
    stale_index_s: int = 30


class MarketConfig(msgspec.Struct, frozen=True):
    symbol: str
    base: str
    quote: str
    tick_size: str
    step_size: str
    min_quantity: str
    min_notional: str
    maker_fee_bps: int = 0
    taker_fee_bps: int = 0
    price_band_bps: int = 0
    perp: PerpConfig | None = None


class MarginConfig(msgspec.Struct, frozen=True):
    settle_interval_s: int = 10
    sample_interval_s: int = 1
    open_interest_interval_s: int = 60
    liquidation_fee_bps: int = 50
    liquidation_slice: str = "0.25"
    autoclose_divisor: int = 2
    autoclose_offset: str = "0.005"
    backstop: str = ""  # the backstop liquidity account's API key ("" = none)
    settlement_asset: str = "USDC"


class LendingConfig(msgspec.Struct, frozen=True):
    """One asset's borrow/lend curve as people write it (annual rates and fractions as decimals)."""

    base_rate: str = "0"
    slope1: str = "0.04"  # borrow rate added from 0 to the optimal utilization
    slope2: str = "0.75"  # borrow rate added from the optimal utilization to 100%
    optimal_utilization: str = "0.8"
    reserve_factor: str = "0.1"  # the reserve's share of borrowers' interest
    borrow_imf: str = "0.1"  # initial margin of a borrow, as a fraction of its value (10x)
    borrow_mmf: str = "0.05"  # maintenance margin of a borrow
    max_utilization: str = "0.95"  # an account's own borrows stop here: lenders can redeem the rest


class ChainConfig(msgspec.Struct, frozen=True):
    """One chain the node takes deposits from (``[chains.<name>]``)."""

    kind: str = "sim"  # "sim": the embedded simulated chain; "evm": an Ethereum JSON-RPC chain
    assets: list[str] = []
    confirmations: int = 3  # blocks a deposit waits before it is credited
    hot_limit: dict[str, str] = {}  # asset -> decimal: what the hot wallet keeps; the rest goes to cold storage
    block_ms: int = 500  # sim: one block this often
    providers: list[str] = []  # evm: JSON-RPC URLs, tried in order
    tokens: dict[str, str] = {}  # evm: asset -> its ERC-20 contract address; an asset not here is the native coin
    chain_id: int = 0  # evm: the chain id transactions are signed for; 0: ask the provider
    # evm: the gas tank's private key (hex), a file in the node's data directory unless absolute;
    # "": chain-<name>-gas.key there, created on first use (fund its address with the native coin)
    gas_key: str = ""


class OracleSettings(msgspec.Struct, frozen=True):
    """``[oracle]`` in the node's TOML configuration."""

    seed: int = 7
    interval_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0  # random walk: one step per market this often
    step_bps: Annotated[float, msgspec.Meta(ge=0)] = 10.0  # a step's standard deviation, in basis points
    max_deviation: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.2  # the walk stays within start * (1 +- this)
    file: str | None = None  # replay this price file instead of walking
    speed: Annotated[float, msgspec.Meta(gt=0)] = 1.0  # file replay speed-up (2: a 60 s file takes 30 s)
    start: dict[str, str] = {}  # perp symbol -> starting price; default: the demo price of its spot market


class DemoConfig(msgspec.Struct, frozen=True):
    prices: dict[str, str] = {}


class Config(msgspec.Struct, frozen=True):
    node: NodeSettings = NodeSettings()
    gateway: GatewaySettings = GatewaySettings()
    assets: list[AssetConfig] = []
    markets: list[MarketConfig] = []
    margin: MarginConfig = MarginConfig()
    oracle: OracleSettings = OracleSettings()
    demo: DemoConfig = DemoConfig()
    lending: dict[str, LendingConfig] = {}  # asset -> its pool's curve
    chains: dict[str, ChainConfig] = {}  # name -> the chain's settings

    def chain_specs(self, adapters: dict[str, str]) -> list[ChainSpec]:
        """The chains' specs, each with its adapter's API key (``adapters``: name -> key)."""
        decimals = self.decimals()
        specs = []
        for name, c in sorted(self.chains.items()):
            unknown = sorted(a for a in [*c.assets, *c.hot_limit] if a not in decimals)
            if unknown or not c.assets:
                raise ConfigError(f"chains.{name}: unknown or no assets {unknown}")
            limits = sorted((a, to_units(v, decimals[a])) for a, v in c.hot_limit.items())
            specs.append(ChainSpec(name, adapters[name], list(c.assets), c.confirmations, limits))
        return specs

    def lending_specs(self) -> list[LendingSpec]:
        """The pools' curves in asset listing order (not in the genesis yet)."""
        listed = [a.symbol for a in self.assets]
        unknown = sorted(s for s in self.lending if s not in listed)
        if unknown:
            raise ConfigError(f"lending: unknown assets {unknown}")
        specs = []
        for symbol in listed:
            if symbol in self.lending:
                c = self.lending[symbol]
                spec = LendingSpec(symbol, fraction(c.base_rate), fraction(c.slope1), fraction(c.slope2),
                                   fraction(c.optimal_utilization), fraction(c.reserve_factor), fraction(c.borrow_imf),
                                   fraction(c.borrow_mmf), fraction(c.max_utilization))
                if problem := spec_problem(spec):
                    raise ConfigError(f"lending: {problem}")
                specs.append(spec)
        return specs

    def decimals(self) -> dict[str, int]:
        return asset_decimals(self.assets)

    def asset_specs(self) -> list[AssetSpec]:
        return [AssetSpec(a.symbol, a.decimals, fraction(a.collateral_weight), fraction(a.haircut_penalty))
                for a in self.assets]

    def margin_spec(self) -> MarginSpec:
        m = self.margin
        return MarginSpec(
            settle_interval_us=m.settle_interval_s * _SECOND, sample_interval_us=m.sample_interval_s * _SECOND,
            open_interest_interval_us=m.open_interest_interval_s * _SECOND, liquidation_fee_bps=m.liquidation_fee_bps,
            liquidation_slice=fraction(m.liquidation_slice), autoclose_divisor=m.autoclose_divisor,
            autoclose_offset=fraction(m.autoclose_offset), backstop=m.backstop, settlement_asset=m.settlement_asset,
        )

    def market_specs(self) -> list[MarketSpec]:
        decimals = self.decimals()
        return [market_spec(m, decimals) for m in self.markets]


_SECOND = 1_000_000


def fraction(text: str) -> int:
    """A decimal fraction, possibly negative, as parts per billion ("0.02" -> 20_000_000)."""
    sign = -1 if text.startswith("-") else 1
    try:
        return sign * to_units(text.lstrip("-"), 9)
    except ValueError as exc:
        raise ConfigError(f"{text!r} is not a fraction with at most 9 decimals") from exc


def perp_spec(p: PerpConfig, qdec: int) -> PerpSpec:
    if p.max_leverage < 1 or fraction(p.mmf_base) > fraction(p.imf_base) or fraction(p.funding_floor) > fraction(p.funding_cap):
        raise ConfigError("perp: need max_leverage >= 1, mmf_base <= imf_base, funding_floor <= funding_cap")
    return PerpSpec(
        imf_base=fraction(p.imf_base), imf_factor=fraction(p.imf_factor), mmf_base=fraction(p.mmf_base),
        mmf_factor=fraction(p.mmf_factor), max_leverage=p.max_leverage,
        open_interest_limit=to_units(p.open_interest_limit, qdec), band_min=fraction(p.band_min),
        band_max=fraction(p.band_max), impact_max=fraction(p.impact_max), impact_min=fraction(p.impact_min),
        mark_band=fraction(p.mark_band), funding_interval_us=p.funding_interval_s * _SECOND,
        funding_floor=fraction(p.funding_floor), funding_cap=fraction(p.funding_cap), stale_index_us=p.stale_index_s * _SECOND,
    )


def market_spec(m: MarketConfig, asset_decimals: dict[str, int]) -> MarketSpec:
    if m.base not in asset_decimals or m.quote not in asset_decimals:
        raise ConfigError(f"{m.symbol}: unknown base or quote asset")
    pdec = decimals_of(m.tick_size)
    qdec = decimals_of(m.step_size)
    bdec = asset_decimals[m.base]
    cdec = asset_decimals[m.quote]
    if pdec + qdec > cdec:
        raise ConfigError(f"{m.symbol}: tick and step too fine for {m.quote}'s {cdec} decimals")
    if qdec > bdec:
        raise ConfigError(f"{m.symbol}: step finer than {m.base}'s {bdec} decimals")
    if m.taker_fee_bps < 0 or m.taker_fee_bps + m.maker_fee_bps < 0:
        raise ConfigError(f"{m.symbol}: the taker fee must cover any maker rebate")
    tick = to_units(m.tick_size, pdec)
    step = to_units(m.step_size, qdec)
    min_qty = to_units(m.min_quantity, qdec)
    if tick <= 0 or step <= 0 or min_qty % step:
        raise ConfigError(f"{m.symbol}: bad tick, step or minimum quantity")
    return MarketSpec(
        symbol=m.symbol,
        base=m.base,
        quote=m.quote,
        price_decimals=pdec,
        tick=tick,
        quantity_decimals=qdec,
        step=step,
        min_quantity=max(min_qty, step),
        min_notional=to_units(m.min_notional, cdec),
        maker_fee_bps=m.maker_fee_bps,
        taker_fee_bps=m.taker_fee_bps,
        price_band_bps=m.price_band_bps,
        notional_mult=10 ** (cdec - pdec - qdec),
        base_mult=10 ** (bdec - qdec),
        perp=perp_spec(m.perp, qdec) if m.perp is not None else None,
    )


def load(path: str | Path | None = None) -> Config:
    """The packaged defaults, or a TOML file with the same shape."""
    if path is None:
        # beside this module; importlib.resources cannot read namespace packages on 3.11
        text = DEFAULTS.read_text()
    else:
        text = Path(path).read_text()
    try:
        raw: dict[str, Any] = tomllib.loads(text)
        cfg = msgspec.convert(raw, Config)
        cfg.market_specs()  # validate now, not at genesis
        cfg.margin_spec()
        cfg.lending_specs()
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{path or 'defaults.toml'}: {exc}") from exc
    return cfg


def genesis(cfg: Config, admin: "str | Keypair", adapters: dict[str, str] | None = None) -> list:
    """The first block's transactions: admin key, assets, markets, margin, pools, chains
    (``adapters``: chain name -> its adapter's API key; engine-level tests may leave it
    out and get placeholder keys).

    Given the admin ``Keypair`` each is signed by it (what a node writes); given only
    the API key string they are unsigned (engine-level tests).
    """
    from satchel.core.instructions import asset_params, chain_params, lending_params, margin_params, market_params
    from satchel.signing import Keypair, auth_for

    if isinstance(admin, Keypair):
        key, sign = admin.api_key, lambda name, params: auth_for(admin, name, params)
    else:
        key, sign = admin, lambda name, params: None
    txs: list = [SetAdmin(key, sign("setAdmin", {"key": key}))]
    txs += [ListAsset(key, spec, sign("listAsset", asset_params(spec))) for spec in cfg.asset_specs()]
    txs += [ListMarket(key, spec, sign("listMarket", market_params(spec))) for spec in cfg.market_specs()]
    margin = cfg.margin_spec()
    txs.append(SetMargin(key, margin, sign("setMargin", margin_params(margin))))
    txs += [SetLending(key, spec, sign("setLending", lending_params(spec))) for spec in cfg.lending_specs()]
    txs += [SetChain(key, spec, sign("setChain", chain_params(spec)))
            for spec in cfg.chain_specs(adapters or {name: f"@chain:{name}" for name in cfg.chains})]
    return txs
