//! Golden scenarios: one test per row of DOMAIN.md's tables (named after the row), plus the
//! precise rules, run through the broker-free driver on real RocksDB state.

mod support;

use orderfold::config::Config;
use orderfold::driver::topics;
use orderfold::event::*;
use orderfold::fold::order::OrderStatus;
use orderfold::fold::sku::{self as sku_rules, Reservation, ReservationStatus, Sku};
use orderfold::ids;
use support::*;

use ReservationStatus::*;

fn status_of(s: &Scenario, sku: &str, order: &str) -> Option<ReservationStatus> {
    s.sku(sku).reservations.get(order).map(|r| r.status)
}

// ---------------------------------------------------------------------------------------------
// Per-SKU table
// ---------------------------------------------------------------------------------------------

#[test]
fn sku_reserve_within_available_is_active() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 10, T0);
    s.place("o1", &[("A", 3)], T0 + 10);
    s.finish();
    let a = s.sku("A");
    assert_eq!(status_of(&s, "A", "o1"), Some(ACTIVE));
    assert_eq!((a.on_hand, a.reserved, a.available), (10, 3, 7));
    assert!(s.alerts().is_empty());
}

#[test]
fn sku_reserve_beyond_available_is_rejected_with_alert_hot_sku_3_units_5_orders() {
    let mut s = Scenario::new();
    s.stock("HOT", "wh1", 3, T0);
    let mut placed = Vec::new();
    for i in 0..5 {
        placed.push(s.place(&format!("o{i}"), &[("HOT", 1)], T0 + 100 + i));
    }
    s.finish();
    let a = s.sku("HOT");
    assert_eq!((a.on_hand, a.reserved, a.available), (3, 3, 0));
    for i in 0..3 {
        assert_eq!(status_of(&s, "HOT", &format!("o{i}")), Some(ACTIVE));
    }
    for i in 3..5 {
        assert_eq!(status_of(&s, "HOT", &format!("o{i}")), Some(REJECTED));
    }
    let alerts = s.alerts();
    assert_eq!(alerts.len(), 2);
    for (i, alert) in alerts.iter().enumerate() {
        let order = format!("o{}", i + 3);
        assert_eq!(alert.kind, AlertKind::RESERVATION_REJECTED);
        assert_eq!(alert.order_id.as_deref(), Some(order.as_str()));
        assert_eq!(
            (
                alert.requested,
                alert.available,
                alert.on_hand,
                alert.reserved
            ),
            (1, 0, 3, 3)
        );
        assert_eq!(alert.occurred_at, T0 + 100 + 3 + i as i64);
        assert_eq!(alert.event_id, ids::alert_event_id(&placed[i + 3], "HOT"));
    }
}

#[test]
fn sku_reserve_for_an_existing_reservation_of_any_status_does_nothing() {
    for status in [ACTIVE, COMMITTED, RELEASED, REJECTED, RESTOCKED] {
        let mut sku = Sku::default();
        sku.on_hand_by_warehouse.insert("wh".into(), 10);
        let before = sku.clone();
        let cmd = SkuCommand {
            command_id: "Reserve:o:s".into(),
            kind: SkuCommandKind::Reserve,
            order_id: "o".into(),
            sku: "s".into(),
            quantity: 2,
            occurred_at: T0,
            sequence: 0,
            cause_event_id: "e".into(),
            reason: None,
        };
        let effect = sku_rules::apply_command(
            &mut sku,
            Some(Reservation {
                quantity: 2,
                status,
            }),
            &cmd,
        );
        assert_eq!(effect, sku_rules::CommandEffect::default(), "{status:?}");
        assert_eq!(sku, before);
    }
}

#[test]
fn sku_commit_of_active_reservation_moves_it_to_committed() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 10, T0);
    s.place("o1", &[("A", 4)], T0 + 10);
    s.capture("o1", T0 + 20);
    s.finish();
    let a = s.sku("A");
    assert_eq!(status_of(&s, "A", "o1"), Some(COMMITTED));
    assert_eq!(
        (a.on_hand, a.reserved, a.available, a.net_sold),
        (6, 0, 6, 4)
    );
    assert!(s.alerts().is_empty());
}

#[test]
fn sku_commit_not_active_with_stock_commits_from_available() {
    // Payment 1 ms after the deadline: the reservation expired, stock is still there.
    let mut s = Scenario::new();
    s.stock("A", "wh1", 10, T0);
    s.place("o1", &[("A", 2)], T0 + 10);
    s.capture("o1", T0 + 10 + TTL + 1);
    s.finish();
    let a = s.sku("A");
    assert_eq!(s.order("o1").status, OrderStatus::PAID);
    assert_eq!(status_of(&s, "A", "o1"), Some(COMMITTED));
    assert_eq!((a.on_hand, a.reserved, a.available), (8, 0, 8));
    assert!(s.alerts().is_empty());
    assert_eq!(s.driver.expiries().len(), 1);
}

#[test]
fn sku_commit_not_active_without_stock_is_oversold() {
    // o1's reservation expires; o2 takes the last units; o1's late capture is a paid order
    // without stock.
    let mut s = Scenario::new();
    s.stock("A", "wh1", 2, T0);
    s.place("o1", &[("A", 2)], T0 + 10);
    s.place("o2", &[("A", 2)], T0 + 10 + TTL + 1);
    let late = s.capture("o1", T0 + 10 + TTL + 5);
    s.finish();
    let a = s.sku("A");
    assert_eq!(status_of(&s, "A", "o1"), Some(COMMITTED));
    assert_eq!(status_of(&s, "A", "o2"), Some(ACTIVE));
    assert_eq!((a.on_hand, a.reserved, a.available), (0, 2, -2));
    let alerts = s.alerts();
    assert_eq!(alerts.len(), 1);
    let alert = &alerts[0];
    assert_eq!(alert.kind, AlertKind::OVERSOLD);
    assert_eq!(alert.order_id.as_deref(), Some("o1"));
    assert_eq!(
        (
            alert.requested,
            alert.available,
            alert.on_hand,
            alert.reserved
        ),
        (2, 0, 0, 2)
    );
    assert_eq!(alert.event_id, ids::alert_event_id(&late, "A"));
}

