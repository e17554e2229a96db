"""orderfold's contract (../../../docs, DOMAIN rules) in plain Python, for the peer frameworks.

The benchmark's peers (Quix Streams, faust-streaming) run this same fold inside their own
consumer loop, producer and state store, so that each is measured doing the work orderfold
does: the order stage merges its three inputs by (occurred_at, topic rank) and fires
reservation and orphan timers by stream time; the SKU stage applies commands in
(occurred_at, order_id, sku, sequence) order below the minimum watermark of the order tasks,
merged with inventory. The framework supplies a key-value `store` (its RocksDB state), and
sends what `run` returns. Outputs are Avro single-object records with orderfold's own schemas,
so the benchmark's checker reads every system's outputs the same way.

A bounded run only: the end offsets and the end time E of the log are given up front, as a
replay from earliest knows them.
"""

import argparse
import heapq
import io
import json
import os
import sys
import uuid
from collections import deque

import fastavro

NAMESPACE = uuid.NAMESPACE_URL
ORDERS, PAYMENTS, LOGISTICS = 0, 1, 2
INVENTORY, COMMANDS = 0, 1
TERMINAL = ("DELIVERED", "RETURNED")
MIN = -(1 << 63)
MAX = (1 << 63) - 1


def _strip_logical(node):
    """Timestamps stay plain longs: the wire format is the same and the fold compares ints."""
    if isinstance(node, dict):
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


class Codec:
    """Avro single-object encoding (C3 01, little-endian CRC-64-AVRO fingerprint, body)."""

    def __init__(self, schema_dir, headers):
        """`headers`: hex by record name, as `orderfold bench --phase expect` reports them;
        orderfold's Avro library computes the fingerprints, so the peers use its bytes."""
        self.schemas = {}
        self.headers = {}
        named = {}
        for name in ("OrderEvent", "PaymentEvent", "LogisticsEvent", "InventoryEvent",
                     "ReservationExpired", "TrackingStatus", "OversellAlert"):
            with open(os.path.join(schema_dir, f"{name}.avsc")) as f:
                raw = json.load(f)
            self.schemas[name] = fastavro.parse_schema(_strip_logical(raw), named_schemas=named)
            self.headers[name] = bytes.fromhex(headers[name])

    def decode(self, name, value):
        """(record, None) or (None, (reason, detail))."""
        if value is None:
            return None, ("decode", "record has no value")
        header = self.headers[name]
        if len(value) < 10 or value[:2] != b"\xc3\x01":
            return None, ("decode", "not an Avro single-object record")
        if value[:10] != header:
            return None, ("schema", f"unknown writer fingerprint {value[2:10].hex()}")
        try:
            buf = io.BytesIO(value[10:])
            record = fastavro.schemaless_reader(buf, self.schemas[name], None,
                                                return_record_name=True)
            if buf.tell() != len(value) - 10:
                return None, ("decode", "trailing bytes")
            return record, None
        except Exception as e:  # a malformed body: dead-lettered, never fatal
            return None, ("decode", str(e))

    def encode(self, name, record):
        buf = io.BytesIO()
        buf.write(self.headers[name])
        fastavro.schemaless_writer(buf, self.schemas[name], record)
        return buf.getvalue()


