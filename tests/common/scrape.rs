//! Scraping a server's Prometheus metrics (`bvfs serve --metrics ADDR`) over plain HTTP/1.1.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;

/// Fetches `path` from `addr` over plain HTTP/1.1; returns the status line and the body.
pub fn http_get(addr: &str, request: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// Every sample of a scrape: `name{labels}` → value.
pub fn scrape(addr: &str) -> HashMap<String, f64> {
    let (status, body) = http_get(addr, "GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

pub fn sample(samples: &HashMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("{name} is not in the scrape: {samples:?}"))
}
