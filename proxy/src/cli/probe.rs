//! `appid probe live|ready`: ask the local admin API, for exec probes.
//!
//! The admin API listens on loopback only (it must never be reachable from
//! the network), so kubelet's `httpGet` probes, which dial the pod IP,
//! cannot reach it. An exec probe running this command inside the sidecar
//! container can: exit 0 when the answer is 200, 1 otherwise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Check {
    /// The process is alive (`/live`)
    Live,
    /// Identity, policy and listeners are up (`/ready`)
    Ready,
}

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    check: Check,
    /// The sidecar's admin address
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15190")]
    admin: SocketAddr,
    /// How long to wait for an answer
    #[arg(long, value_name = "T", value_parser = super::args::duration, default_value = "2s")]
    timeout: time::Duration,
}

pub fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::try_from(args.timeout).unwrap_or(Duration::from_secs(2));
    let path = match args.check {
        Check::Live => "/live",
        Check::Ready => "/ready",
    };
    // A sidecar that does not answer (in time) is not live or ready: exit
    // 1, as for any answer but 200 (2 is for bad arguments).
    let response = match ask(args.admin, path, timeout) {
        Ok(response) => response,
        Err(e) => {
            println!(
                "{path}: no answer from the admin API at {} within {}: {e}",
                args.admin,
                humantime::format_duration(timeout)
            );
            return Ok(super::denied());
        }
    };
    let text = String::from_utf8_lossy(&response);
    let status_ok = text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    println!(
        "{path}: {}",
        if body.is_empty() {
            text.lines().next().unwrap_or("")
        } else {
            body
        }
    );
    Ok(if status_ok {
        ExitCode::SUCCESS
    } else {
        super::denied()
    })
}

/// `GET path` from the admin API at `admin`, the whole exchange (connect,
/// request, the answer up to its close) within `timeout`: a sidecar that
/// answers a byte at a time does not stretch it.
fn ask(admin: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))
    };
    let mut stream = TcpStream::connect_timeout(&admin, timeout)?;
    stream.set_write_timeout(Some(left()?))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    // The admin answers are tiny; cap what we read anyway.
    const MAX_ANSWER: usize = 16 * 1024;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(left()?))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A read timeout is WouldBlock on Linux: say what it means.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(response);
        }
        response.extend_from_slice(&chunk[..n.min(MAX_ANSWER - response.len())]);
        if response.len() == MAX_ANSWER {
            return Ok(response);
        }
    }
}
