"""Backpack's REST API over HTTP: an ASGI app (Starlette) on the API the WebSocket serves.

Every private endpoint is a method of ``api.handlers.Api`` under its Backpack instruction
name (``POST /api/v1/order`` is ``orderExecute``), called with the request's parameters as
the literal texts the client signed -- a GET's query string, a POST's or DELETE's JSON
body -- and the signature from the ``X-API-Key``, ``X-Signature``, ``X-Timestamp`` and
``X-Window`` headers (other headers, ``X-Broker-Id`` included, are ignored). So REST and
WebSocket share one request path: schemas, signature check, error codes, sequencing.

Errors are ``{"code": "...", "message": "..."}`` with HTTP 400 (bad input), 401
(signature, window, replay), 404 (not found), 413 (a body over 16 KB), 429 (rate or
backlog), 503 (shutting down) or 500.

Served by hypercorn's trio worker in the node's own trio process (``serve``): Starlette
runs on anyio, whose trio backend shares the node's event loop, so a handler awaits the
API's answer directly. Candles and older trades (``/api/v1/klines``,
``/api/v1/trades/history``) come from the history store (``satchel.history``), awaited
the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from pathlib import Path
from urllib.parse import parse_qsl

import msgspec
import structlog
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from satchel.clock import now_ms
from satchel.core.errors import (
    EXPIRED, INTERNAL_ERROR, INVALID_SIGNATURE, MAINTENANCE, RESOURCE_NOT_FOUND, TOO_MANY_REQUESTS,
    UNAUTHORIZED, Code, RequestError,
)
from satchel.api.klines import INTERVALS
from satchel.api.marketdata import RECENT_TRADES
from satchel.history import queries as history_queries, views as history_views
from satchel.core.messages import REJECTED
from satchel.api.handlers import BATCHED
from satchel.gateway.protocol import split_batch, split_params
from satchel.rest import metrics

if TYPE_CHECKING:
    from satchel.gateway import Gateway

log = structlog.get_logger("satchel.rest")

_STATUS = {
    UNAUTHORIZED: 401, INVALID_SIGNATURE: 401, EXPIRED: 401, Code.DUPLICATE_REQUEST: 401, RESOURCE_NOT_FOUND: 404,
    TOO_MANY_REQUESTS: 429, MAINTENANCE: 503, INTERNAL_ERROR: 500, Code.PAYLOAD_TOO_LARGE: 413,
}
_HEADERS = ("x-api-key", "x-signature", "x-timestamp", "x-window")
_MAX_BODY = 16384
STATIC = Path(__file__).with_name("static")  # the pages' bundle (built from web/ by `npm run build`)
_encode = msgspec.json.encode


def _json(payload: Any, status: int = 200) -> Response:
    return Response(_encode(payload), status, media_type="application/json")


# Backpack's clients know UNAUTHORIZED and INVALID_SIGNATURE as authentication failures
# (ccxt: AuthenticationError) and nothing of an expired or replayed request: REST answers
# those as UNAUTHORIZED, naming Satchel's own code in the message
_AS_UNAUTHORIZED = frozenset({EXPIRED, Code.DUPLICATE_REQUEST})


def _body(code: str | int, message: str) -> dict:
    if code in _AS_UNAUTHORIZED:
        return {"code": UNAUTHORIZED, "message": f"{code}: {message}"}
    return {"code": str(code), "message": message}


def _error(code: str | int, message: str) -> Response:
    return _json(_body(code, message), _STATUS.get(code, 400))


# Backpack answers an order it will not place with an error, where the WebSocket API
# answers the order with status Rejected and its reason: REST clients (ccxt) raise on
# the code, e.g. INSUFFICIENT_FUNDS -> InsufficientFunds
_REFUSALS = {"InsufficientFunds": "INSUFFICIENT_FUNDS", "InsufficientMargin": "INSUFFICIENT_MARGIN"}


def _refusal(order: Any) -> dict | None:
    """``{code, message}`` for an order the engine rejected, else None."""
    if not isinstance(order, dict) or order.get("status") != REJECTED:
        return None
    reason = order.get("reason", "")
    return {"code": _REFUSALS.get(reason, "INVALID_ORDER"), "message": f"Order rejected: {reason}"}


# Backpack answers these with HTTP 200 and an empty body (the WebSocket API answers more)
_EMPTY_BODY = frozenset({"borrowLendExecute"})


def _shape(name: str, result: Any) -> tuple[Any, int]:
    """The API's answer as Backpack's REST gives it, with its HTTP status: a rejected
    order is an error, and a batch lists ``{"operation": "Ok", ...order}`` or
    ``{"operation": "Err", code, message}``."""
    if name == "orderExecute":
        refused = _refusal(result)
        return (refused, 400) if refused else (result, 200)
    if name == "orderExecuteBatch":
        out = []
        for item in result:
            refused = _body(item["code"], item["message"]) if "code" in item else _refusal(item)
            out.append({"operation": "Err", **refused} if refused else {"operation": "Ok", **item})
        return out, 200
    return result, 200


class _Answer:
    """``api.handlers.Replies`` for one HTTP request: the handler awaits the answer."""

    closed = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.done = trio.Event()
        self.response: Response | None = None

    def result(self, req_id: Any, result: Any) -> None:
        if self.name in _EMPTY_BODY:
            self.response = Response(b"", 200)
        else:
            self.response = _json(*_shape(self.name, result))
        self.done.set()

    def error(self, req_id: Any, code: str | int, message: str) -> None:
        self.response = _error(code, message)
        self.done.set()

    def failed(self, req_id: Any, exc: Exception) -> None:
        log.error("rest.request_failed", error=repr(exc))
        self.response = _error(INTERNAL_ERROR, "The request could not be handled")
        self.done.set()


async def _texts(request: Request, batched: bool) -> dict[str, str] | list[dict[str, str]]:
    """The request's parameters as signed texts: the query string, and a JSON object body
    (a batch: its JSON array body, one object per item)."""
    texts = dict(parse_qsl(request.url.query, keep_blank_values=True))
    if request.method != "GET":
        body = await _bounded_body(request)
        if batched:
            return split_batch(body)
        if body.strip():
            texts.update(split_params(msgspec.Raw(body)))
    return texts


async def _bounded_body(request: Request) -> bytes:
    """The body, refused (413, ``PAYLOAD_TOO_LARGE``) as soon as it is known to be over
    ``_MAX_BODY``: from its Content-Length before a byte of it is read, else while it
    streams in. Read whole first, a body of any size would be held in memory before the
    refusal (an outside test pushed a node from 91 to 273 MB with one 200 MB upload)."""
    too_large = RequestError(Code.PAYLOAD_TOO_LARGE, f"body larger than {_MAX_BODY} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _MAX_BODY:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_BODY:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


def _signature(request: Request) -> list[str] | None:
    parts = [request.headers.get(h) for h in _HEADERS]
    if all(p is None for p in parts):
        return None
    return ["" if p is None else p for p in parts]


class RestApp:
    """The routes over a gateway's API, listing, formatter and market data."""

    def __init__(self, gateway: "Gateway"):
        self.gw = gateway
        self.api = gateway.api
        routes = [
            Route("/api/v1/status", self.status), Route("/api/v1/ping", self.ping), Route("/api/v1/time", self.time),
            Route("/api/v1/assets", self.assets), Route("/api/v1/markets", self.markets),
            Route("/api/v1/market", self.market), Route("/api/v1/ticker", self.ticker),
            Route("/api/v1/tickers", self.tickers), Route("/api/v1/trades", self.trades),
            Route("/api/v1/trades/history", self.trades_history), Route("/api/v1/klines", self.klines),
            Route("/api/v1/fundingRates", self.funding_rates),
            Route("/api/v1/securities", self.securities), Route("/api/v1/collateral", self.collateral),
        ]
        for path, methods in _PRIVATE.items():
            for verb, name in methods.items():
                routes.append(Route(path, self._via_api(name), methods=[verb], name=f"{name}"))
        self.metrics = metrics.registry(gateway)
        routes.append(Route("/metrics", self.prometheus))
        # the trading and operations pages: static files bundled at development time (web/)
        routes += [Route("/", self._page("index.html")), Route("/ops", self._page("ops.html")),
                   Route("/ui/config", self.ui_config), Mount("/static", StaticFiles(directory=STATIC), name="static")]
        self.app = Starlette(routes=routes)

    @staticmethod
    def _page(name: str) -> Callable:
        async def page(request: Request) -> Response:
            return FileResponse(STATIC / name, media_type="text/html")

        return page

    async def ui_config(self, request: Request) -> Response:
        """Where the pages find the WebSocket API (the gateway this REST server runs beside)."""
        return Response(_encode({"ws": self.gw.url}), media_type="application/json")

    # ------------------------------------------------------------------ through the API

    def _via_api(self, name: str) -> Callable:
        method = getattr(self.api, name)
        batched = name in BATCHED

        async def endpoint(request: Request) -> Response:
            try:
                texts = await _texts(request, batched)
            except RequestError as exc:
                return _error(exc.code, exc.message)
            answer = _Answer(name)
            caller = self.api.caller(answer)
            caller.received = trio.current_time()
            if self.gw.overloaded() and name in _SEQUENCED:
                return _error(TOO_MANY_REQUESTS, "The node is busy")
            method(caller, None, texts, _signature(request))
            await answer.done.wait()
            return answer.response

        return endpoint

    # ------------------------------------------------------------------ public, formatted here

    async def prometheus(self, request: Request) -> Response:
        return Response(metrics.render(self.metrics), media_type=metrics.CONTENT_TYPE)

    async def status(self, request: Request) -> Response:
        return _json({"status": "Ok", "message": None})

    async def ping(self, request: Request) -> Response:
        return Response("pong", media_type="text/plain")

    async def time(self, request: Request) -> Response:
        return Response(str(now_ms()), media_type="text/plain")

    async def assets(self, request: Request) -> Response:
        """Backpack's ``GET /api/v1/assets``: per asset a token per chain that takes it,
        deposits and withdrawals enabled while the chain is not paused."""
        fmt = self.gw.fmt
        chains = sorted(self.gw.listing.chains.items())
        paused = self.gw.chains.paused
        return _json([fmt.asset_info(a, [(name, paused(name)) for name, spec in chains if a.symbol in spec.assets])
                      for a in self.gw.listing.assets.values()])

    async def markets(self, request: Request) -> Response:
        fmt = self.gw.fmt
        return _json([fmt.market_info(m) for m in self.gw.listing.markets.values()])

    async def securities(self, request: Request) -> Response:
        return _json([])  # no tokenized securities are listed (ccxt's load_markets asks)

    async def collateral(self, request: Request) -> Response:
        fmt = self.gw.fmt
        items = (fmt.collateral_info(a) for a in self.gw.listing.assets.values())
        return _json([item for item in items if item is not None])

    def _symbol(self, request: Request) -> str | Response:
        symbol = request.query_params.get("symbol")
        if symbol is None:
            return _error(Code.INVALID_REQUEST, "symbol is required")
        if symbol not in self.gw.listing.markets:
            return _error(Code.INVALID_SYMBOL, f"Unknown symbol {symbol}")
        return symbol

    async def market(self, request: Request) -> Response:
        symbol = self._symbol(request)
        if isinstance(symbol, Response):
            return symbol
        return _json(self.gw.fmt.market_info(self.gw.listing.markets[symbol]))

    async def ticker(self, request: Request) -> Response:
        symbol = self._symbol(request)
        if isinstance(symbol, Response):
            return symbol
        return _json(self.gw.marketdata.rest_ticker(symbol))

    async def trades(self, request: Request) -> Response:
        symbol = self._symbol(request)
        if isinstance(symbol, Response):
            return symbol
        limit = request.query_params.get("limit", "100")
        if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= RECENT_TRADES):
            return _error(Code.INVALID_REQUEST, f"limit must be 1..{RECENT_TRADES}")
        return _json(self.gw.marketdata.recent_trades(symbol, int(limit)))

    # ------------------------------------------------------------------ public, from the history

    async def _history(self, query: Any) -> Any:
        """The history store's answer to ``query`` (queued behind every block published so
        far), or an error ``Response``."""
        history = self.api.history
        if history is None:
            return _error(RESOURCE_NOT_FOUND, "This node keeps no trade history")
        try:
            return await history.fetch(query)
        except RequestError as exc:
            return _error(exc.code, exc.message)
        except Exception as exc:
            log.error("rest.history_failed", error=repr(exc))
            return _error(INTERNAL_ERROR, "The request could not be handled")

    async def trades_history(self, request: Request) -> Response:
        """Backpack's ``GET /api/v1/trades/history``: ``limit`` trades (at most 1000),
        ``offset`` back from the newest, oldest first, shaped like ``GET /api/v1/trades``."""
        symbol = self._symbol(request)
        if isinstance(symbol, Response):
            return symbol
        page = _page(request)
        if isinstance(page, Response):
            return page
        limit, offset = page
        rows = await self._history(history_queries.TradeHistory(symbol, limit, offset))
        return rows if isinstance(rows, Response) else _json(history_views.trades(self.gw.fmt, symbol, rows))

    async def funding_rates(self, request: Request) -> Response:
        """Backpack's ``GET /api/v1/fundingRates?symbol&limit&offset``: a perpetual's funding
        rate per interval, newest first."""
        symbol = self._symbol(request)
        if isinstance(symbol, Response):
            return symbol
        if self.gw.listing.markets[symbol].perp is None:
            return _error(Code.INVALID_SYMBOL, f"{symbol} is not a perpetual market")
        page = _page(request)
        if isinstance(page, Response):
            return page
        limit, offset = page
        rows = await self._history(history_queries.FundingRates(symbol, limit, offset))
        return rows if isinstance(rows, Response) else _json(history_views.funding_rates(rows))

    async def klines(self, request: Request) -> Response:
        """Backpack's ``GET /api/v1/klines?symbol&interval&startTime&endTime`` (seconds;
        ``endTime`` defaults to now): the candles of the trades, oldest first, at most 1000.
        Only ``priceType=Last`` exists here (mark and index candles are not kept)."""
        symbol = self._symbol(request)
        if isinstance(symbol, Response):
            return symbol
        q = request.query_params
        interval = q.get("interval")
        if interval not in INTERVALS:
            return _error(Code.INVALID_REQUEST, f"interval must be one of {', '.join(INTERVALS)}")
        if q.get("priceType", "Last") != "Last":
            return _error(Code.INVALID_REQUEST, "priceType must be Last")
        if q.get("startTime") is None:
            return _error(Code.INVALID_REQUEST, "startTime is required")
        start = _int_param(request, "startTime", 0, _MAX_SECONDS)
        end = _int_param(request, "endTime", now_ms() // 1000, _MAX_SECONDS)
        for bad in (start, end):
            if isinstance(bad, Response):
                return bad
        rows = await self._history(history_queries.Klines(symbol, interval, start * 1_000_000, end * 1_000_000))
        return rows if isinstance(rows, Response) else _json(history_views.klines(self.gw.fmt, symbol, interval, rows))

    async def tickers(self, request: Request) -> Response:
        md = self.gw.marketdata
        return _json([md.rest_ticker(s) for s in self.gw.listing.markets])


_MAX_SECONDS = 10**11  # klines times (s): past this, calendar arithmetic fails (year 9999)


def _page(request: Request) -> tuple[int, int] | Response:
    """``limit`` (1..1000, default 100) and ``offset`` of a public history read."""
    limit = _int_param(request, "limit", history_queries.DEFAULT_LIMIT, history_queries.MAX_LIMIT + 1)
    offset = _int_param(request, "offset", 0, 2**62)
    for bad in (limit, offset):
        if isinstance(bad, Response):
            return bad
    if limit == 0:
        return _error(Code.INVALID_REQUEST, f"limit must be 1..{history_queries.MAX_LIMIT}")
    return limit, offset


def _int_param(request: Request, name: str, default: int, top: int) -> int | Response:
    """Query parameter ``name`` as an integer in 0..top-1 (``default`` if absent), or a 400."""
    text = request.query_params.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 20 and int(text) < top):
        return _error(Code.INVALID_REQUEST, f"{name} must be an integer in 0..{top - 1}")
    return int(text)


