//! An independent reference measurement of TTFT: a blocking std TCP client on its own OS
//! thread, with no async runtime, no HTTP library and no SSE parser — the first read that
//! holds a non-empty `"content":"…"` is the first token. It shares nothing with the tool
//! under test, so agreement between the two is evidence about the tool, and its difference
//! from the script is evidence about the mock.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// A body like the tool's synthetic requests: a 32-word prompt, `output` tokens. `n` makes
/// the prompt unique from its first word, as the tool's are, so the mock does the same work
/// for it (no prefix-cache hit, new cache entries).
pub fn body(output: u32, n: u64) -> String {
    let prompt = vec!["time"; 31].join(" ");
    format!(
        r#"{{"model":"mock","messages":[{{"role":"user","content":"reference{n} {prompt}"}}],"max_tokens":{output},"ignore_eos":true,"stream":true,"stream_options":{{"include_usage":true}}}}"#
    )
}

fn has_token(buf: &[u8]) -> bool {
    let pat = br#""content":""#;
    buf.windows(pat.len() + 1)
        .any(|w| &w[..pat.len()] == pat && w[pat.len()] != b'"')
}

/// TTFT of one request in milliseconds, timed from the moment the request is written.
pub fn ttft_ms(addr: SocketAddr, body: &str) -> f64 {
    let mut s = TcpStream::connect(addr).expect("reference client connects");
    s.set_nodelay(true).expect("nodelay");
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let t0 = Instant::now();
    s.write_all(req.as_bytes())
        .expect("reference request written");
    loop {
        let n = s.read(&mut chunk).expect("reference read");
        assert!(
            n > 0,
            "stream ended before a token: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if has_token(&buf) {
            return t0.elapsed().as_secs_f64() * 1000.0;
        }
    }
}

/// Probes TTFT sequentially on a thread until stopped; returns the samples.
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<f64>>,
}

impl Prober {
    pub fn start(addr: SocketAddr, output: u32) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) {
                samples.push(ttft_ms(addr, &body(output, n)));
                n += 1;
            }
            samples
        });
        Prober { stop, thread }
    }

    pub fn median(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut v = self.thread.join().expect("prober thread");
        assert!(!v.is_empty(), "the reference client took no sample");
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
}