#[test]
fn sku_commit_after_rejected_reservation_is_oversold() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 1, T0);
    s.place("o1", &[("A", 1)], T0 + 1);
    s.place("o2", &[("A", 1)], T0 + 2);
    s.capture("o2", T0 + 3);
    s.finish();
    assert_eq!(status_of(&s, "A", "o2"), Some(COMMITTED));
    let kinds: Vec<_> = s.alerts().iter().map(|a| a.kind).collect();
    assert_eq!(
        kinds,
        vec![AlertKind::RESERVATION_REJECTED, AlertKind::OVERSOLD]
    );
    let a = s.sku("A");
    assert_eq!((a.on_hand, a.reserved, a.available), (0, 1, -1));
}

#[test]
fn sku_commit_on_committed_or_restocked_does_nothing() {
    for status in [COMMITTED, RESTOCKED] {
        let mut sku = Sku::default();
        sku.on_hand_by_warehouse.insert("wh".into(), 1);
        let before = sku.clone();
        let cmd = SkuCommand {
            command_id: "Commit:o:s".into(),
            kind: SkuCommandKind::Commit,
            order_id: "o".into(),
            sku: "s".into(),
            quantity: 5,
            occurred_at: T0,
            sequence: 3,
            cause_event_id: "e".into(),
            reason: None,
        };
        let effect = sku_rules::apply_command(
            &mut sku,
            Some(Reservation {
                quantity: 5,
                status,
            }),
            &cmd,
        );
        assert_eq!(effect, sku_rules::CommandEffect::default());
        assert_eq!(sku, before);
    }
}

#[test]
fn sku_release_of_active_reservation_on_payment_failure() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    s.place("o1", &[("A", 3)], T0 + 1);
    s.fail("o1", T0 + 2);
    s.finish();
    assert_eq!(status_of(&s, "A", "o1"), Some(RELEASED));
    assert_eq!(s.order("o1").status, OrderStatus::PAYMENT_FAILED);
    let a = s.sku("A");
    assert_eq!((a.on_hand, a.reserved, a.available), (5, 0, 5));
}

#[test]
fn sku_release_of_a_non_active_reservation_does_nothing() {
    // o2 was rejected; its expiry's Release must not touch `reserved`.
    let mut s = Scenario::new();
    s.stock("A", "wh1", 1, T0);
    s.place("o1", &[("A", 1)], T0 + 1);
    s.place("o2", &[("A", 1)], T0 + 2);
    s.capture("o1", T0 + 3);
    s.count("A", "wh1", 1, T0 + TTL + 100); // moves stream time past o2's deadline
    s.scan("o1", TrackingCode::CREATED, T0 + TTL + 100, None);
    s.finish();
    assert_eq!(s.order("o2").status, OrderStatus::EXPIRED);
    assert_eq!(status_of(&s, "A", "o2"), Some(REJECTED));
    let a = s.sku("A");
    assert_eq!((a.on_hand, a.reserved), (0, 0));
}

#[test]
fn sku_restock_of_committed_on_cancel_after_payment() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    s.place("o1", &[("A", 2)], T0 + 1);
    s.capture("o1", T0 + 2);
    s.cancel("o1", T0 + 3);
    s.finish();
    assert_eq!(status_of(&s, "A", "o1"), Some(RESTOCKED));
    assert_eq!(s.order("o1").status, OrderStatus::CANCELLED);
    let a = s.sku("A");
    assert_eq!(
        (a.on_hand, a.reserved, a.available, a.net_sold),
        (5, 0, 5, 0)
    );
}

#[test]
fn sku_stock_received_adds_to_its_warehouse() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    s.stock("A", "wh2", 7, T0 + 1);
    s.stock("A", "wh1", 1, T0 + 2);
    s.finish();
    let a = s.sku("A");
    assert_eq!(a.on_hand_by_warehouse.get("wh1"), Some(&6));
    assert_eq!(a.on_hand_by_warehouse.get("wh2"), Some(&7));
    assert_eq!(a.on_hand, 13);
}

#[test]
fn sku_stock_counted_sets_its_warehouse_and_keeps_net_sales() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 10, T0);
    s.place("o1", &[("A", 3)], T0 + 1);
    s.capture("o1", T0 + 2);
    s.count("A", "wh1", 8, T0 + 3);
    s.finish();
    let a = s.sku("A");
    // on_hand = counted 8 - net sales 3.
    assert_eq!((a.on_hand, a.net_sold, a.available), (5, 3, 5));
    assert!(s.alerts().is_empty());
}

#[test]
fn sku_stock_counted_making_available_negative_alerts_every_time() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 10, T0);
    s.place("o1", &[("A", 6)], T0 + 1);
    let first = s.count("A", "wh1", 4, T0 + 2);
    let second = s.count("A", "wh1", 5, T0 + 3);
    s.finish();
    let alerts = s.alerts();
    assert_eq!(alerts.len(), 2);
    let a0 = &alerts[0];
    assert_eq!(a0.kind, AlertKind::NEGATIVE_AVAILABLE);
    assert_eq!(a0.order_id, None);
    assert_eq!(
        (a0.requested, a0.available, a0.on_hand, a0.reserved),
        (0, 4, 4, 6)
    );
    assert_eq!(a0.event_id, ids::alert_event_id(&first, "A"));
    // Already negative before: alerts again.
    let a1 = &alerts[1];
    assert_eq!((a1.available, a1.on_hand, a1.reserved), (-2, 5, 6));
    assert_eq!(a1.event_id, ids::alert_event_id(&second, "A"));
}

#[test]
fn sku_lines_of_one_order_are_summed_per_sku() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 10, T0);
    s.stock("B", "wh1", 10, T0);
    s.place("o1", &[("A", 1), ("B", 2), ("A", 3)], T0 + 1);
    s.finish();
    assert_eq!(
        s.sku("A").reservations["o1"],
        Reservation {
            quantity: 4,
            status: ACTIVE
        }
    );
    assert_eq!(s.sku("B").reservations["o1"].quantity, 2);
    let lines = s.order("o1").lines;
    assert_eq!(
        lines
            .iter()
            .map(|l| (l.sku.as_str(), l.quantity))
            .collect::<Vec<_>>(),
        vec![("A", 4), ("B", 2)]
    );
}

