//! The `sluice` binary as a user runs it: the embedded default, SIGTERM, check-config, mock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// A child process killed on drop, whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Running::watch(child)
    }

    /// Takes over a child whose stdout is piped: its lines arrive on `lines`.
    fn watch(mut child: Child) -> Running {
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The first `http://127.0.0.1:PORT` printed, as the base address.
    fn wait_for_url(&self) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .expect("the command printed its URL");
            if let Some(i) = line.find("http://127.0.0.1:") {
                let rest = &line[i..];
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == ')' || c == ',')
                    .unwrap_or(rest.len());
                return rest[..end].trim_end_matches("/v1").to_owned();
            }
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "exited after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `POST {base}/v1/chat/completions` asking model `mock` for five tokens of "Hello!".
async fn hello(base: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "mock", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 5}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn serve_with_no_config_runs_the_embedded_default_and_stops_on_sigterm() {
    let mut serve = Running::start(&["serve", "--listen", "127.0.0.1:0"]);
    let base = serve.wait_for_url();
    let client = reqwest::Client::new();

    let models: Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "mock");

    let resp = hello(&base).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(!v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    // The next request goes to the other embedded engine; the same request gets the same
    // answer whichever engine serves it, as the mock promises.
    let again: Value = hello(&base).await.json().await.unwrap();
    assert_eq!(
        again["choices"][0]["message"]["content"],
        v["choices"][0]["message"]["content"]
    );
    assert_eq!(
        client
            .get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "both embedded engines are reachable"
    );

    let status = serve.terminate();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}

#[tokio::test]
async fn mock_command_serves_chat_completions() {
    let _mock = Running::start(&["mock", "--listen", "127.0.0.1:0", "--zero-timing"]);
    let base = _mock.wait_for_url();
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "any", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 3);
}

fn check_config(file: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("check-config")
        .arg(file)
        .env_remove("OPENAI_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_config_accepts_the_examples_and_names_broken_keys() {
    let (ok, text) = check_config(&repo_file("examples/quickstart.toml"), &[]);
    assert!(ok, "{text}");
    assert!(text.contains("ok (1 model(s), 2 endpoint(s)"), "{text}");

    let (ok, text) = check_config(&repo_file("examples/openai.toml"), &[]);
    assert!(!ok);
    assert!(
        text.contains("models.gpt-4o-mini.endpoints[0].api_key_env")
            && text.contains("OPENAI_API_KEY"),
        "{text}"
    );
    let (ok, text) = check_config(
        &repo_file("examples/openai.toml"),
        &[("OPENAI_API_KEY", "sk-x")],
    );
    assert!(ok, "{text}");

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        "[server]\nlisten = \"nowhere\"\n[models.a]\n[[models.a.endpoints]]\nurl = \"not a url\"\n",
    )
    .unwrap();
    let (ok, text) = check_config(&broken, &[]);
    assert!(!ok);
    assert!(text.contains("server.listen"), "{text}");
    assert!(text.contains("models.a.endpoints[0].url"), "{text}");

    std::fs::write(&broken, "[models.a]\nendpionts = []\n").unwrap();
    let (ok, text) = check_config(&broken, &[]);
    assert!(!ok);
    assert!(text.contains("endpionts"), "{text}");

    let (ok, text) = check_config(&dir.path().join("missing.toml"), &[]);
    assert!(!ok);
    assert!(text.contains("missing.toml"), "{text}");
}