def peer_arguments():
    """The command line every peer takes from scripts/bench; a peer adds its own options."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--published", required=True, help="JSON from orderfold bench --phase publish")
    ap.add_argument("--expected", required=True, help="JSON from orderfold bench --phase expect")
    ap.add_argument("--schemas", default=os.path.join(os.path.dirname(__file__), "../../schemas"))
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--reservation-ttl-ms", type=int, default=300_000)
    ap.add_argument("--orphan-ttl-ms", type=int, default=3_600_000)
    return ap


class Run:
    """What a bounded run knows up front: each input partition's end offset, the log's end
    time, the codec and the rules."""

    def __init__(self, args):
        published = json.load(open(args.published))
        expected = json.load(open(args.expected))
        self.end_time = expected["end_time_ms"]
        self.ends = {}
        for tp, end in published["ends"].items():
            topic, p = tp.rsplit("/", 1)
            self.ends[(topic, int(p))] = end
        self.codec = Codec(args.schemas, expected["single_object_headers"])
        self.rules = {"reservation_ttl_ms": args.reservation_ttl_ms,
                      "orphan_ttl_ms": args.orphan_ttl_ms}


def finish(peer, order_tasks, sku_tasks, finished, partitions):
    """Prints what the peer processed; exits with an error unless every SKU task finished."""
    processed = sum(t.processed for t in order_tasks.values()) + sum(
        t.processed for t in sku_tasks.values())
    print(json.dumps({"records_processed": processed, "sku_tasks_done": len(finished)}))
    if len(finished) != partitions:
        sys.exit(f"{peer}: stopped before every SKU task finished")


def uuid5(name):
    return str(uuid.uuid5(NAMESPACE, name))


def validate(rank_or_topic, key, e):
    """The contract's validation rules; a reason string, or None."""
    if not e.get("event_id"):
        return "empty event_id"
    if e["occurred_at"] <= 0:
        return "occurred_at <= 0"
    if rank_or_topic == "inventory":
        if not e["sku"] or not e["warehouse_id"]:
            return "empty sku or warehouse_id"
        if key != e["sku"]:
            return "key differs from sku"
        kind, body = e["body"]
        if kind.endswith("StockReceived") and body["quantity"] <= 0:
            return "quantity <= 0"
        if kind.endswith("StockCounted") and body["on_hand"] < 0:
            return "on_hand < 0"
        return None
    if not e["order_id"]:
        return "empty order_id"
    if key != e["order_id"]:
        return "key differs from order_id"
    if rank_or_topic == PAYMENTS and not e["payment_id"]:
        return "empty payment_id"
    if rank_or_topic == LOGISTICS and not e["shipment_id"]:
        return "empty shipment_id"
    if rank_or_topic == ORDERS:
        kind, body = e["body"]
        if kind.endswith("OrderPlaced"):
            if not body["user_id"] or not body["cart_id"]:
                return "empty user_id or cart_id"
            if not body["lines"]:
                return "no lines"
            for line in body["lines"]:
                if not line["sku"]:
                    return "empty sku"
                if line["quantity"] <= 0:
                    return "quantity <= 0"
    return None


class Rewound(Exception):
    """A partition was delivered again from an earlier offset (a rebalance or a retried
    checkpoint). The merge buffers and timers live in memory, so the run cannot go on."""


def expect_next(seen, key, offset):
    """Records the offset delivered for `key` and refuses one that goes backwards."""
    last = seen.get(key, -1)
    if offset <= last:
        raise Rewound(f"{key} delivered offset {offset} after {last}")
    seen[key] = offset


def out(topic, key, value):
    return {"t": topic, "k": key, "v": value}


