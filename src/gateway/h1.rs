//! An HTTP/1.1 upstream client that runs inside the request's own task.
//!
//! hyper's pooled client runs each connection in a task of its own and
//! hands requests and answers across channels: two to three task wake-ups
//! per request. Profiles put that at about half of the gateway's user-space
//! time per request (see BENCHMARKS.md). Here the request task checks a
//! keep-alive connection out of the endpoint's pool, writes the request,
//! reads the answer's head, and the answer's body reads the rest from the
//! socket as the client side pulls it, then puts the connection back.
//!
//! Framing follows RFC 9112: `content-length` or chunked for requests
//! (chunked when the size is not known up front); for answers, none for
//! HEAD/1xx/204/304, then `transfer-encoding: chunked`, `content-length`,
//! or read-until-close (not reusable). A connection goes back to the pool
//! only after a complete answer with nothing left over and no
//! `connection: close`.

use super::body::{BoxError, UpstreamBody};
use super::upstream::Endpoint;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Largest answer head accepted from an upstream.
const HEAD_MAX_BYTES: usize = 64 * 1024;
/// Headers per answer head.
const HEADERS_MAX: usize = 128;
/// Body bytes written together with the head (one write) when ready.
const COALESCE_MAX_BYTES: usize = 64 * 1024;
/// Read buffer growth step.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// How long to look for an early answer after a failed write.
const EARLY_ANSWER_WAIT: Duration = Duration::from_millis(100);
/// Idle connections kept per endpoint.
pub const IDLE_MAX: usize = 512;
/// Idle connections older than this are closed rather than reused: servers
/// commonly time idle keep-alive connections out after 60-75 s.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Why an upstream exchange failed, and so whose fault it was.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made.
    Connect(String),
    /// The client's body was larger than allowed.
    BodyTooLarge,
    /// The client's body stream broke.
    ClientBody(String),
    /// The upstream broke the exchange (reset, garbage, early close).
    Upstream(String),
    /// The upstream did not answer within the request timeout.
    Timeout,
}

/// A plain or TLS connection to an upstream.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One keep-alive connection and the bytes read from it but not used yet.
pub struct Conn {
    stream: Stream,
    read: BytesMut,
    idle_since: Instant,
}

impl Conn {
    /// Whether an idle connection can still be used: not too old, and the
    /// server has neither closed it nor sent anything unasked. A plain
    /// connection is peeked (nothing consumed); a TLS one is read through
    /// the TLS layer, which takes in session tickets by itself and reports
    /// a close_notify or stray data, either of which disqualifies it.
    fn is_reusable(&mut self) -> bool {
        if self.idle_since.elapsed() > IDLE_TIMEOUT {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let polled = match &mut self.stream {
            Stream::Plain(tcp) => tcp.poll_peek(&mut cx, &mut probe).map_ok(|_| ()),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(&mut cx, &mut probe),
        };
        matches!(polled, Poll::Pending)
    }
}

/// Idle connections of one endpoint.
#[derive(Default)]
pub struct Pool {
    idle: std::sync::Mutex<Vec<Conn>>,
}

impl Pool {
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut conn) = idle.pop() {
            if conn.is_reusable() {
                return Some(conn);
            }
        }
        None
    }

    fn put_back(&self, mut conn: Conn) {
        conn.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_MAX {
            idle.push(conn);
        }
    }

    /// Closes idle connections that are too old or that the server closed;
    /// checkout only looks at the newest, so the health ticker calls this.
    pub fn reap(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain_mut(|conn| conn.is_reusable());
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }
}

/// The HTTP/1.1 client: TLS settings and the connect timeout. Pools live
/// in the endpoints, so they survive routing-table swaps.
#[derive(Clone)]
pub struct Client {
    pub tls: tokio_rustls::TlsConnector,
    pub connect_timeout: Duration,
}

