//! Replay, verify and reset on a real broker (tansu, sqlite storage), with the `orderfold`
//! binary in child processes: a replay of the log reproduces production, whatever the batching
//! and whatever happened to production (crashes, scaling); a changed rule is caught and named;
//! a reset reprocesses from the start to the same state.

mod broker;

use std::process::Output;

use broker::process::*;

/// `replay` from earliest into topics prefixed `prefix`, with extra environment.
fn replay(s: &Setup, prefix: &str, env: &[(&str, &str)], verify: bool) -> Output {
    let mut c = orderfold(&s.config_file);
    c.envs(env.iter().copied())
        .args(["replay", "--output-prefix", prefix])
        .args([
            "--application-id",
            &format!("{}-{prefix}", s.config.kafka.application_id),
        ]);
    if verify {
        c.arg("--verify");
    }
    c.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn inspect_all(s: &Setup) -> String {
    let out = check(
        orderfold(&s.config_file)
            .args(["inspect", "all"])
            .output()
            .unwrap(),
        "inspect all",
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn replays_with_other_batch_sizes_commit_intervals_and_buffer_limits_verify_identical() {
    let s = setup(71, 3_000);
    run_until_end(&s.config_file);
    // Small batches, frequent commits and short buffers (partitions pause and resume all the
    // time), then the opposite.
    let settings: [(&str, &[(&str, &str)]); 3] = [
        ("defaults.", &[]),
        (
            "small.",
            &[
                ("ORDERFOLD_LIMITS_COMMIT_RECORDS_MAX", "200"),
                ("ORDERFOLD_RUNTIME_COMMIT_INTERVAL_MS", "100"),
                ("ORDERFOLD_LIMITS_BUFFER_RECORDS_MAX", "20"),
                ("ORDERFOLD_RUNTIME_POLL_RECORDS_MAX", "50"),
            ],
        ),
        (
            "large.",
            &[
                ("ORDERFOLD_LIMITS_COMMIT_RECORDS_MAX", "50000"),
                ("ORDERFOLD_RUNTIME_COMMIT_INTERVAL_MS", "10000"),
                ("ORDERFOLD_LIMITS_BUFFER_RECORDS_MAX", "50000"),
            ],
        ),
    ];
    for (prefix, env) in settings {
        let out = replay(&s, prefix, env, true);
        assert!(
            out.status.success(),
            "replay {prefix} with {env:?} differs from production:\n{}",
            stderr(&out)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("verify: identical"));
    }
}

#[test]
fn a_changed_rule_fails_verify_and_names_the_first_differing_key() {
    let s = setup(73, 3_000);
    run_until_end(&s.config_file);
    // A shorter payment window changes which reservations expire.
    let out = replay(
        &s,
        "ttl.",
        &[("ORDERFOLD_RULES_RESERVATION_TTL_MS", "60000")],
        true,
    );
    assert!(!out.status.success(), "verify accepted a changed rule");
    let err = stderr(&out);
    assert!(err.contains("First difference"), "{err}");
    assert!(err.contains("key o-"), "{err}");
    assert!(err.contains("offset"), "{err}");
}

#[test]
fn reset_then_run_reprocesses_from_the_start_to_the_same_state() {
    let s = setup(79, 3_000);
    let total = broker::order_stage_records(&s.records);
    let first = run_until_end(&s.config_file);
    assert_eq!(processed(&first.stdout), total);
    let before = inspect_all(&s);
    let dry = check(
        orderfold(&s.config_file)
            .args(["reset", "--dry-run"])
            .output()
            .unwrap(),
        "reset --dry-run",
    );
    assert!(String::from_utf8_lossy(&dry.stdout).contains("dry run: nothing changed"));
    assert_eq!(inspect_all(&s), before, "a dry run changed the state");
    check(
        orderfold(&s.config_file).arg("reset").output().unwrap(),
        "reset",
    );
    let second = run_until_end(&s.config_file);
    assert_eq!(processed(&second.stdout), total);
    assert_eq!(inspect_all(&s), before);
}

#[test]
fn reset_is_refused_while_an_instance_runs() {
    let s = setup(83, 2_000);
    let (mut live, _log) = spawn_run(&s.config_file, &[]);
    let out = orderfold(&s.config_file).arg("reset").output().unwrap();
    assert!(
        !out.status.success(),
        "reset went ahead beside a live instance"
    );
    assert!(stderr(&out).contains("live member"), "{}", stderr(&out));
    let status = terminate(&mut live, &s.config);
    assert!(status.success());
}

/// The `events` line of a replay's summary.
fn events(out: &Output) -> u64 {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("events"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a summary with an events line")
}

#[test]
fn a_replay_starts_at_a_timestamp_or_at_the_offsets_of_a_file() {
    let s = setup(89, 1_000);
    let first_batch = s.records.len() as u64;
    // Records produced from now on have later Kafka timestamps than everything before: the
    // millisecond clock has moved on since the first batch's last record.
    std::thread::sleep(std::time::Duration::from_millis(2));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let more = check(
        orderfold(&s.config_file)
            .args(["generate", "--kafka", "--seed", "90", "--orders", "300"])
            .output()
            .unwrap(),
        "generate a second batch",
    );
    let produced: u64 = String::from_utf8_lossy(&more.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("generate reports the records it produced");

    let out = check(
        orderfold(&s.config_file)
            .args(["replay", "--from", &now_ms, "--output-prefix", "ts."])
            .output()
            .unwrap(),
        "replay --from a timestamp",
    );
    assert_eq!(events(&out), produced);

    let file = s.state.path().join("offsets.json");
    let orders = &s.config.topics.orders;
    std::fs::write(&file, format!(r#"{{"{orders}": {{"0": 5, "1": 7}}}}"#)).unwrap();
    let out = check(
        orderfold(&s.config_file)
            .args(["replay", "--from-offsets", file.to_str().unwrap()])
            .args(["--output-prefix", "of."])
            .output()
            .unwrap(),
        "replay --from-offsets",
    );
    assert_eq!(events(&out), first_batch + produced - 12);
}
