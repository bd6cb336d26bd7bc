"""The chains' adapters in a process of their own (``satchel chains``, ``chains.link.RemoteLink``):
everything an adapter in the node does, over the node's WebSocket API with the chain's key --
deposits credited once, the excess over the hot wallet's limit moved to cold storage on
chain (also when the adapter stopped before it could), withdrawals sent and confirmed, every provider down pausing the chain while orders
fill, and ``chainWorkQuery`` refused to anyone but the adapter and the admin."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import msgspec
import pytest
import trio

from conftest import admin_deposit, balance, equals, falsy, order, until
from satchel import config
from satchel.chains.embedded import Chains, EdgeHost
from satchel.chains.link import RemoteLink
from satchel.core.messages import ASK, BID, IOC, ChainsOf, MovesOf, SetLeverage, Withdraw, WithdrawalsOf
from satchel.gateway import Gateway
from satchel.node import Node
from satchel.signing import Keypair
from satchel.tools import client
from satchel.tools.client import ReplyError, connect, free_port

USDC = 10**6


def cfg_with(hot_limit: str = "1000000") -> config.Config:
    cfg = config.load()
    sim = msgspec.structs.replace(cfg.chains["sim"], block_ms=30, confirmations=3,
                                  hot_limit={**cfg.chains["sim"].hot_limit, "USDC": hot_limit})
    return msgspec.structs.replace(cfg, chains={"sim": sim})




async def start_apart(nursery, tmp_path, cfg) -> tuple[Node, Gateway, Chains]:
    node = await nursery.start(Node(tmp_path / "data", cfg).run)
    gateway = await nursery.start(Gateway(node, "127.0.0.1", 0).run)
    chains = await nursery.start(Chains(EdgeHost(tmp_path / "data", cfg),
                                        link=lambda decimals: RemoteLink(gateway.url, decimals, client)).run)
    return node, gateway, chains


async def test_deposits_moves_and_withdrawals_over_the_api(nursery, tmp_path):
    node, gateway, chains = await start_apart(nursery, tmp_path, cfg_with(hot_limit="100"))
    sim, adapter = chains.sims["sim"], chains.adapters["sim"]
    adapter.sweep_s = 0.1
    assert "sim" not in node.chain_adapters  # nothing of the chain runs in the node's process
    dave = Keypair.generate().api_key  # over the API an account is a key
    await node.submit_wait(SetLeverage(dave, 0, auto_lend=0))
    chains.deposit("sim", dave, "USDC", 250 * USDC)  # the address comes from the node's book file
    await until(lambda: equals(balance(node, dave), 250 * USDC))
    adapter.cursor = 0  # forgets where it was: the re-report credits nothing
    await trio.sleep(1.0)
    assert await balance(node, dave) == 250 * USDC and adapter.credited == 1
    # the books moved the excess over the hot wallet's 100 to cold storage: once the deposit
    # address is swept into the hot wallet, the adapter moves it on chain, once
    await until(lambda: equals(_sim(sim, adapter.cold), 150 * USDC))
    assert _sim_now(sim, adapter.hot) == 100 * USDC
    await until(lambda: equals(node.ask("risk", MovesOf("sim")), []))  # reported done: the books ask no more
    # a withdrawal within the hot wallet: sent, confirmed, debited
    await node.submit_wait(Withdraw(dave, "sim", "USDC", 60 * USDC, "0xfriend"))
    await until(lambda: equals(_open(node), 0))
    assert sim.balances[("0xfriend", "USDC")] == 60 * USDC and await balance(node, dave) == 190 * USDC
    node.shutdown()


async def test_a_move_booked_before_a_stop_is_made_after_the_restart(nursery, tmp_path):
    """A custody move is ledger state until the adapter reports it done: when the node and
    the adapter stopped after the books moved a deposit's excess to cold storage, but
    before the adapter could move it on chain (the deposit address not swept in yet), the
    restarted adapter is asked for it and makes it, once."""
    cfg = cfg_with(hot_limit="100")
    dave = Keypair.generate().api_key
    async with trio.open_nursery() as before:
        node = await before.start(Node(tmp_path / "data", cfg).run)
        gateway = await before.start(Gateway(node, "127.0.0.1", 0).run)
        chains = await before.start(Chains(EdgeHost(tmp_path / "data", cfg),
                                           link=lambda decimals: RemoteLink(gateway.url, decimals, client)).run)
        chains.adapters["sim"].sweep_s = 60  # not swept in before the stop: the move cannot be made yet
        await node.submit_wait(SetLeverage(dave, 0, auto_lend=0))
        chains.deposit("sim", dave, "USDC", 250 * USDC)
        await until(lambda: equals(balance(node, dave), 250 * USDC))
        await trio.sleep(1.3)  # the adapter's scan position and sweep saved (once a second)
        assert len(await node.ask("risk", MovesOf("sim"))) == 1
        node.shutdown()
        await node.wait_stopped()
        before.cancel_scope.cancel()
    node, gateway, chains = await start_apart(nursery, tmp_path, cfg)  # both restarted
    sim, adapter = chains.sims["sim"], chains.adapters["sim"]
    adapter.sweep_s = 0.1
    (move,) = await node.ask("risk", MovesOf("sim"))  # recovered from the journal
    assert (move.amount, move.to_cold) == (150 * USDC, True)
    await until(lambda: equals(node.ask("risk", MovesOf("sim")), []))
    # reported done only once the transfer is confirmations deep: on chain by then
    assert _sim_now(sim, adapter.cold) == 150 * USDC and _sim_now(sim, adapter.hot) == 100 * USDC
    assert await balance(node, dave) == 250 * USDC
    assert len([t for b in sim.blocks for t in b.transfers if t.key.startswith("custody:")]) == 1
    node.shutdown()


async def test_providers_down_pause_the_chain_and_the_work_query_is_the_adapters(nursery, tmp_path):
    node, gateway, chains = await start_apart(nursery, tmp_path, cfg_with())
    for account, asset, amount in (("seller", "SOL", 10**10), ("buyer", "USDC", 10_000 * USDC)):
        await admin_deposit(node, account, asset, amount)
    for provider in chains.providers["sim"]:
        provider.down = True
    await until(lambda: _paused(node))
    carol = Keypair.generate().api_key
    chains.deposit("sim", carol, "USDC", 40 * USDC)
    await node.submit_wait(order("seller", ASK, 10_000, 100))
    events = await node.submit_wait(order("buyer", BID, 10_000, 100, tif=IOC))
    assert any(e.__class__.__name__ == "Fill" for e in events)  # trading goes on
    for provider in chains.providers["sim"]:
        provider.down = False
    await until(lambda: falsy(_paused(node)), timeout=40)
    await until(lambda: equals(balance(node, carol), 40 * USDC))
    # the work query: the adapter's key or the admin's, nobody else's
    async with connect(gateway.url, Keypair.generate()) as stranger:
        with pytest.raises(ReplyError) as refused:
            await stranger.request("chainWorkQuery", {"chain": "sim"})
        assert refused.value.code == "UNAUTHORIZED"
    async with connect(gateway.url, node.admin) as op:
        work = await op.request("chainWorkQuery", {"chain": "sim", "after": "0"})
        assert work["paused"] is False and work["withdrawals"] == [] and work["chain"] == "sim"
        with pytest.raises(ReplyError) as unknown:
            await op.request("chainWorkQuery", {"chain": "nowhere"})
        assert unknown.value.code == "INVALID_CHAIN"
    node.shutdown()


def test_satchel_chains_beside_satchel_serve_no_chains(tmp_path):
    """The two processes from the command line: the node runs no adapter, ``satchel chains``
    (with its demo deposits) reports over the API, and the demo taker is credited."""
    data, port = tmp_path / "data", free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "satchel.tools.cli"]
    node = subprocess.Popen(cli + ["serve", "--data", str(data), "--port", str(port), "--no-chains", "--rest-port", "-1",
                                   "--replication-port", "-1", "--no-oracle"], env=env, stderr=subprocess.PIPE, text=True)
    chains = None
    try:
        for line in node.stderr:
            if "node.serving" in line:
                break
        chains = subprocess.Popen(cli + ["chains", "--data", str(data), "--url", f"ws://127.0.0.1:{port}", "--demo"],
                                  env=env, stderr=subprocess.PIPE, text=True)
        credited = trio.run(_credited_within, port, 40.0)
        assert credited, "no demo deposit credited"
    finally:
        for p in (chains, node):
            if p is not None:
                p.send_signal(signal.SIGINT)
        for p in (chains, node):
            if p is not None:
                assert p.wait(timeout=20) == 0


async def _credited_within(port: int, seconds: float) -> int:
    async with connect(f"ws://127.0.0.1:{port}") as client:
        with trio.move_on_after(seconds):
            while True:
                chains = await client.request("chainStatusQuery", sign=False)
                if chains[0]["depositsCredited"]:
                    return chains[0]["depositsCredited"]
                await trio.sleep(0.3)
    return 0




async def _paused(node: Node) -> bool:
    return (await node.ask("risk", ChainsOf()))[0].paused


async def _open(node: Node) -> int:
    return len(await node.ask("risk", WithdrawalsOf(None)))


async def _sim(sim, address: str) -> int:
    return sim.balances.get((address, "USDC"), 0)


def _sim_now(sim, address: str) -> int:
    return sim.balances.get((address, "USDC"), 0)
