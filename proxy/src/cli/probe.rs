//! `appid probe live|ready`: ask the local admin API, for exec probes.
//!
//! The admin API listens on loopback only (it must never be reachable from
//! the network), so kubelet's `httpGet` probes, which dial the pod IP,
//! cannot reach it. An exec probe running this command inside the sidecar
//! container can: exit 0 when the answer is 200, 1 otherwise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

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
    // A sidecar that does not answer is not live or ready: exit 1, as for
    // any answer but 200 (2 is for bad arguments).
    let mut stream = match TcpStream::connect_timeout(&args.admin, timeout) {
        Ok(stream) => stream,
        Err(e) => {
            println!(
                "{path}: no answer from the admin API at {}: {e}",
                args.admin
            );
            return Ok(super::denied());
        }
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        args.admin
    )?;
    let mut response = Vec::new();
    // The admin answers are tiny; cap what we read anyway.
    stream.take(16 * 1024).read_to_end(&mut response)?;
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
