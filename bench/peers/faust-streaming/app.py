"""orderfold's fold as a faust-streaming application: both stages, RocksDB tables, the same outputs.

Run by scripts/bench against a log already published by `orderfold bench --phase publish`:

    python app.py --brokers HOST:PORT --published published.json --expected expected.json \
        --state-dir DIR

The order stage is one agent over orders, payments and logistics (one stream, so that the three
share a table per partition); the SKU stage one agent over its repartition topic and inventory.
Both run the shared fold (../fold.py) on a Faust table kept in RocksDB (through rocksdict) with
its changelog topic, as orderfold keeps changelogs, and commit at-least-once on Faust's own
schedule. Commands travel as JSON on the repartition topic, sent to the partition murmur2 gives
their SKU (the partitioner orderfold publishes inventory with), so they meet their SKU's
inventory. The worker stops itself once every SKU task has applied everything.
"""

import asyncio
import json
import os
import signal
import sys

# Appended, not prepended: this directory's parent must not shadow the `faust` package.
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import faust  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from aiokafka.errors import TopicAlreadyExistsError  # noqa: E402

import fold  # noqa: E402
from murmur2 import partition_of  # noqa: E402


COMMANDS = "orderfold-faust.sku-commands"
DLQ = "orderfold-faust.dlq"


def create_topics(brokers, names, partitions):
    """The peer's own topics, made before the worker starts: Faust declares only the topics
    its agents read that it counts as internal, and sends to a missing topic wait forever."""

    async def create():
        admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
        await admin.start()
        try:
            for name in names:
                try:
                    await admin.create_topics([NewTopic(name, partitions, 1)])
                except TopicAlreadyExistsError:
                    pass
        finally:
            await admin.close()

    # Its own loop, closed after: the worker makes and runs the loop it serves on.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(create())
    finally:
        loop.close()


class TableStore:
    """The fold's store (get/set/delete by tuple key) over a Faust table with string keys."""

    def __init__(self, table):
        self.table = table

    @staticmethod
    def _key(k):
        return "\x1f".join(str(part) for part in k)

    def get(self, k):
        return self.table.get(self._key(k))

    def set(self, k, v):
        self.table[self._key(k)] = v

    def delete(self, k):
        self.table.pop(self._key(k), None)


def main():
    ap = fold.peer_arguments()
    args = ap.parse_args()
    create_topics(args.brokers, (COMMANDS, DLQ), args.partitions)
    run = fold.Run(args)
    ends, end_time, codec, rules = run.ends, run.end_time, run.codec, run.rules
    n = args.partitions

    app = faust.App(
        "orderfold-faust",
        broker=f"kafka://{args.brokers}",
        store="rocksdb://",
        datadir=args.state_dir,
        topic_partitions=n,
        topic_replication_factor=1,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        # tansu answers slowly while it serves a large log from sqlite: patient timeouts keep
        # the member in its group and its produced records in flight instead of failing.
        broker_session_timeout=300.0,
        broker_heartbeat_interval=10.0,
        broker_request_timeout=300.0,
        producer_request_timeout=300.0,
    )
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    order_inputs = app.topic("orders", "payments", "logistics", **raw)
    sku_inputs = app.topic(COMMANDS, "inventory", **raw)
    commands = app.topic(COMMANDS, **raw)
    outputs = {name: app.topic(name, **raw)
               for name in ("reservation-expiry", "tracking-status", "oversell-alerts")}
    outputs["dlq"] = app.topic(DLQ, **raw)
    outputs["commands"] = commands
    order_state = TableStore(app.Table("order-state", partitions=n))
    sku_state = TableStore(app.Table("sku-state", partitions=n))

    order_tasks = {}
    sku_tasks = {}
    finished = set()
    rank = {"orders": fold.ORDERS, "payments": fold.PAYMENTS, "logistics": fold.LOGISTICS}

    async def send(outs):
        for o in outs:
            topic, k, v = outputs[o["t"]], o["k"], o["v"]
            if o["t"] == "commands":
                # A watermark names its SKU partition; a command goes where its SKU lives.
                partition = k if isinstance(k, int) else partition_of(k, n)
                key = b"watermark" if isinstance(k, int) else k.encode()
                await topic.send(key=key, value=json.dumps(v, separators=(",", ":")).encode(),
                                 partition=partition)
            else:
                await topic.send(key=k.encode(), value=v)

    def text(key):
        return key.decode(errors="replace") if key is not None else ""

    @app.agent(order_inputs)
    async def order_stage(stream):
        async for event in stream.events():
            m = event.message
            task = order_tasks.get(m.partition)
            if task is None:
                task_ends = [ends.get((t, m.partition), 0) for t in ("orders", "payments", "logistics")]
                task = order_tasks[m.partition] = fold.OrderTask(
                    m.partition, codec, task_ends, end_time, n, rules)
            task.offer(rank[m.topic], m.offset, text(m.key), m.value)
            await send(task.run(order_state))

    @app.agent(sku_inputs)
    async def sku_stage(stream):
        async for event in stream.events():
            m = event.message
            p = m.partition
            task = sku_tasks.get(p)
            if task is None:
                task = sku_tasks[p] = fold.SkuTask(p, codec, ends.get(("inventory", p), 0), n)
            if m.topic == "inventory":
                task.offer_inventory(m.offset, text(m.key), m.value)
            else:
                task.offer_command(m.offset, json.loads(m.value))
            await send(task.run(sku_state))
            if task.done() and p not in finished:
                finished.add(p)
                if len(finished) == n:
                    # The worker's own graceful stop: it commits, flushes its producer, exits.
                    os.kill(os.getpid(), signal.SIGTERM)

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    fold.finish("faust-streaming", order_tasks, sku_tasks, finished, n)


if __name__ == "__main__":
    main()
