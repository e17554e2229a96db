//! End to end on librdkafka's in-process mock cluster: a generated workload is produced, the
//! runtime runs to the end of its input, and every output topic and the final state equal the
//! broker-free driver's on the same log. (The mock cluster cannot show exactly-once; nothing
//! here relies on transactions.)

mod broker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use orderfold::config::Config;
use orderfold::generate::Generated;
use orderfold::kafka;
use orderfold::metrics::Metrics;
use orderfold::runtime::{self, Mode, RuntimeError, Shutdown, Status};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn create_topics(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    config: &Config,
) {
    kafka::create_on_mock(cluster, config).unwrap();
}

/// A bounded run of the runtime in this process.
fn run_until_end(config: &Config) -> Result<runtime::RunReport, RuntimeError> {
    runtime::run(
        config,
        Mode::UntilEnd,
        Shutdown::default(),
        Arc::new(Status::unobserved().unwrap()),
    )
}

fn produce(config: &Config, records: &[orderfold::generate::Generated]) {
    broker::produce_framed(config, records, |_, _, value| value);
}

#[test]
fn a_run_on_the_embedded_broker_equals_the_broker_free_driver() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    // Different partition counts per stage, and small buffers and batches, so pausing,
    // resuming and many commits all happen.
    let mut config = broker::config(&cluster.bootstrap_servers(), state.path(), 3, 2);
    config.limits.buffer_records_max = 300;
    config.limits.commit_records_max = 2_000;
    config.runtime.poll_records_max = 500;
    create_topics(&cluster, &config);
    let (_, records) = broker::workload(11, 4_000);
    produce(&config, &records);

    let report = run_until_end(&config).unwrap();
    assert_eq!(
        report.processed_this_run,
        broker::order_stage_records(&records)
    );
    for (topic, a) in &report.accounting {
        assert!(a.closes(), "accounting of {topic} does not close: {a:?}");
    }

    broker::assert_matches_driver(&records, &config, 3, 2, false);
}

#[test]
fn a_misconfigured_layout_is_refused_naming_the_topics() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let config = broker::config(&cluster.bootstrap_servers(), state.path(), 2, 2);
    create_topics(&cluster, &config);
    // payments with one partition more than orders and logistics.
    let mut wrong = config.clone();
    wrong.topics.payments = format!("{}-3", config.topics.payments);
    cluster.create_topic(&wrong.topics.payments, 3, 1).unwrap();
    let err =
        run_until_end(&wrong).expect_err("a run on mismatched partition counts must be refused");
    let msg = err.to_string();
    assert!(msg.contains(&wrong.topics.payments), "{msg}");
    assert!(msg.contains(&wrong.topics.orders), "{msg}");
    assert!(!state.path().join(&config.kafka.application_id).exists());
}

/// After a batch was dropped and processed again: each record counts once in the report, and
/// outputs (byte-identical repeats dropped) and state equal the driver's.
fn assert_processed_once_to_the_drivers_result(
    report: &runtime::RunReport,
    records: &[orderfold::generate::Generated],
    config: &Config,
) {
    assert_eq!(
        report.processed_this_run,
        broker::order_stage_records(records)
    );
    let want = broker::expected(records, config, 2, 2);
    let got = broker::actual(config, true);
    broker::assert_same(&got, &want);
}

