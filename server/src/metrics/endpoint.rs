//! `GET /metrics` on its own listener: a minimal HTTP/1.1 responder, one request per connection.
//!
//! A scrape is a small GET every few seconds, so this reads at most [`MAX_REQUEST_BYTES`] of
//! request head within [`READ_TIMEOUT`], answers, and closes. Anything else gets a short error
//! (`404`, `405`, `400`, `431`) and never a panic; at most [`MAX_CONNECTIONS`] scrapes are served
//! at once (more wait in the backlog), so the listener cannot take the descriptors the clients'
//! listener needs. It carries no secrets and no client data (only counts), but like any metrics
//! port it belongs on a loopback or private address.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Metrics;

/// The most bytes of a request head read (a scrape's head is a few hundred bytes).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing the answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// The content type of the OpenMetrics text format, which Prometheus negotiates and parses.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, or a connection reset before it was accepted: try again soon.
                tracing::debug!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = answer(stream, &metrics).await {
                tracing::debug!(error = %e, "metrics listener: a scrape failed");
            }
        });
    }
}

/// Reads one request head and writes the answer.
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await;
    let response = match head {
        Err(_) => return Ok(()),
        Ok(head) => respond(&head?, metrics),
    };
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await
    .unwrap_or(Ok(()))
}

/// What was read of a request head.
enum Head {
    /// The whole head (up to the blank line).
    Complete(Vec<u8>),
    /// More than [`MAX_REQUEST_BYTES`] without a blank line.
    TooLarge,
    /// The client closed before the blank line.
    Truncated(Vec<u8>),
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(Head::Truncated(head));
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Head::Complete(head));
        }
        if head.len() > MAX_REQUEST_BYTES {
            return Ok(Head::TooLarge);
        }
    }
}

/// The whole HTTP answer to a request head.
fn respond(head: &Head, metrics: &Metrics) -> Vec<u8> {
    let bytes = match head {
        Head::TooLarge => return plain(431, "Request Header Fields Too Large", ""),
        Head::Complete(bytes) | Head::Truncated(bytes) => bytes,
    };
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return plain(400, "Bad Request", "");
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return plain(400, "Bad Request", "");
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return plain(404, "Not Found", "only /metrics is served here\n");
    }
    match method {
        "GET" => response(200, "OK", CONTENT_TYPE, metrics.encode().as_bytes(), false),
        "HEAD" => response(200, "OK", CONTENT_TYPE, metrics.encode().as_bytes(), true),
        _ => plain(405, "Method Not Allowed", "use GET\n"),
    }
}

fn plain(code: u16, reason: &str, body: &str) -> Vec<u8> {
    response(
        code,
        reason,
        "text/plain; charset=utf-8",
        body.as_bytes(),
        false,
    )
}

fn response(code: u16, reason: &str, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_line(answer: &[u8]) -> String {
        let text = String::from_utf8_lossy(answer);
        text.lines().next().unwrap_or_default().to_string()
    }

    #[test]
    fn requests_are_answered_and_bad_ones_refused() {
        let metrics = Metrics::new();
        let get = |head: &[u8]| respond(&Head::Complete(head.to_vec()), &metrics);
        let ok = get(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!(status_line(&ok), "HTTP/1.1 200 OK");
        assert!(String::from_utf8_lossy(&ok).contains("bvfs_commits_total"));
        assert_eq!(
            status_line(&get(b"GET /metrics?x=1 HTTP/1.0\n\n")),
            "HTTP/1.1 200 OK"
        );
        let head = get(b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(!String::from_utf8_lossy(&head).contains("bvfs_commits_total"));
        assert_eq!(
            status_line(&get(b"GET / HTTP/1.1\r\n\r\n")),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            status_line(&get(b"POST /metrics HTTP/1.1\r\n\r\n")),
            "HTTP/1.1 405 Method Not Allowed"
        );
        for bad in [
            &b"\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
        ] {
            assert_eq!(
                status_line(&get(bad)),
                "HTTP/1.1 400 Bad Request",
                "{bad:?}"
            );
        }
        assert_eq!(
            status_line(&get(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n")),
            "HTTP/1.1 405 Method Not Allowed"
        );
        assert_eq!(
            status_line(&respond(&Head::TooLarge, &metrics)),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
    }

    /// Over a socket: a scrape, and a client that sends an endless head is cut off.
    #[tokio::test]
    async fn the_listener_answers_and_bounds_what_it_reads() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, Arc::new(Metrics::new())));

        let mut scrape = TcpStream::connect(addr).await.unwrap();
        scrape
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        scrape.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("# EOF\n"), "{answer}");

        // One byte past the limit, and no blank line: the server reads it all (so it closes
        // cleanly, without unread bytes turning its close into a reset) and refuses it.
        let mut flood = TcpStream::connect(addr).await.unwrap();
        let junk = vec![b'a'; MAX_REQUEST_BYTES + 1];
        flood.write_all(&junk).await.unwrap();
        let mut answer = Vec::new();
        flood.read_to_end(&mut answer).await.unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        task.abort();
    }
}
