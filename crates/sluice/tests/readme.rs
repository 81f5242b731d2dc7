//! README.md, run. Every command in its `sh` blocks is executed here in order, through bash,
//! as a reader would paste it, so the README cannot drift from the code:
//!
//! - `cargo run --release -p sluice --` and a leading `sluice` become the binary this test
//!   suite built; the README's fixed ports (8080, 8001, 8002) become free ports; paths under
//!   `examples/` point into the repository; the working directory is a fresh temp dir.
//! - `serve` and `mock` run in the background until the test ends (a second process on the
//!   port of a running one replaces it, as the README tells the reader to do); the test waits
//!   for their port.
//! - A command followed by `# {...}` comment lines must print exactly that JSON.
//! - The sample outputs (`text` blocks) must match what the commands print, up to ports,
//!   timings and ids.
//! - Two commands are checked rather than run: the test command (it is what runs this test;
//!   `.ci/run` must call exactly it) and `cargo install` (its path must hold the `sluice`
//!   binary). The `python` block is run by `tests/python/test_readme.py`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One logical command of an `sh` block (continuation lines and multi-line quotes joined),
/// with the output its `# ` comment lines promise, if any.
#[derive(Debug)]
struct Snippet {
    line: usize,
    text: String,
    expected: Vec<String>,
}

/// Blocks of the README by language, in order.
fn blocks(readme: &str, lang: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, Vec<String>)> = None;
    for (i, line) in readme.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut current, fence) {
            (None, Some(l)) if l.trim() == lang => current = Some((i + 2, Vec::new())),
            (Some(_), Some(_)) => out.extend(current.take()),
            (Some((_, lines)), None) => lines.push(line.to_owned()),
            _ => {}
        }
    }
    out
}

fn snippets(readme: &str) -> Vec<Snippet> {
    let mut out: Vec<Snippet> = Vec::new();
    for (first, lines) in blocks(readme, "sh") {
        let mut pending: Option<Snippet> = None;
        let mut last_was_command = false;
        for (k, line) in lines.iter().enumerate() {
            let trimmed = line.trim();
            if let Some(p) = pending.as_mut() {
                p.text.push('\n');
                p.text.push_str(line);
                if !continues(&p.text) {
                    out.extend(pending.take());
                    last_was_command = true;
                }
                continue;
            }
            if let Some(comment) = trimmed.strip_prefix('#') {
                let c = comment.strip_prefix(' ').unwrap_or(comment);
                let output = c.starts_with('{') || c.starts_with(' ');
                match out.last_mut() {
                    Some(prev) if last_was_command && output => prev.expected.push(c.to_owned()),
                    _ => last_was_command = false,
                }
                continue;
            }
            if trimmed.is_empty() {
                last_was_command = false;
                continue;
            }
            let s = Snippet {
                line: first + k,
                text: line.to_owned(),
                expected: Vec::new(),
            };
            if continues(&s.text) {
                pending = Some(s);
            } else {
                out.push(s);
                last_was_command = true;
            }
        }
        assert!(
            pending.is_none(),
            "unfinished command in README block at line {first}"
        );
    }
    out
}