/// A metric's value in a text exposition (0 when absent).
fn metric(status: &Status, name: &str) -> f64 {
    let text = String::from_utf8(status.metrics.encode().unwrap()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_refused_output_holds_its_batch_back_and_is_retried_until_the_broker_takes_it() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = broker::config(&cluster.bootstrap_servers(), state.path(), 2, 2);
    config.runtime.retry_backoff_ms = 50;
    config.runtime.retry_backoff_max_ms = 400;
    create_topics(&cluster, &config);
    let (_, records) = broker::workload(5, 300);
    produce(&config, &records);
    // From now on the broker refuses writes with an error no retry inside librdkafka fixes
    // (far more of them than the run below can use up).
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 10_000],
    );
    let status = Arc::new(Status::new(Metrics::new(true).unwrap()));
    let worker = {
        let (config, status) = (config.clone(), status.clone());
        std::thread::spawn(move || {
            runtime::run(&config, Mode::UntilEnd, Shutdown::default(), status)
        })
    };
    // While the broker refuses, commits fail again and again, none succeeds, and the
    // instance says why it is not ready.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&status, "orderfold_commit_failures_total") < 3.0 {
        assert!(Instant::now() < deadline, "commits did not fail and retry");
        assert!(
            !worker.is_finished(),
            "the run ended while the broker refused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        metric(&status, "orderfold_commit_duration_seconds_count"),
        0.0
    );
    let why = status.not_ready_because().unwrap_or_default();
    assert!(why.contains("commit failed"), "{why}");
    // Each failure halved the batch, so one too big to be acknowledged in time gets through.
    let max = config.limits.commit_records_max as f64;
    let shrunk = metric(&status, "orderfold_commit_batch_records");
    assert!(
        shrunk <= max / 8.0 && shrunk >= 100.0,
        "batch {shrunk} of {max}"
    );
    // The broker takes writes again: the held-back batch is processed again and commits.
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let report = worker
        .join()
        .unwrap()
        .expect("the run finishes once writes succeed");
    assert!(status.ready(), "{:?}", status.not_ready_because());
    // Successful commits grow it back.
    assert!(metric(&status, "orderfold_commit_batch_records") > shrunk);
    // Nothing skipped: every output the driver computes is there (the refused attempts'
    // records that did land repeat byte for byte).
    assert_processed_once_to_the_drivers_result(&report, &records, &config);
}

#[test]
fn a_task_without_local_state_restores_it_from_the_changelogs() {
    let cluster = MockCluster::new(1).unwrap();
    let first = tempfile::tempdir().unwrap();
    let mut config = broker::config(&cluster.bootstrap_servers(), first.path(), 2, 2);
    config.limits.commit_records_max = 1_000;
    create_topics(&cluster, &config);
    let (_, records) = broker::workload(23, 2_000);
    produce(&config, &records);
    let run = |config: &Config| run_until_end(config).unwrap();
    let report = run(&config);
    assert_eq!(report.restore.applied, 0);

    // The same application on an empty disk: everything comes back from the changelogs, and
    // nothing is processed (or produced) again.
    let second = tempfile::tempdir().unwrap();
    config.state.dir = second.path().to_path_buf();
    let report = run(&config);
    assert_eq!(report.processed_this_run, 0);
    assert_eq!(report.restore.tasks, 4);
    assert!(report.restore.applied > 0);
    assert_eq!(report.restore.tail, 0);

    broker::assert_matches_driver(&records, &config, 2, 2, false);
}

/// Final orders forgotten (`rules.final_retention_ms`) leave tombstones on the changelogs: an
/// instance restored on an empty disk does not bring them back and equals the driver, which
/// forgets the same ones.
#[test]
fn forgotten_orders_leave_tombstones_and_stay_forgotten_after_a_restore() {
    use orderfold::state::{Stage, Store};
    let cluster = MockCluster::new(1).unwrap();
    let first = tempfile::tempdir().unwrap();
    let mut config = broker::config(&cluster.bootstrap_servers(), first.path(), 2, 2);
    config.limits.commit_records_max = 1_000;
    // The workload places 1,000 orders a second: most are final well within its span.
    config.rules.final_retention_ms = 1_000;
    create_topics(&cluster, &config);
    let (_, records) = broker::workload(29, 2_000);
    produce(&config, &records);
    run_until_end(&config).unwrap();

    let changelogs = orderfold::changelog::topics(&config, Stage::Order);
    for store in [Store::Orders, Store::Tracking] {
        let (_, topic) = changelogs.iter().find(|(s, _)| *s == store).unwrap();
        let log = kafka::read_to_end(&config, topic).unwrap();
        let tombstones = log.iter().filter(|r| r.value.is_none()).count();
        assert!(
            tombstones > 0,
            "{topic}: no tombstone among {} records",
            log.len()
        );
    }
    let placed = records
        .iter()
        .filter(|r| r.topic == orderfold::driver::topics::ORDERS)
        .filter_map(|r| r.key.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let kept = broker::expected(&records, &config, 2, 2).orders.len();
    assert!(
        kept < placed / 2,
        "only {} of {placed} order ids forgotten",
        placed - kept
    );

    let second = tempfile::tempdir().unwrap();
    config.state.dir = second.path().to_path_buf();
    let report = run_until_end(&config).unwrap();
    assert_eq!(report.processed_this_run, 0);
    assert!(report.restore.applied > 0);
    broker::assert_matches_driver(&records, &config, 2, 2, false);
}

/// The exactly_once API flow: a transactional producer, offsets sent to each transaction. The
/// mock cluster accepts the API but does not hide aborted records from readers, so this shows
/// the flow and the results, not isolation.
#[test]
fn exactly_once_runs_the_transaction_flow_and_equals_the_driver() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = broker::config(&cluster.bootstrap_servers(), state.path(), 2, 2);
    config.kafka.processing_guarantee = orderfold::config::Guarantee::ExactlyOnce;
    config.limits.commit_records_max = 1_000;
    create_topics(&cluster, &config);
    let (_, records) = broker::workload(29, 2_000);
    produce(&config, &records);
    let report = run_until_end(&config).unwrap();
    assert_eq!(
        report.processed_this_run,
        broker::order_stage_records(&records)
    );
    // The instance id that names the transactional producer is kept for the next start.
    let id_file = state
        .path()
        .join(&config.kafka.application_id)
        .join("instance-id");
    assert!(!std::fs::read_to_string(id_file).unwrap().is_empty());
    broker::assert_matches_driver(&records, &config, 2, 2, false);
}

