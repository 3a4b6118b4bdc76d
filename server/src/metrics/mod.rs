//! Prometheus metrics of one server process (`bvfs serve --metrics ADDR`).
//!
//! The counters and gauges live in [`Metrics`], shared by the service, the accept loop and the
//! relay; they are kept whether or not they are served (a few atomic additions per request).
//! [`grpc`] counts requests in flight and errors by gRPC code around the whole `Sync` service;
//! [`endpoint`] answers `GET /metrics` on a separate listener in the text format Prometheus
//! scrapes (OpenMetrics 1.0), so the metrics never share a port, TLS or limits with clients.
//!
//! Every series, with the `bvfs_` prefix:
//!
//! | series | kind | what |
//! | --- | --- | --- |
//! | `commits_total{outcome}` | counter | write requests (`Commit`, `RestoreVersion`, `Undelete`): `committed`, `refused` (the client's fault: stale base, bad op…), `failed` (the server's: storage down…) |
//! | `ops_committed_total` | counter | ops in committed writes (a restore or undelete is one op) |
//! | `chunk_bytes_received_total` | counter | chunk bytes accepted by `PutChunks` (stored or already present) |
//! | `chunk_bytes_sent_total` | counter | chunk bytes sent by `GetChunks` |
//! | `chunk_bytes_confirmed_total` | counter | chunk bytes of presigned uploads verified by `ConfirmUploads` (stored or already present; they never crossed gRPC) |
//! | `presigned_urls_total{method}` | counter | presigned URLs handed out: `PUT` (uploads), `GET` (downloads) |
//! | `chunk_uploads_refused_total{reason}` | counter | chunks refused on upload: `malformed` (size, id), `hash-mismatch`, `store` (the chunk store failed) |
//! | `grpc_errors_total{code}` | counter | `Sync` requests answered with an error, by gRPC code name |
//! | `requests_in_flight` | gauge | `Sync` requests being handled (a stream until its last message) |
//! | `connections_open` | gauge | client connections held open (see [`crate::connections`]) |
//! | `relay_outbox_pending` | gauge | heads in the outbox not yet confirmed published on NATS, at the relay's last sweep (scale-out with `--notify` only) |

pub mod endpoint;
pub mod grpc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One label with a fixed set of values (no label ever carries client input, so the number of
/// series stays bounded).
type Label = [(&'static str, &'static str); 1];

/// How a write request ended, for `commits_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// Refused for the client's reason (stale base, malformed op, missing chunk, too many requests).
    Refused,
    /// Failed for the server's reason (storage unreachable, internal error).
    Failed,
}

impl CommitOutcome {
    /// The outcome of a write that ended with `status`.
    pub fn of(status: &tonic::Status) -> Self {
        use tonic::Code;
        match status.code() {
            Code::Internal
            | Code::Unavailable
            | Code::DataLoss
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled => Self::Failed,
            _ => Self::Refused,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// Why a chunk upload was refused, for `chunk_uploads_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadRefusal {
    Malformed,
    HashMismatch,
    Store,
}

impl UploadRefusal {
    fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::HashMismatch => "hash-mismatch",
            Self::Store => "store",
        }
    }
}

