"""The simulated chain's adapter beside a real node: deposits credited once after their
confirmations (a reorg before them credits nothing), every provider down pauses the
chain while orders keep filling and it resumes without double credit, withdrawals sent
and confirmed or failed and released, and no withdrawal sent twice across a restart."""

from __future__ import annotations

import msgspec
import pytest
import trio

from conftest import admin_deposit, balance, equals, falsy, order, until
from satchel import config
from satchel.chains.adapter import Adapter
from satchel.chains.embedded import SimChains
from satchel.chains.link import LocalLink
from satchel.core.messages import (
    ASK, BID, IOC, ChainsOf, Deposit, SetLeverage, Withdraw, WithdrawalsOf,
)
from satchel.node import Node
from satchel.signing import auth_for

USDC = 10**6


def fast_chains() -> config.Config:
    cfg = config.load()
    sim = msgspec.structs.replace(cfg.chains["sim"], block_ms=30, confirmations=3)
    return msgspec.structs.replace(cfg, chains={"sim": sim})




async def paused(node: Node) -> bool:
    return (await node.ask("risk", ChainsOf()))[0].paused


async def start(nursery, tmp_path) -> tuple[Node, SimChains]:
    node = await nursery.start(Node(tmp_path / "data", fast_chains()).run)
    chains = await nursery.start(SimChains(node).run)
    return node, chains


async def test_deposit_credited_once_and_a_reorg_before_confirmations_credits_nothing(nursery, tmp_path):
    node, chains = await start(nursery, tmp_path)
    sim = chains.sims["sim"]
    chains.deposit("sim", "alice", "USDC", 250 * USDC)
    await until(lambda: equals(balance(node, "alice"), 250 * USDC))
    # the adapter forgets where it was (a crash before it saved): the re-report is refused
    adapter = chains.adapters["sim"]
    adapter.cursor = 0
    await trio.sleep(0.5)
    assert await balance(node, "alice") == 250 * USDC and adapter.credited == 1
    # ... and counted again for the sweep, which the address's balance caps: swept once
    adapter.sweep_s = 0.1
    await until(lambda: _swept(adapter))
    address = node.addresses.issue("sim", "alice")
    await until(lambda: equals(_sim_balance(sim, adapter.hot), 250 * USDC))
    assert sim.balances[(address, "USDC")] == 0
    assert [t.ok for b in sim.blocks for t in b.transfers if t.sender == address] == [True]
    # a reorg before the deposit has its confirmations: never credited
    mining = sim.block_ms
    sim.block_ms = 10**6  # stop the clock of the chain: mine by hand
    await trio.sleep(mining / 1000 * 2)
    chains.deposit("sim", "bob", "USDC", 70 * USDC)
    sim.mine()
    sim.mine()  # two of the three confirmations
    await trio.sleep(0.3)
    sim.reorg(2)
    for _ in range(4):
        sim.mine()
    await trio.sleep(0.5)
    assert await balance(node, "bob") == 0
    node.shutdown()


async def test_providers_down_pause_the_chain_while_trading_goes_on(nursery, tmp_path):
    node, chains = await start(nursery, tmp_path)
    for account, asset, amount in (("seller", "SOL", 10**10), ("buyer", "USDC", 10_000 * USDC)):
        await admin_deposit(node, account, asset, amount)
    for provider in chains.providers["sim"]:
        provider.down = True
    await until(lambda: paused(node))
    # deposits and withdrawals of this chain stop; trading does not
    chains.deposit("sim", "carol", "USDC", 40 * USDC)
    events = await node.submit_wait(Withdraw("buyer", "sim", "USDC", 5 * USDC, "0xdest"))
    assert [e.code for e in events if hasattr(e, "code")] == ["CHAIN_PAUSED"]
    await node.submit_wait(order("seller", ASK, 10_000, 100))
    events = await node.submit_wait(order("buyer", BID, 10_000, 100, tif=IOC))
    assert any(e.__class__.__name__ == "Fill" for e in events)
    await trio.sleep(0.3)
    assert await balance(node, "carol") == 0
    # back up: resumed, and the deposit made meanwhile is credited exactly once
    for provider in chains.providers["sim"]:
        provider.down = False
    await until(lambda: falsy(paused(node)), timeout=40)
    await until(lambda: equals(balance(node, "carol"), 40 * USDC))
    await trio.sleep(0.3)
    assert await balance(node, "carol") == 40 * USDC
    node.shutdown()


