//! The prober's HTTP/1.1 client: one GET at a time on a pod's kept-alive connection, read by the
//! task that sent it. No connection task, no request channel, no buffers kept between probes:
//! an idle connection is its socket alone. A general client (hyper's) keeps about 30 KiB per
//! connection (write buffer, read buffer, request channel), which is most of the prober's memory
//! at a thousand pods; probes need none of its features (pipelining, request bodies, upgrades).
//!
//! Responses are read as RFC 9112 frames them: `Content-Length`, chunked, or until close; heads
//! up to [`MAX_HEAD`] bytes; informational (1xx) responses skipped. No timeouts here: the caller
//! bounds each exchange and drops the connection when one is cut short.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head read (status line and headers).
const MAX_HEAD: usize = 64 << 10;
/// Largest chunk-size or trailer line.
const MAX_LINE: usize = 4 << 10;
/// Headers parsed per response head.
const MAX_HEADERS: usize = 64;
/// Bytes asked of the socket by an exchange's first read: a probe's whole answer, most often.
/// Each read that fills what it asked doubles the next, up to [`MAX_READ_SIZE`], so a scrape's
/// large body takes few reads while a burst of probes in flight holds small buffers.
const READ_SIZE: usize = 1 << 10;
/// The most bytes asked of the socket per read.
const MAX_READ_SIZE: usize = 16 << 10;
/// Bytes asked per read on a readiness watch, whose lines are a few bytes each: the buffer is
/// the bulk of what a watch costs in memory, and it lives as long as the watch.
const WATCH_READ_SIZE: usize = 256;

/// Why an exchange failed; the connection is not reused after any of them.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// Connecting, writing or reading failed.
    Io,
    /// The peer closed the connection before a complete response.
    Closed,
    /// The response is not HTTP/1.x as framed by RFC 9112 (or a head or line over its cap).
    Malformed,
    /// The body callback refused the body.
    Refused,
}

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// A response head.
#[derive(Debug)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// The readiness watch header's heartbeat, in milliseconds, when the response carries the
    /// header (a pod that watches; `Some(0)`: it sends changes only).
    pub watch: Option<u64>,
    framing: Framing,
    close: bool,
}

/// One kept-alive connection to a pod.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    // Bytes read but not yet consumed; empty (and unallocated) between exchanges.
    buf: Vec<u8>,
    // Whether the connection may carry another request.
    reusable: bool,
    // Bytes asked of the socket by an exchange's first read, and the most asked by one read.
    read_size: usize,
    max_read: usize,
    // Bytes asked by the next read of this exchange.
    next_read: usize,
}

impl Conn {
    /// Opens a connection for a readiness watch: small reads, a small buffer.
    pub async fn connect_for_watch(addr: SocketAddr) -> Result<Conn, Error> {
        let mut c = Self::connect(addr).await?;
        c.read_size = WATCH_READ_SIZE;
        c.max_read = WATCH_READ_SIZE;
        Ok(c)
    }

