//! The write load of `shoal bench raft`, generated the way wrk does: one thread whose
//! event loop keeps `concurrency` HTTP/1.1 keep-alive connections busy, each with one
//! request in flight. The load generator shares the machine's cores with the servers it
//! measures, so it is kept cheap: a request is a prepared buffer written in one call, and
//! an answer is read until its status line, headers and body (by `Content-Length`, or
//! chunked) are in.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one request may take before its connection is dropped and the request counted
/// as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to `POST path` with a JSON body, as the bytes sent on the wire.
pub fn post_json(addr: SocketAddr, path: &str, bearer: Option<&str>, body: &str) -> Vec<u8> {
    let auth = bearer.map(|k| format!("authorization: Bearer {k}\r\n")).unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Makes `total` requests from `concurrency` connections to `addr` (request `n` from
/// `request(n)`); returns (acknowledged requests/s, p50 ms, p99 ms) over the answers that
/// came back 200.
pub fn drive<F>(addr: SocketAddr, total: usize, concurrency: usize, request: F) -> anyhow::Result<(f64, f64, f64)>
where
    F: Fn(usize) -> Vec<u8> + Send + Sync + 'static,
{
    let request = Arc::new(request);
    std::thread::Builder::new()
        .name("bench-load".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("load runtime")?;
            rt.block_on(run(addr, total, concurrency, request))
        })
        .context("load thread")?
        .join()
        .map_err(|_| anyhow!("the load generator panicked"))?
}

async fn run<F>(addr: SocketAddr, total: usize, concurrency: usize, request: Arc<F>) -> anyhow::Result<(f64, f64, f64)>
where
    F: Fn(usize) -> Vec<u8> + Send + Sync + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (next, request) = (next.clone(), request.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut conn: Option<Connection> = None;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let bytes = request(n);
                    let t = Instant::now();
                    if conn.is_none() {
                        conn = Connection::open(addr).await.ok();
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    match tokio::time::timeout(REQUEST_TIMEOUT, c.exchange(&bytes)).await {
                        Ok(Ok(200)) => latencies.push(t.elapsed()),
                        Ok(Ok(_)) => {}
                        _ => conn = None,
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.map_err(|e| anyhow!("load task: {e}"))?);
    }
    let elapsed = start.elapsed();
    all.sort();
    Ok((all.len() as f64 / elapsed.as_secs_f64(), pct(&all, 0.5), pct(&all, 0.99)))
}

/// The value at quantile `q` of sorted durations, in milliseconds.
pub fn pct(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
}

/// One keep-alive connection and what it has read past the last answer.
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection { stream, buf: Vec::with_capacity(4096) })
    }

    /// Sends one request and reads its whole answer; returns the status code.
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<u16> {
        self.stream.write_all(request).await?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = Head::parse(&self.buf[..head_end])?;
        let mut at = head_end;
        if head.chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf[at..], b"\r\n") {
                        break at + i;
                    }
                    self.fill().await?;
                };
                let size_text = std::str::from_utf8(&self.buf[at..line_end]).map_err(|_| invalid("chunk size"))?;
                let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| invalid("chunk size"))?;
                let chunk_end = line_end + 2 + size + 2;
                while self.buf.len() < chunk_end {
                    self.fill().await?;
                }
                at = chunk_end;
                if size == 0 {
                    break;
                }
            }
        } else {
            let end = head_end + head.length;
            while self.buf.len() < end {
                self.fill().await?;
            }
            at = end;
        }
        self.buf.drain(..at);
        Ok(head.status)
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// What the load generator needs of an answer's head.
#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    length: usize,
    chunked: bool,
}

impl Head {
    fn parse(head: &[u8]) -> std::io::Result<Head> {
        let text = std::str::from_utf8(head).map_err(|_| invalid("answer head"))?;
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("status line"))?;
        let (mut length, mut chunked) = (0, false);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| invalid("content-length"))?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
        Ok(Head { status, length, chunked })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("malformed {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[test]
    fn heads_give_status_length_and_chunking() {
        let h = Head::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\ndate: x\r\n\r\n").unwrap();
        assert_eq!(h, Head { status: 200, length: 42, chunked: false });
        let h = Head::parse(b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!(h, Head { status: 503, length: 0, chunked: true });
        assert!(Head::parse(b"garbage\r\n\r\n").is_err());
    }

    /// A server that answers each request on a connection in turn with the given answers
    /// (split across writes), then closes.
    async fn serve(answers: Vec<Vec<&'static [u8]>>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            for parts in answers {
                let mut got = Vec::new();
                while find(&got, b"}").is_none() {
                    let mut b = [0u8; 1024];
                    let n = s.read(&mut b).await.unwrap();
                    got.extend_from_slice(&b[..n]);
                }
                for p in parts {
                    s.write_all(p).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn answers_are_read_whole_whether_sized_or_chunked_and_split() {
        let addr = serve(vec![
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel", b"lo"],
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", b"2\r\nde\r\n0\r\n\r\n"],
            vec![b"HTTP/1.1 429 Too Many\r\ncontent-length: 2\r\n\r\n{}"],
        ])
        .await;
        let mut c = Connection::open(addr).await.unwrap();
        let req = post_json(addr, "/x", Some("k"), "{}");
        assert_eq!(c.exchange(&req).await.unwrap(), 200);
        assert_eq!(c.exchange(&req).await.unwrap(), 200);
        assert_eq!(c.exchange(&req).await.unwrap(), 429);
        assert!(c.buf.is_empty(), "nothing left over between answers");
        assert!(c.exchange(&req).await.is_err(), "a closed connection is an error");
    }
}