async def test_withdrawals_confirmed_or_failed_and_never_sent_twice(nursery, tmp_path):
    node, chains = await start(nursery, tmp_path)
    sim = chains.sims["sim"]
    await node.submit_wait(SetLeverage("dave", 0, auto_lend=0))
    chains.deposit("sim", "dave", "USDC", 500 * USDC)
    await until(lambda: equals(balance(node, "dave"), 500 * USDC))
    await node.submit_wait(Withdraw("dave", "sim", "USDC", 120 * USDC, "0xfriend"))
    await node.submit_wait(Withdraw("dave", "sim", "USDC", 30 * USDC, "fail-address"))
    await until(lambda: equals(_open(node), 0))
    assert await balance(node, "dave") == 380 * USDC  # 120 left, the failed 30 came back
    assert sim.balances[("0xfriend", "USDC")] == 120 * USDC
    # an adapter that broadcast and died before reporting: a new one (as after a restart)
    # runs the same withdrawal again, finds the transaction by its idempotency key and
    # reports it instead of sending again
    adapter = chains.adapters["sim"]
    events = await node.submit_wait(Withdraw("dave", "sim", "USDC", 50 * USDC, "0xagain"))
    wid = next(e.withdrawal_id for e in events if e.__class__.__name__ == "WithdrawalUpdate")
    restarted = Adapter(LocalLink(node), "sim", 3, adapter.providers, node.addresses, adapter.key, adapter.decimals, tmp_path / "data")
    await restarted._withdraw(wid, "USDC", 50 * USDC, "0xagain", "Pending")
    await restarted._withdraw(wid, "USDC", 50 * USDC, "0xagain", "Pending")
    await until(lambda: equals(_open(node), 0))
    sends = [t for b in sim.blocks for t in b.transfers if t.key == f"sim:{wid}"]
    assert len(sends) == 1 and sim.balances[("0xagain", "USDC")] == 50 * USDC
    node.shutdown()




async def test_withdrawals_waiting_for_confirmations_cost_no_provider_call_each(nursery, tmp_path):
    """Sent withdrawals mined but short of their confirmations are not looked up at every
    resync (the head tells when they can be deep enough, and is read once a poll): a
    rate-limited provider is not spent on them. Once deep they are confirmed."""
    node, chains = await start(nursery, tmp_path)
    sim, adapter, providers = chains.sims["sim"], chains.adapters["sim"], chains.providers["sim"]
    await node.submit_wait(SetLeverage("erin", 0, auto_lend=0))
    chains.deposit("sim", "erin", "USDC", 100 * USDC)
    await until(lambda: equals(balance(node, "erin"), 100 * USDC))
    adapter.sweep_s = 0.1
    await until(lambda: equals(_sim_balance(sim, adapter.hot), 100 * USDC))
    sim.block_ms = 10**6  # stop the chain's clock: mine by hand
    await trio.sleep(0.1)
    for i in range(16):  # as many as an account may have on their way
        await node.submit_wait(Withdraw("erin", "sim", "USDC", USDC, f"0xfriend{i}"))
    await until(lambda: equals(_statuses(node), ["Sent"] * 16))
    sim.mine()  # each is one block deep of three
    await trio.sleep(1.5)  # a resync has looked each up once
    calls = sum(p.calls for p in providers)
    await trio.sleep(2.0)  # two more resyncs, ten polls
    spent = sum(p.calls for p in providers) - calls
    assert spent < 16, spent  # 9 here; a look-up and a head for each at every resync before (~80)
    assert await _statuses(node) == ["Sent"] * 16
    sim.mine()
    sim.mine()
    await until(lambda: equals(_open(node), 0))
    assert all(sim.balances[(f"0xfriend{i}", "USDC")] == USDC for i in range(16))
    node.shutdown()


async def _statuses(node: Node) -> list[str]:
    return sorted(w.status for _, w in await node.ask("risk", WithdrawalsOf(None)))


async def _open(node: Node) -> int:
    return len(await node.ask("risk", WithdrawalsOf(None)))


