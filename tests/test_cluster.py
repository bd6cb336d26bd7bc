"""The block stream on NATS JetStream (``satchel.cluster``), in this process: a sequencer
publishing, a gateway node following it and forwarding orders, a validator on the
stream, the journal-durability catch-up, fencing of a second sequencer, and the
intake's refusals. The failover drill with processes is tests/test_cluster_failover.py."""

from __future__ import annotations

import msgspec
import pytest
import trio

from satchel.cluster import stream
from satchel.cluster.bus import Bus, Fenced
from satchel.cluster.intake import IntakeServer, Forwarder
from satchel.cluster.role import Cluster
from satchel.core.messages import Deposit, StateHashOf
from satchel.signing import Keypair, auth_for, load_key
from satchel.tools.client import ReplyError, connect

from conftest import nats_cluster, run_node, signed_order, small_snapshots, workload

pytestmark = nats_cluster.skip_without


def limit(side: str, price: str, qty: str, **extra) -> dict:
    return {"symbol": "SOL_USDC", "side": side, "orderType": "Limit", "price": price, "quantity": qty, **extra}


async def sequencer(nursery, bus, data, cfg=None, durability="stream", gateways=(), takeover_after=0.2):
    """A sequencer node that becomes the primary (nobody else beats)."""
    from satchel.node import Node

    cluster = Cluster(bus, load_key(data, "admin.key"), sequencer=True, durability=durability,
                      takeover_after=takeover_after, allow_gateways=tuple(gateways))
    node = await nursery.start(Node(data, cfg, cluster).run)
    with trio.fail_after(10):
        await cluster.promoted.wait()
    return node


async def follower(nursery, bus, data, key, cfg=None):
    from satchel.node import Node

    return await nursery.start(Node(data, cfg, Cluster(bus, key, sequencer=False)).run)


async def caught_up(*nodes, height=None, timeout=10):
    target = height or max(n.chain.height for n in nodes)
    with trio.fail_after(timeout):
        while min(n.chain.height for n in nodes) < target:
            await trio.sleep(0.02)
    return target


async def test_orders_through_a_gateway_process_follow_the_stream(tmp_path):
    from satchel.gateway import Gateway

    gkey = Keypair.generate()
    with nats_cluster(tmp_path / "nats", 1) as nats:
        async with Bus(nats.urls) as sbus, Bus(nats.urls) as gbus, trio.open_nursery() as nursery:
            seq = await sequencer(nursery, sbus, tmp_path / "seq", small_snapshots(), gateways=[gkey.public])
            gnode = await follower(nursery, gbus, tmp_path / "gw", gkey)
            gw = await nursery.start(Gateway(gnode, "127.0.0.1", 0).run)
            alice, bob = Keypair.generate(), Keypair.generate()
            admin = seq.admin.api_key
            await seq.submit_wait(Deposit(admin, alice.api_key, "USDC", 100_000 * 10**6))
            await seq.submit_wait(Deposit(admin, bob.api_key, "SOL", 1_000 * 10**9))
            await caught_up(seq, gnode)
            assert gnode.admin.api_key == admin  # the follower checks admin requests against the chain's key
            async with connect(gw.url, alice) as a, connect(gw.url, bob) as b:
                await a.subscribe(["account.orderUpdate"], private=True)
                rest = await b.request("orderExecute", limit("Ask", "150", "2", clientId=11))
                assert rest["status"] == "New" and rest["clientId"] == 11
                taken = await a.request("orderExecute", limit("Bid", "150.5", "0.5"))
                assert taken["status"] == "Filled" and taken["executedQuoteQuantity"] == "75"
                # read your writes: the reply came from this gateway's own replay of the block
                q = await b.request("orderQuery", {"symbol": "SOL_USDC", "clientId": 11})
                assert (q["status"], q["executedQuantity"]) == ("PartiallyFilled", "0.5")
                assert (await a.request("balanceQuery"))["SOL"]["available"] == "0.5"
                seen = []
                while "orderFill" not in seen:
                    seen.append((await a.next_frame("account.orderUpdate"))["data"]["e"])
                # a refusal by the engine comes back through the stream too
                r = await a.request("orderExecute", limit("Bid", "150", "100000"))
                assert (r["status"], r["reason"]) == ("Rejected", "InsufficientFunds")
                # and a signature already sequenced is refused by the engine, however it comes back
                req_id, frame = a.frame("orderExecute", limit("Bid", "149", "1"))
                await a.exchange(req_id, frame)
                with pytest.raises(ReplyError) as e:
                    await a.exchange(req_id, frame)
                assert e.value.code == "DUPLICATE_REQUEST"
            h = await caught_up(seq, gnode)
            assert await gnode.ask("engine", StateHashOf()) == await seq.ask("engine", StateHashOf())
            assert await stream.last_height(sbus) == h
            assert gnode.cluster.forwarder.pending == 0
            # the gateway journaled the same bytes: its local copy is the stream's
            assert gnode.journal is not None and (tmp_path / "gw" / "journal").exists()
            nursery.cancel_scope.cancel()