impl Client {
    /// Sends a request to `endpoint` and returns the answer once its head
    /// has arrived; the body streams from the connection.
    ///
    /// `timeout` bounds the wait for the answer's head once the request is
    /// written, and each wait for the client's next body piece: a client
    /// that stalls its upload is the client's fault, not the upstream's.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        head: http::request::Parts,
        body: UpstreamBody,
        timeout: Duration,
    ) -> Result<Response<ResponseBody>, SendError> {
        let mut conn = match endpoint.pool.checkout() {
            Some(conn) => conn,
            None => self.connect(endpoint).await?,
        };
        let is_head = head.method == Method::HEAD;
        let written = write_request(&mut conn, &head, body, timeout).await;
        let head = match written {
            Ok(()) => tokio::time::timeout(timeout, read_head(&mut conn, is_head))
                .await
                .map_err(|_| SendError::Timeout)?,
            // An upstream may answer early (413, 401) and close while the
            // body is still going up: its answer beats a 502.
            Err(SendError::Upstream(why)) => {
                match tokio::time::timeout(EARLY_ANSWER_WAIT, read_head(&mut conn, is_head)).await {
                    Ok(Ok((response, framing, _))) => Ok((response, framing, false)),
                    _ => Err(SendError::Upstream(why)),
                }
            }
            Err(other) => Err(other),
        };
        let (response, framing, keep_alive) = head?;
        let mut body = ResponseBody {
            conn: Some(conn),
            framing,
            keep_alive,
            endpoint: endpoint.clone(),
        };
        body.finish_if_done();
        Ok(response.map(|()| body))
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<Conn, SendError> {
        let authority = endpoint
            .uri
            .authority()
            .ok_or_else(|| SendError::Connect("the endpoint has no host".into()))?;
        let tls = endpoint.uri.scheme_str() == Some("https");
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let connect = async {
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            if !tls {
                return Ok(Stream::Plain(tcp));
            }
            let name = rustls_pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let stream = self.tls.connect(name, tcp).await?;
            Ok::<_, io::Error>(Stream::Tls(Box::new(stream)))
        };
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                SendError::Connect(format!(
                    "connect timed out after {} ms",
                    self.connect_timeout.as_millis()
                ))
            })?
            .map_err(|e| SendError::Connect(e.to_string()))?;
        Ok(Conn {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK_BYTES),
            idle_since: Instant::now(),
        })
    }
}

fn body_error(error: BoxError) -> SendError {
    if error.is::<http_body_util::LengthLimitError>() {
        SendError::BodyTooLarge
    } else {
        SendError::ClientBody(error.to_string())
    }
}

fn upstream_io(error: io::Error) -> SendError {
    SendError::Upstream(error.to_string())
}

/// Writes the request head and streams the body. The head and the first
/// piece of body go out in one write when the body is already at hand.
async fn write_request(
    conn: &mut Conn,
    head: &http::request::Parts,
    mut body: UpstreamBody,
    body_wait: Duration,
) -> Result<(), SendError> {
    let length = body.size_hint().exact();
    let chunked = length.is_none();
    let mut out = BytesMut::with_capacity(512);
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(authority) = head.uri.authority() {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &head.headers {
        // Framing is ours to decide; the host header came from the URI.
        if name == http::header::CONTENT_LENGTH
            || name == http::header::TRANSFER_ENCODING
            || name == http::header::HOST
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match length {
        Some(0) if !method_expects_body(&head.method) => {}
        Some(length) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(length.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");

    // Take whatever body is ready now into the same write.
    let mut finished = body.is_end_stream();
    while !finished && out.len() < COALESCE_MAX_BYTES {
        match body.frame().now_or_never() {
            Some(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    encode_data(&mut out, &data, chunked);
                }
                finished = body.is_end_stream();
            }
            Some(Some(Err(error))) => return Err(body_error(error)),
            Some(None) => finished = true,
            None => break,
        }
    }
    if finished && chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    conn.stream.write_all(&out).await.map_err(upstream_io)?;
    if finished {
        // TLS buffers what it encrypts: push it out.
        return conn.stream.flush().await.map_err(upstream_io);
    }
    // The rest of the body, as it arrives.
    loop {
        let frame = tokio::time::timeout(body_wait, body.frame())
            .await
            .map_err(|_| {
                SendError::ClientBody(format!(
                    "the client sent no body bytes for {} ms",
                    body_wait.as_millis()
                ))
            })?;
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    out.clear();
                    encode_data(&mut out, &data, chunked);
                    conn.stream.write_all(&out).await.map_err(upstream_io)?;
                }
            }
            Some(Err(error)) => return Err(body_error(error)),
            None => break,
        }
    }
    if chunked {
        conn.stream
            .write_all(b"0\r\n\r\n")
            .await
            .map_err(upstream_io)?;
    }
    Ok(())
}