#[test]
fn check_config_reports_every_problem_in_file_order_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.toml");
    // A typo early, a unit missing, a wrong type, a value check, a secret in the file, a
    // missing url, and a syntax error last: all reported in one run, in file order.
    std::fs::write(
        &file,
        r#"[server]
lisen = "127.0.0.1:8080"
drain_timeout = "30"
workers = "two"

[models.gpt]
[[models.gpt.endpoints]]
url = "ftp://example.com/v1"
api_key = "sk-secret"
timeouts = { totl = "30s" }

[[models.gpt.endpoints]]
name = "second"

[models.broken
"#,
    )
    .unwrap();
    let (ok, text) = check_config(&file, &[]);
    assert!(!ok, "{text}");
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .collect();
    let expect: [(&str, &str); 9] = [
        ("line 2: server.lisen: ", "did you mean `listen`?"),
        ("line 3: server.drain_timeout: ", "no unit"),
        ("line 4: server.workers: ", "whole number"),
        (
            "line 8: models.gpt.endpoints[0].url: ",
            "http:// or https://",
        ),
        ("line 9: models.gpt.endpoints[0].api_key: ", "api_key_env"),
        (
            "line 10: models.gpt.endpoints[0].timeouts.totl: ",
            "did you mean `total`?",
        ),
        ("line 12: models.gpt.endpoints[1].url: ", "is missing"),
        ("line 15: TOML syntax: ", ""),
        // Read past the syntax error, the table is there and has no endpoint.
        ("line 15: models.broken.endpoints: ", "has no endpoint"),
    ];
    assert_eq!(lines.len(), expect.len(), "{text}");
    for (line, (start, has)) in lines.iter().zip(expect) {
        assert!(
            line.starts_with(start) && line.contains(has),
            "{line:?} in\n{text}"
        );
    }
    assert!(text.contains("has 9 problem(s)"), "{text}");
    // The secret is never echoed, and `api_key` is not offered as a key to use.
    assert!(!text.contains("sk-secret"), "{text}");
    assert!(
        !text.contains(" api_key,") && !text.contains(" api_key."),
        "{text}"
    );
}

/// Runs `sluice serve ARGS` with its log in a file at `info`, sends one chat request, stops
/// it, and returns the log.
async fn serve_logged(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let mut serve = Running::watch(child);
    let base = serve.wait_for_url();
    let resp = hello(&base).await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    resp.bytes().await.unwrap();
    assert!(serve.terminate().success());
    let text = std::fs::read_to_string(&log_path).unwrap();
    format!("{id}\n{text}")
}

#[tokio::test]
async fn a_log_file_has_one_access_line_per_request_no_colour_and_one_drained() {
    let out = serve_logged(&["--listen", "127.0.0.1:0"]).await;
    let (id, text) = out.split_once('\n').unwrap();
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file:\n{text}"
    );
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("shutting down"), 1, "{text}");
    assert_eq!(count(" drained"), 1, "{text}");
    let access: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("sluice::access"))
        .collect();
    assert_eq!(access.len(), 1, "{text}");
    for field in [
        &format!("request_id={id}") as &str,
        "model=mock",
        "endpoint=",
        "status=200",
        "prompt_tokens=",
        "completion_tokens=5",
        "duration_ms=",
    ] {
        assert!(access[0].contains(field), "{field} not in {}", access[0]);
    }
}

#[tokio::test]
async fn the_access_log_can_be_turned_off() {
    let mock = sluice_mock::MockServer::start(
        sluice_mock::MockOptions::zero_timing(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[models.mock]\n[[models.mock.endpoints]]\nurl = \"{}\"\n",
            mock.base_url()
        ),
    )
    .unwrap();
    let out = serve_logged(&["--config", config.to_str().unwrap()]).await;
    assert!(!out.contains("sluice::access"), "{out}");
    mock.shutdown().await;
}

#[test]
fn every_command_states_its_exit_codes() {
    for command in ["serve", "mock", "load", "proxy", "check-config", "keys"] {
        let out = Command::new(BIN)
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{command} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Exit status:"), "{command} --help:\n{help}");
        assert!(
            help.contains("  2  usage error"),
            "{command} --help:\n{help}"
        );
    }
}