/// A trailing backslash or an open single quote carries the command to the next line.
fn continues(text: &str) -> bool {
    text.ends_with('\\') || text.matches('\'').count() % 2 == 1
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Processes started in the background, by port; killed when the test ends.
#[derive(Default)]
struct Background {
    running: BTreeMap<u16, (Child, PathBuf)>,
}

impl Drop for Background {
    fn drop(&mut self) {
        for (_, (mut child, _)) in std::mem::take(&mut self.running) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Background {
    fn stop(&mut self, port: u16) {
        if let Some((mut child, _)) = self.running.remove(&port) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `child` listens on `port`; if it exits first, fails with what it said.
fn wait_for_port(port: u16, child: &mut Child, stderr: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let said = std::fs::read_to_string(stderr).unwrap_or_default();
            panic!("{what}: exited ({status}) instead of listening:\n{said}");
        }
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `127.0.0.1:NNNN` → the free port that stands for it.
fn ports_in(text: &str) -> Vec<u16> {
    text.match_indices("127.0.0.1:")
        .filter_map(|(i, m)| {
            let digits: String = text[i + m.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

struct Runner {
    dir: tempfile::TempDir,
    ports: BTreeMap<u16, u16>,
    env: Vec<(String, String)>,
    background: Background,
    /// stdout and stderr files of every background process, in start order.
    started: Vec<(String, PathBuf, PathBuf)>,
    /// stdout of every foreground command, by its README text.
    printed: Vec<(String, String)>,
}

impl Runner {
    fn rewrite(&mut self, text: &str) -> String {
        let mut t = text.replace("cargo run --release -p sluice --", BIN);
        if t.starts_with("sluice ") {
            t = format!("{BIN}{}", &t["sluice".len()..]);
        }
        for port in ports_in(&t) {
            let free = *self.ports.entry(port).or_insert_with(free_port);
            t = t.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{free}"));
        }
        let examples = repo().join("examples");
        t.replace(" examples/", &format!(" {}/", examples.display()))
    }

    fn run(&mut self, s: &Snippet) {
        let text = s.text.trim();
        let at = format!("README line {}: {text}", s.line);
        if text == "bash scripts/test.sh" {
            let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
            assert!(
                ci.lines().any(|l| l.trim() == "exec bash scripts/test.sh"),
                "{at}: .ci/run must run exactly the README's test command"
            );
            return;
        }
        if let Some(path) = text.strip_prefix("cargo install --path ") {
            let manifest = std::fs::read_to_string(repo().join(path).join("Cargo.toml")).unwrap();
            assert!(manifest.contains("name = \"sluice\""), "{at}");
            assert!(repo().join(path).join("src/main.rs").exists(), "{at}");
            return;
        }
        if let Some(assignment) = text.strip_prefix("export ") {
            let (k, v) = assignment.split_once('=').expect("export K=V");
            self.env.push((k.to_owned(), v.to_owned()));
            return;
        }
        let mut command = self.rewrite(text.trim_end_matches('&').trim());
        let server = [" serve", " mock"]
            .iter()
            .any(|sub| command.starts_with(&format!("{BIN}{sub}")));
        if server || text.ends_with('&') {
            // The README's `serve` listens on 8080 by default (or as its config says).
            if command.starts_with(&format!("{BIN} serve")) && !command.contains("--listen") {
                let port = *self.ports.entry(8080).or_insert_with(free_port);
                command.push_str(&format!(" --listen 127.0.0.1:{port}"));
            }
            let port = *ports_in(&command)
                .last()
                .expect("a server command names its port");
            self.background.stop(port);
            let n = self.started.len();
            let (out, err) = (
                self.dir.path().join(format!("bg{n}.out")),
                self.dir.path().join(format!("bg{n}.err")),
            );
            let mut child = self
                .shell(&format!("exec {command}"))
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::fs::File::create(&err).unwrap())
                .spawn()
                .unwrap();
            wait_for_port(port, &mut child, &err, &at);
            self.background.running.insert(port, (child, out.clone()));
            self.started.push((text.to_owned(), out, err));
            return;
        }
        let done = self.shell(&command).output().unwrap();
        let stdout = String::from_utf8_lossy(&done.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&done.stderr);
        let code = done.status.code();
        if command.contains(" load ") {
            // The SLO verdict depends on the machine's speed: a busy machine may fail the
            // gate (3). The command itself must work and write its reports.
            assert!(
                matches!(code, Some(0 | 3)),
                "{at}: {code:?}\n{stdout}{stderr}"
            );
            for file in ["run.json", "run.svg"] {
                assert!(self.dir.path().join(file).exists(), "{at}: no {file}");
            }
            let report: Value =
                serde_json::from_slice(&std::fs::read(self.dir.path().join("run.json")).unwrap())
                    .unwrap();
            let requests = &report["runs"][0]["summary"]["requests"];
            assert!(requests["succeeded"].as_u64() > Some(0), "{at}: {requests}");
            assert_eq!(requests["failed"], 0, "{at}: {requests}");
        } else {
            assert_eq!(code, Some(0), "{at}\n{stdout}{stderr}");
        }
        if s.expected.is_empty() {
            assert!(!stdout.trim().is_empty(), "{at}: printed nothing");
            assert!(
                !stdout.contains("\"error\""),
                "{at}: answered an error\n{stdout}"
            );
        } else {
            let want: Value = serde_json::from_str(&s.expected.concat())
                .unwrap_or_else(|e| panic!("{at}: README's output is not JSON ({e})"));
            let got: Value = serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{at}: printed no JSON ({e}): {stdout}"));
            assert_eq!(got, want, "{at}: README shows another answer");
        }
        self.printed.push((text.to_owned(), stdout));
    }

    fn shell(&self, command: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(command)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env_remove("OPENAI_API_KEY")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }
}

/// Ports, ids, timings and counts masked, so that a sample output and a real one compare.
fn masked(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_digit() || *c == '.')
            {
                chars.next();
            }
            out.push('N');
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn every_readme_command_runs_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let snippets = snippets(&readme);
    assert!(snippets.len() >= 12, "{snippets:#?}");
    let mut runner = Runner {
        dir: tempfile::tempdir().unwrap(),
        ports: BTreeMap::new(),
        env: Vec::new(),
        background: Background::default(),
        started: Vec::new(),
        printed: Vec::new(),
    };
    for s in &snippets {
        runner.run(s);
    }

    let samples = blocks(&readme, "text");
    assert_eq!(samples.len(), 3, "serve output, access log, load output");

    // The gateway's start-up lines, as command 1 prints them.
    let (first, out, err) = &runner.started[0];
    assert_eq!(first, "cargo run --release -p sluice -- serve");
    let printed = std::fs::read_to_string(out).unwrap();
    let want: Vec<String> = samples[0].1.iter().map(|l| masked(l)).collect();
    let got: Vec<String> = printed.lines().map(masked).collect();
    assert_eq!(got, want, "README's serve output\n{printed}");

    // Its access-log line for the requests of the tour.
    let log = std::fs::read_to_string(err).unwrap();
    let sample = &samples[1].1[0];
    let fields = |l: &str| -> Vec<String> {
        l.split_whitespace()
            .map(|w| w.split('=').next().unwrap_or(w).to_owned())
            .collect()
    };
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sluice::access"))
        .collect();
    assert!(!access.is_empty(), "no access-log line in\n{log}");
    let line = access[0];
    let from = line.find("INFO").expect("an INFO line");
    assert_eq!(fields(&line[from..]), fields(sample), "{line}");

    // The load report's shape: every line of the sample has its counterpart.
    let (_, load_out) = runner
        .printed
        .iter()
        .find(|(c, _)| c.starts_with("sluice load"))
        .expect("the tour runs sluice load");
    for l in &samples[2].1 {
        let Some(head) = l.split_whitespace().next() else {
            continue;
        };
        if ["-", "PASS", "FAIL", "verdict:"].contains(&head) {
            continue; // notes and verdicts depend on the run
        }
        assert!(
            load_out
                .lines()
                .any(|o| o.split_whitespace().next() == Some(head)),
            "README's load output has a `{head}` line that sluice load no longer prints:\n{load_out}"
        );
    }
}

#[test]
fn the_snippet_reader_joins_continuations_and_reads_expected_output() {
    let readme = "text\n```sh\n# a comment\ncurl -s x \\\n  -d '{\"a\":\n  1}'\n# {\"ok\":\n#   true}\nnext\n```\n";
    let s = snippets(readme);
    assert_eq!(s.len(), 2, "{s:#?}");
    assert_eq!(s[0].text, "curl -s x \\\n  -d '{\"a\":\n  1}'");
    assert_eq!(s[0].expected, ["{\"ok\":", "  true}"]);
    assert_eq!(s[0].line, 4);
    assert_eq!(s[1].text, "next");
    assert!(s[1].expected.is_empty());
    assert_eq!(
        masked("at http://127.0.0.1:34383/v1 in 3.2 ms"),
        "at http://N:N/vN in N ms"
    );
}