// ---------------------------------------------------------------------------------------------
// Per-order table
// ---------------------------------------------------------------------------------------------

#[test]
fn order_placed_starts_pending_with_deadline_and_second_is_ignored() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 10, T0);
    s.place("o1", &[("A", 1)], T0 + 5);
    s.place("o1", &[("A", 5)], T0 + 6);
    s.finish();
    let o = s.order("o1");
    assert_eq!(o.status, OrderStatus::PENDING_PAYMENT);
    assert_eq!(o.deadline, T0 + 5 + TTL);
    assert_eq!(s.ignored(topics::ORDERS, "order_placed_again"), 1);
    assert_eq!(s.sku("A").reserved, 1);
}

#[test]
fn order_payment_captured_exactly_at_the_deadline_is_on_time() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 1, T0);
    s.place("o1", &[("A", 1)], T0);
    s.capture("o1", T0 + TTL);
    s.stock("A", "wh1", 1, T0 + TTL + 10); // stream time moves past the deadline afterwards
    s.finish();
    assert_eq!(s.order("o1").status, OrderStatus::PAID);
    assert!(s.driver.expiries().is_empty());
    assert_eq!(status_of(&s, "A", "o1"), Some(COMMITTED));
    assert!(s.alerts().is_empty());
}

#[test]
fn order_payment_captured_one_ms_late_commits_after_expiry() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 1, T0);
    s.place("o1", &[("A", 1)], T0);
    s.capture("o1", T0 + TTL + 1);
    s.finish();
    assert_eq!(s.order("o1").status, OrderStatus::PAID);
    assert_eq!(s.driver.expiries().len(), 1);
    assert_eq!(status_of(&s, "A", "o1"), Some(COMMITTED));
    let a = s.sku("A");
    assert_eq!((a.on_hand, a.reserved), (0, 0));
    assert!(s.alerts().is_empty(), "stock was still available");
}

#[test]
fn order_payment_captured_after_failure_is_paid() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 1, T0);
    s.place("o1", &[("A", 1)], T0);
    s.fail("o1", T0 + 1);
    s.capture("o1", T0 + 2);
    s.finish();
    assert_eq!(s.order("o1").status, OrderStatus::PAID);
    assert_eq!(status_of(&s, "A", "o1"), Some(COMMITTED));
    assert_eq!(s.sku("A").on_hand, 0);
}

#[test]
fn order_payment_captured_on_paid_or_cancelled_is_ignored() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    s.place("o1", &[("A", 1)], T0);
    s.capture("o1", T0 + 1);
    s.capture("o1", T0 + 2);
    s.place("o2", &[("A", 1)], T0 + 3);
    s.cancel("o2", T0 + 4);
    s.capture("o2", T0 + 5);
    s.finish();
    assert_eq!(s.ignored(topics::PAYMENTS, "capture_on_paid"), 1);
    assert_eq!(s.ignored(topics::PAYMENTS, "capture_on_cancelled"), 1);
    assert_eq!(s.order("o2").status, OrderStatus::CANCELLED);
    assert_eq!(s.sku("A").on_hand, 4);
}

#[test]
fn order_payment_failed_on_pending_releases_and_otherwise_is_ignored() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    s.place("o1", &[("A", 2)], T0);
    s.fail("o1", T0 + 1);
    s.fail("o1", T0 + 2);
    s.place("o2", &[("A", 1)], T0 + 3);
    s.capture("o2", T0 + 4);
    s.fail("o2", T0 + 5);
    s.finish();
    assert_eq!(s.order("o1").status, OrderStatus::PAYMENT_FAILED);
    assert_eq!(s.order("o2").status, OrderStatus::PAID);
    assert_eq!(s.ignored(topics::PAYMENTS, "failure_not_pending"), 2);
    assert_eq!(status_of(&s, "A", "o1"), Some(RELEASED));
}

#[test]
fn order_cancelled_before_payment_releases() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    s.place("o1", &[("A", 2)], T0);
    s.cancel("o1", T0 + 1);
    s.finish();
    assert_eq!(s.order("o1").status, OrderStatus::CANCELLED);
    assert_eq!(status_of(&s, "A", "o1"), Some(RELEASED));
    assert_eq!(s.sku("A").available, 5);
    assert!(s.driver.expiries().is_empty(), "the timer is gone");
}

#[test]
fn order_cancelled_after_payment_with_only_created_scan_restocks() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    s.place("o1", &[("A", 2)], T0);
    s.capture("o1", T0 + 1);
    s.scan("o1", TrackingCode::CREATED, T0 + 2, Some("wh1"));
    s.cancel("o1", T0 + 3);
    s.finish();
    assert_eq!(s.order("o1").status, OrderStatus::CANCELLED);
    assert_eq!(status_of(&s, "A", "o1"), Some(RESTOCKED));
    assert_eq!(s.sku("A").on_hand, 5);
}

#[test]
fn order_cancelled_after_shipping_is_ignored() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    s.place("o1", &[("A", 2)], T0);
    s.capture("o1", T0 + 1);
    s.scan("o1", TrackingCode::CREATED, T0 + 2, None);
    s.scan("o1", TrackingCode::PICKED_UP, T0 + 3, None);
    s.cancel("o1", T0 + 4);
    s.finish();
    assert_eq!(s.order("o1").status, OrderStatus::PAID);
    assert_eq!(s.ignored(topics::ORDERS, "cancel_after_shipping"), 1);
    assert_eq!(status_of(&s, "A", "o1"), Some(COMMITTED));
    assert_eq!(s.sku("A").on_hand, 3);
}

#[test]
fn order_cancelled_after_expiry_or_failure_sends_no_command() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    s.place("o1", &[("A", 2)], T0);
    s.place("o2", &[("A", 1)], T0 + 1);
    s.fail("o2", T0 + 2);
    s.cancel("o2", T0 + 3);
    s.cancel("o1", T0 + TTL + 10);
    s.finish();
    assert_eq!(s.order("o1").status, OrderStatus::CANCELLED);
    assert_eq!(s.order("o2").status, OrderStatus::CANCELLED);
    assert_eq!(status_of(&s, "A", "o1"), Some(RELEASED));
    assert_eq!(status_of(&s, "A", "o2"), Some(RELEASED));
    // Only Reserve and Release commands were sent: no Restock.
    let restocks = s
        .driver
        .records(topics::SKU_COMMANDS)
        .iter()
        .filter_map(|r| {
            s.driver
                .codec()
                .decode::<SkuCommand>(r.value.as_deref()?)
                .ok()
        })
        .filter(|c| c.kind == SkuCommandKind::Restock)
        .count();
    assert_eq!(restocks, 0);
}

