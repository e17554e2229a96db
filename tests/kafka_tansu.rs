//! Process-level tests on a real Kafka-compatible broker (tansu, sqlite storage, started by
//! `scripts/tansu`): the `orderfold` binary runs in a child process, is killed and restarted,
//! and its outputs and state are compared with the broker-free driver's on the same log.
//! `scripts/tansu install` (which `scripts/test` runs) must have built tansu first.

mod broker;

use std::time::{Duration, Instant};

use broker::process::*;
use orderfold::state::Stage;
use rand::{Rng, SeedableRng};

#[test]
fn a_process_run_on_tansu_equals_the_broker_free_driver() {
    let s = setup(21, 3_000);
    let out = run_until_end(&s.config_file);
    assert_eq!(
        processed(&out.stdout),
        broker::order_stage_records(&s.records)
    );
    // `inspect` reads the state the run left.
    let all = check(
        orderfold(&s.config_file)
            .args(["inspect", "all"])
            .output()
            .unwrap(),
        "inspect all",
    );
    let want = broker::expected(&s.records, &s.config, ORDER_PARTITIONS, SKU_PARTITIONS);
    assert_eq!(
        String::from_utf8_lossy(&all.stdout).lines().count(),
        want.skus.len() + want.orders.len()
    );
    let got = broker::actual(&s.config, false);
    broker::assert_same(&got, &want);
    drop(s.tansu);
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_repeats_only_identical_outputs() {
    // About 200,000 events.
    let s = setup(33, 73_500);
    assert!(s.records.len() >= 200_000, "{} events", s.records.len());
    let seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill schedule seed {seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut kills = 0;
    while kills < 5 {
        let (mut child, _log) = spawn_run(&s.config_file, &["--until-end"]);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1_500)));
        if child.try_wait().unwrap().is_some() {
            panic!("the run finished before its kill; the workload is too small to test crashes");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    let out = check(
        orderfold(&s.config_file)
            .args(["run", "--until-end"])
            .output()
            .unwrap(),
        "the run after the kills",
    );
    assert!(processed(&out.stdout) < broker::order_stage_records(&s.records));
    broker::assert_matches_driver(
        &s.records,
        &s.config,
        ORDER_PARTITIONS,
        SKU_PARTITIONS,
        true,
    );
    drop(s.state);
}

#[test]
fn sigterm_commits_and_exits_in_time_and_nothing_is_processed_twice() {
    let s = setup(45, 12_000);
    let total = broker::order_stage_records(&s.records);
    // Live mode, as the service runs; no wall-clock advance, so results depend on input alone.
    let (mut child, _log) = spawn_run(&s.config_file, &[]);
    let started = Instant::now();
    let status = terminate(&mut child, &s.config);
    assert!(status.success(), "SIGTERM exit status {status:?}");
    let timeout = Duration::from_millis(s.config.runtime.shutdown_timeout_ms);
    assert!(started.elapsed() < timeout);
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let first = processed(&stdout);
    assert!(first > 0, "the live run processed nothing before SIGTERM");

    let out = check(
        orderfold(&s.config_file)
            .args(["run", "--until-end"])
            .output()
            .unwrap(),
        "the run after SIGTERM",
    );
    // Every order-stage record was processed exactly once over the two runs.
    assert_eq!(first + processed(&out.stdout), total);
    broker::assert_matches_driver(
        &s.records,
        &s.config,
        ORDER_PARTITIONS,
        SKU_PARTITIONS,
        false,
    );
}

#[test]
fn a_topic_layout_with_different_partition_counts_exits_non_zero_naming_the_topics() {
    let (_tansu, state, config, file) = empty_broker();
    broker::process::topics_create(&file);
    // A payments topic with three partitions beside orders and logistics with two.
    let mut wrong = config.clone();
    wrong.topics.payments = format!("{}-wide", config.topics.payments);
    wrong.topics.order_partitions = 3;
    let wrong_file = state.path().join("wrong.toml");
    broker::write_config(&wrong, &wrong_file);
    // `topics create` makes the missing topic, then reports the mismatch it sees.
    for args in [&["topics", "create"][..], &["run", "--until-end"][..]] {
        let out = orderfold(&wrong_file).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} accepted the layout");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&wrong.topics.payments), "{args:?}: {err}");
        assert!(err.contains(&wrong.topics.orders), "{args:?}: {err}");
    }
}