class OrderTask:
    """One partition of the order stage: orders, payments and logistics merged by event time."""

    TOPIC_RECORD = ("OrderEvent", "PaymentEvent", "LogisticsEvent")

    def __init__(self, partition, codec, ends, end_time, sku_partitions, rules):
        self.partition = partition
        self.codec = codec
        self.ends = ends  # next offset at which each input is caught up, by rank
        self.end_time = end_time
        self.sku_partitions = sku_partitions
        self.ttl = rules["reservation_ttl_ms"]
        self.orphan_ttl = rules["orphan_ttl_ms"]
        self.buffers = [deque(), deque(), deque()]
        self.next_offsets = [0, 0, 0]
        self.stream_time = MIN
        self.timers = []  # heap of (at, kind, order_id); kind 0 = reservation, 1 = orphan
        self.live_timers = set()
        self.finished = False
        self.published = None
        self.processed = 0
        self.seen = {}

    def offer(self, rank, offset, key, value):
        expect_next(self.seen, rank, offset)
        decoded, error = self.codec.decode(self.TOPIC_RECORD[rank], value)
        if error is None:
            why = validate(rank, key, decoded)
            if why:
                decoded, error = None, ("validation", why)
        self.buffers[rank].append((offset, key, value, decoded, error))

    def _caught_up(self, rank):
        return self.next_offsets[rank] >= self.ends[rank]

    def run(self, store):
        """Processes what the merge allows; returns the outputs to send, in order."""
        outs = []
        while True:
            rank = None
            best = None
            for r in range(3):
                b = self.buffers[r]
                if b:
                    if b[0][4] is not None:
                        rank = r
                        break
                    t = b[0][3]["occurred_at"]
                    if best is None or t < best:
                        best, rank = t, r
                elif not self._caught_up(r):
                    rank = None
                    break
            if rank is None:
                break
            offset, key, value, event, error = self.buffers[rank].popleft()
            self.next_offsets[rank] = offset + 1
            self.processed += 1
            if error is not None:
                outs.append(out("dlq", key, value))
            else:
                self._process(store, rank, key, value, event, outs)
        if not self.finished and all(self._caught_up(r) for r in range(3)):
            self._fire_due(store, self.end_time, outs)
            self.stream_time = max(self.stream_time, self.end_time)
            self.finished = True
        self._watermark(outs)
        return outs

    def _watermark(self, outs):
        mark = (self.stream_time, self.finished)
        if mark != self.published:
            for p in range(self.sku_partitions):
                outs.append(out("commands", p, {"wm": self.partition, "t": mark[0], "end": mark[1]}))
            self.published = mark

    def _fire_due(self, store, t, outs):
        while self.timers and self.timers[0][0] < t:
            at, kind, order_id = heapq.heappop(self.timers)
            if (at, kind, order_id) not in self.live_timers:
                continue
            self.live_timers.discard((at, kind, order_id))
            if kind == 0:
                self._expire(store, order_id, outs)
            else:
                self._expire_orphans(store, order_id, at, outs)

    def _add_timer(self, at, kind, order_id):
        k = (at, kind, order_id)
        if k not in self.live_timers:
            self.live_timers.add(k)
            heapq.heappush(self.timers, k)

    def _process(self, store, rank, key, value, event, outs):
        t = event["occurred_at"]
        self._fire_due(store, t, outs)
        self.stream_time = max(self.stream_time, t)
        dkey = ("d", rank, event["event_id"])
        if store.get(dkey) is not None:
            return
        store.set(dkey, self.stream_time)
        if rank == LOGISTICS:
            self._scan(store, event, outs)
            return
        kind = event["body"][0] if rank == ORDERS else None
        if kind is not None and kind.endswith("OrderPlaced"):
            self._placed(store, event, outs)
            return
        order_id = event["order_id"]
        order = store.get(("o", order_id))
        if order is None:
            parked = store.get(("p", order_id)) or []
            parked.append([self.stream_time, rank, key, value.hex(), event_json(event)])
            store.set(("p", order_id), parked)
            self._add_timer(self.stream_time + self.orphan_ttl, 1, order_id)
            return
        self._update(store, order, rank, event, self.stream_time, outs)
        store.set(("o", order_id), order)

    def _commands(self, order, kind, stamp, cause, reason, outs):
        for sku, qty in order["lines"]:
            outs.append(out("commands", sku, {
                "kind": kind, "order_id": order["id"], "sku": sku, "quantity": qty,
                "t": stamp, "seq": order["seq"], "cause": cause, "reason": reason}))
            order["seq"] += 1

    def _update(self, store, order, rank, event, stamp, outs):
        was_pending = order["status"] == "PENDING_PAYMENT"
        kind = event["body"][0]
        status = order["status"]
        if rank == PAYMENTS and kind.endswith("PaymentCaptured"):
            if status in ("PENDING_PAYMENT", "EXPIRED", "PAYMENT_FAILED"):
                order["status"] = "PAID"
                self._commands(order, "Commit", stamp, event["event_id"], None, outs)
        elif rank == PAYMENTS:
            if status == "PENDING_PAYMENT":
                order["status"] = "PAYMENT_FAILED"
                self._commands(order, "Release", stamp, event["event_id"], "payment_failed", outs)
        else:  # OrderCancelled
            if status == "PENDING_PAYMENT":
                order["status"] = "CANCELLED"
                self._commands(order, "Release", stamp, event["event_id"], "cancelled", outs)
            elif status == "PAID":
                tracking = store.get(("t", order["id"]))
                shipped = tracking is not None and tracking["status"] != "CREATED"
                if not shipped:
                    order["status"] = "CANCELLED"
                    self._commands(order, "Restock", stamp, event["event_id"], None, outs)
            elif status in ("EXPIRED", "PAYMENT_FAILED"):
                order["status"] = "CANCELLED"
        if was_pending and order["status"] != "PENDING_PAYMENT":
            self.live_timers.discard((order["deadline"], 0, order["id"]))

    def _placed(self, store, event, outs):
        order_id = event["order_id"]
        if store.get(("o", order_id)) is not None:
            return
        lines = []
        for line in event["body"][1]["lines"]:
            for entry in lines:
                if entry[0] == line["sku"]:
                    entry[1] += line["quantity"]
                    break
            else:
                lines.append([line["sku"], line["quantity"]])
        t = event["occurred_at"]
        order = {"id": order_id, "status": "PENDING_PAYMENT", "placed_at": t,
                 "deadline": t + self.ttl, "lines": lines, "seq": 0}
        stamp = self.stream_time
        self._commands(order, "Reserve", stamp, event["event_id"], None, outs)
        self._add_timer(order["deadline"], 0, order_id)
        parked = store.get(("p", order_id))
        if parked is not None:
            store.delete(("p", order_id))
            for parked_at, rank, _key, _value, ev in parked:
                self.live_timers.discard((parked_at + self.orphan_ttl, 1, order_id))
                self._update(store, order, rank, ev, stamp, outs)
        store.set(("o", order_id), order)

    def _expire(self, store, order_id, outs):
        order = store.get(("o", order_id))
        if order is None or order["status"] != "PENDING_PAYMENT":
            return
        order["status"] = "EXPIRED"
        cause = uuid5(f"expiry:{order_id}")
        stamp = max(order["deadline"] + 1, self.stream_time)
        self._commands(order, "Release", stamp, cause, "expired", outs)
        outs.append(out("reservation-expiry", order_id, self.codec.encode("ReservationExpired", {
            "event_id": cause, "order_id": order_id, "reserved_at": order["placed_at"],
            "expired_at": order["deadline"],
            "lines": [{"sku": s, "quantity": q} for s, q in order["lines"]]})))
        store.set(("o", order_id), order)

    def _expire_orphans(self, store, order_id, at, outs):
        parked = store.get(("p", order_id))
        if parked is None:
            return
        kept = []
        for p in parked:
            if p[0] + self.orphan_ttl <= at:
                outs.append(out("dlq", p[2], bytes.fromhex(p[3])))
            else:
                kept.append(p)
        if kept:
            store.set(("p", order_id), kept)
        else:
            store.delete(("p", order_id))

    def _scan(self, store, e, outs):
        current = store.get(("t", e["order_id"]))
        if current is not None:
            if e["occurred_at"] < current["updated_at"]:
                return
            if current["status"] in TERMINAL and e["status"] not in TERMINAL:
                return
        attempts = current["attempts"] if current else 0
        if e["status"] == "DELIVERY_FAILED":
            attempts += 1
        nxt = {"shipment_id": e["shipment_id"], "status": e["status"],
               "location": e["location"], "updated_at": e["occurred_at"], "attempts": attempts}
        store.set(("t", e["order_id"]), nxt)
        if (current is None or current["status"] != nxt["status"]
                or current["location"] != nxt["location"] or current["attempts"] != attempts):
            outs.append(out("tracking-status", e["order_id"], self.codec.encode("TrackingStatus", {
                "event_id": uuid5(f"tracking:{e['event_id']}"), "order_id": e["order_id"],
                "shipment_id": e["shipment_id"], "status": e["status"], "location": e["location"],
                "updated_at": e["occurred_at"], "delivery_attempts": attempts,
                "source_event_id": e["event_id"]})))


