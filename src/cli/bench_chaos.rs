//! `lowbit bench-serve --chaos`: the storm of clients that stop or vanish mid-stream. N
//! WebSocket clients per round start a greedy generation at once; a share of them quits after
//! its second token (half with `{"type":"control","action":"stop"}`, half by dropping the
//! connection). Every other client must complete with the single-client greedy text. Prints per
//! round the others' outcomes and the server's resident memory before, after and after idle.

use futures::{SinkExt, StreamExt};
use lowbit::{Error, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Settings of a chaos run.
#[derive(Clone, Debug)]
pub struct ChaosSettings {
    /// Clients per round.
    pub clients: usize,
    /// Rounds.
    pub rounds: usize,
    /// Share of the clients that quit after their second token.
    pub quit_share: f64,
    /// Tokens each request asks for.
    pub max_tokens: usize,
    /// The prompt.
    pub prompt: String,
    /// Seconds to wait before the "after idle" memory reading.
    pub idle_s: f64,
    /// Time limit of one round.
    pub round_timeout: Duration,
}

/// How one client's request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Completed with the reference text.
    Ok,
    /// Completed, with another text than the single-client greedy one.
    Differed,
    /// Stopped by the client (a `completion` with `cancelled`).
    Stopped,
    /// The client dropped its connection.
    Dropped,
    /// An `error` frame, a closed connection or no answer in time.
    Failed,
}

/// What a client does after its second token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Stay,
    Stop,
    Drop,
}

/// One round's figures.
#[derive(Serialize, Debug)]
struct RoundResult {
    round: usize,
    clients: usize,
    ok: usize,
    differed: usize,
    stopped: usize,
    dropped: usize,
    /// Failed among the clients that stayed.
    failed: usize,
    /// Failed among the clients that quit (their stop answered with an error).
    quitters_failed: usize,
    wall_s: f64,
    rss_mb: Option<f64>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// One client: connect, generate, act per `role`; `reference` is the expected text.
async fn client(url: String, s: ChaosSettings, role: Role, reference: Option<String>) -> Outcome {
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
        return Outcome::Failed;
    };
    if next_json(&mut ws).await.map(|v| v["type"] == "init") != Some(true) {
        return Outcome::Failed;
    }
    let config = json!({"type": "config", "prompt": s.prompt, "max_tokens": s.max_tokens,
        "temperature": 0.0, "options": {"stream": true}});
    if ws
        .send(Message::Text(config.to_string().into()))
        .await
        .is_err()
    {
        return Outcome::Failed;
    }
    let mut tokens = 0;
    while let Some(f) = next_json(&mut ws).await {
        match f["type"].as_str() {
            Some("token") => {
                tokens += 1;
                if tokens == 2 {
                    match role {
                        Role::Stay => {}
                        Role::Drop => return Outcome::Dropped,
                        Role::Stop => {
                            let stop = json!({"type": "control", "action": "stop"});
                            if ws
                                .send(Message::Text(stop.to_string().into()))
                                .await
                                .is_err()
                            {
                                return Outcome::Failed;
                            }
                        }
                    }
                }
            }
            Some("completion") => {
                let text = f["generated_text"].as_str().unwrap_or_default();
                let _ = ws.close(None).await;
                return match (role, f["finish_reason"].as_str()) {
                    (Role::Stop, _) => Outcome::Stopped,
                    _ if reference.as_deref().is_some_and(|r| r != text) => Outcome::Differed,
                    _ => Outcome::Ok,
                };
            }
            _ => {
                tracing::warn!(frame = %f, "chaos client: error frame");
                return Outcome::Failed;
            }
        }
    }
    Outcome::Failed
}

/// The resident set size of process `pid`, MB (Linux; `None` elsewhere).
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A `lowbit serve` child process, killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// `ws://host:port/ws`.
    pub ws_url: String,
}