/// Rebalances on tansu follow a dead member's session timeout: keep it short. A killed member leaves the group after 6 s instead of 45 s. The rebalance timeout
/// (max.poll.interval.ms) is lowered too: a join that waits for a member which will never
/// rejoin ends after it at the latest, and these runs never spend 30 s between polls.
const FAST_GROUP: [(&str, &str); 3] = [
    ("ORDERFOLD_LIBRDKAFKA_SESSION_TIMEOUT_MS", "6000"),
    ("ORDERFOLD_LIBRDKAFKA_HEARTBEAT_INTERVAL_MS", "1000"),
    ("ORDERFOLD_LIBRDKAFKA_MAX_POLL_INTERVAL_MS", "30000"),
];

#[test]
fn scaling_out_and_in_with_a_crash_under_load_equals_the_driver_and_a_replay_verifies_it() {
    // The input arrives while the instances come and go: about 146,000 records at 3,000/s.
    let s = setup_empty(57, 30_000);
    let total = broker::order_stage_records(&s.records);
    let mut upstream = Running(
        generate(&s, Some(3_000))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dir_of = |i: usize| dirs[i].path().to_str().unwrap().to_string();
    let env = |i: usize| -> Vec<(&str, String)> {
        let mut e: Vec<(&str, String)> = FAST_GROUP
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect();
        e.push(("ORDERFOLD_STATE_DIR", dir_of(i)));
        e.push(("ORDERFOLD_RUNTIME_COMMIT_INTERVAL_MS", "300".into()));
        e
    };
    // Each instance is waited for until the group has given it order-stage tasks (or, with
    // `any`, an assignment of whatever it holds).
    let start_with = |i: usize, any: bool| {
        let e = env(i);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (mut child, log) = spawn_run_logged(&s.config_file, &[], &e);
        let limit = Duration::from_secs(120);
        let waited = if any {
            wait_rebalanced(&log, limit)
        } else {
            wait_assigned(&log, limit)
        };
        if let Err(why) = waited {
            let _ = child.kill();
            panic!("instance {i}: {why}");
        }
        (child, log)
    };
    let start = |i: usize| start_with(i, false);
    // One instance, then a second and a third.
    // The second and third also commit work of their own before anything else happens, so
    // the tasks they held have changelog records that only they wrote.
    let own_work = |i: usize, child: &mut Running, log: &std::sync::mpsc::Receiver<String>| {
        if let Err(why) = wait_committed(log, 1, Duration::from_secs(120)) {
            let _ = child.kill();
            panic!("instance {i}: {why}");
        }
    };
    let (mut a, _a_log) = start(0);
    let (mut b, b_log) = start(1);
    own_work(1, &mut b, &b_log);
    let (mut c, c_log) = start(2);
    own_work(2, &mut c, &c_log);
    assert!(a.try_wait().unwrap().is_none() && b.try_wait().unwrap().is_none());
    // A crash and a restart on the same disk, then back in: one leaves cleanly, the restarted
    // one dies. The first takes their partitions over.
    c.kill().unwrap();
    c.wait().unwrap();
    // The restart is waited for until the group answers it, whatever it is given: tansu 0.6.0
    // keeps a SIGKILLed member in the group past its session timeout (one run's log showed no
    // rebalance for 120 s after the kill), so the restart, a fourth member for three
    // partitions per topic, may get nothing. Whatever the dead member holds is finished by the
    // bounded run at the end, which is what this test compares.
    let (mut c, _c_log) = start_with(2, true);
    let status = terminate(&mut b, &s.config);
    assert!(status.success(), "SIGTERM exit status {status:?}");
    c.kill().unwrap();
    c.wait().unwrap();
    let status = wait_exit(&mut upstream, Duration::from_secs(300));
    assert!(status.success(), "the upstream producer failed: {status:?}");
    let status = terminate(&mut a, &s.config);
    assert!(status.success(), "SIGTERM exit status {status:?}");
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(&mut a.stdout.take().unwrap(), &mut stdout).unwrap();
    let first = report(&stdout);
    assert!(first["processed_this_run"].as_u64().unwrap() < total);

    // The rest, as a bounded run on the first instance's disk: tasks it does not hold restore
    // from the changelogs, the ones it does from its own state.
    let e = env(0);
    let out = check(
        orderfold(&s.config_file)
            .envs(e.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["run", "--until-end"])
            .output()
            .unwrap(),
        "the bounded run after scaling in",
    );
    let last = report(&out.stdout);
    eprintln!("bounded run after scaling in: {last}");
    // Tasks the first instance took over from the others came with their state from the
    // changelogs, while it ran or in this bounded run.
    let restored = first["restore"]["applied"].as_u64().unwrap()
        + last["restore"]["applied"].as_u64().unwrap();
    assert!(restored > 0, "nothing was restored: {first} {last}");
    let mut config = s.config.clone();
    config.state.dir = dirs[0].path().to_path_buf();
    broker::assert_matches_driver(&s.records, &config, ORDER_PARTITIONS, SKU_PARTITIONS, true);

    // A replay of the whole log reproduces what all that produced: every key's outputs and
    // the final state the first instance's disk now holds.
    let out = orderfold(&s.config_file)
        .env("ORDERFOLD_STATE_DIR", dirs[0].path())
        .args(["replay", "--output-prefix", "audit.", "--verify"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the replay differs from the live run:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("verify: identical"));
}

#[test]
fn a_lost_disk_is_rebuilt_from_the_changelogs() {
    let s = setup(61, 20_000);
    let total = broker::order_stage_records(&s.records);
    let (mut a, _log) = spawn_run_with(&s.config_file, &["--until-end"], &[], total / 3);
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    // Instance A's disk is gone. B starts on an empty directory.
    let lost = s.config.state.dir.join(&s.config.kafka.application_id);
    assert!(lost.exists());
    std::fs::remove_dir_all(&lost).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let out = check(
        orderfold(&s.config_file)
            .env("ORDERFOLD_STATE_DIR", fresh.path())
            .args(["run", "--until-end"])
            .output()
            .unwrap(),
        "run on a fresh disk",
    );
    let r = report(&out.stdout);
    eprintln!("run on a fresh disk: {r}");
    assert!(r["restore"]["applied"].as_u64().unwrap() > 0, "{r}");
    // B went on from A's last checkpoint rather than from the start.
    assert!(
        r["processed_this_run"].as_u64().unwrap() <= total - total / 3,
        "{r}"
    );
    let mut config = s.config.clone();
    config.state.dir = fresh.path().to_path_buf();
    broker::assert_matches_driver(&s.records, &config, ORDER_PARTITIONS, SKU_PARTITIONS, true);
}

#[test]
fn a_restart_after_sigkill_keeps_local_state_and_restores_only_the_tail() {
    let s = setup(67, 20_000);
    let total = broker::order_stage_records(&s.records);
    let small_batches = [("ORDERFOLD_RUNTIME_COMMIT_INTERVAL_MS", "200")];
    let (mut a, _log) = spawn_run_with(&s.config_file, &["--until-end"], &small_batches, total / 2);
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    let written = changelog_records(&s.config);
    let out = check(
        orderfold(&s.config_file)
            .envs(small_batches)
            .args(["run", "--until-end"])
            .output()
            .unwrap(),
        "the restart",
    );
    let r = report(&out.stdout);
    let read = r["restore"]["applied"].as_i64().unwrap() + r["restore"]["tail"].as_i64().unwrap();
    eprintln!("the restart read {read} of {written} changelog records");
    // At most the batch in flight at the kill; never the state the disk already had.
    assert!(
        read * 10 < written,
        "the restart read {read} of {written} changelog records: {r}"
    );
    broker::assert_matches_driver(
        &s.records,
        &s.config,
        ORDER_PARTITIONS,
        SKU_PARTITIONS,
        true,
    );
}

#[test]
fn changelogs_whose_partition_counts_differ_from_their_stage_are_refused() {
    let (_tansu, _state, config, file) = empty_broker();
    // The orders store's changelog exists already, with three partitions.
    let names = orderfold::kafka::TopicNames::from_config(&config);
    let changelog = names
        .changelog(Stage::Order, orderfold::state::Store::Orders)
        .to_string();
    let spec = orderfold::kafka::TopicSpec {
        compacted: true,
        ..orderfold::kafka::TopicSpec::new(&changelog, 3)
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(orderfold::kafka::create_missing(&config, &[spec]))
        .unwrap();
    for args in [&["topics", "create"][..], &["run", "--until-end"][..]] {
        let out = orderfold(&file).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} accepted the layout");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&changelog), "{args:?}: {err}");
        assert!(err.contains(&config.topics.orders), "{args:?}: {err}");
    }
}