#[test]
fn order_cancelled_twice_is_ignored() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    s.place("o1", &[("A", 2)], T0);
    s.cancel("o1", T0 + 1);
    s.cancel("o1", T0 + 2);
    s.finish();
    assert_eq!(s.ignored(topics::ORDERS, "cancel_on_cancelled"), 1);
}

#[test]
fn order_reservation_timer_expires_pending_order() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    s.stock("B", "wh1", 5, T0);
    s.place("o1", &[("B", 1), ("A", 2), ("B", 1)], T0 + 7);
    s.stock("A", "wh1", 1, T0 + 7 + TTL); // at the deadline: not yet due
    s.finish();
    assert_eq!(s.order("o1").status, OrderStatus::PENDING_PAYMENT);
    assert!(s.driver.expiries().is_empty());

    s.stock("A", "wh1", 1, T0 + 7 + TTL + 1);
    s.finish();
    assert_eq!(s.order("o1").status, OrderStatus::EXPIRED);
    let expiries = s.driver.expiries();
    assert_eq!(expiries.len(), 1);
    let e = &expiries[0];
    assert_eq!(e.event_id, ids::expiry_event_id("o1"));
    assert_eq!((e.reserved_at, e.expired_at), (T0 + 7, T0 + 7 + TTL));
    let lines: Vec<_> = e
        .lines
        .iter()
        .map(|l| (l.sku.as_str(), l.quantity))
        .collect();
    assert_eq!(lines, vec![("B", 2), ("A", 2)]);
    assert_eq!(status_of(&s, "A", "o1"), Some(RELEASED));
    // The Release is stamped one ms after the deadline.
    let release = s
        .driver
        .records(topics::SKU_COMMANDS)
        .iter()
        .filter_map(|r| {
            s.driver
                .codec()
                .decode::<SkuCommand>(r.value.as_deref()?)
                .ok()
        })
        .find(|c| c.kind == SkuCommandKind::Release)
        .unwrap();
    assert_eq!(release.occurred_at, T0 + 7 + TTL + 1);
    assert_eq!(release.reason.as_deref(), Some("expired"));
}

#[test]
fn order_orphan_payment_is_parked_and_applied_when_its_order_arrives() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    s.capture("o1", T0 + 10);
    s.place("o1", &[("A", 2)], T0 + 20);
    s.finish();
    assert_eq!(s.order("o1").status, OrderStatus::PAID);
    assert_eq!(status_of(&s, "A", "o1"), Some(COMMITTED));
    let acc = s.accounting(topics::PAYMENTS);
    assert_eq!((acc.applied, acc.parked), (1, 0));
    assert!(s.dead_letters().is_empty());
}

#[test]
fn order_orphan_is_dead_lettered_after_orphan_ttl() {
    let mut s = Scenario::new();
    let orphan = s.capture("o1", T0);
    s.stock("A", "wh1", 5, T0 + ORPHAN_TTL + 1);
    s.place("o1", &[("A", 1)], T0 + ORPHAN_TTL + 1);
    s.finish();
    let dl = s.dead_letters();
    assert_eq!(dl.len(), 1);
    assert_eq!(header(&dl[0], "reason"), "orphan");
    assert_eq!(header(&dl[0], "topic"), topics::PAYMENTS);
    assert_eq!(header(&dl[0], "offset"), "0");
    assert_eq!(dl[0].key.as_deref(), Some(&b"o1"[..]));
    let original = s
        .driver
        .codec()
        .decode::<PaymentEvent>(dl[0].value.as_deref().unwrap())
        .unwrap();
    assert_eq!(original.event_id, orphan);
    assert_eq!(s.order("o1").status, OrderStatus::PENDING_PAYMENT);
    let acc = s.accounting(topics::PAYMENTS);
    assert_eq!((acc.parked, acc.dead_lettered["orphan"]), (0, 1));
}

#[test]
fn order_orphan_released_by_order_placed_exactly_at_expiry() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    s.cancel("o1", T0);
    s.place("o1", &[("A", 1)], T0 + ORPHAN_TTL);
    s.finish();
    assert!(s.dead_letters().is_empty());
    assert_eq!(s.order("o1").status, OrderStatus::CANCELLED);
    assert_eq!(status_of(&s, "A", "o1"), Some(RELEASED));
}

#[test]
fn order_parked_events_apply_in_park_order() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    s.fail("o1", T0 + 1);
    s.capture("o1", T0 + 2);
    s.place("o1", &[("A", 1)], T0 + 3);
    s.finish();
    // Failure then capture: PENDING -> PAYMENT_FAILED -> PAID.
    assert_eq!(s.order("o1").status, OrderStatus::PAID);
    assert_eq!(status_of(&s, "A", "o1"), Some(COMMITTED));
}

#[test]
fn order_unpaid_orphans_stay_parked_at_the_end() {
    let mut s = Scenario::new();
    s.capture("o9", T0);
    s.stock("A", "wh1", 1, T0 + 1000);
    s.finish();
    assert_eq!(s.driver.parked().unwrap(), vec![("o9".to_string(), 1)]);
    assert!(s.accounting(topics::PAYMENTS).closes());
}

// ---------------------------------------------------------------------------------------------
// Tracking
// ---------------------------------------------------------------------------------------------

#[test]
fn tracking_first_scan_emits_status() {
    let mut s = Scenario::new();
    let scan = s.scan("o1", TrackingCode::CREATED, T0, Some("wh1"));
    s.finish();
    let out = s.driver.tracking_statuses();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].event_id, ids::tracking_event_id(&scan));
    assert_eq!(out[0].source_event_id, scan);
    assert_eq!(out[0].status, TrackingCode::CREATED);
    assert_eq!(out[0].location.as_deref(), Some("wh1"));
}