async def test_validator_follows_the_stream_and_compares_state_hashes(tmp_path):
    from satchel.verify.validator import Validator

    with nats_cluster(tmp_path / "nats", 1) as nats:
        async with Bus(nats.urls) as bus, trio.open_nursery() as nursery:
            seq = await sequencer(nursery, bus, tmp_path / "seq", small_snapshots())
            key = Keypair.generate()
            params = {"account": key.api_key, "asset": "USDC", "quantity": "10000"}
            await seq.submit_wait(Deposit(seq.admin.api_key, key.api_key, "USDC", 10**10, auth_for(seq.admin, "deposit", params)))
            for i in range(40):  # every transaction signed, as the validator insists
                seq.submit(signed_order(key, price=f"{140 + i % 7}", clientId=i), None)
                if i % 8 == 0:
                    await trio.sleep(0.01)
            await seq.submit_wait(signed_order(key, clientId=99))
            v = Validator(tmp_path / "v", snapshot_blocks=3)
            nursery.start_soon(v.follow_nats, nats.urls)
            with trio.fail_after(20):
                while v.chain is None or v.chain.height < seq.chain.height:
                    await trio.sleep(0.05)
            assert v.verified_signatures > 0  # the genesis block's admin signatures
            assert await v.chain.engine.state_hash() == await seq.engine.state_hash()
            # its signed progress reports reach the nodes on the bus (nodeStats, /ops)
            from satchel.verify.validator import validator_key

            with trio.fail_after(5):
                while not (rows := seq.cluster.validators(seq.chain.height)) or rows[0]["height"] < seq.chain.height:
                    await trio.sleep(0.05)
            assert rows == [{"key": validator_key(tmp_path / "v").api_key, "connected": True, "height": seq.chain.height,
                             "lag": 0, "diverged": None, "agrees": True}]
            nursery.cancel_scope.cancel()


async def test_journal_durability_catches_the_stream_up_from_the_journal(tmp_path):
    """A node with a journal of its own joins a cluster in journal mode: the stream gets
    every block it journaled before, then the new ones; a fresh follower replays all."""
    data = tmp_path / "seq"
    _, before = await run_node(data, workload)
    with nats_cluster(tmp_path / "nats", 1) as nats:
        async with Bus(nats.urls) as bus, trio.open_nursery() as nursery:
            seq = await sequencer(nursery, bus, data, durability="journal")
            await seq.submit_wait(Deposit(seq.admin.api_key, "dave", "USDC", 5))
            with trio.fail_after(10):
                while await stream.last_height(bus) < seq.chain.height:
                    await trio.sleep(0.05)
            replica = await follower(nursery, bus, tmp_path / "replica", Keypair.generate())
            await caught_up(seq, replica)
            assert await replica.ask("engine", StateHashOf()) == await seq.ask("engine", StateHashOf()) != before
            nursery.cancel_scope.cancel()