fn keys(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("keys")
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("SLUICE_DATA_DIR")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_by_the_cli_open_the_gateway_and_revoking_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[auth]\nmode = \"keys\"\n\
             [models.m]\n[[models.m.endpoints]]\nurl = \"embedded-mock://engine\"\n",
            data.display()
        ),
    )
    .unwrap();

    let made = keys(
        &config,
        &[
            "create",
            "--tenant",
            "acme",
            "--scopes",
            "chat:write,models:read",
            "--name",
            "ci-bot",
            "--expires",
            "30d",
        ],
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let out = String::from_utf8_lossy(&made.stdout);
    let key = out.lines().last().unwrap().trim().to_owned();
    assert!(key.starts_with("sk-sluice-") && key.len() == 53, "{out}");
    assert!(out.contains("`ci-bot`") && out.contains("acme"), "{out}");
    // Only the digest is stored.
    let db = std::fs::read(data.join("sluice.db")).unwrap();
    assert!(!db.windows(key.len()).any(|w| w == key.as_bytes()));

    // Refusals that say why.
    let taken = keys(
        &config,
        &[
            "create",
            "--tenant",
            "acme",
            "--scopes",
            "chat:write",
            "--name",
            "ci-bot",
        ],
    );
    assert_eq!(taken.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&taken.stderr).contains("exists already"));
    let unknown = keys(
        &config,
        &[
            "create",
            "--tenant",
            "acme",
            "--scopes",
            "chat:write",
            "--models",
            "gpt-9",
        ],
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("`gpt-9` is not configured"));
    let bad_scope = keys(
        &config,
        &["create", "--tenant", "acme", "--scopes", "chat:read"],
    );
    assert_eq!(bad_scope.status.code(), Some(2));

    let listed = keys(&config, &["list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("ci-bot") && text.contains("active"), "{text}");
    assert!(!text.contains("sk-sluice-"), "{text}");

    let mut gateway = Running::start(&["serve", "--config", config.to_str().unwrap()]);
    let base = gateway.wait_for_url();
    let client = reqwest::Client::new();
    let chat = || {
        client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    assert_eq!(chat().await.unwrap().status(), 200);
    let anonymous = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let revoked = keys(&config, &["revoke", "ci-bot"]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = chat().await.unwrap().status();
        if status == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked key still works"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = keys(&config, &["list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("revoked"));
    let missing = keys(&config, &["revoke", "nobody"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(gateway.terminate().success());
}

/// Personal data and secrets a client sends, generated per run: none may reach the audit
/// file, the gateway's log or an error body.
fn pii_samples(seed: u64) -> Vec<String> {
    // A valid card number: 15 digits from the seed, then the check digit that passes Luhn.
    let body: String = (0..15u64)
        .map(|i| char::from_digit((((seed >> (i % 16 * 4)) + i * 7) % 10) as u32, 10).unwrap())
        .collect();
    let card = (0..10)
        .map(|check| format!("{body}{check}"))
        .find(|c| sluice_gateway::audit::scrub::luhn_ok(c))
        .unwrap();
    vec![
        format!("jane.doe{seed}@example.org"),
        card,
        "DE89 3704 0044 0532 0130 00".to_owned(),
        format!("123-45-{:04}", 1000 + seed % 9000),
        format!("10.{}.{}.7", seed % 250, (seed / 7) % 250),
        format!("sk-proj-{seed:016x}abcdefgh"),
        "+1 (415) 555-2671".to_owned(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_keeps_who_and_what_but_no_secret_or_personal_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let audit = dir.path().join("audit").join("audit.jsonl");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[auth]\nmode = \"keys\"\n\
             [audit]\nsink = \"file\"\npath = \"{}\"\ncontent = \"full\"\n\
             [models.m]\n[[models.m.endpoints]]\nurl = \"embedded-mock://engine\"\n",
            data.display(),
            audit.display()
        ),
    )
    .unwrap();
    let made = keys(
        &config,
        &[
            "create",
            "--tenant",
            "acme",
            "--scopes",
            "chat:write",
            "--name",
            "auditor",
        ],
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let key = String::from_utf8_lossy(&made.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();

    let log_path = dir.path().join("serve.log");
    let child = Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .unwrap();
    let mut serve = Running::watch(child);
    let base = serve.wait_for_url();
    let client = reqwest::Client::new();
    let mut secrets = vec![key.clone()];
    let mut error_bodies = String::new();
    for seed in 0..8u64 {
        let pii = pii_samples(seed * 7919 + 13);
        let content = format!("Please remember {} and reply.", pii.join(" and "));
        secrets.extend(pii);
        let body = json!({"model": "m", "max_tokens": 4, "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": content}]});
        let ok = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .header("x-api-key", "sk-ant-headersecret0123456789")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        ok.bytes().await.unwrap();
        // Refused requests: a wrong key, a bad body; their error bodies are checked too.
        let wrong_key = format!("sk-sluice-wrong{seed:039}");
        secrets.push(wrong_key.clone());
        for resp in [
            client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&wrong_key)
                .json(&body)
                .send()
                .await
                .unwrap(),
            client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&json!({"model": "m", "messages": content}))
                .send()
                .await
                .unwrap(),
        ] {
            assert!(resp.status().is_client_error());
            error_bodies.push_str(&resp.text().await.unwrap());
        }
    }
    secrets.push("sk-ant-headersecret0123456789".into());
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sluice_audit_records_written_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_audit_records_dropped_total 0"),
        "{metrics}"
    );
    assert!(serve.terminate().success());

    let lines = std::fs::read_to_string(&audit).unwrap();
    let records: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 24, "{lines}");
    let ok: Vec<&Value> = records.iter().filter(|r| r["status"] == 200).collect();
    assert_eq!(ok.len(), 8);
    for r in &ok {
        assert_eq!(r["tenant"], "acme");
        assert_eq!(r["key"], "auditor");
        assert_eq!(r["model"], "m");
        assert_eq!(r["endpoint"], "engine");
        assert_eq!(r["route"], "/v1/chat/completions");
        assert!(r["prompt_tokens"].as_u64() > Some(0) && r["latency_ms"].as_f64() > Some(0.0));
        assert!(r["time"].as_str().unwrap().ends_with('Z'));
        let prompt = r["content"]["prompt"].as_str().unwrap();
        for marker in [
            "[EMAIL]", "[CARD]", "[IBAN]", "[SSN]", "[IP]", "[SECRET]", "[PHONE]",
        ] {
            assert!(prompt.contains(marker), "{marker} missing in {prompt}");
        }
        assert!(r["content"]["answer"].is_string());
    }
    assert_eq!(records.iter().filter(|r| r["status"] == 401).count(), 8);
    let log = std::fs::read_to_string(&log_path).unwrap();
    for secret in &secrets {
        assert!(
            !lines.contains(secret.as_str()),
            "{secret} in the audit file"
        );
        assert!(!log.contains(secret.as_str()), "{secret} in the log");
        assert!(
            !error_bodies.contains(secret.as_str()),
            "{secret} in an error body"
        );
    }
    assert!(!lines.to_lowercase().contains("authorization"));
}