fn method_expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

fn encode_data(out: &mut BytesMut, data: &Bytes, chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// How the answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty line.
    Trailers,
}

/// Reads the answer's head (skipping 1xx interim answers).
async fn read_head(
    conn: &mut Conn,
    is_head_request: bool,
) -> Result<(Response<()>, Framing, bool), SendError> {
    loop {
        let parsed = {
            let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&conn.read) {
                Ok(httparse::Status::Complete(length)) => Some((
                    length,
                    response.code.unwrap_or(0),
                    response.version.unwrap_or(1),
                )),
                Ok(httparse::Status::Partial) => None,
                Err(error) => {
                    return Err(SendError::Upstream(format!(
                        "malformed answer head: {error}"
                    )))
                }
            }
        };
        let Some((length, code, version)) = parsed else {
            if conn.read.len() >= HEAD_MAX_BYTES {
                return Err(SendError::Upstream("answer head too large".into()));
            }
            read_more(conn).await?;
            continue;
        };
        let head = conn.read.split_to(length).freeze();
        if (100..200).contains(&code) && code != 101 {
            continue;
        }
        let status = StatusCode::from_u16(code)
            .map_err(|_| SendError::Upstream(format!("invalid status {code}")))?;
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut parsed = httparse::Response::new(&mut headers);
        let _ = parsed.parse(&head);
        let mut map = HeaderMap::with_capacity(parsed.headers.len());
        for header in parsed.headers.iter() {
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|_| SendError::Upstream("invalid header name in answer".into()))?;
            let value = HeaderValue::from_maybe_shared(head.slice_ref(header.value))
                .map_err(|_| SendError::Upstream("invalid header value in answer".into()))?;
            map.append(name, value);
        }
        let close = tokens(&map, http::header::CONNECTION).any(|t| t.eq_ignore_ascii_case("close"));
        // After 101 the connection speaks another protocol: never reuse it.
        let keep_alive = version == 1 && !close && code != 101;
        let framing = if is_head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Done
        } else if map.contains_key(http::header::TRANSFER_ENCODING) {
            // RFC 9112 §6.3: chunked must be the final coding; otherwise the
            // body runs until the connection closes.
            map.remove(http::header::CONTENT_LENGTH);
            match tokens(&map, http::header::TRANSFER_ENCODING).last() {
                Some(last) if last.eq_ignore_ascii_case("chunked") => Framing::Chunked(Chunk::Size),
                _ => Framing::UntilClose,
            }
        } else if map.contains_key(http::header::CONTENT_LENGTH) {
            match content_length(&map)? {
                0 => Framing::Done,
                length => Framing::Length(length),
            }
        } else {
            Framing::UntilClose
        };
        let keep_alive = keep_alive && framing != Framing::UntilClose;
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.headers_mut() = map;
        return Ok((response, framing, keep_alive));
    }
}

/// The comma-separated tokens of every value of a header.
fn tokens(map: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    map.get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The answer's content length: digits only, and every value the same
/// (RFC 9112 §6.3), or the answer is refused.
fn content_length(map: &HeaderMap) -> Result<u64, SendError> {
    let mut length = None;
    for token in tokens(map, http::header::CONTENT_LENGTH) {
        let value = token
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| token.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| {
                SendError::Upstream(format!("invalid content-length {token:?} in answer"))
            })?;
        if length.is_some_and(|l| l != value) {
            return Err(SendError::Upstream(
                "conflicting content-length values in answer".into(),
            ));
        }
        length = Some(value);
    }
    length.ok_or_else(|| SendError::Upstream("empty content-length in answer".into()))
}