def event_json(event):
    """An event as the state store keeps it (JSON): a union branch as [name, body]."""
    return {**event, "body": list(event["body"])}


class SkuTask:
    """One partition of the SKU stage: commands in event-time order below the watermark."""

    def __init__(self, partition, codec, inventory_end, order_partitions):
        self.partition = partition
        self.codec = codec
        self.inventory_end = inventory_end
        self.order_partitions = order_partitions
        self.inventory = deque()
        self.inventory_next = 0
        self.pending = []  # heap of (t, order_id, sku, seq, command)
        self.pending_keys = set()
        self.watermarks = {}
        self.processed = 0
        self.seen = {}

    def watermark(self):
        if len(self.watermarks) < self.order_partitions:
            return MIN
        return min(MAX if end else t for t, end in self.watermarks.values())

    def done(self):
        return (self.watermark() == MAX and not self.pending and not self.inventory
                and self.inventory_next >= self.inventory_end)

    def offer_inventory(self, offset, key, value):
        expect_next(self.seen, "inventory", offset)
        decoded, error = self.codec.decode("InventoryEvent", value)
        if error is None:
            why = validate("inventory", key, decoded)
            if why:
                decoded, error = None, ("validation", why)
        self.inventory.append((offset, key, value, decoded, error))

    def offer_command(self, offset, c):
        expect_next(self.seen, "commands", offset)
        self.processed += 1
        if "wm" in c:
            t, end = self.watermarks.get(c["wm"], (MIN, False))
            self.watermarks[c["wm"]] = (max(t, c["t"]), end or c["end"])
            return
        k = (c["t"], c["order_id"], c["sku"], c["seq"])
        if k in self.pending_keys:
            return
        self.pending_keys.add(k)
        heapq.heappush(self.pending, (*k, c))

    def run(self, store):
        outs = []
        wm = self.watermark()
        while True:
            if self.inventory and self.inventory[0][4] is not None:
                offset, key, value, _, _ = self.inventory.popleft()
                self.inventory_next = offset + 1
                outs.append(out("dlq", key, value))
                continue
            if not self.inventory and self.inventory_next < self.inventory_end:
                break
            inv_at = self.inventory[0][3]["occurred_at"] if self.inventory else None
            cmd_at = self.pending[0][0] if self.pending else None
            inv_ok = inv_at is not None and inv_at <= wm
            cmd_ok = cmd_at is not None and cmd_at < wm
            if inv_ok and (not cmd_ok or inv_at <= cmd_at):
                self._inventory(store, outs)
            elif cmd_ok:
                self._command(store, outs)
            else:
                break
        return outs

    def _sku(self, store, sku):
        return store.get(("s", sku)) or {"wh": {}, "sold": 0, "reserved": 0}

    @staticmethod
    def _on_hand(s):
        return sum(s["wh"].values()) - s["sold"]

    def _alert(self, sku, s, kind, order_id, requested, available, source, t):
        return out("oversell-alerts", sku, self.codec.encode("OversellAlert", {
            "event_id": uuid5(f"alert:{source}:{sku}"), "sku": sku, "kind": kind,
            "order_id": order_id, "requested": requested, "available": available,
            "on_hand": self._on_hand(s), "reserved": s["reserved"], "occurred_at": t}))

    def _inventory(self, store, outs):
        offset, key, value, e, _ = self.inventory.popleft()
        self.inventory_next = offset + 1
        self.processed += 1
        dkey = ("d", e["event_id"])
        if store.get(dkey) is not None:
            return
        store.set(dkey, e["occurred_at"])
        s = self._sku(store, e["sku"])
        before = self._on_hand(s) - s["reserved"]
        kind, body = e["body"]
        wh = e["warehouse_id"]
        if kind.endswith("StockReceived"):
            s["wh"][wh] = s["wh"].get(wh, 0) + body["quantity"]
        else:
            s["wh"][wh] = body["on_hand"]
            if self._on_hand(s) - s["reserved"] < 0:
                outs.append(self._alert(e["sku"], s, "NEGATIVE_AVAILABLE", None, 0, before,
                                        e["event_id"], e["occurred_at"]))
        store.set(("s", e["sku"]), s)

    BITS = {"Reserve": 1, "Commit": 2, "Release": 4, "Restock": 8}

    def _command(self, store, outs):
        *k, c = heapq.heappop(self.pending)
        self.pending_keys.discard(tuple(k))
        sku, order_id, kind, qty = c["sku"], c["order_id"], c["kind"], c["quantity"]
        rkey = ("r", sku, order_id)
        stored = store.get(rkey)  # [quantity, status, applied bits]
        bit = self.BITS[kind]
        if stored is not None and stored[2] & bit:
            return
        s = self._sku(store, sku)
        available = self._on_hand(s) - s["reserved"]
        status = stored[1] if stored else None
        new = None
        alert = None
        if kind == "Reserve":
            if stored is None:
                if qty <= available:
                    s["reserved"] += qty
                    new = [qty, "ACTIVE"]
                else:
                    new = [qty, "REJECTED"]
                    alert = "RESERVATION_REJECTED"
        elif kind == "Commit":
            if status == "ACTIVE":
                s["reserved"] -= stored[0]
                s["sold"] += stored[0]
                new = [stored[0], "COMMITTED"]
            elif status not in ("COMMITTED", "RESTOCKED"):
                s["sold"] += qty
                new = [qty, "COMMITTED"]
                if available < qty:
                    alert = "OVERSOLD"
        elif kind == "Release":
            if status == "ACTIVE":
                s["reserved"] -= stored[0]
                new = [stored[0], "RELEASED"]
        elif status == "COMMITTED":  # Restock
            s["sold"] -= stored[0]
            new = [stored[0], "RESTOCKED"]
        if new is not None:
            store.set(("s", sku), s)
        reservation = new or (stored[:2] if stored else None)
        if reservation is not None:
            store.set(rkey, [*reservation, (stored[2] if stored else 0) | bit])
        if alert is not None:
            outs.append(self._alert(sku, s, alert, order_id, qty, available, c["cause"], c["t"]))
