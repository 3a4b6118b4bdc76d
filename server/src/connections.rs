//! A cap on the TCP connections one server process holds at once (issue 14: clients opening many
//! connections cannot exhaust the server).
//!
//! Every connection costs a file descriptor and an HTTP/2 session. Without a cap, a client opening
//! thousands of connections ran the process out of descriptors, and then the server could not open
//! a namespace database or a chunk file for anyone. Requests are already bounded per tenant once
//! authenticated (`service.rs`); connections come before any authentication, so the cap is global.
//!
//! The accept loop takes a permit before it accepts, and each connection holds its permit until it
//! closes. At the cap the server simply stops accepting: new connections wait in the kernel's
//! backlog (their handshake completes when an older connection ends) instead of being refused, so a
//! burst of legitimate clients slows down rather than fails. The cap never exceeds the descriptors
//! the process may open, less a reserve for databases, chunk files and the outbound connections of
//! the scale-out backends.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The default cap on simultaneous connections of one server process.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// File descriptors kept out of the cap: databases, chunk files, logs, backend connections.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// Raises the soft limit on open files to the hard limit (as most servers do at start) and returns
/// the resulting soft limit. On failure the current soft limit stands.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}

/// The cap actually applied: `requested`, but never more than the descriptors left after the
/// reserve (at least one connection).
pub fn effective_cap(requested: usize, descriptor_limit: u64) -> usize {
    let available = descriptor_limit.saturating_sub(RESERVED_DESCRIPTORS).max(1);
    requested
        .max(1)
        .min(usize::try_from(available).unwrap_or(usize::MAX))
}

/// An accepted connection holding its place under the cap until it is dropped.
pub struct CappedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    _open: OpenConnection,
}

/// One connection counted in the `connections_open` gauge until dropped.
struct OpenConnection(Gauge);

impl OpenConnection {
    fn new(open: &Gauge) -> Self {
        open.inc();
        Self(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl CappedStream {
    /// The socket itself (to tune it).
    pub fn tcp(&self) -> &TcpStream {
        &self.stream
    }
}

/// Accepts connections from `listener`, at most `cap` open at once, counting those open in `open`.
pub fn accept_capped(
    listener: TcpListener,
    cap: usize,
    open: Gauge,
) -> impl Stream<Item = io::Result<CappedStream>> + Send + 'static {
    let permits = Arc::new(Semaphore::new(cap.max(1)));
    futures::stream::unfold(
        (listener, permits, open),
        |(listener, permits, open)| async move {
            // The semaphore is never closed, so acquiring only waits.
            let permit = permits.clone().acquire_owned().await.ok()?;
            let accepted = listener.accept().await.map(|(stream, _)| CappedStream {
                stream,
                _permit: permit,
                _open: OpenConnection::new(&open),
            });
            Some((accepted, (listener, permits, open)))
        },
    )
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for CappedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_the_rest_of_the_server() {
        assert_eq!(effective_cap(4096, 1_048_576), 4096);
        assert_eq!(effective_cap(4096, 1024), 768);
        assert_eq!(effective_cap(4096, 100), 1);
        assert_eq!(effective_cap(0, 1_048_576), 1);
    }

    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_limit() {
        let soft = raise_descriptor_limit();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(soft, limit.rlim_cur);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
    }

    /// At the cap, the next connection is not accepted until an open one closes.
    #[tokio::test]
    async fn a_connection_past_the_cap_waits_for_one_to_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Gauge::default();
        let incoming = accept_capped(listener, 2, open.clone());
        tokio::pin!(incoming);
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        let _second = incoming.next().await.unwrap().unwrap();
        let third = tokio::time::timeout(Duration::from_millis(300), incoming.next()).await;
        assert!(
            third.is_err(),
            "a third connection was accepted past a cap of 2"
        );
        assert_eq!(open.get(), 2, "two connections counted open");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .expect("the third connection is accepted once one closes")
            .unwrap()
            .unwrap();
        assert!(third.tcp().peer_addr().is_ok());
    }
}
