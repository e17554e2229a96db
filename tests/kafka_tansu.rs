//! Process-level tests on a real Kafka-compatible broker (tansu, sqlite storage, started by
//! `scripts/tansu`): the `orderfold` binary runs in a child process, is killed and restarted,
//! and its outputs and state are compared with the broker-free driver's on the same log.
//! `scripts/tansu install` (which `scripts/test` runs) must have built tansu first.

mod broker;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use std::sync::mpsc::Receiver;

use orderfold::config::Config;
use orderfold::state::Stage;
use rand::{Rng, SeedableRng};

/// A tansu broker in its own directory, stopped by its PID when dropped.
struct Tansu {
    dir: tempfile::TempDir,
    addr: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Tansu {
    fn start() -> Tansu {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(repo().join("scripts/tansu"))
            .arg("start")
            .arg(dir.path())
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/tansu");
        assert!(
            out.status.success(),
            "scripts/tansu start failed (run scripts/tansu install first)"
        );
        let addr = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Tansu { dir, addr }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/tansu"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn orderfold(config_file: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orderfold"));
    c.env("ORDERFOLD_CONFIG", config_file)
        .env("RUST_LOG", "orderfold=info");
    c
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A broker with nothing on it, and a config file with two partitions per stage.
fn empty_broker() -> (Tansu, tempfile::TempDir, Config, PathBuf) {
    let tansu = Tansu::start();
    let state = tempfile::tempdir().unwrap();
    let config = broker::config(&tansu.addr, state.path(), 2, 2);
    let file = state.path().join("orderfold.toml");
    broker::write_config(&config, &file);
    (tansu, state, config, file)
}

/// A broker with the topics created and a workload produced, both by the binary's commands.
struct Setup {
    tansu: Tansu,
    state: tempfile::TempDir,
    config: Config,
    config_file: PathBuf,
    records: Vec<orderfold::generate::Generated>,
}

const ORDER_PARTITIONS: u32 = 3;
const SKU_PARTITIONS: u32 = 2;

fn setup(seed: u64, orders: usize) -> Setup {
    let tansu = Tansu::start();
    let state = tempfile::tempdir().unwrap();
    let config = broker::config(&tansu.addr, state.path(), ORDER_PARTITIONS, SKU_PARTITIONS);
    let config_file = state.path().join("orderfold.toml");
    broker::write_config(&config, &config_file);
    check(
        orderfold(&config_file)
            .args(["topics", "create"])
            .output()
            .unwrap(),
        "topics create",
    );
    let (spec, records) = broker::workload(seed, orders);
    check(
        orderfold(&config_file)
            .args(["generate", "--kafka"])
            .args(["--seed", &spec.seed.to_string()])
            .args(["--orders", &spec.orders.to_string()])
            .args(["--skus", &spec.skus.to_string()])
            .output()
            .unwrap(),
        "generate --kafka",
    );
    Setup {
        tansu,
        state,
        config,
        config_file,
        records,
    }
}

/// The `processed_this_run` of a run's JSON report on its last stdout line.
fn processed(stdout: &[u8]) -> u64 {
    report(stdout)["processed_this_run"].as_u64().unwrap()
}

/// Waits for a child to exit, up to `limit`; kills it and fails past that.
fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("orderfold did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `run` and returns once it has committed processed records (its JSON log says so),
/// so a signal sent after this lands while it is processing, not while it starts.
fn spawn_run(config_file: &Path, args: &[&str]) -> (Child, Receiver<String>) {
    spawn_run_with(config_file, args, &[], 1)
}

/// `spawn_run` with extra environment and a least number of records processed (by this
/// process) before it returns.
fn spawn_run_with(
    config_file: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    min_processed: u64,
) -> (Child, Receiver<String>) {
    let mut child = orderfold(config_file)
        .env("RUST_LOG", "orderfold=debug")
        .env("ORDERFOLD_LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .arg("run")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    if let Err(why) = wait_committed(&rx, min_processed, Duration::from_secs(120)) {
        let _ = child.kill();
        panic!("{why}");
    }
    (child, rx)
}

/// Waits until a run's JSON log reports a commit with at least `min_processed` records
/// processed by that process.
fn wait_committed(
    log: &Receiver<String>,
    min_processed: u64,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = log.recv_timeout(left) else {
            return Err(format!(
                "orderfold did not commit {min_processed} processed records within {limit:?}"
            ));
        };
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let fields = &entry["fields"];
        if fields["message"] == "committed"
            && fields["processed"].as_u64().unwrap_or(0) >= min_processed.max(1)
        {
            return Ok(());
        }
    }
}

/// A run's JSON report, from the last line of its stdout.
fn report(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().last().expect("a report line");
    serde_json::from_str(line).expect("a JSON report")
}

/// SIGTERM, then the exit status, within the shutdown timeout and some slack.
fn terminate(child: &mut Child, config: &Config) -> ExitStatus {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let timeout = Duration::from_millis(config.runtime.shutdown_timeout_ms);
    wait_exit(child, timeout + Duration::from_secs(5))
}

/// The number of records in every changelog topic of the application now.
fn changelog_records(config: &Config) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = orderfold::kafka::client_config(config).create().unwrap();
    let names = orderfold::kafka::TopicNames::from_config(config);
    let mut total = 0;
    for stage in [Stage::Order, Stage::Sku] {
        let partitions = match stage {
            Stage::Order => ORDER_PARTITIONS,
            Stage::Sku => SKU_PARTITIONS,
        };
        for (_, topic) in names.changelogs(stage) {
            for p in 0..partitions as i32 {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap();
                total += high - low;
            }
        }
    }
    total
}

