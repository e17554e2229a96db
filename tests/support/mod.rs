//! Scenario helpers for driving a topology without a broker: events are built with short
//! names, piped in the order written, and read back as state and outputs.
#![allow(dead_code)]

use std::collections::BTreeMap;

use orderfold::config::Config;
use orderfold::driver::{topics, Driver, Record, Topology};
use orderfold::event::*;
use orderfold::fold::order::Order;
use orderfold::fold::tracking::Tracking;
use orderfold::stage::order::OrderView;
use orderfold::stage::sku::SkuView;
use orderfold::stage::Accounting;

pub const T0: Millis = 1_767_225_600_000;
pub const TTL: Millis = 300_000;
pub const ORPHAN_TTL: Millis = 3_600_000;

pub struct Scenario {
    pub driver: Driver,
    _dir: tempfile::TempDir,
    next_id: u64,
}

impl Scenario {
    pub fn new() -> Scenario {
        Self::with(1, Config::default())
    }

    pub fn with(partitions: u32, config: Config) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let driver = Driver::open(dir.path(), Topology::uniform(partitions), config).unwrap();
        Scenario {
            driver,
            _dir: dir,
            next_id: 0,
        }
    }

    pub fn id(&mut self) -> String {
        self.next_id += 1;
        format!("e-{}", self.next_id)
    }

    pub fn stock(&mut self, sku: &str, wh: &str, qty: i32, t: Millis) -> String {
        let id = self.id();
        self.inventory(
            &id,
            sku,
            wh,
            t,
            InventoryBody::StockReceived(StockReceived { quantity: qty }),
        );
        id
    }

    pub fn count(&mut self, sku: &str, wh: &str, on_hand: i32, t: Millis) -> String {
        let id = self.id();
        self.inventory(
            &id,
            sku,
            wh,
            t,
            InventoryBody::StockCounted(StockCounted { on_hand }),
        );
        id
    }

    pub fn inventory(&mut self, id: &str, sku: &str, wh: &str, t: Millis, body: InventoryBody) {
        let e = InventoryEvent {
            event_id: id.into(),
            sku: sku.into(),
            warehouse_id: wh.into(),
            occurred_at: t,
            body,
        };
        self.driver.pipe_event(topics::INVENTORY, sku, &e).unwrap();
    }

    pub fn placed_event(id: &str, order: &str, lines: &[(&str, i32)], t: Millis) -> OrderEvent {
        OrderEvent {
            event_id: id.into(),
            order_id: order.into(),
            occurred_at: t,
            body: OrderBody::OrderPlaced(OrderPlaced {
                user_id: "u-1".into(),
                cart_id: format!("cart-{order}"),
                currency: "EUR".into(),
                lines: lines
                    .iter()
                    .map(|(sku, q)| OrderLine {
                        sku: sku.to_string(),
                        quantity: *q,
                        unit_price_minor: 1999,
                    })
                    .collect(),
            }),
        }
    }

    pub fn place(&mut self, order: &str, lines: &[(&str, i32)], t: Millis) -> String {
        let id = self.id();
        let e = Self::placed_event(&id, order, lines, t);
        self.driver.pipe_event(topics::ORDERS, order, &e).unwrap();
        id
    }

    pub fn cancel(&mut self, order: &str, t: Millis) -> String {
        let id = self.id();
        let e = OrderEvent {
            event_id: id.clone(),
            order_id: order.into(),
            occurred_at: t,
            body: OrderBody::OrderCancelled(OrderCancelled {
                reason: "customer".into(),
            }),
        };
        self.driver.pipe_event(topics::ORDERS, order, &e).unwrap();
        id
    }

    pub fn payment_event(id: &str, order: &str, t: Millis, captured: bool) -> PaymentEvent {
        PaymentEvent {
            event_id: id.into(),
            order_id: order.into(),
            payment_id: format!("pay-{order}"),
            occurred_at: t,
            body: if captured {
                PaymentBody::PaymentCaptured(PaymentCaptured {
                    amount_minor: 1999,
                    currency: "EUR".into(),
                })
            } else {
                PaymentBody::PaymentFailed(PaymentFailed {
                    reason: "declined".into(),
                })
            },
        }
    }

    pub fn capture(&mut self, order: &str, t: Millis) -> String {
        let id = self.id();
        let e = Self::payment_event(&id, order, t, true);
        self.driver.pipe_event(topics::PAYMENTS, order, &e).unwrap();
        id
    }

    pub fn fail(&mut self, order: &str, t: Millis) -> String {
        let id = self.id();
        let e = Self::payment_event(&id, order, t, false);
        self.driver.pipe_event(topics::PAYMENTS, order, &e).unwrap();
        id
    }

    pub fn scan_event(
        id: &str,
        order: &str,
        status: TrackingCode,
        t: Millis,
        location: Option<&str>,
    ) -> LogisticsEvent {
        LogisticsEvent {
            event_id: id.into(),
            order_id: order.into(),
            shipment_id: format!("sh-{order}"),
            occurred_at: t,
            status,
            location: location.map(str::to_string),
            detail: None,
        }
    }

    pub fn scan(
        &mut self,
        order: &str,
        status: TrackingCode,
        t: Millis,
        location: Option<&str>,
    ) -> String {
        let id = self.id();
        let e = Self::scan_event(&id, order, status, t, location);
        self.driver
            .pipe_event(topics::LOGISTICS, order, &e)
            .unwrap();
        id
    }

    /// Ends the run: everything is processed, every command applied, timers due before the
    /// last event's time fired.
    pub fn finish(&mut self) {
        self.driver.finish(1_000).unwrap();
    }

    pub fn sku(&self, sku: &str) -> SkuView {
        self.driver
            .sku(sku)
            .unwrap()
            .unwrap_or_else(|| panic!("no state for {sku}"))
    }

    pub fn order(&self, order: &str) -> Order {
        self.driver
            .order(order)
            .unwrap()
            .0
            .unwrap_or_else(|| panic!("no order {order}"))
    }

    pub fn tracking(&self, order: &str) -> Option<Tracking> {
        self.driver.order(order).unwrap().1
    }

    pub fn alerts(&self) -> Vec<OversellAlert> {
        self.driver.alerts()
    }

    pub fn accounting(&self, topic: &str) -> Accounting {
        self.driver
            .accounting()
            .get(topic)
            .cloned()
            .unwrap_or_default()
    }

    pub fn ignored(&self, topic: &str, kind: &str) -> u64 {
        self.accounting(topic)
            .ignored
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    pub fn dead_letters(&self) -> Vec<Record> {
        self.driver.dead_letters().into_iter().cloned().collect()
    }
}