/// The certificate `sluice serve` presents to a client that trusts only `pem`.
async fn presented_certificate(base: &str, pem: &str) -> Result<Vec<u8>, reqwest::Error> {
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .tls_info(true)
        .build()
        .unwrap();
    let resp = client.get(format!("{base}/health")).send().await?;
    assert_eq!(resp.status(), 200);
    Ok(resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .unwrap()
        .to_vec())
}

/// A self-signed pair for localhost in `dir` (cert.pem, key.pem); returns the certificate's
/// PEM and DER.
fn write_tls_pair(dir: &std::path::Path) -> (String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    (cert.pem(), cert.der().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tls_certificate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (first_pem, first_der) = write_tls_pair(dir.path());
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n[models.mock]\n[[models.mock.endpoints]]\nurl = \"embedded-mock://engine\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut serve = Running::start(&["serve", "--config", config.to_str().unwrap()]);
    let banner = loop {
        let line = serve.lines.recv_timeout(Duration::from_secs(30)).unwrap();
        if line.contains("listening on") {
            break line;
        }
    };
    let port = banner
        .split("https://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no https address in {banner}"))
        .to_owned();
    let base = format!("https://localhost:{port}");
    assert_eq!(
        presented_certificate(&base, &first_pem).await.unwrap(),
        first_der
    );

    let (second_pem, second_der) = write_tls_pair(dir.path());
    let kill = Command::new("kill")
        .args(["-HUP", &serve.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // The signal is handled asynchronously: new connections get the new pair soon after.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(der) = presented_certificate(&base, &second_pem).await {
            assert_eq!(der, second_der);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(presented_certificate(&base, &first_pem).await.is_err());
    assert!(
        serve.terminate().success(),
        "still running after SIGHUP, stops on SIGTERM"
    );
}