#[test]
fn tracking_out_of_order_scan_is_ignored() {
    let mut s = Scenario::new();
    s.scan("o1", TrackingCode::IN_TRANSIT, T0 + 10, Some("hub"));
    s.scan("o1", TrackingCode::PICKED_UP, T0 + 5, Some("wh"));
    s.finish();
    assert_eq!(s.tracking("o1").unwrap().status, TrackingCode::IN_TRANSIT);
    assert_eq!(s.ignored(topics::LOGISTICS, "scan_out_of_order"), 1);
    assert_eq!(s.driver.tracking_statuses().len(), 1);
}

#[test]
fn tracking_scan_with_equal_time_applies_in_log_order() {
    let mut s = Scenario::new();
    s.scan("o1", TrackingCode::PICKED_UP, T0, Some("a"));
    s.scan("o1", TrackingCode::IN_TRANSIT, T0, Some("b"));
    s.finish();
    assert_eq!(s.tracking("o1").unwrap().status, TrackingCode::IN_TRANSIT);
    assert_eq!(s.driver.tracking_statuses().len(), 2);
}

#[test]
fn tracking_terminal_states_hold_and_returned_may_follow_delivered() {
    let mut s = Scenario::new();
    s.scan("o1", TrackingCode::DELIVERED, T0, Some("door"));
    s.scan("o1", TrackingCode::IN_TRANSIT, T0 + 1, Some("hub"));
    s.scan("o1", TrackingCode::RETURNED, T0 + 2, Some("wh"));
    s.finish();
    assert_eq!(s.tracking("o1").unwrap().status, TrackingCode::RETURNED);
    assert_eq!(s.ignored(topics::LOGISTICS, "scan_after_terminal"), 1);
    let statuses: Vec<_> = s
        .driver
        .tracking_statuses()
        .iter()
        .map(|t| t.status)
        .collect();
    assert_eq!(
        statuses,
        vec![TrackingCode::DELIVERED, TrackingCode::RETURNED]
    );
}

#[test]
fn tracking_delivery_failed_counts_attempts() {
    let mut s = Scenario::new();
    s.scan("o1", TrackingCode::OUT_FOR_DELIVERY, T0, Some("van"));
    s.scan("o1", TrackingCode::DELIVERY_FAILED, T0 + 1, Some("van"));
    s.scan("o1", TrackingCode::DELIVERY_FAILED, T0 + 2, Some("van"));
    s.finish();
    let t = s.tracking("o1").unwrap();
    assert_eq!(t.delivery_attempts, 2);
    let attempts: Vec<_> = s
        .driver
        .tracking_statuses()
        .iter()
        .map(|t| t.delivery_attempts)
        .collect();
    assert_eq!(attempts, vec![0, 1, 2]);
}

#[test]
fn tracking_status_emitted_only_when_something_changed() {
    let mut s = Scenario::new();
    s.scan("o1", TrackingCode::IN_TRANSIT, T0, Some("hub"));
    s.scan("o1", TrackingCode::IN_TRANSIT, T0 + 1, Some("hub"));
    s.scan("o1", TrackingCode::IN_TRANSIT, T0 + 2, None);
    s.finish();
    let out = s.driver.tracking_statuses();
    assert_eq!(
        out.len(),
        2,
        "the repeated scan changed nothing; the null location did"
    );
    assert_eq!(out[1].location, None);
    assert_eq!(s.tracking("o1").unwrap().updated_at, T0 + 2);
}

// ---------------------------------------------------------------------------------------------
// Dedup, bad input, ids
// ---------------------------------------------------------------------------------------------

#[test]
fn duplicates_at_every_input_are_counted_and_change_nothing() {
    let mut s = Scenario::new();
    let inv = InventoryEvent {
        event_id: "inv-1".into(),
        sku: "A".into(),
        warehouse_id: "wh".into(),
        occurred_at: T0,
        body: InventoryBody::StockReceived(StockReceived { quantity: 5 }),
    };
    s.driver.pipe_event(topics::INVENTORY, "A", &inv).unwrap();
    s.driver.pipe_event(topics::INVENTORY, "A", &inv).unwrap();
    let placed = Scenario::placed_event("p-1", "o1", &[("A", 2)], T0 + 1);
    s.driver.pipe_event(topics::ORDERS, "o1", &placed).unwrap();
    // A retry with a different payload but the same id: the first wins.
    let retried = Scenario::placed_event("p-1", "o1", &[("A", 4)], T0 + 2);
    s.driver.pipe_event(topics::ORDERS, "o1", &retried).unwrap();
    let pay = Scenario::payment_event("pay-1", "o1", T0 + 3, true);
    s.driver.pipe_event(topics::PAYMENTS, "o1", &pay).unwrap();
    s.driver.pipe_event(topics::PAYMENTS, "o1", &pay).unwrap();
    let scan = Scenario::scan_event("sc-1", "o1", TrackingCode::CREATED, T0 + 4, None);
    s.driver.pipe_event(topics::LOGISTICS, "o1", &scan).unwrap();
    s.driver.pipe_event(topics::LOGISTICS, "o1", &scan).unwrap();
    s.finish();
    for topic in [
        topics::INVENTORY,
        topics::ORDERS,
        topics::PAYMENTS,
        topics::LOGISTICS,
    ] {
        let acc = s.accounting(topic);
        assert_eq!(acc.duplicates, 1, "{topic}");
        assert!(acc.closes(), "{topic}: {acc:?}");
    }
    let a = s.sku("A");
    assert_eq!((a.on_hand, a.net_sold), (3, 2));
    assert_eq!(s.driver.tracking_statuses().len(), 1);
}

#[test]
fn duplicate_sku_commands_are_deduplicated_by_command_id() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    s.place("o1", &[("A", 2)], T0 + 1);
    s.capture("o1", T0 + 2);
    s.finish();
    // Replay the order stage's output into the command topic once more, as a retried batch would.
    let commands: Vec<_> = s
        .driver
        .records(topics::SKU_COMMANDS)
        .into_iter()
        .cloned()
        .collect();
    let commands_acc_before = s.accounting(topics::SKU_COMMANDS);
    let sku_tasks = s.driver.sku_tasks().len();
    assert_eq!(sku_tasks, 1);
    for r in &commands {
        if s.driver
            .codec()
            .decode::<SkuCommand>(r.value.as_deref().unwrap())
            .is_ok()
        {
            s.driver.inject(topics::SKU_COMMANDS, 0, r.clone());
        }
    }
    s.finish();
    let acc = s.accounting(topics::SKU_COMMANDS);
    assert_eq!(acc.duplicates - commands_acc_before.duplicates, 2);
    let a = s.sku("A");
    assert_eq!((a.on_hand, a.reserved, a.net_sold), (3, 0, 2));
}