/// A transaction that fails to commit is aborted, the run stops with nothing of the batch in
/// local state, and the next run (its producer fencing the old one by transactional id)
/// processes the batch again and finishes.
#[test]
fn a_transaction_that_cannot_commit_is_aborted_and_its_batch_processed_again() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = broker::config(&cluster.bootstrap_servers(), state.path(), 2, 2);
    config.kafka.processing_guarantee = orderfold::config::Guarantee::ExactlyOnce;
    config.runtime.retry_backoff_ms = 50;
    // Without changelogs, so recovery goes through local state and input offsets alone: the
    // mock cluster would let a restore read the aborted batch's checkpoint, which a real
    // broker hides from read_committed readers.
    config.state.changelog = false;
    create_topics(&cluster, &config);
    let (_, records) = broker::workload(31, 1_000);
    produce(&config, &records);
    // The first commit's EndTxn is refused with an error that forbids committing.
    cluster.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_TXN_STATE],
    );
    let status = Arc::new(Status::new(Metrics::new(true).unwrap()));
    let report = runtime::run(&config, Mode::UntilEnd, Shutdown::default(), status.clone())
        .expect("the run survives a transaction that cannot commit");
    let metrics = String::from_utf8(status.metrics.encode().unwrap()).unwrap();
    assert!(
        metrics.contains("orderfold_commit_failures_total 1"),
        "the refused commit was not counted:\n{metrics}"
    );
    // The aborted batch's records stay visible on the mock cluster: compared without them.
    assert_processed_once_to_the_drivers_result(&report, &records, &config);
}

#[test]
fn the_benchmark_gate_counts_outputs_by_event_id_and_tells_a_run_that_fell_short() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let config = broker::config(&cluster.bootstrap_servers(), state.path(), 2, 2);
    create_topics(&cluster, &config);
    let (_, records) = broker::workload(5, 1_500);
    let expected = orderfold::compare::expected(&config, &records)
        .unwrap()
        .counts;
    assert!(
        expected.expiries > 0 && expected.tracking > 0 && expected.alerts.len() == 3,
        "the workload must raise every kind of output: {expected:?}"
    );
    produce(&config, &records);
    let limit = Duration::from_secs(60);
    // Nothing processed yet: the gate must see the shortfall.
    assert_ne!(
        orderfold::compare::observed(&config, limit).unwrap(),
        expected
    );

    run_until_end(&config).unwrap();
    assert_eq!(
        orderfold::compare::observed(&config, limit).unwrap(),
        expected
    );

    // An output delivered twice (at-least-once) is the same output.
    let alerts = kafka::read_to_end(&config, &config.topics.oversell_alerts).unwrap();
    let first = &alerts[0];
    kafka::produce_all(
        &config,
        [(
            config.topics.oversell_alerts.as_str(),
            first.key.as_deref(),
            first.value.as_deref(),
        )],
        None,
        |_| {},
    )
    .unwrap();
    assert_eq!(
        kafka::read_to_end(&config, &config.topics.oversell_alerts)
            .unwrap()
            .len(),
        alerts.len() + 1
    );
    assert_eq!(
        orderfold::compare::observed(&config, limit).unwrap(),
        expected
    );
}

