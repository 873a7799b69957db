//! The accept loop: HTTP/1.1 connections (with WebSocket upgrades) served by hyper under the
//! network limits of [`ServerConfig`]: a connection cap answered with `503` before the process
//! runs out of file descriptors, a header-read timeout (slow-header clients, idle keep-alive
//! connections), and graceful shutdown.

use super::ServerConfig;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Connections refused with a `503` at once (each holds a descriptor for a moment); more are
/// closed without an answer.
const MAX_REFUSING: usize = 64;
/// How long a refused connection is given to take its `503`.
const REFUSE_WINDOW: Duration = Duration::from_secs(1);
/// Descriptors kept free of connections: the model file, the runtime, refusals, logs.
const RESERVED_DESCRIPTORS: usize = MAX_REFUSING + 64;

/// A connection's stream, holding its place under the connection cap for as long as it is
/// open, including after a WebSocket upgrade (hyper hands the same stream to the session).
struct CountedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The soft limit on open file descriptors (Linux; `None` where unknown).
fn descriptor_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The connection cap: the configured one, lowered to fit the descriptor limit so that the
/// cap, not the operating system, refuses the connections over it.
pub(crate) fn connection_cap(configured: usize) -> usize {
    match descriptor_limit() {
        Some(fds) if configured + RESERVED_DESCRIPTORS > fds => {
            let cap = fds.saturating_sub(RESERVED_DESCRIPTORS).max(1);
            tracing::warn!(
                configured,
                cap,
                descriptors = fds,
                "server.max_connections is over what the descriptor limit (ulimit -n) leaves; \
                 capping it"
            );
            cap
        }
        _ => configured.max(1),
    }
}

/// Answers a connection over the cap with `503` (and closes it), without waiting long.
async fn refuse(mut stream: TcpStream, cap: usize) {
    let body = super::ApiError::new(
        "too_many_connections",
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        format!("the server holds its maximum of {cap} connections; retry later"),
    )
    .body()
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes: closing with unread input would reset
        // the connection and could discard the answer before the client reads it.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSE_WINDOW, answer).await;
}

/// Serves `app` on `listener` under `config`'s limits until `shutdown` completes; then stops
/// accepting, lets every HTTP connection finish its request in flight, and returns.
pub(crate) async fn serve_app(
    listener: TcpListener,
    app: axum::Router,
    config: &ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let cap = connection_cap(config.max_connections);
    let connections = Arc::new(Semaphore::new(cap));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    // Every connection task holds a receiver: draining waits until all of them are gone.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before it was accepted: keep
                    // serving the connections there are, and try again shortly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, cap, "connection refused: at the connection cap");
            if let Ok(slot) = refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream, cap).await;
                    drop(slot);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(CountedStream {
            stream,
            _permit: permit,
        });
        let service = TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(io, service).with_upgrades();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                    return;
                }
                _ = stop.changed() => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended while draining");
            }
        });
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    stop_tx.closed().await;
    Ok(())
}
