//! `orderfold simulate`, run as a process on a JSON-lines log.

use std::process::Command;

use serde_json::Value;

const T0: i64 = 1_767_225_600_000;

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `orderfold simulate` on `input` with `args`; returns the output directory beside it.
fn simulate(input: &std::path::Path, args: &[&str]) -> std::path::PathBuf {
    let out = input.with_file_name("out");
    let status = Command::new(env!("CARGO_BIN_EXE_orderfold"))
        .args(["simulate", "--input"])
        .arg(input)
        .arg("--out")
        .arg(&out)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success());
    out
}

#[test]
fn simulate_writes_outputs_state_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let placed = |id: &str, order: &str, t: i64| {
        format!(
            r#"{{"topic": "orders", "key": "{order}", "value": {{"event_id": "{id}", "order_id": "{order}", "occurred_at": {t}, "body": {{"type": "OrderPlaced", "user_id": "u", "cart_id": "c", "currency": "EUR", "lines": [{{"sku": "HOT", "quantity": 1, "unit_price_minor": 100}}]}}}}}}"#
        )
    };
    let log = [
        format!(r#"{{"topic": "inventory", "key": "HOT", "value": {{"event_id": "i1", "sku": "HOT", "warehouse_id": "wh", "occurred_at": {T0}, "body": {{"type": "StockReceived", "quantity": 1}}}}}}"#),
        placed("e1", "o1", T0 + 1),
        placed("e2", "o2", T0 + 2),
        "this is not json".to_string(),
        r#"{"topic": "orders", "key": "o3", "value": {"event_id": "e3", "order_id": "o3", "occurred_at": 5, "body": {"type": "Nope"}}}"#.to_string(),
        format!(r#"{{"topic": "logistics", "key": "o1", "value": {{"event_id": "s1", "order_id": "o1", "shipment_id": "sh", "occurred_at": {}, "status": "CREATED", "location": null}}}}"#, T0 + 3),
        format!(r#"{{"topic": "payments", "key": "o9", "value": {{"event_id": "p9", "order_id": "o9", "payment_id": "x", "occurred_at": {}, "body": {{"type": "PaymentCaptured", "amount_minor": 1, "currency": "EUR"}}}}}}"#, T0 + 4),
        format!(r#"{{"topic": "logistics", "key": "o1", "value": {{"event_id": "s2", "order_id": "o1", "shipment_id": "sh", "occurred_at": {}, "status": "PICKED_UP", "location": "hub"}}}}"#, T0 + 400_000),
    ];
    std::fs::write(&input, log.join("\n")).unwrap();
    let out = simulate(
        &input,
        &["--partitions", "2", "--reservation-ttl-ms", "60000"],
    );

    let alerts = lines(&out.join("oversell-alerts.jsonl"));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["key"], "HOT");
    assert_eq!(alerts[0]["value"]["kind"], "RESERVATION_REJECTED");
    assert_eq!(alerts[0]["value"]["order_id"], "o2");

    // Both orders expire with a 60 s TTL once the last scan moves stream time on.
    let expiries = lines(&out.join("reservation-expiry.jsonl"));
    assert_eq!(expiries.len(), 2);
    assert_eq!(expiries[0]["value"]["lines"][0]["sku"], "HOT");

    assert_eq!(lines(&out.join("tracking-status.jsonl")).len(), 2);

    let dlq = lines(&out.join("dlq.jsonl"));
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    let not_json = dlq.iter().find(|d| d["topic"].is_null()).unwrap();
    assert_eq!(
        (not_json["reason"].as_str(), not_json["offset"].as_i64()),
        (Some("decode"), Some(3))
    );
    let bad_union = dlq.iter().find(|d| d["topic"] == "orders").unwrap();
    assert_eq!(bad_union["reason"], "decode");
    assert_eq!(bad_union["offset"], 2, "third orders record in the file");
    assert!(
        bad_union["detail"].as_str().unwrap().contains("Nope"),
        "{bad_union}"
    );

    let skus = lines(&out.join("state-skus.jsonl"));
    assert_eq!(skus.len(), 1);
    assert_eq!(
        (skus[0]["on_hand"].as_i64(), skus[0]["reserved"].as_i64()),
        (Some(1), Some(0))
    );
    let orders = lines(&out.join("state-orders.jsonl"));
    let o1 = orders.iter().find(|o| o["order_id"] == "o1").unwrap();
    assert_eq!(o1["order"]["status"], "EXPIRED");
    assert_eq!(o1["tracking"]["status"], "PICKED_UP");
}

#[test]
fn simulate_fails_clearly_on_a_missing_input() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_orderfold"))
        .args(["simulate", "--input", "/nonexistent/day.jsonl", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/day.jsonl"), "{stderr}");
}

/// A line's optional `timestamp` is the Kafka record timestamp: an `occurred_at` more than
/// `limits.future_skew_ms` ahead of it is dead-lettered and moves no clock; without a
/// `timestamp` nothing is checked.
#[test]
fn simulate_dead_letters_a_line_dated_far_ahead_of_its_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let day_ms = 24 * 60 * 60 * 1000;
    let placed = |order: &str, t: i64, timestamp: Option<i64>| {
        let ts = timestamp.map_or(String::new(), |ts| format!(r#", "timestamp": {ts}"#));
        format!(
            r#"{{"topic": "orders", "key": "{order}"{ts}, "value": {{"event_id": "e-{order}", "order_id": "{order}", "occurred_at": {t}, "body": {{"type": "OrderPlaced", "user_id": "u", "cart_id": "c", "currency": "EUR", "lines": [{{"sku": "HOT", "quantity": 1, "unit_price_minor": 100}}]}}}}}}"#
        )
    };
    let log = [
        format!(
            r#"{{"topic": "inventory", "key": "HOT", "value": {{"event_id": "i1", "sku": "HOT", "warehouse_id": "wh", "occurred_at": {T0}, "body": {{"type": "StockReceived", "quantity": 5}}}}}}"#
        ),
        placed("o1", T0 + 1, Some(T0)),
        // Two days ahead of its timestamp: dead-lettered.
        placed("o2", T0 + 2 * day_ms, Some(T0)),
        // Half a day ahead: within the default skew.
        placed("o3", T0 + day_ms / 2 - 1, Some(T0 + 1)),
    ];
    std::fs::write(&input, log.join("\n")).unwrap();
    let out = simulate(
        &input,
        &["--partitions", "1", "--reservation-ttl-ms", "86400000"],
    );
    let dlq = lines(&out.join("dlq.jsonl"));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0]["reason"], "validation");
    assert_eq!(dlq[0]["key"], "o2");
    assert!(
        dlq[0]["detail"]
            .as_str()
            .unwrap()
            .contains("limits.future_skew_ms"),
        "{}",
        dlq[0]
    );
    // A day's TTL: o1 expires only if o2's date moved stream time two days on.
    assert!(lines(&out.join("reservation-expiry.jsonl")).is_empty());
    let skus = lines(&out.join("state-skus.jsonl"));
    assert_eq!(
        skus[0]["reserved"].as_i64(),
        Some(2),
        "o1 and o3 hold a unit"
    );
}