async fn read_more(conn: &mut Conn) -> Result<(), SendError> {
    let read = std::future::poll_fn(|cx| poll_read_more(&mut conn.stream, &mut conn.read, cx))
        .await
        .map_err(upstream_io)?;
    if read == 0 {
        return Err(SendError::Upstream(
            "the upstream closed the connection before answering".into(),
        ));
    }
    Ok(())
}

fn poll_read_more(
    stream: &mut Stream,
    read: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < READ_CHUNK_BYTES / 4 {
        read.reserve(READ_CHUNK_BYTES);
    }
    tokio_util_read_buf(stream, read, cx)
}

/// Reads into the spare capacity of `buf` (what `tokio_util::io::poll_read_buf` does).
fn tokio_util_read_buf(
    stream: &mut Stream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    use bytes::BufMut;
    let spare = buf.chunk_mut();
    // SAFETY: ReadBuf only writes initialized bytes into `spare` and
    // reports how many; we advance by exactly that many.
    let spare = unsafe { &mut *(spare as *mut _ as *mut [std::mem::MaybeUninit<u8>]) };
    let mut read_buf = ReadBuf::uninit(spare);
    ready!(Pin::new(stream).poll_read(cx, &mut read_buf))?;
    let filled = read_buf.filled().len();
    // SAFETY: `filled` bytes were just initialized by the read.
    unsafe { buf.advance_mut(filled) };
    Poll::Ready(Ok(filled))
}

/// An answer's body, read from the upstream connection as it is polled.
/// A complete body puts the connection back in the endpoint's pool.
pub struct ResponseBody {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    endpoint: Arc<Endpoint>,
}

impl ResponseBody {
    fn finish_if_done(&mut self) {
        if self.framing != Framing::Done {
            return;
        }
        if let Some(conn) = self.conn.take() {
            if self.keep_alive && conn.read.is_empty() {
                self.endpoint.pool.put_back(conn);
            }
        }
    }

    fn decode(&mut self) -> Result<Option<Bytes>, SendError> {
        match self.conn.as_mut() {
            Some(conn) => decode(&mut self.framing, &mut conn.read),
            None => Ok(None),
        }
    }
}

