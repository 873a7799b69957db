//! Readiness while loading: `lowbit serve` binds its port before it loads the model, and
//! answers `/health/ready` 503 `loading` (and `/health` 200) until the model is ready, then 200.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

/// `GET path` over a plain socket: (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[test]
fn ready_is_503_while_the_model_loads_then_200() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args(["serve", "--backend", "cpu", "--port", &port.to_string()])
        .arg("--model")
        .arg(common::smollm2())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut next_line_with = |word: &str| loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(word) => return true,
            Some(Ok(_)) => continue,
            _ => return false,
        }
    };
    assert!(next_line_with("loading the model"), "serve exited early");
    // Loading (quantizing every matrix, compiling kernels) takes far longer than one local
    // request: the probe lands inside it.
    let (status, body) = get(port, "/health/ready");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("loading"), "{body}");
    assert_eq!(get(port, "/health").0, 200);
    let (status, body) = get(port, "/v1/models");
    assert_eq!(status, 503, "{body}");
    assert!(next_line_with("serving"), "serve exited before serving");
    let (status, body) = get(port, "/health/ready");
    assert_eq!(status, 200, "{body}");
    child.kill().ok();
    child.wait().ok();
}