#[test]
fn dead_letters_carry_reason_and_origin_and_move_on() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    // decode: not Avro at all; schema: unknown fingerprint; validation: broken rules.
    s.driver
        .pipe(topics::ORDERS, Some(b"o-x"), Some(b"garbage".to_vec()))
        .unwrap();
    let mut unknown = vec![0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8];
    unknown.extend_from_slice(&[0; 8]);
    s.driver
        .pipe(topics::PAYMENTS, Some(b"o-x"), Some(unknown))
        .unwrap();
    s.driver.pipe(topics::ORDERS, Some(b"o-x"), None).unwrap();
    let cases: Vec<(&str, OrderEvent)> = vec![
        (
            "no lines",
            Scenario::placed_event("v1", "o-v1", &[], T0 + 1),
        ),
        (
            "zero quantity",
            Scenario::placed_event("v2", "o-v2", &[("A", 0)], T0 + 1),
        ),
        (
            "empty sku",
            Scenario::placed_event("v3", "o-v3", &[("", 1)], T0 + 1),
        ),
        (
            "empty event id",
            Scenario::placed_event("", "o-v4", &[("A", 1)], T0 + 1),
        ),
        (
            "time zero",
            Scenario::placed_event("v5", "o-v5", &[("A", 1)], 0),
        ),
    ];
    for (_, e) in &cases {
        s.driver.pipe_event(topics::ORDERS, &e.order_id, e).unwrap();
    }
    // Key differs from the payload's order_id.
    let e = Scenario::placed_event("v6", "o-v6", &[("A", 1)], T0 + 1);
    s.driver
        .pipe_event(topics::ORDERS, "someone-else", &e)
        .unwrap();
    s.count("A", "wh1", -1, T0 + 2);
    s.stock("A", "wh1", 0, T0 + 2);
    s.place("o-ok", &[("A", 1)], T0 + 3);
    s.finish();
    let dl = s.dead_letters();
    let reasons: Vec<_> = dl.iter().map(|r| header(r, "reason")).collect();
    assert_eq!(
        reasons.iter().filter(|r| *r == "decode").count(),
        2,
        "{reasons:?}"
    );
    assert_eq!(reasons.iter().filter(|r| *r == "schema").count(), 1);
    assert_eq!(reasons.iter().filter(|r| *r == "validation").count(), 8);
    let garbage = dl
        .iter()
        .find(|r| r.value.as_deref() == Some(&b"garbage"[..]))
        .unwrap();
    assert_eq!(
        (
            header(garbage, "topic").as_str(),
            header(garbage, "offset").as_str()
        ),
        (topics::ORDERS, "0")
    );
    assert_eq!(header(garbage, "partition"), "0");
    assert_eq!(garbage.key.as_deref(), Some(&b"o-x"[..]));
    // The valid order around them was applied; nothing else reserved.
    assert_eq!(s.sku("A").reserved, 1);
    for topic in topics::INPUTS {
        assert!(s.accounting(topic).closes(), "{topic}");
    }
}

#[test]
fn a_rejected_record_does_not_burn_its_event_id() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 5, T0);
    let bad = Scenario::placed_event("same-id", "o1", &[("A", 0)], T0 + 1);
    s.driver.pipe_event(topics::ORDERS, "o1", &bad).unwrap();
    let good = Scenario::placed_event("same-id", "o1", &[("A", 1)], T0 + 2);
    s.driver.pipe_event(topics::ORDERS, "o1", &good).unwrap();
    s.finish();
    assert_eq!(s.order("o1").status, OrderStatus::PENDING_PAYMENT);
    assert_eq!(s.accounting(topics::ORDERS).duplicates, 0);
}

#[test]
fn dedup_remembers_ids_for_the_retention_only() {
    let config = Config {
        rules: orderfold::config::Rules {
            dedup_retention_ms: 1_000,
            ..Default::default()
        },
        ..Config::default()
    };
    let mut s = Scenario::with(1, config);
    let scan = Scenario::scan_event("sc-1", "o1", TrackingCode::CREATED, T0, Some("a"));
    s.driver.pipe_event(topics::LOGISTICS, "o1", &scan).unwrap();
    s.driver.pipe_event(topics::LOGISTICS, "o1", &scan).unwrap();
    s.scan("o1", TrackingCode::PICKED_UP, T0 + 999, None);
    s.driver.pipe_event(topics::LOGISTICS, "o1", &scan).unwrap();
    s.scan("o1", TrackingCode::IN_TRANSIT, T0 + 1_000, None);
    s.driver.pipe_event(topics::LOGISTICS, "o1", &scan).unwrap();
    s.finish();
    let acc = s.accounting(topics::LOGISTICS);
    // Within 999 ms: duplicate. At 1000 ms: forgotten, so it is processed (and ignored as old).
    assert_eq!(acc.duplicates, 2);
    assert_eq!(s.ignored(topics::LOGISTICS, "scan_out_of_order"), 1);
}

#[test]
fn the_earliest_checkout_wins_the_last_unit_whatever_the_partitioning() {
    // "o-a" sorts first by id, but "o-b" checked out first: time decides, the id only breaks
    // ties. With several partitions the two orders land on different order tasks.
    for partitions in [1, 2, 3, 8] {
        let mut s = Scenario::with(partitions, Config::default());
        s.stock("A", "wh1", 1, T0);
        s.stock("B", "wh1", 1, T0);
        s.place("o-b", &[("A", 1)], T0 + 10);
        s.place("o-a", &[("A", 1)], T0 + 50);
        s.place("o-d", &[("B", 1)], T0 + 60);
        s.place("o-c", &[("B", 1)], T0 + 60);
        s.finish();
        assert_eq!(
            status_of(&s, "A", "o-b"),
            Some(ACTIVE),
            "{partitions} partitions"
        );
        assert_eq!(
            status_of(&s, "A", "o-a"),
            Some(REJECTED),
            "{partitions} partitions"
        );
        assert_eq!(
            status_of(&s, "B", "o-c"),
            Some(ACTIVE),
            "tie broken by order id, {partitions} partitions"
        );
        assert_eq!(
            status_of(&s, "B", "o-d"),
            Some(REJECTED),
            "{partitions} partitions"
        );
    }
}