#[test]
fn a_process_run_on_tansu_equals_the_broker_free_driver() {
    let s = setup(21, 3_000);
    let out = check(
        orderfold(&s.config_file)
            .args(["run", "--until-end"])
            .output()
            .unwrap(),
        "run --until-end",
    );
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
    let s = setup(33, 41_500);
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
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let timeout = Duration::from_millis(s.config.runtime.shutdown_timeout_ms);
    let status = wait_exit(&mut child, timeout + Duration::from_secs(5));
    assert!(status.success(), "SIGTERM exit status {status:?}");
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
    check(
        orderfold(&file)
            .args(["topics", "create"])
            .output()
            .unwrap(),
        "topics create",
    );
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

/// Rebalances on tansu follow a dead member's session timeout: keep it short.
const FAST_GROUP: [(&str, &str); 2] = [
    ("ORDERFOLD_LIBRDKAFKA_SESSION_TIMEOUT_MS", "6000"),
    ("ORDERFOLD_LIBRDKAFKA_HEARTBEAT_INTERVAL_MS", "1000"),
];

#[test]
fn scaling_out_to_three_instances_and_back_in_under_load_equals_the_driver() {
    let s = setup(57, 30_000);
    let total = broker::order_stage_records(&s.records);
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
    let start = |i: usize, min: u64| {
        let e = env(i);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        spawn_run_with(&s.config_file, &[], &e, min)
    };
    // One instance, then a second and a third while the first is busy; each is waited for
    // until it has committed work of its own, so each really took partitions.
    let (mut a, _a_log) = start(0, 1);
    let (mut b, _b_log) = start(1, 1);
    let (mut c, _c_log) = start(2, 1);
    assert!(a.try_wait().unwrap().is_none() && b.try_wait().unwrap().is_none());
    // Back in: one leaves cleanly, one dies. The first takes their partitions over.
    let status = terminate(&mut b, &s.config);
    assert!(status.success(), "SIGTERM exit status {status:?}");
    c.kill().unwrap();
    c.wait().unwrap();
    let status = terminate(&mut a, &s.config);
    assert!(status.success(), "SIGTERM exit status {status:?}");
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(&mut a.stdout.take().unwrap(), &mut stdout).unwrap();
    let first = report(&stdout);
    assert!(first["processed_this_run"].as_u64().unwrap() < total);

    // The rest, as a bounded run on the first instance's disk: tasks it never owned restore
    // from the changelogs, the ones it did from its own state.
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
    assert!(last["restore"]["applied"].as_u64().unwrap() > 0, "{last}");
    let mut config = s.config.clone();
    config.state.dir = dirs[0].path().to_path_buf();
    broker::assert_matches_driver(&s.records, &config, ORDER_PARTITIONS, SKU_PARTITIONS, true);
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
