//! A task closed after a commit and reopened from its directory continues exactly where it
//! stopped: same state, same outputs as a run that never stopped.

mod support;

use orderfold::config::Config;
use orderfold::driver::{Driver, Topology};
use orderfold::generate::{generate, WorkloadSpec};
use support::{final_state, outputs_by_key};

fn piped(dir: &std::path::Path) -> Driver {
    let spec = WorkloadSpec {
        seed: 11,
        orders: 2_000,
        skus: 50,
        hot_skus: 3,
        hot_stock: 10,
        ..WorkloadSpec::default()
    };
    let mut driver = Driver::open(dir, Topology::uniform(3), Config::default()).unwrap();
    for r in generate(&spec) {
        let v = r.encode(driver.codec()).unwrap();
        driver
            .pipe(r.topic, r.key.as_deref().map(str::as_bytes), Some(v))
            .unwrap();
    }
    driver
}

#[test]
fn reopened_tasks_resume_from_their_committed_offsets_with_identical_results() {
    let a = tempfile::tempdir().unwrap();
    let mut uninterrupted = piped(a.path());
    uninterrupted.finish(500).unwrap();

    let b = tempfile::tempdir().unwrap();
    let mut interrupted = piped(b.path());
    for _ in 0..5 {
        assert!(interrupted.step(500).unwrap(), "work was left");
    }
    let offsets_before: Vec<i64> = interrupted
        .order_tasks()
        .iter()
        .map(|t| t.next_offset(0))
        .collect();
    assert!(offsets_before.iter().any(|o| *o > 0));
    interrupted.reopen().unwrap();
    let offsets_after: Vec<i64> = interrupted
        .order_tasks()
        .iter()
        .map(|t| t.next_offset(0))
        .collect();
    assert_eq!(
        offsets_before, offsets_after,
        "resumes from the committed offsets"
    );
    interrupted.finish(500).unwrap();

    assert_eq!(final_state(&interrupted), final_state(&uninterrupted));
    assert_eq!(outputs_by_key(&interrupted), outputs_by_key(&uninterrupted));
    assert!(
        !uninterrupted.alerts().is_empty(),
        "the workload exercises alerts"
    );
    assert!(
        !uninterrupted.expiries().is_empty(),
        "the workload exercises expiries"
    );
}

#[test]
fn uncommitted_work_is_redone_after_a_crash_without_double_applying() {
    let a = tempfile::tempdir().unwrap();
    let mut uninterrupted = piped(a.path());
    uninterrupted.finish(500).unwrap();

    let b = tempfile::tempdir().unwrap();
    let mut crashed = piped(b.path());
    for _ in 0..3 {
        crashed.step(500).unwrap();
    }
    // Process a batch whose outputs are delivered but whose commit never happens.
    crashed.step_without_commit(500).unwrap();
    crashed.reopen().unwrap();
    crashed.finish(500).unwrap();

    assert_eq!(final_state(&crashed), final_state(&uninterrupted));
    // At-least-once: the lost batch's outputs appear twice, byte-identical.
    let dedup = |d: &Driver| -> std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<Vec<u8>, Vec<Vec<u8>>>,
    > {
        outputs_by_key(d)
            .into_iter()
            .map(|(topic, by_key)| {
                let by_key = by_key
                    .into_iter()
                    .map(|(k, mut vs)| {
                        let mut seen = std::collections::BTreeSet::new();
                        vs.retain(|v| seen.insert(v.clone()));
                        (k, vs)
                    })
                    .collect();
                (topic, by_key)
            })
            .collect()
    };
    assert_eq!(dedup(&crashed), dedup(&uninterrupted));
}

/// A bounded run's end of input belongs to that run. The next run over more input applies
/// commands in event time again: the order placed first gets the last unit, whichever command
/// reaches the SKU stage first.
#[test]
fn a_bounded_runs_end_does_not_make_the_next_run_first_come_first_served_by_arrival() {
    use orderfold::fold::sku::ReservationStatus::{ACTIVE, REJECTED};
    use orderfold::partition::partition_for_key;
    use support::{Scenario, T0};

    let mut s = Scenario::with(2, Config::default());
    s.stock("HOT", "wh1", 1, T0);
    // The first run is bounded: it ends, and announces the end of input.
    s.finish();
    s.driver.reopen().unwrap();
    // Two orders on different order partitions; the later one is processed first.
    let id = |p: u32| {
        (0..)
            .map(|i| format!("o-{i}"))
            .find(|o| partition_for_key(o.as_bytes(), 2) == p)
            .unwrap()
    };
    let (late, early) = (id(0), id(1));
    s.place(&late, &[("HOT", 1)], T0 + 2_000);
    s.driver.run_until_idle(1_000).unwrap();
    s.place(&early, &[("HOT", 1)], T0 + 1_000);
    s.finish();
    let reservations = s.sku("HOT").reservations;
    assert_eq!(reservations[&early].status, ACTIVE);
    assert_eq!(reservations[&late].status, REJECTED);
}