    /// Opens a connection.
    pub async fn connect(addr: SocketAddr) -> Result<Conn, Error> {
        let stream = TcpStream::connect(addr).await.map_err(|_| Error::Io)?;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: Vec::new(),
            reusable: true,
            read_size: READ_SIZE,
            max_read: MAX_READ_SIZE,
            next_read: READ_SIZE,
        })
    }

    /// Whether another request may be sent: the last exchange completed, the server did not
    /// ask to close, and the peer has not closed the idle connection since (seen without
    /// waiting, from the socket's readiness).
    pub fn is_reusable(&self) -> bool {
        if !self.reusable || !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Whether the last exchange completed and the server did not ask to close.
    pub fn completed(&self) -> bool {
        self.reusable && self.buf.is_empty()
    }

    /// Sends `request` (a complete request head) and reads the response head.
    pub async fn send(&mut self, request: &[u8]) -> Result<Head, Error> {
        self.reusable = false;
        self.next_read = self.read_size;
        self.stream
            .write_all(request)
            .await
            .map_err(|_| Error::Io)?;
        loop {
            let head = self.head().await?;
            if (100..200).contains(&head.status) && head.status != 101 {
                continue;
            }
            return Ok(head);
        }
    }

    /// Reads the body of the response `head` to its end, handing each piece to `f`; the
    /// connection is reusable afterwards unless the response ends it.
    pub async fn body(
        &mut self,
        head: &Head,
        mut f: impl FnMut(&[u8]) -> Result<(), ()>,
    ) -> Result<(), Error> {
        match head.framing {
            Framing::Length(n) => self.exact(n, &mut f).await?,
            Framing::Chunked => self.chunked(&mut f).await?,
            Framing::UntilClose => {
                loop {
                    if !self.buf.is_empty() {
                        f(&self.buf).map_err(|()| Error::Refused)?;
                        self.buf.clear();
                    }
                    if self.fill().await? == 0 {
                        break;
                    }
                }
                return Ok(());
            }
        }
        // No pipelining: anything beyond the response is a protocol error.
        self.reusable = !head.close && self.buf.is_empty();
        self.buf = Vec::new();
        Ok(())
    }

    /// Reads more bytes into the buffer; 0 at end of stream.
    async fn fill(&mut self) -> Result<usize, Error> {
        self.buf.reserve(self.next_read);
        let asked = self.buf.capacity() - self.buf.len();
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|_| Error::Io)?;
        if n == asked {
            self.next_read = (self.next_read * 2).min(self.max_read);
        }
        Ok(n)
    }

    async fn head(&mut self) -> Result<Head, Error> {
        loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let head = head_of(&resp)?;
                        self.buf.drain(..len);
                        return Ok(head);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(Error::Malformed),
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(Error::Malformed);
                }
            }
            if self.fill().await? == 0 {
                return Err(Error::Closed);
            }
        }
    }

    async fn exact(
        &mut self,
        mut remaining: u64,
        f: &mut impl FnMut(&[u8]) -> Result<(), ()>,
    ) -> Result<(), Error> {
        while remaining > 0 {
            if self.buf.is_empty() && self.fill().await? == 0 {
                return Err(Error::Closed);
            }
            let take = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            f(&self.buf[..take]).map_err(|()| Error::Refused)?;
            self.buf.drain(..take);
            remaining -= take as u64;
        }
        Ok(())
    }

    /// One line without its CRLF, parsed by `parse` and consumed.
    async fn line<T>(&mut self, parse: impl Fn(&[u8]) -> Option<T>) -> Result<T, Error> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let value = parse(&self.buf[..end]).ok_or(Error::Malformed)?;
                self.buf.drain(..end + 2);
                return Ok(value);
            }
            if self.buf.len() > MAX_LINE {
                return Err(Error::Malformed);
            }
            if self.fill().await? == 0 {
                return Err(Error::Closed);
            }
        }
    }

    async fn chunked(&mut self, f: &mut impl FnMut(&[u8]) -> Result<(), ()>) -> Result<(), Error> {
        loop {
            let size = self.line(chunk_size).await?;
            if size == 0 {
                // Trailers, then the empty line.
                while !self.line(|l| Some(l.is_empty())).await? {}
                return Ok(());
            }
            self.exact(size, f).await?;
            self.line(|l| l.is_empty().then_some(())).await?;
        }
    }
}