/// Fills partition 0 of `topic` with about 6 MiB of records that are not Avro, past the 5 MiB
/// the mock cluster keeps per partition, so it deletes the partition's oldest records.
fn overflow_partition(config: &Config, topic: &str) {
    let filler = vec![b'x'; 100 * 1024];
    kafka::produce_all(
        config,
        (0..60).map(|_| (topic, Some(&b"o-filler"[..]), Some(filler.as_slice()))),
        None,
        |_| {},
    )
    .unwrap();
}

#[test]
fn a_task_that_has_processed_nothing_starts_where_the_log_starts_now() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let config = broker::config(&cluster.bootstrap_servers(), state.path(), 1, 1);
    create_topics(&cluster, &config);
    // The orders partition lost its first records to retention before orderfold ever ran.
    overflow_partition(&config, &config.topics.orders);
    let (_, records) = broker::workload(3, 200);
    produce(&config, &records);
    let report = run_until_end(&config).unwrap();
    let orders = &report.accounting[&config.topics.orders];
    let produced = records
        .iter()
        .filter(|r| r.topic == orderfold::driver::topics::ORDERS)
        .count() as u64;
    // Every generated order record, and what is left of the filler (dead-lettered): some of
    // it, not all, and nothing refused the run.
    assert!(orders.consumed > produced, "{orders:?}");
    assert!(orders.consumed < produced + 60, "{orders:?}");
    assert!(orders.closes(), "{orders:?}");
}

/// When a generated record happened; malformed bytes have no time.
fn occurred_at(record: &orderfold::generate::Generated) -> Option<i64> {
    use orderfold::generate::Payload;
    match &record.payload {
        Payload::Order(e) => Some(e.occurred_at),
        Payload::Payment(e) => Some(e.occurred_at),
        Payload::Logistics(e) => Some(e.occurred_at),
        Payload::Inventory(e) => Some(e.occurred_at),
        Payload::Malformed(_) => None,
    }
}

/// `run --until-end` over the first part of a log, then a live run over the rest (and a
/// bounded run that applies the commands still waiting for a watermark when it stops): the
/// outputs equal the broker-free driver's over the whole log. The bounded run's end of input
/// must not outlive it, or the live run applies commands in arrival order.
#[test]
fn a_live_run_after_a_bounded_one_applies_commands_in_event_time() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = broker::config(&cluster.bootstrap_servers(), state.path(), 3, 2);
    // Stream time moves with the records alone, so what waits for a watermark is decided by
    // the log, not by the clock.
    config.runtime.wall_clock_advance = false;
    create_topics(&cluster, &config);
    let (first, rest) = halves(41);
    produce(&config, &first);
    run_until_end(&config).unwrap();

    produce(&config, &rest);
    let status = Arc::new(Status::new(Metrics::new(true).unwrap()));
    let shutdown = Shutdown::default();
    let live = {
        let (config, status, shutdown) = (config.clone(), status.clone(), shutdown.clone());
        std::thread::spawn(move || runtime::run(&config, Mode::Live, shutdown, status))
    };
    let want = broker::order_stage_records(&rest);
    let deadline = Instant::now() + Duration::from_secs(120);
    while status
        .order_records
        .load(std::sync::atomic::Ordering::Relaxed)
        < want
    {
        assert!(
            Instant::now() < deadline,
            "the live run did not process the rest"
        );
        assert!(!live.is_finished(), "the live run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    shutdown.request();
    live.join().unwrap().expect("the live run stops cleanly");
    run_until_end(&config).unwrap();

    let whole: Vec<_> = first.into_iter().chain(rest).collect();
    broker::assert_matches_driver(&whole, &config, 3, 2, false);
}

/// A bounded run's end of input is its own: a second `run --until-end` over more input reads
/// the commands its order stage sends and applies them in event time, as one run over the
/// whole log would. (A task that kept the first run's end would finish at once, before its
/// command partition was read.)
#[test]
fn a_bounded_run_over_more_input_reads_its_own_end_of_input() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = broker::config(&cluster.bootstrap_servers(), state.path(), 3, 2);
    config.runtime.wall_clock_advance = false;
    create_topics(&cluster, &config);
    let (first, rest) = halves(47);
    produce(&config, &first);
    run_until_end(&config).unwrap();
    produce(&config, &rest);
    run_until_end(&config).unwrap();

    let whole: Vec<_> = first.into_iter().chain(rest).collect();
    broker::assert_matches_driver(&whole, &config, 3, 2, false);
}