pub fn header(r: &Record, name: &str) -> String {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// Every output topic's records grouped by key, in per-key order, plus dead letters as a
/// sorted list: what must match between two runs of the same log.
pub fn outputs_by_key(driver: &Driver) -> BTreeMap<String, BTreeMap<Vec<u8>, Vec<Vec<u8>>>> {
    let mut all = BTreeMap::new();
    for topic in [
        topics::RESERVATION_EXPIRY,
        topics::TRACKING_STATUS,
        topics::OVERSELL_ALERTS,
    ] {
        let mut by_key: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
        for r in driver.records(topic) {
            by_key
                .entry(r.key.clone().unwrap_or_default())
                .or_default()
                .push(r.value.clone().unwrap_or_default());
        }
        all.insert(topic.to_string(), by_key);
    }
    let mut dlq: Vec<Vec<u8>> = driver
        .dead_letters()
        .iter()
        .map(|r| {
            let mut v = r.value.clone().unwrap_or_default();
            v.extend(header(r, "reason").into_bytes());
            v
        })
        .collect();
    dlq.sort();
    all.insert(topics::DLQ.to_string(), BTreeMap::from([(Vec::new(), dlq)]));
    all
}

/// The final state of every SKU and order, as comparable values.
pub fn final_state(driver: &Driver) -> (Vec<SkuView>, Vec<OrderView>) {
    (driver.skus().unwrap(), driver.orders().unwrap())
}

/// A version of LogisticsEvent's schema, edited as JSON: `drop` fields removed, `add` appended.
pub fn logistics_schema_version(drop: &[&str], add: Option<serde_json::Value>) -> String {
    let mut schema: serde_json::Value =
        serde_json::from_str(include_str!("../../schemas/LogisticsEvent.avsc")).unwrap();
    let fields = schema["fields"].as_array_mut().unwrap();
    fields.retain(|f| !drop.contains(&f["name"].as_str().unwrap()));
    fields.extend(add);
    schema.to_string()
}

/// A scan of `order` written with `writer`, single-object encoded: `status` as the writer's
/// type has it, a `carrier` if asked, the optional fields the writer has left null.
pub fn scan_written_with(
    writer: &str,
    id: &str,
    order: &str,
    t: Millis,
    status: apache_avro::types::Value,
    carrier: bool,
) -> Vec<u8> {
    use apache_avro::types::Value;
    let schema = apache_avro::Schema::parse_str(writer).unwrap();
    let mut record = apache_avro::types::Record::new(&schema).unwrap();
    record.put("event_id", id);
    record.put("order_id", order);
    record.put("shipment_id", format!("sh-{order}"));
    record.put("occurred_at", Value::TimestampMillis(t));
    record.put("status", status);
    if carrier {
        record.put("carrier", Value::Union(1, Box::new("DHL".into())));
    }
    let has = |field: &str| matches!(&schema, apache_avro::Schema::Record(r) if r.fields.iter().any(|f| f.name == field));
    for field in ["location", "detail"] {
        if has(field) {
            record.put(field, Value::Union(0, Box::new(Value::Null)));
        }
    }
    let mut bytes = orderfold::codec::SINGLE_OBJECT_MAGIC.to_vec();
    bytes.extend_from_slice(&orderfold::codec::fingerprint(&schema).unwrap());
    bytes.extend(
        apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(record)
            .unwrap(),
    );
    bytes
}