/// The size of a chunk-size line (`1a;ext=v`).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let hex = line.split(|b| *b == b';').next()?;
    let hex = std::str::from_utf8(hex).ok()?.trim();
    if hex.is_empty() || hex.len() > 15 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn head_of(resp: &httparse::Response<'_, '_>) -> Result<Head, Error> {
    let status = resp.code.ok_or(Error::Malformed)?;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = resp.version == Some(0);
    let mut watch = None;
    for h in resp.headers.iter() {
        if h.name
            .eq_ignore_ascii_case(flotilla_crds::traffic::WATCH_HEADER)
        {
            let beat = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().strip_prefix("heartbeat="))
                .and_then(|ms| ms.trim().parse().ok());
            watch = Some(beat.unwrap_or(0));
            continue;
        }
        let value = std::str::from_utf8(h.value).map_err(|_| Error::Malformed)?;
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.trim().parse().map_err(|_| Error::Malformed)?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Malformed);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only chunked is sent to a client that asked for nothing else, and it comes last.
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
            if !chunked {
                return Err(Error::Malformed);
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && resp.version == Some(0) {
                    close = false;
                }
            }
        }
    }
    // 1xx, 204 and 304 responses have no body whatever their headers say.
    let no_body = status < 200 || status == 204 || status == 304;
    let framing = match (chunked, length) {
        _ if no_body => Framing::Length(0),
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => {
            close = true;
            Framing::UntilClose
        }
    };
    Ok(Head {
        status,
        watch,
        framing,
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers each request on one connection with the next canned response,
    /// then closes; returns its address.
    async fn canned(responses: Vec<&'static [u8]>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut req = Vec::new();
            for r in responses {
                // Read one request head.
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut b = [0u8; 512];
                    let n = s.read(&mut b).await.expect("read");
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&b[..n]);
                }
                req.clear();
                // Split the answer in two writes to exercise partial reads.
                let (a, b) = r.split_at(r.len() / 2);
                s.write_all(a).await.expect("write");
                tokio::task::yield_now().await;
                s.write_all(b).await.expect("write");
            }
        });
        addr
    }

    async fn get(conn: &mut Conn) -> Result<(u16, Vec<u8>), Error> {
        let head = conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await?;
        let mut body = Vec::new();
        conn.body(&head, |d| {
            body.extend_from_slice(d);
            Ok(())
        })
        .await?;
        Ok((head.status, body))
    }

    #[tokio::test]
    async fn reads_length_chunked_and_informational_responses_on_one_connection() {
        // Every framing a server may use is read to its end, and the connection carries the
        // next request until a response closes it.
        let addr = canned(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Nope\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        let mut conn = Conn::connect(addr).await.expect("connect");
        assert_eq!(get(&mut conn).await, Ok((200, b"hello".to_vec())));
        assert!(conn.is_reusable());
        assert_eq!(
            get(&mut conn).await,
            Ok((503, b"abc0123456789abcdef".to_vec()))
        );
        assert_eq!(get(&mut conn).await, Ok((204, Vec::new())));
        assert!(conn.is_reusable());
        assert_eq!(get(&mut conn).await, Ok((200, b"ok".to_vec())));
        assert!(!conn.is_reusable(), "Connection: close ends it");
    }

    #[tokio::test]
    async fn reads_grow_for_a_large_body_and_start_small_again() {
        // A scrape-sized body is read whole with reads that double up to their cap; the next
        // exchange on the connection starts from the small first read again.
        let body: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut large =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        large.extend_from_slice(&body);
        let large: &'static [u8] = Box::leak(large.into_boxed_slice());
        let addr = canned(vec![
            large,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        let mut conn = Conn::connect(addr).await.expect("connect");
        assert_eq!(get(&mut conn).await, Ok((200, body)));
        assert_eq!(conn.next_read, MAX_READ_SIZE);
        assert!(conn.is_reusable());
        assert_eq!(get(&mut conn).await, Ok((200, b"ok".to_vec())));
        assert_eq!(conn.next_read, READ_SIZE);
    }

    #[tokio::test]
    async fn a_body_until_close_and_a_cut_response_are_told_apart() {
        // Without a length the body ends at close and the connection is not reused; a close
        // inside a length-framed body is an error, not a short body.
        let addr = canned(vec![b"HTTP/1.1 200 OK\r\n\r\nall of it"]).await;
        let mut conn = Conn::connect(addr).await.expect("connect");
        assert_eq!(get(&mut conn).await, Ok((200, b"all of it".to_vec())));
        assert!(!conn.is_reusable());
        let addr = canned(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"]).await;
        let mut conn = Conn::connect(addr).await.expect("connect");
        assert_eq!(get(&mut conn).await, Err(Error::Closed));
        let addr = canned(vec![b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"]).await;
        let mut conn = Conn::connect(addr).await.expect("connect");
        assert_eq!(get(&mut conn).await, Err(Error::Malformed));
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_not_reused() {
        // The server closes after one response; the client sees it before sending again.
        let addr = canned(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]).await;
        let mut conn = Conn::connect(addr).await.expect("connect");
        assert_eq!(get(&mut conn).await, Ok((200, Vec::new())));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while conn.is_reusable() {
            assert!(std::time::Instant::now() < deadline, "close never seen");
            conn.stream.readable().await.expect("readable");
        }
    }
}