async def test_reconcile_chain_against_books_and_ledger(nursery, tmp_path):
    """``satchel reconcile``'s figures, through ``reconcileQuery`` on a live gateway:
    after a chain deposit, a withdrawal and a faucet deposit the chain and the books agree
    and the faucet's deposit shows as unbacked; a lost sweep shows as a difference; only
    the admin key may ask."""
    from satchel.gateway.server import Gateway
    from satchel.signing import Keypair
    from satchel.tools.cli import reconcile_lines
    from satchel.tools.client import ReplyError, connect

    node, chains = await start(nursery, tmp_path)
    gateway = await nursery.start(Gateway(node, "127.0.0.1", 0).run)
    admin = node.admin
    params = {"account": "faucet", "asset": "USDC", "quantity": "7000000"}
    await node.submit_wait(Deposit(admin.api_key, "faucet", "USDC", 7 * USDC, auth_for(admin, "deposit", params)))
    await node.submit_wait(SetLeverage("erin", 0, auto_lend=0))
    chains.deposit("sim", "erin", "USDC", 300 * USDC)
    await until(lambda: equals(balance(node, "erin"), 300 * USDC))
    await node.submit_wait(Withdraw("erin", "sim", "USDC", 100 * USDC, "0xout"))
    await until(lambda: equals(_open(node), 0))
    adapter = chains.adapters["sim"]
    await until(lambda: _swept(adapter))
    async with connect(gateway.url, admin) as client:
        result = await client.request("reconcileQuery", {})
    usdc = next(c for c in result["chains"] if c["symbol"] == "USDC")
    assert (usdc["chain"], usdc["onChain"], usdc["books"], usdc["difference"]) == ("sim", "200", "200", "0")
    totals = next(a for a in result["assets"] if a["symbol"] == "USDC")
    assert (totals["liabilities"], totals["chainBooks"], totals["unbacked"]) == ("207", "200", "7")  # the faucet's 7
    assert not any("differs" in line for line in reconcile_lines(result))
    # 5 USDC leave the hot wallet behind the exchange's back: the chain holds less than the books
    chains.sims["sim"].transfer("USDC", adapter.hot, "thief", 5 * USDC)
    await trio.sleep(0.1)
    async with connect(gateway.url, admin) as client:
        result = await client.request("reconcileQuery", {})
    usdc = next(c for c in result["chains"] if c["symbol"] == "USDC")
    assert (usdc["onChain"], usdc["difference"]) == ("195", "-5")
    assert any(line.startswith("sim") and "differs" in line for line in reconcile_lines(result))
    async with connect(gateway.url, Keypair.generate()) as client:
        with pytest.raises(ReplyError, match="admin key"):
            await client.request("reconcileQuery", {})
    node.shutdown()


async def _sim_balance(sim, address: str) -> int:
    return sim.balances.get((address, "USDC"), 0)


async def _swept(adapter) -> bool:
    return not adapter.sweeps


async def test_the_simulated_chain_survives_a_restart(tmp_path):
    """A restarted node carries on with the same simulated chain: balances, keyed
    transfers (a sent withdrawal is still found by its key) and the newest blocks."""
    from satchel.chains.sim import SimChain

    path = tmp_path / "sim-chain-sim.bin"
    sim = SimChain("sim", 5, path)
    sim.fund("user", "USDC", 100)
    sim.transfer("USDC", "user", "deposit-address", 60)
    sent = sim.transfer("USDC", "deposit-address", "out", 25, key="sim:7")
    with trio.move_on_after(0.1):
        await sim.run()  # stopped: the state is written on the way out
    again = SimChain("sim", 5, path)
    assert again.head == sim.head > 1 and again.block(sim.head) == sim.block(sim.head)
    assert again.balances == sim.balances == {("user", "USDC"): 40, ("deposit-address", "USDC"): 35, ("out", "USDC"): 25}
    assert again.find("sim:7").tx_hash == sent and again.transfer("USDC", "deposit-address", "out", 25, key="sim:7") == sent
    again.mine()
    assert again.block(again.head).parent == sim.block(sim.head).hash


async def test_a_failed_save_of_the_simulated_chain_stops_nothing(tmp_path, monkeypatch):
    """An outside test ran a node out of file descriptors: the simulated chain's save once a
    second raised EMFILE and the error ended the node. A failed save is now logged, the
    chain goes on mining, and the next save writes what the failed one held."""
    from satchel.chains import sim as sim_mod
    from satchel.chains.sim import SimChain

    path = tmp_path / "sim-chain-sim.bin"
    chain = SimChain("sim", 5, path)
    chain.fund("user", "USDC", 100)
    write, failing = chain._write, [True]

    def flaky(state):
        if failing[0]:
            raise OSError(24, "Too many open files")
        write(state)

    monkeypatch.setattr(chain, "_write", flaky)
    monkeypatch.setattr(sim_mod, "SAVE_S", 0.0)
    sent = chain.transfer("USDC", "user", "out", 25, key="sim:1")
    with trio.move_on_after(0.1):
        await chain.run()  # saves fail every block: the chain still mines
    assert chain.head > 1 and chain.find("sim:1").tx_hash == sent
    failing[0] = False
    chain._write(chain._state())  # the next save holds the keyed transfer the failed ones did not write
    assert SimChain("sim", 5, path).find("sim:1").tx_hash == sent