# Backpack's private (and API-answered public) endpoints: path -> HTTP verb -> instruction
_PRIVATE = {
    "/api/v1/depth": {"GET": "depth"},
    "/api/v1/markPrices": {"GET": "markPrices"},
    "/api/v1/openInterest": {"GET": "openInterest"},
    "/api/v1/borrowLend/markets": {"GET": "borrowLendMarkets"},
    "/api/v1/stats": {"GET": "platformStats"},
    "/api/v1/capital": {"GET": "balanceQuery"},
    "/api/v1/capital/collateral": {"GET": "collateralQuery"},
    "/api/v1/position": {"GET": "positionQuery"},
    "/api/v1/order": {"GET": "orderQuery", "POST": "orderExecute", "DELETE": "orderCancel"},
    "/api/v1/orders": {"GET": "orderQueryAll", "POST": "orderExecuteBatch", "DELETE": "orderCancelAll"},
    "/api/v1/account": {"GET": "accountQuery", "PATCH": "accountUpdate"},
    "/api/v1/borrowLend": {"POST": "borrowLendExecute"},
    "/api/v1/borrowLend/positions": {"GET": "borrowLendPositionQuery"},
    "/wapi/v1/history/borrowLend": {"GET": "borrowHistoryQueryAll"},
    "/wapi/v1/history/interest": {"GET": "interestHistoryQueryAll"},
    "/wapi/v1/history/funding": {"GET": "fundingHistoryQueryAll"},
    "/wapi/v1/history/orders": {"GET": "orderHistoryQueryAll"},
    "/wapi/v1/history/fills": {"GET": "fillHistoryQueryAll"},
    "/wapi/v1/capital/deposits": {"GET": "depositQueryAll"},
    "/wapi/v1/capital/deposit/address": {"GET": "depositAddressQuery"},
    "/wapi/v1/capital/withdrawals": {"GET": "withdrawalQueryAll", "POST": "withdraw"},
    # Satchel's own (Backpack has no such endpoint): every chain's status and custody books, unsigned
    "/api/v1/chains": {"GET": "chainStatusQuery"},
}
_SEQUENCED = frozenset({"orderExecute", "orderExecuteBatch", "orderCancel", "orderCancelAll", "accountUpdate",
                        "borrowLendExecute", "withdraw"})


async def serve(gateway: "Gateway", host: str, port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the REST API on ``host:port`` (0: a free port) until cancelled;
    ``task_status.started(url)``."""
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 75

    async def run(*, task_status: Any) -> None:
        await hypercorn_serve(RestApp(gateway).app, config, task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(run)
        url = binds[0].replace("http://", "http://", 1)
        log.info("rest.serving", url=url)
        task_status.started(url)