impl ServerProcess {
    /// Starts `lowbit serve --port 0 <args>` and waits for its address line.
    ///
    /// Errors: `INVALID_CONFIG` when it cannot start or exits before listening.
    pub fn start(args: &[String]) -> Result<Self> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::invalid_config(format!("cannot find this program: {e}")))?;
        let mut child = Command::new(exe)
            .arg("serve")
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::invalid_config(format!("cannot start lowbit serve: {e}")))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| Error::invalid_config("lowbit serve has no stderr"))?;
        let mut lines = BufReader::new(stderr).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split_once("on http://").map(|(_, r)| r) {
                addr = rest.split_whitespace().next().map(str::to_owned);
                break;
            }
            eprintln!("server: {line}");
        }
        // Keep reading its log so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in lines.map_while(std::result::Result::ok) {
                eprintln!("server: {line}");
            }
        });
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::invalid_config(
                "lowbit serve exited before listening",
            ));
        };
        Ok(ServerProcess {
            child,
            ws_url: format!("ws://{addr}/ws"),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which role client `i` of `n` plays: the quitters spread evenly, alternating stop and drop.
fn role(i: usize, n: usize, share: f64) -> Role {
    let quitters = ((n as f64) * share.clamp(0.0, 1.0)).round() as usize;
    if quitters == 0 {
        return Role::Stay;
    }
    // Client i quits when the running count of quitters steps up at i.
    let before = i * quitters / n;
    let after = (i + 1) * quitters / n;
    match (after > before, before % 2) {
        (false, _) => Role::Stay,
        (true, 0) => Role::Stop,
        (true, _) => Role::Drop,
    }
}

/// Runs the rounds against `url`, reading the memory of `pid` when given; prints a table (or
/// JSON lines with `json`). Errors when any client that stayed failed.
pub async fn run(url: &str, pid: Option<u32>, s: &ChaosSettings, json: bool) -> Result<()> {
    let rss = || pid.and_then(rss_mb);
    // The single-client greedy text every staying client must get.
    let reference =
        match tokio::time::timeout(s.round_timeout, client_text(url.to_owned(), s.clone())).await {
            Ok(Some(t)) => t,
            _ => return Err(Error::invalid_config("the reference request failed")),
        };
    let before = rss();
    if !json {
        println!(
            "{:>5} {:>7} {:>5} {:>8} {:>7} {:>7} {:>6} {:>9} {:>7} {:>8}",
            "round",
            "clients",
            "ok",
            "differed",
            "stopped",
            "dropped",
            "failed",
            "q-failed",
            "wall s",
            "RSS MB"
        );
    }
    let mut total_failed = 0;
    for round in 1..=s.rounds {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..s.clients)
            .map(|i| {
                let r = role(i, s.clients, s.quit_share);
                let run = client(url.to_owned(), s.clone(), r, Some(reference.clone()));
                let limit = s.round_timeout;
                tokio::spawn(async move {
                    // No answer within the round's time limit counts as failed.
                    let out = tokio::time::timeout(limit, run).await;
                    (r, out.unwrap_or(Outcome::Failed))
                })
            })
            .collect();
        let results: Vec<(Role, Outcome)> = futures::future::join_all(tasks)
            .await
            .into_iter()
            .map(|j| j.unwrap_or((Role::Stay, Outcome::Failed)))
            .collect();
        let count = |o: Outcome, quit: bool| {
            results
                .iter()
                .filter(|(r, out)| (*r != Role::Stay) == quit && *out == o)
                .count()
        };
        let r = RoundResult {
            round,
            clients: s.clients,
            ok: count(Outcome::Ok, false),
            differed: count(Outcome::Differed, false),
            stopped: count(Outcome::Stopped, true),
            dropped: count(Outcome::Dropped, true),
            failed: count(Outcome::Failed, false),
            quitters_failed: count(Outcome::Failed, true),
            wall_s: t0.elapsed().as_secs_f64(),
            rss_mb: rss(),
        };
        total_failed += r.failed + r.differed;
        if json {
            println!("{}", json!(r));
        } else {
            println!(
                "{:>5} {:>7} {:>5} {:>8} {:>7} {:>7} {:>6} {:>9} {:>7.1} {:>8}",
                r.round,
                r.clients,
                r.ok,
                r.differed,
                r.stopped,
                r.dropped,
                r.failed,
                r.quitters_failed,
                r.wall_s,
                r.rss_mb.map_or("-".into(), |m| format!("{m:.0}"))
            );
        }
    }
    let after = rss();
    tokio::time::sleep(Duration::from_secs_f64(s.idle_s)).await;
    let idle = rss();
    let mb = |m: Option<f64>| m.map_or("-".into(), |m| format!("{m:.0} MB"));
    if json {
        println!(
            "{}",
            json!({"rss_before_mb": before, "rss_after_mb": after, "rss_after_idle_mb": idle,
                   "failed": total_failed})
        );
    } else {
        println!(
            "server RSS: before {} / after {} / after {:.0} s idle {}",
            mb(before),
            mb(after),
            s.idle_s,
            mb(idle)
        );
    }
    if total_failed > 0 {
        return Err(Error::invalid_config(format!(
            "{total_failed} requests of clients that stayed failed or differed"
        )));
    }
    Ok(())
}

/// The completion text of one undisturbed client.
async fn client_text(url: String, s: ChaosSettings) -> Option<String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.ok()?;
    next_json(&mut ws).await?;
    let config = json!({"type": "config", "prompt": s.prompt, "max_tokens": s.max_tokens,
        "temperature": 0.0, "options": {"stream": false}});
    ws.send(Message::Text(config.to_string().into()))
        .await
        .ok()?;
    let f = next_json(&mut ws).await?;
    let _ = ws.close(None).await;
    (f["type"] == "completion").then(|| f["generated_text"].as_str().map(str::to_owned))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_of_the_clients_quit_alternating_stop_and_drop() {
        let roles: Vec<Role> = (0..200).map(|i| role(i, 200, 0.5)).collect();
        let count = |r| roles.iter().filter(|&&x| x == r).count();
        assert_eq!(count(Role::Stay), 100);
        assert_eq!(count(Role::Stop), 50);
        assert_eq!(count(Role::Drop), 50);
        assert!((0..10).all(|i| role(i, 10, 0.0) == Role::Stay));
    }
}