/// Takes the next piece of body out of the read buffer, if the buffer holds
/// one; `Ok(None)` means more bytes are needed (or the body is done).
fn decode(framing: &mut Framing, read: &mut BytesMut) -> Result<Option<Bytes>, SendError> {
    loop {
        match *framing {
            Framing::Done => return Ok(None),
            Framing::UntilClose => {
                return Ok((!read.is_empty()).then(|| read.split().freeze()));
            }
            Framing::Length(left) => {
                if read.is_empty() {
                    return Ok(None);
                }
                let take = (read.len() as u64).min(left) as usize;
                let data = read.split_to(take).freeze();
                *framing = match left - take as u64 {
                    0 => Framing::Done,
                    left => Framing::Length(left),
                };
                return Ok(Some(data));
            }
            Framing::Chunked(Chunk::Size) => {
                let Some(end) = find_crlf(read) else {
                    return check_line_length(read);
                };
                let line = &read[..end];
                let digits = line.split(|b| *b == b';').next().unwrap_or_default();
                let size = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| u64::from_str_radix(d.trim(), 16).ok())
                    .ok_or_else(|| SendError::Upstream("invalid chunk size".into()))?;
                read.advance(end + 2);
                *framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
            }
            Framing::Chunked(Chunk::Data(left)) => {
                if read.is_empty() {
                    return Ok(None);
                }
                let take = (read.len() as u64).min(left) as usize;
                let data = read.split_to(take).freeze();
                *framing = Framing::Chunked(match left - take as u64 {
                    0 => Chunk::DataEnd,
                    left => Chunk::Data(left),
                });
                return Ok(Some(data));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if read.len() < 2 {
                    return Ok(None);
                }
                if &read[..2] != b"\r\n" {
                    return Err(SendError::Upstream(
                        "chunk data not followed by CRLF".into(),
                    ));
                }
                read.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => {
                let Some(end) = find_crlf(read) else {
                    return check_line_length(read);
                };
                // HTTP/1 trailers are rare and carry nothing the gateway
                // uses; they are read and dropped.
                read.advance(end + 2);
                if end == 0 {
                    *framing = Framing::Done;
                }
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn check_line_length(buf: &[u8]) -> Result<Option<Bytes>, SendError> {
    if buf.len() > 4096 {
        Err(SendError::Upstream("chunk line too long".into()))
    } else {
        Ok(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.as_mut().get_mut();
        loop {
            match this.decode() {
                Ok(Some(data)) => {
                    this.finish_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) => {}
                Err(error) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(format!("{error:?}").into())));
                }
            }
            if this.framing == Framing::Done {
                this.finish_if_done();
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(poll_read_more(&mut conn.stream, &mut conn.read, cx)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.framing = Framing::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(
                        "the upstream closed the connection mid-answer".into()
                    )));
                }
                Ok(_) => {}
                Err(error) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: &mut Framing, bytes: &[u8]) -> Result<Vec<u8>, SendError> {
        let mut read = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(data) = decode(framing, &mut read)? {
            out.extend_from_slice(&data);
        }
        Ok(out)
    }

    #[test]
    fn decodes_chunked_bodies_with_extensions_and_trailers() {
        let mut framing = Framing::Chunked(Chunk::Size);
        let bytes = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(decode_all(&mut framing, bytes).unwrap(), b"hello, world");
        assert_eq!(framing, Framing::Done);
    }

    #[test]
    fn partial_chunks_wait_for_more_bytes() {
        let mut framing = Framing::Chunked(Chunk::Size);
        assert_eq!(decode_all(&mut framing, b"a\r\n01234").unwrap(), b"01234");
        assert_eq!(framing, Framing::Chunked(Chunk::Data(5)));
    }

    #[test]
    fn content_length_bodies_stop_at_the_length() {
        let mut framing = Framing::Length(3);
        assert_eq!(decode_all(&mut framing, b"abcdef").unwrap(), b"abc");
        assert_eq!(framing, Framing::Done);
    }

    #[test]
    fn garbage_chunk_framing_is_an_error() {
        let mut framing = Framing::Chunked(Chunk::Size);
        assert!(matches!(
            decode_all(&mut framing, b"zz\r\n"),
            Err(SendError::Upstream(_))
        ));
        let mut framing = Framing::Chunked(Chunk::Size);
        assert!(matches!(
            decode_all(&mut framing, b"2\r\nabXY"),
            Err(SendError::Upstream(_))
        ));
        let mut framing = Framing::Chunked(Chunk::Size);
        let long = vec![b'1'; 5000];
        assert!(matches!(
            decode_all(&mut framing, &long),
            Err(SendError::Upstream(_))
        ));
    }

    #[test]
    fn content_lengths_must_be_plain_and_agree() {
        let map = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append(
                    http::header::CONTENT_LENGTH,
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            map
        };
        assert_eq!(content_length(&map(&["42"])).unwrap(), 42);
        assert_eq!(content_length(&map(&["42", "42"])).unwrap(), 42);
        assert!(content_length(&map(&["42", "43"])).is_err());
        assert!(content_length(&map(&["+5"])).is_err());
        assert!(content_length(&map(&["4 2"])).is_err());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        let mut seed = 0x853c_49e6_748f_ea9bu64;
        for _ in 0..5000 {
            let bytes: Vec<u8> = (0..(seed % 64) as usize)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    b"0123456789abcdef\r\n;x"[(seed % 20) as usize]
                })
                .collect();
            let mut framing = Framing::Chunked(Chunk::Size);
            let _ = decode_all(&mut framing, &bytes);
        }
    }
}