async def test_a_second_sequencer_is_fenced_never_both_extend_the_chain(tmp_path):
    """Two primaries at once (one took over while the other still ran): JetStream's
    expected-last-sequence check lets exactly one extend each height; the other stops
    with ``Fenced`` before releasing what it sequenced."""
    from satchel.node import Node

    fenced: dict[str, Fenced] = {}

    async def run(name, node, task_status=trio.TASK_STATUS_IGNORED):
        try:
            await node.run(task_status=task_status)
        except Fenced as exc:
            fenced[name] = exc

    with nats_cluster(tmp_path / "nats", 1) as nats:
        async with Bus(nats.urls) as abus, Bus(nats.urls) as bbus, Bus(nats.urls) as rbus, trio.open_nursery() as nursery:
            acluster = Cluster(abus, load_key(tmp_path / "a", "admin.key"), sequencer=True, takeover_after=0.2)
            anode = await nursery.start(run, "a", Node(tmp_path / "a", None, acluster))
            with trio.fail_after(10):
                await acluster.promoted.wait()
            await anode.submit_wait(Deposit(anode.admin.api_key, "alice", "USDC", 1))
            (tmp_path / "b").mkdir()  # a standby holds the primary's admin key: it signs blocks with it
            (tmp_path / "b" / "admin.key").write_bytes((tmp_path / "a" / "admin.key").read_bytes())
            bcluster = Cluster(bbus, load_key(tmp_path / "b", "admin.key"), sequencer=True, takeover_after=60)
            b = Node(tmp_path / "b", None, bcluster)
            nursery.start_soon(run, "b", b)
            with trio.fail_after(10):
                while b.chain is None or bcluster.source is None or b.chain.height < anode.chain.height:
                    await trio.sleep(0.02)
            bcluster.source.drain(await stream.last_height(bbus))  # b takes over while a still runs
            with trio.fail_after(10):
                await bcluster.promoted.wait()
            # both sequence now: each submits, both cut a block at the same height
            anode.submit(Deposit(anode.admin.api_key, "alice", "USDC", 2))
            b.submit(Deposit(b.admin.api_key, "bob", "USDC", 3))
            with trio.fail_after(15):
                while not fenced:
                    await trio.sleep(0.02)
            assert len(fenced) == 1
            winner = b if "a" in fenced else anode
            await trio.sleep(0.3)
            last = await stream.last_height(rbus)
            assert last == winner.chain.height
            # the stream is one chain: a fresh replica replays every block, each extending the last
            replica = await follower(nursery, rbus, tmp_path / "replica", Keypair.generate())
            await caught_up(replica, height=last)
            assert await replica.ask("engine", StateHashOf()) == await winner.ask("engine", StateHashOf())
            nursery.cancel_scope.cancel()


async def test_intake_takes_only_signed_batches_from_allowed_gateways(tmp_path):
    gateway, stranger, trader = Keypair.generate(), Keypair.generate(), Keypair.generate()
    submitted = []

    class Node:
        data = tmp_path

        class sequencer:
            backlog = 0

        @staticmethod
        def submit(tx, cb):
            submitted.append(tx)

    intake = IntakeServer(Node, None, [gateway.public])
    intake._allowed = intake.allowed()
    a, b = signed_order(trader, clientId=1), signed_order(trader, clientId=2)
    ok = Forwarder(None, gateway).seal([a, b])
    assert intake.take(b"\x00garbage") == b"refused: not an intake batch"
    assert intake.take(Forwarder(None, stranger).seal([a])) == b"refused: gateway key not allowed by this sequencer"
    public, sig, body = msgspec.msgpack.decode(ok)
    forged = msgspec.msgpack.encode((public, sig, body + b"\x01"))
    assert intake.take(forged) == b"refused: bad gateway signature"
    not_txs = msgspec.msgpack.encode((gateway.public, gateway.sign(b"\x91\x01"), b"\x91\x01"))
    assert intake.take(not_txs).startswith(b"refused:")
    # an unsigned record (a deposit, an admin change) needs more than a gateway's key
    unsigned = Forwarder(None, gateway).seal([a, Deposit(b"x".hex(), trader.api_key, "USDC", 10**12)])
    assert intake.take(unsigned) == b"refused: unsigned transaction in the batch"
    assert submitted == []
    assert intake.take(ok) == b"ok" and submitted == [a, b]
    # a key added to DATA/gateways later is taken without a restart
    (tmp_path / "gateways").write_text(f"# added\n{stranger.api_key}\n")
    assert intake.take(Forwarder(None, stranger).seal([a])) == b"ok"
    assert (intake.batches, intake.txs, intake.refused) == (2, 3, 5)


async def test_a_request_sent_twice_through_a_gateway_gets_the_engines_answer_to_a_repeat():
    key = Keypair.generate()
    forwarder = Forwarder(None, key)
    answers = []
    order = signed_order(key, clientId=7)
    forwarder.forward(order, lambda events: answers.append(("first", events)))
    forwarder.forward(order, lambda events: answers.append(("again", events)))
    assert forwarder.pending == 1 and len(forwarder._queue) == 1  # forwarded once

    class Block:
        txs = [order]

    (callback,) = forwarder.claim(Block)
    callback(["the block's events"])
    assert answers[0] == ("first", ["the block's events"])
    assert answers[1][0] == "again" and answers[1][1][0].code == "DUPLICATE_REQUEST"
    assert forwarder.pending == 0