#[test]
fn accounting_closes_for_every_input() {
    let mut s = Scenario::new();
    s.stock("A", "wh1", 2, T0);
    s.place("o1", &[("A", 1)], T0 + 1);
    s.place("o1", &[("A", 1)], T0 + 2);
    s.capture("o2", T0 + 3);
    s.capture("o1", T0 + 4);
    s.capture("o1", T0 + 5);
    s.scan("o1", TrackingCode::CREATED, T0 + 6, None);
    s.scan("o1", TrackingCode::CREATED, T0 + 1, None);
    s.driver
        .pipe(topics::ORDERS, Some(b"x"), Some(vec![1, 2, 3]))
        .unwrap();
    s.finish();
    for (topic, acc) in s.driver.accounting() {
        assert!(acc.closes(), "{topic}: {acc:?}");
    }
    let payments = s.accounting(topics::PAYMENTS);
    assert_eq!(
        (payments.consumed, payments.applied, payments.parked),
        (3, 1, 1)
    );
}

#[test]
fn records_over_the_configured_limits_are_dead_lettered_and_the_rest_applied() {
    let mut config = Config::default();
    config.limits.record_bytes_max = 2_000;
    config.limits.order_lines_max = 3;
    config.limits.string_bytes_max = 40;
    config.limits.quantity_max = 1_000;
    let mut s = Scenario::with(1, config);
    s.stock("A", "wh1", 500, T0);
    let mut cases: Vec<(&str, OrderEvent)> = vec![
        (
            "lines_max",
            Scenario::placed_event(
                "l1",
                "o-l1",
                &[("A", 1), ("B", 1), ("C", 1), ("D", 1)],
                T0 + 1,
            ),
        ),
        (
            "quantity_max",
            Scenario::placed_event("l2", "o-l2", &[("A", 1_001)], T0 + 1),
        ),
        (
            "string_bytes_max",
            Scenario::placed_event("l3", &"o".repeat(41), &[("A", 1)], T0 + 1),
        ),
    ];
    // An order whose bytes are over record_bytes_max, though every field is within its bound.
    let mut big = Scenario::placed_event("l4", "o-l4", &[("A", 1)], T0 + 1);
    if let OrderBody::OrderPlaced(p) = &mut big.body {
        p.user_id = "u".repeat(40);
        p.cart_id = "c".repeat(40);
        p.lines = (0..3)
            .map(|i| OrderLine {
                sku: format!("{i}").repeat(40),
                quantity: 1,
                unit_price_minor: 1,
            })
            .collect();
    }
    cases.push(("within every bound", big.clone()));
    for (_, e) in &cases {
        s.driver.pipe_event(topics::ORDERS, &e.order_id, e).unwrap();
    }
    // The same record over the byte limit: 2,001 bytes of padding after a valid header.
    let mut oversized = s.driver.codec().encode(&big).unwrap();
    oversized.resize(2_001, 0);
    s.driver
        .pipe(topics::ORDERS, Some(b"o-l5"), Some(oversized))
        .unwrap();
    let id = s.id();
    s.inventory(
        &id,
        "A",
        "wh1",
        T0 + 2,
        InventoryBody::StockReceived(StockReceived { quantity: 1_001 }),
    );
    let id = s.id();
    s.inventory(
        &id,
        "A",
        "wh1",
        T0 + 2,
        InventoryBody::StockCounted(StockCounted { on_hand: 1_001 }),
    );
    s.place("o-ok", &[("A", 2)], T0 + 3);
    s.finish();
    let details: Vec<(String, String)> = s
        .dead_letters()
        .iter()
        .map(|r| (header(r, "reason"), header(r, "detail")))
        .collect();
    for limit in [
        "order_lines_max",
        "quantity_max",
        "string_bytes_max",
        "record_bytes_max",
    ] {
        assert!(
            details
                .iter()
                .any(|(reason, detail)| reason == "validation" && detail.contains(limit)),
            "no dead letter for {limit}: {details:?}"
        );
    }
    // Three orders, the padded record and two inventory records; the big order itself is
    // within every bound and applied.
    assert_eq!(details.len(), 6, "{details:?}");
    assert!(details.iter().all(|(reason, _)| reason == "validation"));
    // The valid records around them are applied; the books close.
    assert_eq!(s.order("o-ok").status, OrderStatus::PENDING_PAYMENT);
    assert_eq!(s.order("o-l4").status, OrderStatus::PENDING_PAYMENT);
    assert_eq!(s.sku("A").on_hand, 500);
    for topic in [topics::ORDERS, topics::INVENTORY] {
        assert!(s.accounting(topic).closes(), "{topic}");
    }
}

