//! The authority's API under clients that hold connections without using
//! them: one source address holds at most an eighth of its connections,
//! and a request body that stops coming gives the connection back.
//!
//! ```text
//!  128 silent TCP connections from 127.0.0.1 ─┐
//!  one more from 127.0.0.1 (closed at once)  ─┼─▶ appid authority serve
//!  curl --interface 127.0.0.2 /v1/bundle      ─┤
//!  openssl s_client: POST, half a body, stall ─┘   (400 within 10 s)
//! ```

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use support::authority;
use support::pki::Ca;

const TRUST_DOMAIN: &str = "prod.example";

/// `MAX_CONNECTIONS / 8` in `authority/server.rs`.
const PER_SOURCE: usize = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holds_at_most_an_eighth_of_the_authoritys_connections() {
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = Ca::init(&temp.path().join("ca"), TRUST_DOMAIN);
    let (proc, url) = authority::serve(&ca, &[], temp.path().join("authority.log"));
    let address: std::net::SocketAddr = url.trim_start_matches("https://").parse().unwrap();

    // Silent connections: each waits in its TLS handshake (10 s at most).
    let mut silent = Vec::new();
    for _ in 0..PER_SOURCE {
        silent.push(
            tokio::net::TcpStream::connect(address)
                .await
                .expect("connect"),
        );
    }
    // Past the share: closed at once, not left to the handshake timeout.
    let mut one_more = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(3), one_more.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "a connection past the source's share was not closed: {closed:?}\n{}",
        proc.log()
    );
    // Another source is served meanwhile.
    let out = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "10", "--interface", "127.0.0.2"])
        .arg(format!("{url}/v1/bundle"))
        .output()
        .expect("curl must be installed");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && body.contains("BEGIN CERTIFICATE"),
        "another source was not served: {} {body}\n{}",
        String::from_utf8_lossy(&out.stderr),
        proc.log()
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_coming_gives_the_connection_back() {
    let temp = tempfile::tempdir().expect("temp dir");
    let ca = Ca::init(&temp.path().join("ca"), TRUST_DOMAIN);
    let (proc, url) = authority::serve(&ca, &[], temp.path().join("authority.log"));
    let address = url.trim_start_matches("https://").to_string();

    // A POST that announces 60 000 bytes and sends ten, then waits.
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &address])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl must be installed");
    let mut stdin = client.stdin.take().expect("stdin");
    let mut stdout = client.stdout.take().expect("stdout");
    stdin
        .write_all(
            b"POST /v1/attest HTTP/1.1\r\nhost: authority\r\ncontent-type: application/json\r\n\
              content-length: 60000\r\n\r\n{\"token\":",
        )
        .expect("write");
    stdin.flush().expect("flush");
    let started = Instant::now();
    // The answer (a 400 naming the body) and the end of the connection:
    // read on a thread, bounded by a kill.
    let reader = std::thread::spawn(move || {
        let mut answer = Vec::new();
        let _ = stdout.read_to_end(&mut answer);
        answer
    });
    while !reader.is_finished() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let finished = reader.is_finished();
    let _ = client.kill();
    let _ = client.wait();
    let answer = String::from_utf8_lossy(&reader.join().expect("reader")).into_owned();
    drop(stdin);
    assert!(
        finished,
        "the stalled body still holds its connection after 30 s\n{}",
        proc.log()
    );
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("not complete within"),
        "{answer:?}\n{}",
        proc.log()
    );
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "answered before the body timeout: {answer:?}"
    );
}