/// A workload of 3,000 records split at its median event time: malformed records go with the
/// first half.
fn halves(seed: u64) -> (Vec<Generated>, Vec<Generated>) {
    let (_, records) = broker::workload(seed, 3_000);
    let mut times: Vec<i64> = records.iter().filter_map(occurred_at).collect();
    times.sort_unstable();
    let split = times[times.len() / 2];
    records
        .into_iter()
        .partition(|r| occurred_at(r).is_none_or(|t| t < split))
}

/// Runs a live instance in a thread on a status whose metrics move.
fn spawn_live(
    config: &Config,
) -> (
    Arc<Status>,
    Shutdown,
    std::thread::JoinHandle<Result<runtime::RunReport, RuntimeError>>,
) {
    let status = Arc::new(Status::new(Metrics::new(true).unwrap()));
    let shutdown = Shutdown::default();
    let handle = {
        let (config, status, shutdown) = (config.clone(), status.clone(), shutdown.clone());
        std::thread::spawn(move || runtime::run(&config, Mode::Live, shutdown, status))
    };
    (status, shutdown, handle)
}

/// Waits until a live run has processed `records` order-stage records.
fn wait_processed(
    status: &Status,
    records: u64,
    live: &std::thread::JoinHandle<Result<runtime::RunReport, RuntimeError>>,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while status
        .order_records
        .load(std::sync::atomic::Ordering::Relaxed)
        < records
    {
        assert!(
            Instant::now() < deadline,
            "the live run did not process its input"
        );
        assert!(!live.is_finished(), "the live run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A commit that fails at shutdown leaves nothing committed on any path: the run reports the
/// failure, and the next run processes the whole batch again and produces every output.
#[test]
fn a_commit_refused_at_shutdown_is_not_committed_by_the_revocation_after_it() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = broker::config(&cluster.bootstrap_servers(), state.path(), 2, 2);
    // One batch, committed only at shutdown.
    config.runtime.commit_interval_ms = 3_600_000;
    config.limits.commit_records_max = 1_000_000;
    config.runtime.shutdown_timeout_ms = 60_000;
    create_topics(&cluster, &config);
    let (_, records) = broker::workload(43, 300);
    produce(&config, &records);
    // The run's producer holds every record until the shutdown commit flushes it, so the
    // refusals below meet that commit, and outputs among the records refused.
    config
        .kafka
        .properties
        .insert("linger.ms".into(), "60000".into());
    let (status, shutdown, live) = spawn_live(&config);
    wait_processed(&status, broker::order_stage_records(&records), &live);
    // The broker refuses the first write (it belongs to the shutdown's commit: nothing was
    // committed before) and takes every later one, so a second commit after the failed one
    // would succeed. `INVALID_RECORD` fails only that request's records: a topic authorization
    // error would also make librdkafka fail the topic's later records locally, so the second
    // commit would fail for its own reason and hide the one under test.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD; 1],
    );
    shutdown.request();
    assert!(
        live.join().unwrap().is_err(),
        "a shutdown whose records were refused must fail"
    );
    // Records were refused: the comparison below shows whether any was lost.
    let text = String::from_utf8(status.metrics.encode().unwrap()).unwrap();
    let refused: f64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("orderfold_delivery_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(refused > 0.0, "the broker refused nothing");
    // Which records the refused write held varies from run to run (changelog records are not
    // visible in the outputs below); that no commit followed the refusal does not.
    assert_eq!(
        metric(&status, "orderfold_commit_duration_seconds_count"),
        0.0,
        "a commit followed the refused one"
    );
    config.kafka.properties.clear();
    let report = run_until_end(&config).unwrap();
    assert_processed_once_to_the_drivers_result(&report, &records, &config);
}

/// A member that lost its assignment (its session expired: the group may have given the
/// partitions to another member already) closes its tasks without committing anything.
#[test]
fn a_lost_assignment_commits_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = broker::config(&cluster.bootstrap_servers(), state.path(), 2, 2);
    config.runtime.commit_interval_ms = 3_600_000;
    config.limits.commit_records_max = 1_000_000;
    create_topics(&cluster, &config);
    let (_, records) = broker::workload(47, 300);
    produce(&config, &records);
    let (status, shutdown, live) = spawn_live(&config);
    wait_processed(&status, broker::order_stage_records(&records), &live);
    // The coordinator no longer knows the member: librdkafka declares the assignment lost.
    cluster.request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID; 1],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&status, "orderfold_rebalances_total{kind=\"revoked\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the assignment was not lost");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        metric(&status, "orderfold_commit_duration_seconds_count"),
        0.0,
        "a lost assignment committed its batch"
    );
    shutdown.request();
    live.join().unwrap().unwrap();
    // Whatever the lost batch sent is sent again, byte for byte, by whoever processes it next.
    run_until_end(&config).unwrap();
    broker::assert_matches_driver(&records, &config, 2, 2, true);
}

