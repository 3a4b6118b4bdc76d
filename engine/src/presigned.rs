//! Presigned chunk transfer (ADR-0011), the client's HTTP half: a plain PUT of a chunk's bytes to,
//! or GET from, a URL the server signed for the object store.
//!
//! Nothing here is trusted more than the gRPC path: an upload is only a chunk once the server has
//! verified it (`ConfirmUploads`), and a download is returned unverified like `GetChunks`' answer,
//! for the fetcher to check against its id (`fetch::scheduler::verify_and_store`). Every request has
//! a deadline, and a download reads at most `MAX_CHUNK_BYTES`, whatever the store says it sends.

use std::time::Duration;

use bvfs_proto::MAX_CHUNK_BYTES;

/// How long connecting to the object store may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take in all (a chunk is at most 256 KiB: 30 s is ~70 kbit/s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a presigned transfer failed: the caller sends the chunks through the server instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The store answered 404: the object is not there (a chunk this tenant does not store).
    #[error("the object store has no such object (404)")]
    NotFound,
    /// Anything else: unreachable, timed out, refused, an answer too long.
    #[error("{0}")]
    Failed(String),
}

/// An HTTP client for presigned URLs. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct HttpTransfer {
    client: reqwest::Client,
}

impl HttpTransfer {
    pub fn new() -> Result<Self, String> {
        // reqwest's rustls needs a process-wide provider: ring, as tonic uses (no aws-lc). Already
        // installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {}", chain(&e)))?;
        Ok(Self { client })
    }

    /// PUTs `data` to `url`.
    pub async fn put(&self, url: &str, data: Vec<u8>) -> Result<(), HttpError> {
        let response = self
            .client
            .put(url)
            .body(data)
            .send()
            .await
            .map_err(|e| HttpError::Failed(format!("PUT: {}", chain(&e))))?;
        check_status(&response, "PUT")
    }

    /// GETs the object at `url`: at most `MAX_CHUNK_BYTES`, unverified.
    pub async fn get(&self, url: &str) -> Result<Vec<u8>, HttpError> {
        let mut response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| HttpError::Failed(format!("GET: {}", chain(&e))))?;
        check_status(&response, "GET")?;
        let too_long = || {
            HttpError::Failed(format!(
                "GET: the object is longer than a chunk ({MAX_CHUNK_BYTES} bytes)"
            ))
        };
        if response
            .content_length()
            .is_some_and(|len| len > MAX_CHUNK_BYTES as u64)
        {
            return Err(too_long());
        }
        let mut data = Vec::new();
        while let Some(piece) = response
            .chunk()
            .await
            .map_err(|e| HttpError::Failed(format!("GET: {}", chain(&e))))?
        {
            if data.len() + piece.len() > MAX_CHUNK_BYTES {
                return Err(too_long());
            }
            data.extend_from_slice(&piece);
        }
        Ok(data)
    }
}

fn check_status(response: &reqwest::Response, method: &str) -> Result<(), HttpError> {
    match response.status() {
        status if status.is_success() => Ok(()),
        reqwest::StatusCode::NOT_FOUND => Err(HttpError::NotFound),
        status => Err(HttpError::Failed(format!(
            "{method}: the object store answered {status}"
        ))),
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    crate::remote::error_chain(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A one-shot HTTP server on loopback answering `response` to the first request.
    fn answer_once(response: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(&response);
            }
        });
        format!("http://{addr}/chunk")
    }

    #[tokio::test]
    async fn a_download_longer_than_a_chunk_is_refused() {
        let http = HttpTransfer::new().unwrap();
        // Declared too long.
        let url = answer_once(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                MAX_CHUNK_BYTES + 1
            )
            .into_bytes(),
        );
        let err = http.get(&url).await.unwrap_err();
        assert!(err.to_string().contains("longer than a chunk"), "{err}");
        // Not declared (chunked), and longer.
        let mut body = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..5 {
            body.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
            body.extend_from_slice(&vec![b'x'; 64 * 1024]);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let err = http.get(&answer_once(body)).await.unwrap_err();
        assert!(err.to_string().contains("longer than a chunk"), "{err}");
    }

    #[tokio::test]
    async fn statuses_map_to_not_found_or_failure() {
        let http = HttpTransfer::new().unwrap();
        let url = answer_once(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec());
        assert_eq!(http.get(&url).await.unwrap_err(), HttpError::NotFound);
        let url = answer_once(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n".to_vec());
        let err = http.put(&url, vec![1, 2, 3]).await.unwrap_err();
        assert!(err.to_string().contains("403"), "{err}");
        let url = answer_once(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec());
        assert_eq!(http.get(&url).await.unwrap(), b"hello");
    }

    #[tokio::test]
    async fn an_unreachable_store_fails_within_the_deadline() {
        // A port nobody listens on: refused at once.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let http = HttpTransfer::new().unwrap();
        let err = http
            .put(&format!("http://127.0.0.1:{port}/x"), vec![0])
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Failed(_)), "{err}");
    }
}