#[test]
fn configured_writer_schemas_are_read_by_resolution_and_incompatible_or_unknown_ones_dead_lettered()
{
    let dir = tempfile::tempdir().unwrap();
    // Producers upgraded: one version adds an optional field, one drops two fields that have
    // defaults. Both are configured. A third version, also configured, has status as a string,
    // which Avro's resolution cannot read as our enum; a fourth is not configured at all.
    let added = logistics_schema_version(
        &[],
        Some(serde_json::json!({"name": "carrier", "type": ["null", "string"], "default": null})),
    );
    let dropped = logistics_schema_version(&["location", "detail"], None);
    let incompatible = logistics_schema_version(
        &["status"],
        Some(serde_json::json!({"name": "status", "type": "string"})),
    );
    let unknown = logistics_schema_version(
        &[],
        Some(serde_json::json!({"name": "depot", "type": ["null", "string"], "default": null})),
    );
    let mut config = Config::default();
    for (name, text) in [
        ("added.avsc", &added),
        ("dropped.avsc", &dropped),
        ("incompatible.avsc", &incompatible),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        config.avro.writer_schemas.push(path);
    }
    let mut s = Scenario::with(1, config);
    s.stock("A", "wh1", 5, T0);
    s.place("o-1", &[("A", 1)], T0 + 1);
    let scans = [
        (
            scan_written_with(
                &added,
                "s-1",
                "o-1",
                T0 + 2,
                apache_avro::types::Value::Enum(0, "CREATED".into()),
                true,
            ),
            "added",
        ),
        (
            scan_written_with(
                &dropped,
                "s-2",
                "o-1",
                T0 + 3,
                apache_avro::types::Value::Enum(2, "IN_TRANSIT".into()),
                false,
            ),
            "dropped",
        ),
    ];
    for (bytes, _) in &scans {
        s.driver
            .pipe(topics::LOGISTICS, Some(b"o-1"), Some(bytes.clone()))
            .unwrap();
    }
    for text in [&incompatible, &unknown] {
        let schema = apache_avro::Schema::parse_str(text).unwrap();
        let mut bytes = orderfold::codec::SINGLE_OBJECT_MAGIC.to_vec();
        bytes.extend_from_slice(&orderfold::codec::fingerprint(&schema).unwrap());
        bytes.extend_from_slice(b"\x06s-3\x06o-1\x08sh-x\x02\x0eCREATED");
        s.driver
            .pipe(topics::LOGISTICS, Some(b"o-1"), Some(bytes))
            .unwrap();
    }
    s.finish();
    let acc = s.accounting(topics::LOGISTICS);
    assert_eq!(acc.applied, 2, "{acc:?}");
    assert_eq!(acc.dead_lettered.get("schema"), Some(&2), "{acc:?}");
    assert!(acc.closes());
    let details: Vec<String> = s
        .dead_letters()
        .iter()
        .map(|r| header(r, "detail"))
        .collect();
    assert!(
        details.iter().any(|d| d.contains("cannot be read")),
        "{details:?}"
    );
    let tracking = s.tracking("o-1").expect("tracking from the evolved scans");
    assert_eq!(
        (tracking.status, tracking.updated_at, tracking.location),
        (TrackingCode::IN_TRANSIT, T0 + 3, None)
    );
}

// ---------------------------------------------------------------------------------------------
// Retention (rules.final_retention_ms): final order ids are forgotten
// ---------------------------------------------------------------------------------------------

const DAY: Millis = 24 * 60 * 60 * 1000;

fn with_retention(retention_ms: Millis) -> Scenario {
    let mut config = Config::default();
    config.rules.final_retention_ms = retention_ms;
    Scenario::with(1, config)
}

/// A retention of stream time after the last change that left an id final, its order, its
/// tracking and its reservations are gone; an id still open, or changed since, is kept; a later
/// payment for a forgotten order is parked as for an unknown one.
#[test]
fn retention_forgets_final_orders_a_retention_after_their_last_change() {
    let mut s = with_retention(DAY);
    s.stock("A", "wh1", 10, T0);
    // Cancelled before payment: final at T0 + 1.
    s.place("cancelled", &[("A", 2)], T0);
    s.cancel("cancelled", T0 + 1);
    // Paid and delivered: final at T0 + 4.
    s.place("delivered", &[("A", 1)], T0 + 2);
    s.capture("delivered", T0 + 3);
    s.scan("delivered", TrackingCode::DELIVERED, T0 + 4, None);
    // Paid and never shipped: never final.
    s.place("paid", &[("A", 1)], T0 + 5);
    s.capture("paid", T0 + 6);
    // Tracking without an order, delivered: final at T0 + 7.
    s.scan("parcel", TrackingCode::DELIVERED, T0 + 7, None);
    // Delivered, then returned half a day later: the return starts the retention again.
    s.place("returned", &[("A", 1)], T0 + 8);
    s.capture("returned", T0 + 9);
    s.scan("returned", TrackingCode::DELIVERED, T0 + 10, None);
    s.scan("returned", TrackingCode::RETURNED, T0 + DAY / 2, None);
    // Stream time passes every deadline but the return's.
    s.stock("B", "wh1", 1, T0 + DAY + 100);
    s.capture("cancelled", T0 + DAY + 200);
    s.finish();

    for gone in ["cancelled", "delivered", "parcel"] {
        assert_eq!(s.driver.order(gone).unwrap(), (None, None), "{gone}");
    }
    assert_eq!(s.order("paid").status, OrderStatus::PAID);
    assert_eq!(s.order("returned").status, OrderStatus::PAID);
    assert!(s.tracking("returned").is_some());
    let a = s.sku("A");
    assert_eq!(
        a.reservations.keys().collect::<Vec<_>>(),
        ["paid", "returned"],
        "the forgotten orders' reservations are gone"
    );
    // Forgetting moves no stock: 10 received, 3 sold.
    assert_eq!((a.on_hand, a.reserved, a.available), (7, 0, 7));
    // The capture of the forgotten order waits for an OrderPlaced, as for an unknown order.
    let payments = s.accounting(topics::PAYMENTS);
    assert_eq!(payments.parked, 1, "{payments:?}");
    let forgets = s
        .driver
        .records(topics::SKU_COMMANDS)
        .into_iter()
        .filter_map(|r| {
            s.driver
                .codec()
                .decode::<SkuCommand>(r.value.as_deref()?)
                .ok()
        })
        .filter(|c| c.kind == SkuCommandKind::Forget)
        .map(|c| (c.order_id, c.occurred_at))
        .collect::<Vec<_>>();
    assert_eq!(
        forgets,
        [
            ("cancelled".to_string(), T0 + 1 + DAY + 1),
            ("delivered".to_string(), T0 + 4 + DAY + 1)
        ]
    );
}

/// With `final_retention_ms = 0` nothing is forgotten, however far stream time moves.
#[test]
fn retention_of_zero_keeps_everything() {
    let mut s = with_retention(0);
    s.stock("A", "wh1", 10, T0);
    s.place("cancelled", &[("A", 2)], T0);
    s.cancel("cancelled", T0 + 1);
    s.stock("B", "wh1", 1, T0 + 365 * DAY);
    s.finish();
    assert_eq!(s.order("cancelled").status, OrderStatus::CANCELLED);
    assert_eq!(status_of(&s, "A", "cancelled"), Some(RELEASED));
}