/// A batch dropped after its records reached the broker is processed again with the same
/// decisions, wall-clock advance on. The broker refuses the orders changelog (the producer
/// learns it from fresh metadata) after o-1's placement committed, so the commit after the
/// wall clock expired o-1 fails although its expiry and Release landed; o-1's capture (on time
/// by event time) arrives only then. The retry, which finds the capture at once, takes the
/// dropped attempt's steps again: the expiry first, then the capture as a late one, so the
/// committed state counts the expiry the topic holds. Deciding afresh, it took the capture as
/// on time, and the topic held an expiry the state never made.
#[test]
fn a_retried_batch_keeps_the_decisions_its_dropped_attempt_sent_while_the_wall_clock_advances() {
    use orderfold::codec::Codec;
    use orderfold::driver::topics;
    use orderfold::state::{Stage, Store};
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = broker::config(&cluster.bootstrap_servers(), state.path(), 1, 1);
    config.runtime.wall_clock_advance = true;
    config.rules.reservation_ttl_ms = 10_000;
    config.runtime.commit_interval_ms = 100;
    // The refused changelog's records wait for a partition: the commit gives up after this.
    config.runtime.produce_ack_timeout_ms = 2_000;
    // Time to write the capture between the failure and the retry.
    config.runtime.retry_backoff_ms = 2_000;
    config.runtime.retry_backoff_max_ms = 2_000;
    config
        .kafka
        .properties
        .insert("topic.metadata.refresh.interval.ms".into(), "100".into());
    create_topics(&cluster, &config);
    let codec = Codec::new().unwrap();
    let record = |topic, key: &str, value| broker::RawRecord {
        topic,
        key: Some(key.as_bytes().to_vec()),
        value: Some(value),
        partition: None,
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let (status, shutdown, live) = spawn_live(&config);
    let deadline = Instant::now() + Duration::from_secs(90);
    while metric(&status, "orderfold_rebalances_total{kind=\"assigned\"}") < 1.0 {
        assert!(Instant::now() < deadline, "never assigned");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Placed now: the wall clock passes its deadline 10 s from now.
    let t0 = now();
    let placed = orderfold::event::fixtures::placed(1, t0);
    broker::produce_raw(
        &config,
        &[record(
            topics::ORDERS,
            "o-1",
            codec.encode(&placed).unwrap(),
        )],
    );
    wait_processed(&status, 1, &live);
    let committed = |status: &Status| metric(status, "orderfold_commit_duration_seconds_count");
    let placed_commit = committed(&status);
    while committed(&status) <= placed_commit {
        assert!(Instant::now() < deadline, "o-1 was never committed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        now() < t0 + 8_000,
        "o-1 committed too close to its deadline: the test shows nothing"
    );
    let changelogs = orderfold::changelog::topics(&config, Stage::Order);
    let (_, orders_changelog) = changelogs
        .iter()
        .find(|(s, _)| *s == Store::Orders)
        .unwrap();
    cluster
        .topic_error(
            orders_changelog,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    while metric(&status, "orderfold_commit_failures_total") < 1.0 {
        assert!(Instant::now() < deadline, "no commit failed");
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster
        .topic_error(orders_changelog, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    let capture = orderfold::event::fixtures::captured(1, t0 + 1_000);
    broker::produce_raw(
        &config,
        &[record(
            topics::PAYMENTS,
            "o-1",
            codec.encode(&capture).unwrap(),
        )],
    );
    wait_processed(&status, 2, &live);
    let after = committed(&status);
    while committed(&status) <= after {
        assert!(Instant::now() < deadline, "the retry never committed");
        std::thread::sleep(Duration::from_millis(20));
    }
    shutdown.request();
    let report = live.join().unwrap().expect("the live run stops cleanly");

    let names = kafka::TopicNames::from_config(&config);
    let expiries = kafka::read_to_end(&config, &names.reservation_expiry).unwrap();
    assert!(
        !expiries.is_empty(),
        "the dropped attempt's expiry never reached the broker: the test shows nothing"
    );
    assert!(
        expiries.iter().all(|r| r.value == expiries[0].value),
        "the retry sent an expiry different from the dropped attempt's"
    );
    assert_eq!(
        report.expiries, 1,
        "the topic holds an expiry of o-1 that the committed state did not make"
    );
}

/// A record whose `occurred_at` lies a century ahead of its Kafka timestamp is dead-lettered
/// (`validation`, naming `limits.future_skew_ms`) and moves no clock: accepted, it advanced
/// its task's stream time to 2100 and expired every reservation of the task.
#[test]
fn a_record_dated_a_century_ahead_of_its_kafka_timestamp_is_dead_lettered_and_fires_no_timer() {
    use orderfold::codec::Codec;
    use orderfold::driver::topics;
    use orderfold::event::{
        InventoryBody, InventoryEvent, OrderBody, OrderEvent, OrderLine, OrderPlaced, StockReceived,
    };
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let config = broker::config(&cluster.bootstrap_servers(), state.path(), 1, 1);
    create_topics(&cluster, &config);
    let codec = Codec::new().unwrap();
    // 2026-01-01: in the past of every run of this test, as producers' event times are.
    let t0 = 1_767_225_600_000;
    let year_2100 = 4_102_444_800_000;
    let placed = |order: &str, at: i64| OrderEvent {
        event_id: format!("ev-{order}"),
        order_id: order.into(),
        occurred_at: at,
        body: OrderBody::OrderPlaced(OrderPlaced {
            user_id: "u".into(),
            cart_id: "c".into(),
            currency: "EUR".into(),
            lines: vec![OrderLine {
                sku: "A".into(),
                quantity: 1,
                unit_price_minor: 100,
            }],
        }),
    };
    let stock = InventoryEvent {
        event_id: "ev-stock".into(),
        sku: "A".into(),
        warehouse_id: "wh".into(),
        occurred_at: t0,
        body: InventoryBody::StockReceived(StockReceived { quantity: 5 }),
    };
    let record = |topic, key: &str, value| broker::RawRecord {
        topic,
        key: Some(key.as_bytes().to_vec()),
        value: Some(value),
        partition: None,
    };
    broker::produce_raw(
        &config,
        &[
            record(topics::INVENTORY, "A", codec.encode(&stock).unwrap()),
            record(
                topics::ORDERS,
                "o-1",
                codec.encode(&placed("o-1", t0)).unwrap(),
            ),
            record(
                topics::ORDERS,
                "o-2",
                codec.encode(&placed("o-2", year_2100)).unwrap(),
            ),
        ],
    );

    run_until_end(&config).unwrap();

    let outputs = broker::read_outputs(&config);
    assert!(
        outputs[topics::RESERVATION_EXPIRY].is_empty(),
        "o-1's reservation expired: the far-future record moved stream time"
    );
    let dead = &outputs[topics::DLQ];
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].key.as_deref(), Some(&b"o-2"[..]));
    assert_eq!(broker::header(&dead[0].headers, "reason"), "validation");
    let detail = broker::header(&dead[0].headers, "detail");
    assert!(detail.contains("limits.future_skew_ms"), "{detail}");
}
/// An idle instance commits nothing. With wall-clock advance on and no input, every commit
/// interval moves each order task's stream time and sends its watermark, and the SKU tasks read
/// them; none of that is state a restart needs (it advances again from the clock, and a
/// reopened SKU task reads the watermarks again), so no commit, and no changelog checkpoint,
/// is written: before, each interval committed every task.
#[test]
fn an_idle_instance_commits_nothing() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = broker::config(&cluster.bootstrap_servers(), state.path(), 2, 2);
    config.runtime.wall_clock_advance = true;
    config.runtime.commit_interval_ms = 100;
    create_topics(&cluster, &config);
    let (status, shutdown, live) = spawn_live(&config);
    // Each advance sends a watermark from each of the 2 order tasks to each of the 2 SKU
    // tasks: 12 read means the SKU stage has seen three rounds of them.
    let applied = format!(
        "orderfold_records_applied_total{{topic=\"{}\"}}",
        kafka::TopicNames::from_config(&config).sku_commands
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&status, &applied) < 12.0 {
        assert!(
            Instant::now() < deadline,
            "no watermarks reached the SKU stage"
        );
        assert!(!live.is_finished(), "the live run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let commits = metric(&status, "orderfold_commit_duration_seconds_count");
    shutdown.request();
    live.join().unwrap().unwrap();
    assert_eq!(commits, 0.0, "an idle instance committed");
}

/// A producer queue that stays full (the broker answers every write with a retriable error,
/// which librdkafka retries until `message.timeout.ms`) does not hold the loop: past
/// `produce_queue_wait_ms` the batch is dropped and retried later, so a shutdown is honoured
/// at once instead of after the records time out.
#[test]
fn a_full_producer_queue_does_not_hold_the_loop() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = broker::config(&cluster.bootstrap_servers(), state.path(), 2, 2);
    config.limits.producer_queue_records_max = 100;
    config.runtime.produce_queue_wait_ms = 500;
    config.runtime.shutdown_timeout_ms = 2_000;
    config
        .kafka
        .properties
        .insert("message.timeout.ms".into(), "300000".into());
    create_topics(&cluster, &config);
    let (_, records) = broker::workload(59, 300);
    produce(&config, &records);
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
    );
    let (status, shutdown, live) = spawn_live(&config);
    // The outputs of the first records fill the queue; the retry that follows shows the loop
    // went on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&status, "orderfold_commit_failures_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the loop is held by the full queue"
        );
        assert!(!live.is_finished(), "the live run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    shutdown.request();
    let asked = Instant::now();
    while !live.is_finished() {
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "the shutdown waited for the full queue"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    // Nothing was lost: a run after the outage produces every output.
    let _ = live.join().unwrap();
    run_until_end(&config).unwrap();
    broker::assert_matches_driver(&records, &config, 2, 2, true);
}

/// A restore that fails during an assignment (the broker answers the changelog's end-offset
/// question with an error once) is retried after a backoff, as the same failure is when a
/// failed batch reopens its tasks: the instance then processes its input. Before, the error
/// ended the run.
#[test]
fn a_restore_that_fails_during_an_assignment_is_retried() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let config = broker::config(&cluster.bootstrap_servers(), state.path(), 2, 2);
    create_topics(&cluster, &config);
    let (_, records) = broker::workload(61, 300);
    produce(&config, &records);
    // The first end-offset questions of a live run are its restores'.
    cluster.request_errors(
        RDKafkaApiKey::ListOffsets,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 2],
    );
    let (status, shutdown, live) = spawn_live(&config);
    wait_processed(&status, broker::order_stage_records(&records), &live);
    assert!(
        metric(&status, "orderfold_commit_failures_total") >= 1.0,
        "the restore never failed: the test shows nothing"
    );
    shutdown.request();
    live.join().unwrap().expect("the live run stops cleanly");
    run_until_end(&config).unwrap();
    broker::assert_matches_driver(&records, &config, 2, 2, true);
}

/// A record larger than the producer takes (`message.max.bytes`) is refused on every retry:
/// an output's dead letter (here a 5 KB malformed value kept whole) and a state value's
/// changelog record (here the events parked for one unknown order). Each becomes a small
/// dead letter (reason `validation`, header `stub` = `too_large`) naming where it was going,
/// and the run goes on and finishes; before, the batch was retried forever.
#[test]
fn a_record_too_large_for_the_producer_becomes_a_stub_dead_letter() {
    let cluster = MockCluster::new(1).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = broker::config(&cluster.bootstrap_servers(), state.path(), 1, 1);
    create_topics(&cluster, &config);
    broker::produce_raw(&config, &broker::too_large_log());
    // The run's producer takes less than the log's producer did.
    config.kafka.properties.insert(
        "message.max.bytes".into(),
        broker::TOO_LARGE_BYTES.to_string(),
    );

    let run = {
        let config = config.clone();
        std::thread::spawn(move || run_until_end(&config))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the run retried the refused records for good"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run.join().unwrap().expect("the run finishes");
    broker::assert_too_large_stubs(&config);
}
