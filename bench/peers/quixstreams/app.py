"""orderfold's fold as a Quix Streams application: both stages, RocksDB state, the same outputs.

Run by scripts/bench against a log already published by `orderfold bench --phase publish`:

    python app.py --brokers HOST:PORT --published published.json --expected expected.json

The order stage is a StreamingDataFrame over orders, payments and logistics (concatenated, so
that they share one state store per partition); the SKU stage one over its repartition topic
and inventory. Both run the shared fold (../fold.py) inside a stateful `apply`, on Quix's
RocksDB state (with its changelog topics, as orderfold keeps changelogs) and at-least-once
checkpoints every second (orderfold's commit interval). Commands travel as JSON on the
repartition topic, partitioned by murmur2 like orderfold's, so they meet their SKU's
inventory. The application stops itself once every SKU task has applied everything.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from quixstreams import Application, message_context  # noqa: E402
from quixstreams.models import TopicConfig  # noqa: E402
from quixstreams.models.serializers import Serializer  # noqa: E402
from quixstreams.models.topics.manager import TopicManager  # noqa: E402

import fold  # noqa: E402
from murmur2 import key_for_partition  # noqa: E402


def _tolerate_missing_retention():
    """tansu 0.6.0 leaves `retention.ms` out of DescribeConfigs, and Quix 3.28 needs it to size
    its changelog topics; supply Kafka's own default (7 days) where the broker is silent."""
    original = TopicManager.derive_topic_config.__func__

    def derive(cls, topics):
        topics = list(topics)
        for t in topics:
            t.broker_config.extra_config.setdefault("retention.ms", str(7 * 24 * 3600 * 1000))
        return original(cls, topics)

    TopicManager.derive_topic_config = classmethod(derive)


class Payload(Serializer):
    """Writes the `v` field of an output row: Avro bytes, or JSON for the command topic."""

    def __call__(self, value, ctx):
        v = value["v"]
        return v if isinstance(v, bytes) else json.dumps(v, separators=(",", ":")).encode()


def main():
    ap = fold.peer_arguments()
    ap.add_argument("--commit-interval-s", type=float, default=5.0,
                    help="Quix's checkpoint interval; 5 s is Quix's own default")
    args = ap.parse_args()
    _tolerate_missing_retention()
    run = fold.Run(args)
    ends, end_time, codec, rules = run.ends, run.end_time, run.codec, run.rules
    n = args.partitions

    app = Application(
        broker_address=args.brokers,
        consumer_group="orderfold-quix",
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        commit_interval=args.commit_interval_s,
        processing_guarantee="at-least-once",
        # tansu answers slowly while it serves a large log from sqlite: patient timeouts keep
        # the member in its group and its produced records in flight instead of failing.
        producer_extra_config={"partitioner": "murmur2_random", "linger.ms": 5,
                               "message.timeout.ms": 0, "request.timeout.ms": 120_000},
        # A checkpoint's flush can wait minutes on a produce request tansu is slow to answer;
        # without a long poll interval librdkafka takes the member out of its group meanwhile.
        consumer_extra_config={"session.timeout.ms": 300_000, "heartbeat.interval.ms": 10_000,
                               "socket.timeout.ms": 300_000, "max.poll.interval.ms": 1_800_000},
        loglevel="WARNING",
    )
    inputs = {}
    for name in ("orders", "payments", "logistics", "inventory"):
        inputs[name] = app.topic(name, value_deserializer="bytes", key_deserializer="str")
    commands = app.topic(
        "orderfold-quix.sku-commands", value_deserializer="json", key_deserializer="str",
        key_serializer="str", value_serializer=Payload(),
        config=TopicConfig(num_partitions=n, replication_factor=1))
    outputs = {
        name: app.topic(name, key_serializer="str", value_serializer=Payload())
        for name in ("reservation-expiry", "tracking-status", "oversell-alerts")
    }
    outputs["dlq"] = app.topic("orderfold-quix.dlq", key_serializer="str",
                               value_serializer=Payload())
    outputs["commands"] = commands
    watermark_keys = [key_for_partition(p, n) for p in range(n)]

    order_tasks = {}
    sku_tasks = {}
    finished = set()
    rank = {"orders": fold.ORDERS, "payments": fold.PAYMENTS, "logistics": fold.LOGISTICS}

    def order_stage(value, key, timestamp, headers, state):
        ctx = message_context()
        p = ctx.partition
        task = order_tasks.get(p)
        if task is None:
            task_ends = [ends.get((t, p), 0) for t in ("orders", "payments", "logistics")]
            task = order_tasks[p] = fold.OrderTask(p, codec, task_ends, end_time, n, rules)
        task.offer(rank[ctx.topic], ctx.offset, key, value)
        return route(task.run(state._transaction.as_state(prefix=b"order-task")))

    def sku_stage(value, key, timestamp, headers, state):
        ctx = message_context()
        p = ctx.partition
        task = sku_tasks.get(p)
        if task is None:
            task = sku_tasks[p] = fold.SkuTask(p, codec, ends.get(("inventory", p), 0), n)
        if ctx.topic == "inventory":
            task.offer_inventory(ctx.offset, key, value)
        else:
            task.offer_command(ctx.offset, value)
        outs = task.run(state._transaction.as_state(prefix=b"sku-task"))
        if task.done() and p not in finished:
            finished.add(p)
            if len(finished) == n:
                app.stop()
        return route(outs)

    def route(outs):
        """A watermark names its SKU partition; Quix picks partitions by key alone."""
        for o in outs:
            if o["t"] == "commands" and isinstance(o["k"], int):
                o["k"] = watermark_keys[o["k"]]
        return outs

    orders = (app.dataframe(inputs["orders"])
              .concat(app.dataframe(inputs["payments"]))
              .concat(app.dataframe(inputs["logistics"])))
    orders = orders.apply(order_stage, stateful=True, metadata=True, expand=True)
    orders.to_topic(lambda v, k, ts, h: outputs[v["t"]], key=lambda v: v["k"])

    skus = app.dataframe(commands).concat(app.dataframe(inputs["inventory"]))
    skus = skus.apply(sku_stage, stateful=True, metadata=True, expand=True)
    skus.to_topic(lambda v, k, ts, h: outputs[v["t"]], key=lambda v: v["k"])

    app.run()
    fold.finish("quixstreams", order_tasks, sku_tasks, finished, n)


if __name__ == "__main__":
    main()