async def test_stream_durability_releases_nothing_before_jetstream_stored_it(tmp_path):
    """With the stream as the durability point an order's reply waits for JetStream: with
    the NATS server down nothing is answered; once it is back the block is stored and
    answered, and the stream holds it."""
    with nats_cluster(tmp_path / "nats", 1) as nats:
        async with Bus(nats.urls) as bus, trio.open_nursery() as nursery:
            seq = await sequencer(nursery, bus, tmp_path / "seq")
            await seq.submit_wait(Deposit(seq.admin.api_key, "alice", "USDC", 1))
            height = seq.chain.height
            nats.nodes[0].stop()
            answered = trio.Event()

            async def submit():
                await seq.submit_wait(Deposit(seq.admin.api_key, "alice", "USDC", 2))
                answered.set()

            nursery.start_soon(submit)
            await trio.sleep(1.5)
            assert not answered.is_set() and seq.chain.height == height + 1  # applied, not released
            nats.start_node(nats.nodes[0])
            nats.wait_healthy()
            with trio.fail_after(20):
                await answered.wait()
            assert await stream.last_height(bus) == height + 1
            nursery.cancel_scope.cancel()


async def test_intake_splits_what_nats_would_not_carry_and_turns_batches_away_when_busy(tmp_path):
    from satchel.cluster import intake as intake_mod

    gateway = Keypair.generate()

    class SmallBus:
        max_payload = 4096

    orders = [signed_order(gateway, clientId=i) for i in range(40)]
    parts = Forwarder(SmallBus, gateway)._parts(orders)
    assert len(parts) > 1 and all(len(payload) <= 2048 for _, payload in parts)
    assert [tx for txs, _ in parts for tx in txs] == orders  # in order, nothing lost

    class Node:
        data = tmp_path

        class sequencer:
            backlog = intake_mod.MAX_BACKLOG + 1

        submit = staticmethod(lambda tx, cb: pytest.fail("a busy sequencer took a batch"))

    server = IntakeServer(Node, None, [gateway.public])
    server._allowed = server.allowed()
    assert server.take(Forwarder(None, gateway).seal(orders[:2])) == b"busy" and server.busy == 1


async def test_strangers_on_nats_cannot_write_into_the_stream_nor_crash_a_standby(tmp_path):
    from satchel.cluster import intake, role
    from satchel.node import Node

    with nats_cluster(tmp_path / "nats", 1) as nats:
        async with Bus(nats.urls) as bus, Bus(nats.urls) as sbus, Bus(nats.urls) as stranger, \
                trio.open_nursery() as nursery:
            seq = await sequencer(nursery, bus, tmp_path / "seq")
            standby = Cluster(sbus, Keypair.generate(), sequencer=True, takeover_after=60)
            await nursery.start(Node(tmp_path / "standby", None, standby).run)
            height = await stream.last_height(bus)

            async def publish(subject, data, reply=""):
                await stranger.nc.publish(subject, data, reply=reply)
                await stranger.nc.flush()

            # a refusal answered to a reply subject naming the block stream would be stored as a block
            await stranger.call(publish, intake.SUBJECT, b"\x00garbage", stream.SUBJECT)
            for beat in (b"[]", b"1", b"null", b"{}"):  # valid JSON that is no heartbeat
                await stranger.call(publish, role.HEARTBEAT, beat)
            await trio.sleep(0.5)
            assert await stream.last_height(bus) == height
            await seq.submit_wait(Deposit(seq.admin.api_key, "alice", "USDC", 1))
            assert await stream.last_height(bus) == height + 1
            with trio.fail_after(10):
                while standby.source.fetched < height + 1:  # and the standby still follows
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


async def test_followers_take_only_blocks_the_admin_key_signed(tmp_path):
    """A well-chained block in the stream that the admin key did not sign (someone who
    can publish on the subject) stops a follower and a validator at that block."""
    from satchel.ledger.journal import read_records
    from satchel.node import Node
    from satchel.verify.validator import Validator

    await run_node(tmp_path / "origin", workload)
    records = list(read_records(tmp_path / "origin" / "journal"))
    with nats_cluster(tmp_path / "nats", 1) as nats:
        async with Bus(nats.urls) as bus:
            await stream.ensure_stream(bus)
            admin = load_key(tmp_path / "origin", "admin.key")
            await stream.publish_blocks(bus, [(1, records[0], None)], admin)
            await stream.publish_blocks(bus, [(h, r, None) for h, r in enumerate(records[1:], 2)], Keypair.generate())
            with pytest.raises(stream.Forged, match="block 2 in the stream is not signed by the admin key"):
                await Node(tmp_path / "replica", None, Cluster(bus, Keypair.generate(), sequencer=False)).run()
            with pytest.raises(BaseExceptionGroup) as eg:
                await Validator(tmp_path / "v").follow_nats(nats.urls)
            assert eg.group_contains(stream.Forged)