/// The metrics of one server process.
pub struct Metrics {
    registry: Registry,
    commits: Family<Label, Counter>,
    pub ops_committed: Counter,
    pub chunk_bytes_received: Counter,
    pub chunk_bytes_sent: Counter,
    pub chunk_bytes_confirmed: Counter,
    presigned_urls: Family<Label, Counter>,
    uploads_refused: Family<Label, Counter>,
    errors: Family<Label, Counter>,
    pub requests_in_flight: Gauge,
    pub connections_open: Gauge,
    pub relay_outbox_pending: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every series registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bvfs");
        let commits = Family::<Label, Counter>::default();
        let uploads_refused = Family::<Label, Counter>::default();
        let errors = Family::<Label, Counter>::default();
        let (ops_committed, chunk_bytes_received, chunk_bytes_sent) =
            (Counter::default(), Counter::default(), Counter::default());
        let (requests_in_flight, connections_open, relay_outbox_pending) =
            (Gauge::default(), Gauge::default(), Gauge::default());
        registry.register(
            "commits",
            "Write requests (Commit, RestoreVersion, Undelete) by outcome",
            commits.clone(),
        );
        registry.register(
            "ops_committed",
            "Ops in committed write requests",
            ops_committed.clone(),
        );
        registry.register(
            "chunk_bytes_received",
            "Chunk bytes accepted by PutChunks",
            chunk_bytes_received.clone(),
        );
        registry.register(
            "chunk_bytes_sent",
            "Chunk bytes sent by GetChunks",
            chunk_bytes_sent.clone(),
        );
        let chunk_bytes_confirmed = Counter::default();
        registry.register(
            "chunk_bytes_confirmed",
            "Chunk bytes of presigned uploads verified by ConfirmUploads",
            chunk_bytes_confirmed.clone(),
        );
        let presigned_urls = Family::<Label, Counter>::default();
        registry.register(
            "presigned_urls",
            "Presigned URLs handed out, by HTTP method",
            presigned_urls.clone(),
        );
        registry.register(
            "chunk_uploads_refused",
            "Chunks refused on upload, by reason",
            uploads_refused.clone(),
        );
        registry.register(
            "grpc_errors",
            "Sync requests answered with an error, by gRPC code",
            errors.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Sync requests being handled",
            requests_in_flight.clone(),
        );
        registry.register(
            "connections_open",
            "Client connections open",
            connections_open.clone(),
        );
        registry.register(
            "relay_outbox_pending",
            "Heads in the outbox not yet published on NATS, at the relay's last sweep",
            relay_outbox_pending.clone(),
        );
        // Both outcomes of a commit are shown from the start (a rate needs the zero).
        for outcome in [
            CommitOutcome::Committed,
            CommitOutcome::Refused,
            CommitOutcome::Failed,
        ] {
            let _ = commits.get_or_create(&[("outcome", outcome.label())]);
        }
        for method in ["PUT", "GET"] {
            let _ = presigned_urls.get_or_create(&[("method", method)]);
        }
        Self {
            registry,
            commits,
            ops_committed,
            chunk_bytes_received,
            chunk_bytes_sent,
            chunk_bytes_confirmed,
            presigned_urls,
            uploads_refused,
            errors,
            requests_in_flight,
            connections_open,
            relay_outbox_pending,
        }
    }

    /// Counts a write request that ended with `result`, and its ops if it committed.
    pub fn record_commit<T>(&self, result: &Result<T, tonic::Status>, ops: usize) {
        let outcome = match result {
            Ok(_) => {
                self.ops_committed
                    .inc_by(u64::try_from(ops).unwrap_or(u64::MAX));
                CommitOutcome::Committed
            }
            Err(status) => CommitOutcome::of(status),
        };
        self.commits
            .get_or_create(&[("outcome", outcome.label())])
            .inc();
    }

    /// Counts a chunk refused on upload.
    /// Counts presigned URLs handed out for `method` (`PUT` or `GET`).
    pub fn record_presigned(&self, method: &'static str, urls: usize) {
        self.presigned_urls
            .get_or_create(&[("method", method)])
            .inc_by(urls as u64);
    }

    pub fn record_upload_refused(&self, why: UploadRefusal) {
        self.uploads_refused
            .get_or_create(&[("reason", why.label())])
            .inc();
    }

    /// Counts a `Sync` request answered with a non-OK gRPC status.
    pub fn record_error(&self, code: tonic::Code) {
        if code != tonic::Code::Ok {
            self.errors
                .get_or_create(&[("code", code_name(code))])
                .inc();
        }
    }

    /// The number of committed writes so far (for tests and logs).
    pub fn commits(&self, outcome: CommitOutcome) -> u64 {
        self.commits
            .get_or_create(&[("outcome", outcome.label())])
            .get()
    }

    /// Everything, in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The gRPC name of a code (as in the gRPC spec: `NOT_FOUND` …), a fixed label value.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_every_series_and_counts() {
        let metrics = Metrics::new();
        metrics.record_commit(&Ok::<(), tonic::Status>(()), 3);
        metrics.record_commit::<()>(&Err(tonic::Status::failed_precondition("stale")), 1);
        metrics.record_commit::<()>(&Err(tonic::Status::unavailable("down")), 1);
        metrics.record_upload_refused(UploadRefusal::HashMismatch);
        metrics.record_error(tonic::Code::NotFound);
        metrics.record_error(tonic::Code::Ok);
        metrics.chunk_bytes_received.inc_by(100);
        metrics.connections_open.inc();
        let text = metrics.encode();
        for line in [
            "bvfs_commits_total{outcome=\"committed\"} 1",
            "bvfs_commits_total{outcome=\"refused\"} 1",
            "bvfs_commits_total{outcome=\"failed\"} 1",
            "bvfs_ops_committed_total 3",
            "bvfs_chunk_bytes_received_total 100",
            "bvfs_chunk_bytes_sent_total 0",
            "bvfs_chunk_uploads_refused_total{reason=\"hash-mismatch\"} 1",
            "bvfs_grpc_errors_total{code=\"NOT_FOUND\"} 1",
            "bvfs_requests_in_flight 0",
            "bvfs_connections_open 1",
            "bvfs_relay_outbox_pending 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        assert!(!text.contains("code=\"OK\""));
        assert!(text.ends_with("# EOF\n"));
    }
}
