//! What the README tells a user to run, run as a user runs it: the demo as a child process of
//! the built binary, every command line the README shows against that command's own `--help`,
//! and the README's `simulate` example against the outputs the README prints for it. A README
//! that names a flag the binary no longer has, or a demo that cannot start, fails here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn orderfold() -> Command {
    Command::new(env!("CARGO_BIN_EXE_orderfold"))
}

/// The checkout, read at run time (a build cache shared between clones may hold a binary
/// built in another one).
fn checkout() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
}

fn readme() -> String {
    std::fs::read_to_string(checkout().join("README.md")).unwrap()
}

/// The README's fenced blocks, as (info string, lines).
fn fenced_blocks(text: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_string(), Vec::new())),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, lines)), None) => lines.push(line.to_string()),
            (None, None) => {}
        }
    }
    blocks
}

/// The demo's summary lines as label → rest of the line.
fn summary(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| {
            let (label, rest) = l.split_once("  ")?;
            Some((label.trim().to_string(), rest.trim().to_string()))
        })
        .collect()
}

/// The numbers in a summary line, in order ("12 rejected, 3 oversold" gives [12, 3]).
fn numbers(line: &str) -> Vec<f64> {
    line.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.trim_matches('.').parse().ok())
        .collect()
}

#[test]
fn the_demo_runs_and_tells_what_happened() {
    let out = orderfold()
        .args(["demo", "--orders", "2000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo exited {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let s = summary(&stdout);
    let field = |label: &str| -> Vec<f64> {
        let line = s
            .get(label)
            .unwrap_or_else(|| panic!("the summary has no {label} line:\n{stdout}"));
        numbers(line)
    };
    assert_eq!(field("orders"), [2000.0], "{stdout}");
    assert!(field("events")[0] > 2000.0, "{stdout}");
    // A flash sale: the hot SKUs run out, so some reservations are refused, most accepted.
    let reservations = field("reservations");
    assert!(
        reservations[0] > 0.0 && reservations[1] > 0.0,
        "accepted and refused: {stdout}"
    );
    assert!(
        field("expiries")[0] > 0.0,
        "abandoned carts expire: {stdout}"
    );
    assert!(field("tracking")[0] > 0.0, "{stdout}");
    let alerts = field("alerts");
    assert_eq!(alerts.len(), 3, "three kinds: {stdout}");
    assert!(
        alerts[1] > 0.0,
        "payments that raced past a refusal: {stdout}"
    );
    // Oversold orders as a share of orders, the seed's 3.2% beside it.
    let oversold = field("oversold");
    assert!(oversold[0] > 0.0 && oversold[0] <= alerts[1], "{stdout}");
    assert!(
        (oversold[1] - 100.0 * oversold[0] / 2000.0).abs() < 0.01,
        "{stdout}"
    );
    assert!(s["oversold"].contains("3.2%"), "{stdout}");
    assert!(s["top oversold"].starts_with("sku-"), "{stdout}");
    assert!(field("duplicates")[0] > 0.0, "{stdout}");
    assert!(
        field("dead letters")[0] > 0.0,
        "malformed records: {stdout}"
    );
    assert!(s["dead letters"].contains("decode"), "{stdout}");
    assert!(field("throughput")[0] > 0.0, "{stdout}");
}

/// A command line the README shows: the command path (`inspect sku`), the flags it names and
/// the literal values it gives them.
#[derive(Debug)]
struct Shown {
    line: String,
    path: Vec<String>,
    flags: Vec<(String, Vec<String>)>,
}

fn is_word(t: &str) -> bool {
    t.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && t.chars().all(|c| c.is_ascii_lowercase() || c == '-')
}

/// Parses `orderfold CMD [SUB | SUB ...] [--flag VALUE] ...` (brackets, alternatives and a
/// description after two spaces allowed) into one `Shown` per subcommand it names.
fn parse_shown(line: &str) -> Vec<Shown> {
    let synopsis = line.split("  ").next().unwrap_or("").trim();
    let synopsis = synopsis.split(" #").next().unwrap_or("").trim();
    let tokens: Vec<&str> = synopsis
        .split_whitespace()
        .map(|t| t.trim_matches(|c| c == '[' || c == ']'))
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(tokens.first(), Some(&"orderfold"), "{line}");
    let command = tokens[1].to_string();
    let first_flag = tokens.iter().position(|t| t.starts_with("--"));
    let positional = &tokens[2..first_flag.unwrap_or(tokens.len())];
    // `inspect sku ID | order ID | all`: the first word of each alternative is a subcommand.
    let subcommands: Vec<String> = positional
        .split(|t| *t == "|")
        .filter_map(|alt| alt.first().filter(|t| is_word(t)).map(|t| t.to_string()))
        .collect();
    let mut flags = Vec::new();
    for (i, t) in tokens
        .iter()
        .enumerate()
        .skip(first_flag.unwrap_or(tokens.len()))
    {
        if let Some(flag) = t.strip_prefix("--") {
            let values = tokens
                .get(i + 1)
                .filter(|v| !v.starts_with("--"))
                .map(|v| v.split('|').filter(|w| is_word(w)).map(String::from))
                .into_iter()
                .flatten()
                .collect();
            flags.push((flag.to_string(), values));
        }
    }
    let paths: Vec<Vec<String>> = if subcommands.is_empty() {
        vec![vec![command]]
    } else {
        subcommands
            .into_iter()
            .map(|s| vec![command.clone(), s])
            .collect()
    };
    paths
        .into_iter()
        .map(|path| Shown {
            line: line.to_string(),
            path,
            flags: flags.clone(),
        })
        .collect()
}

/// Every `orderfold ...` line in the README's plain code blocks: the command list and the
/// "Running on Kafka" lines.
fn shown_commands(readme: &str) -> Vec<Shown> {
    fenced_blocks(readme)
        .into_iter()
        .filter(|(info, _)| info.is_empty())
        .flat_map(|(_, lines)| lines)
        .filter(|l| l.starts_with("orderfold "))
        .flat_map(|l| parse_shown(&l))
        .collect()
}

#[test]
fn every_command_line_in_the_readme_is_accepted_by_its_parser() {
    let shown = shown_commands(&readme());
    let commands: std::collections::BTreeSet<&str> =
        shown.iter().map(|s| s.path[0].as_str()).collect();
    // The README's list covers every command there is.
    for c in [
        "run", "topics", "generate", "inspect", "demo", "replay", "reset", "bench", "simulate",
    ] {
        assert!(commands.contains(c), "the README shows no `orderfold {c}`");
    }
    for s in &shown {
        let out = orderfold().args(&s.path).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "`orderfold {} --help` exited {:?}: {}",
            s.path.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for (flag, values) in &s.flags {
            let long = format!("--{flag}");
            assert!(
                help.split(|c: char| c.is_whitespace() || c == ',' || c == '=')
                    .any(|w| w == long),
                "the README shows `{}` but `orderfold {} --help` has no {long}:\n{help}",
                s.line,
                s.path.join(" ")
            );
            for v in values {
                assert!(
                    help.split(|c: char| !(c.is_ascii_lowercase() || c == '-'))
                        .any(|w| w == v),
                    "the README gives {long} the value {v} in `{}`, which `orderfold {} --help` does not know:\n{help}",
                    s.line,
                    s.path.join(" ")
                );
            }
        }
    }
}

#[test]
fn the_readme_parser_reads_what_the_readme_writes() {
    let shown =
        parse_shown("orderfold inspect sku ID | order ID | all [--config F]   what a key holds");
    let paths: Vec<String> = shown.iter().map(|s| s.path.join(" ")).collect();
    assert_eq!(paths, ["inspect sku", "inspect order", "inspect all"]);
    assert_eq!(shown[0].flags, [("config".to_string(), vec![])]);
    let shown = parse_shown("orderfold bench --phase expect|publish [--rate N]   steps");
    assert_eq!(shown[0].path, ["bench"]);
    assert_eq!(
        shown[0].flags,
        [
            (
                "phase".to_string(),
                vec!["expect".to_string(), "publish".to_string()]
            ),
            ("rate".to_string(), vec![])
        ]
    );
}

/// Runs a README transcript (```console, `$ ` before each command) in `dir`: `orderfold ...`
/// runs the built binary, `cat FILE` reads a file; each command's output must be the lines
/// the README shows under it.
fn run_transcript(lines: &[String], dir: &Path) {
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in lines {
        match line.strip_prefix("$ ") {
            Some(cmd) => steps.push((cmd.to_string(), Vec::new())),
            None => steps
                .last_mut()
                .expect("a transcript starts with a command")
                .1
                .push(line.clone()),
        }
    }
    assert!(!steps.is_empty());
    for (cmd, expected) in steps {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let actual = match words.as_slice() {
            ["orderfold", args @ ..] => {
                let out = orderfold().args(args).current_dir(dir).output().unwrap();
                assert!(
                    out.status.success(),
                    "`{cmd}` failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).unwrap()
            }
            ["cat", file] => {
                std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("`{cmd}`: {e}"))
            }
            _ => panic!("the transcript runs only orderfold and cat: `{cmd}`"),
        };
        let actual: Vec<&str> = actual.lines().collect();
        assert_eq!(
            actual, expected,
            "`{cmd}` printed something else than the README says"
        );
    }
}

#[test]
fn the_readme_simulate_example_gives_the_outputs_the_readme_shows() {
    let readme = readme();
    let blocks = fenced_blocks(&readme);
    // The example's input (the README's only ```json block) is saved as example.jsonl, as
    // the README asks, then its transcript is run.
    let input: Vec<&(String, Vec<String>)> =
        blocks.iter().filter(|(info, _)| info == "json").collect();
    assert_eq!(input.len(), 1, "one ```json block: the simulate example");
    let transcript: Vec<&(String, Vec<String>)> = blocks
        .iter()
        .filter(|(info, _)| info == "console")
        .collect();
    assert_eq!(
        transcript.len(),
        1,
        "one ```console block: the simulate transcript"
    );
    assert!(
        readme.contains("example.jsonl"),
        "the README names the file"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("example.jsonl"),
        input[0].1.join("\n") + "\n",
    )
    .unwrap();
    run_transcript(&transcript[0].1, dir.path());
}