async def test_background_steps_wait_for_the_pipeline_to_run_dry(nursery, tmp_path):
    """``Node.quiet``, what an adapter awaits before each sweep and each turn: at once when
    nothing is in the pipeline, after the transactions in flight were answered, and never
    longer than its patience."""
    node = await nursery.start(Node(tmp_path / "data", fast_chains()).run)
    with trio.fail_after(1):
        assert await node.quiet(10)
    seen: list[str] = []
    for i in range(3):
        node.submit(Deposit(node.admin.api_key, f"a{i}", "USDC", USDC), lambda events, i=i: seen.append(f"answered {i}"))
    with trio.fail_after(5):
        assert await node.quiet(10)
    seen.append("quiet")
    assert seen == ["answered 0", "answered 1", "answered 2", "quiet"]
    node._in_pipeline += 1  # as if a block never came back: the patience bounds the wait
    start = trio.current_time()
    assert not await node.quiet(0.1)  # saturated: background work then goes on anyway
    assert 0.1 <= trio.current_time() - start < 1
    node._in_pipeline -= 1


async def test_background_turns_run_one_at_a_time_and_only_between_blocks(nursery, tmp_path):
    """``Node.turn``: background steps (a report's signing, a few transfers sealed) take
    turns, one step at a time, and none starts while a block is in the pipeline."""
    node = await nursery.start(Node(tmp_path / "data", fast_chains()).run)
    log: list[str] = []

    async def step(name: str) -> None:
        async with node.turn(10):
            log.append(f"{name} in, pipeline {'idle' if node._idle() else 'busy'}")
            await trio.sleep(0)  # another turn waiting cannot start meanwhile
            log.append(f"{name} out")

    node.submit(Deposit(node.admin.api_key, "a", "USDC", USDC), lambda events: log.append("answered"))
    with trio.fail_after(5):
        async with trio.open_nursery() as steps:
            steps.start_soon(step, "first")
            steps.start_soon(step, "second")
    first, second = log[1].split()[0], log[3].split()[0]  # trio starts tasks in either order
    assert {first, second} == {"first", "second"}
    assert log == ["answered", f"{first} in, pipeline idle", f"{first} out", f"{second} in, pipeline idle", f"{second} out"]


async def test_the_simulated_chain_seals_in_steps_and_a_reorg_meanwhile_finishes_the_block_first(nursery):
    """``run`` seals a block a few transfers a turn; the block appears whole, and a reorg
    (or ``mine``) arriving in the middle finishes it first: blocks stay whole and chained."""
    from satchel.chains import sim as sim_mod

    chain = sim_mod.SimChain("x", block_ms=10)
    chain.fund("a", "USDC", 10**6)
    turns: list[int] = []

    class Turn:  # counts the steps, and reorganises in the middle of the first block's
        async def __aenter__(self) -> None:
            turns.append(len(chain.blocks))
            if len(turns) == 2:
                chain.reorg(1)
                after.append((chain.head, chain.balances[("a", "USDC")]))

        async def __aexit__(self, *exc: object) -> None:
            return None

    after: list[tuple[int, int]] = []
    for i in range(3 * sim_mod.SEAL_STEP):
        chain.transfer("USDC", "a", f"b{i}", 1)
    nursery.start_soon(chain.run, Turn)
    with trio.fail_after(5):
        while chain.head < 3:
            await trio.sleep(0.005)
    assert after == [(0, 10**6)]  # the block was sealed whole first, then reorganised away
    blocks = [chain.block(n) for n in range(chain.head + 1)]
    assert all(b.parent == a.hash and b.number == a.number + 1 for a, b in zip(blocks, blocks[1:]))
    assert not any(b.transfers for b in blocks)

def test_the_simulated_chain_keeps_its_idempotency_keys_across_a_restart_and_a_reorg(tmp_path):
    """Keyed transfers (withdrawals, sweeps) are appended to a log at each save, not
    rewritten: a restarted chain still finds them, and one a reorg dropped stays gone."""
    from satchel.chains.sim import SimChain

    path = tmp_path / "sim-chain-x.bin"
    chain = SimChain("x", path=path)
    chain.fund("a", "USDC", 100)
    chain.transfer("USDC", "a", "b", 10, key="k1")
    chain.mine()
    chain.transfer("USDC", "a", "b", 10, key="k2")
    chain.mine()
    chain._write(chain._state())
    chain.reorg(1)  # k2's block is gone, after it was logged
    chain.transfer("USDC", "a", "b", 5, key="k3")
    chain.mine()
    chain._write(chain._state())
    restarted = SimChain("x", path=path)
    assert restarted.find("k1") is not None and restarted.find("k3") is not None and restarted.find("k2") is None
    assert restarted.balances[("b", "USDC")] == 15 and restarted.head == 2
    assert restarted.transfer("USDC", "a", "b", 10, key="k1") == chain.find("k1").tx_hash  # never accepted twice
