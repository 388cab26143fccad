//! A minimal, hardened HTTP/1.1 server and client on std sockets, for the endpoints vidmesh
//! processes serve to whatever connects: Prometheus metrics, frame previews and the dashboard.
//!
//! Hard limits on size, time and connections: neither a stuck client nor a stuck peer may stall
//! a pipeline, and untrusted bytes never panic. [`serve`] answers only `GET` and `HEAD`;
//! [`serve_api`] also takes `POST` and `DELETE` with a small body (the control API). Every
//! response closes its connection.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

/// Largest request head the server reads; a longer one gets 431.
const REQUEST_LIMIT_BYTES: usize = 8 << 10;

/// Largest request body [`serve_api`] reads; a longer one gets 413.
const BODY_LIMIT_BYTES: usize = 64 << 10;

/// Time one connection gets to send its request and take the answer, in total, so that a
/// client trickling bytes cannot hold a connection thread for long.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// Connections served at once; more are answered 503 at once, so idle clients cannot pile up
/// threads.
pub const MAX_CONNECTIONS: usize = 16;

/// A request as the handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string, e.g. `/preview/0.jpg`.
    pub path: String,
    /// What followed `?`, possibly empty.
    pub query: String,
    /// The body of a `POST`/`DELETE` to [`serve_api`]; empty otherwise.
    pub body: Vec<u8>,
    /// Header fields, names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// A `GET` of `path` (with no query).
    pub fn get(path: &str) -> Self {
        Self {
            method: "GET".into(),
            path: path.into(),
            query: String::new(),
            body: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` in the query string (not percent-decoded).
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
    }
}

/// An answer; the connection closes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: Cow<'static, str>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: &str) -> Self {
        Self::bytes(
            status,
            "text/plain; charset=utf-8",
            body.as_bytes().to_vec(),
        )
    }

    pub fn bytes(status: u16, content_type: impl Into<Cow<'static, str>>, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: content_type.into(),
            body,
        }
    }

    pub fn json(body: String) -> Self {
        Self::bytes(200, "application/json", body.into_bytes())
    }

    pub fn not_found() -> Self {
        Self::text(404, "not found\n")
    }

    fn send(
        &self,
        stream: &mut TcpStream,
        deadline: Instant,
        head_only: bool,
        allow: &str,
    ) -> io::Result<()> {
        let reason = match self.status {
            200 => "OK",
            201 => "Created",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            409 => "Conflict",
            411 => "Length Required",
            413 => "Content Too Large",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "",
        };
        // Live data: a browser must ask again rather than show a cached answer.
        let mut response = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            response.push_str(&format!("Allow: {allow}\r\n"));
        }
        if self.status == 401 {
            response.push_str("WWW-Authenticate: Bearer realm=\"vidmesh\"\r\n");
        }
        response.push_str("\r\n");
        let mut response = response.into_bytes();
        if !head_only {
            response.extend_from_slice(&self.body);
        }
        write_all_by(stream, &response, deadline)?;
        stream.shutdown(Shutdown::Write)
    }
}

/// Answers one request; a panic inside it becomes a 500.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Why [`serve`] could not start.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("{what} port {addr} is already in use (another stage or program bound it)")]
    PortInUse {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "the {what} on {addr} would answer other hosts without a password: set the environment \
         variable {TOKEN_VARIABLE} to a secret token (clients then send `Authorization: Bearer \
         TOKEN`, browsers open http://{addr}/?token=TOKEN), or bind it to 127.0.0.1"
    )]
    NoToken {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("cannot start the {what} server thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A running server; dropping it stops it.
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// The bound address, with the real port when `serve` was given port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The accept thread blocks in accept(); a connection of our own wakes it to see `stop`.
        let ip = match self.local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let woke = TcpStream::connect_timeout(
            &SocketAddr::new(ip, self.local_addr.port()),
            Duration::from_secs(1),
        )
        .is_ok();
        if let Some(thread) = self.accept_thread.take() {
            // Unwoken, it ends at its next connection; never hang the caller on it.
            if woke || thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// Serves `handler` on `addr` from a background thread; `what` names the server in errors and
/// thread names ("metrics", "dashboard").
///
/// Each connection gets its own short-lived thread, at most [`MAX_CONNECTIONS`] at once, and
/// [`CONNECTION_DEADLINE`] in total to send at most [`REQUEST_LIMIT_BYTES`] of request head and
/// take the answer: an idle or malicious client neither blocks other requests nor grows memory.
pub fn serve(
    what: &'static str,
    addr: SocketAddr,
    handler: Handler,
) -> Result<HttpServer, ServeError> {
    serve_methods(what, addr, handler, READ_ONLY)
}

/// [`serve`], and `POST`/`DELETE` requests with a body of at most [`BODY_LIMIT_BYTES`]
/// (sent with `Content-Length`) reach the handler too.
pub fn serve_api(
    what: &'static str,
    addr: SocketAddr,
    handler: Handler,
) -> Result<HttpServer, ServeError> {
    serve_methods(what, addr, handler, READ_WRITE)
}

const READ_ONLY: &[&str] = &["GET", "HEAD"];
const READ_WRITE: &[&str] = &["GET", "HEAD", "POST", "DELETE"];

fn serve_methods(
    what: &'static str,
    addr: SocketAddr,
    handler: Handler,
    methods: &'static [&'static str],
) -> Result<HttpServer, ServeError> {
    let listener = TcpListener::bind(addr).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => ServeError::PortInUse { what, addr },
        _ => ServeError::Bind { what, addr, source },
    })?;
    let local_addr =
        listener
            .local_addr()
            .map_err(|source| ServeError::Bind { what, addr, source })?;
    let stop = Arc::new(AtomicBool::new(false));
    let accept_thread = std::thread::Builder::new()
        .name(format!("vidmesh-{what}"))
        .spawn({
            let stop = stop.clone();
            move || accept_loop(what, listener, handler, methods, &stop)
        })
        .map_err(|source| ServeError::Thread { what, source })?;
    Ok(HttpServer {
        local_addr,
        stop,
        accept_thread: Some(accept_thread),
    })
}

/// The environment variable holding the token that guards the dashboard and control API.
pub const TOKEN_VARIABLE: &str = "VIDMESH_API_TOKEN";

/// The token a server on `addr` requires: [`TOKEN_VARIABLE`]'s value when set (on any
/// address); none on a loopback address without it. A server other hosts could reach is
/// refused without a token, because the control API changes what the pipeline does.
pub fn required_token(what: &'static str, addr: SocketAddr) -> Result<Option<String>, ServeError> {
    let token = std::env::var(TOKEN_VARIABLE)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(ServeError::NoToken { what, addr });
    }
    if token.as_ref().is_some_and(|t| t.len() < 16) {
        tracing::warn!("{TOKEN_VARIABLE} is shorter than 16 characters; use a long random token");
    }
    Ok(token)
}

/// `handler` behind `token`: a request must carry `Authorization: Bearer TOKEN` or
/// `?token=TOKEN` (what a browser can send), else it gets 401. `/healthz` stays open for
/// health checks. Without a token, `handler` itself.
pub fn guarded(token: Option<String>, handler: Handler) -> Handler {
    let Some(token) = token else {
        return handler;
    };
    Arc::new(move |request: &Request| {
        let offered = request
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| request.query_param("token"));
        if request.path == "/healthz" || offered.is_some_and(|o| same_secret(o, &token)) {
            handler(request)
        } else {
            Response::text(
                401,
                "missing or wrong token: send `Authorization: Bearer TOKEN` or add ?token=TOKEN\n",
            )
        }
    })
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right.
fn same_secret(offered: &str, token: &str) -> bool {
    let (a, b) = (offered.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Frees a connection slot when its thread ends, however it ends.
struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    what: &'static str,
    listener: TcpListener,
    handler: Handler,
    methods: &'static [&'static str],
    stop: &AtomicBool,
) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!("{what} endpoint: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_millis(100);
            let _ = Response::text(503, "busy\n").send(&mut stream, deadline, false, "");
            continue;
        }
        let slot = ConnectionSlot(active.clone());
        let handler = handler.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vidmesh-{what}-conn"))
            .stack_size(256 << 10)
            .spawn(move || {
                let _slot = slot;
                handle_connection(stream, &handler, methods);
            });
        if let Err(e) = spawned {
            tracing::warn!("{what} endpoint: cannot start a connection thread: {e}");
        }
    }
}

fn handle_connection(mut stream: TcpStream, handler: &Handler, methods: &[&str]) {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + CONNECTION_DEADLINE;
    let allow = methods.join(", ");
    let reply = read_request_head(&mut stream, deadline).and_then(|(head, early_body)| {
        let mut request = parse_request_head(&head)?;
        if !methods.contains(&request.method.as_str()) {
            return Err(RequestError::Reply(Response::text(
                405,
                "method not allowed\n",
            )));
        }
        if request.method == "POST" || request.method == "DELETE" {
            request.body = read_body(&mut stream, &request, early_body, deadline)?;
        }
        Ok(request)
    });
    let (reply, head_only) = match reply {
        Ok(request) => {
            let reply = catch_unwind(AssertUnwindSafe(|| handler(&request)))
                .unwrap_or_else(|_| Response::text(500, "the handler failed\n"));
            (reply, request.method == "HEAD")
        }
        Err(RequestError::Reply(reply)) => (reply, false),
        // Timed out, reset or closed: nobody to answer.
        Err(RequestError::Io) => return,
    };
    let _ = reply.send(&mut stream, deadline, head_only, &allow);
}

/// Method, path and query of a request head.
fn parse_request_head(head: &str) -> Result<Request, RequestError> {
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method.is_empty() || !target.starts_with('/') {
        return Err(RequestError::Reply(Response::text(400, "bad request\n")));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
        })
        .collect();
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        body: Vec::new(),
        headers,
    })
}

/// The body announced by `Content-Length` (none without it), at most [`BODY_LIMIT_BYTES`];
/// `early` holds what arrived together with the head.
fn read_body(
    stream: &mut TcpStream,
    request: &Request,
    mut early: Vec<u8>,
    deadline: Instant,
) -> Result<Vec<u8>, RequestError> {
    let header = |name: &str| request.header(name);
    if header("transfer-encoding").is_some() {
        return Err(RequestError::Reply(Response::text(
            411,
            "send the body with Content-Length, not chunked\n",
        )));
    }
    let length = match header("content-length") {
        None => return Ok(Vec::new()),
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| RequestError::Reply(Response::text(400, "malformed Content-Length\n")))?,
    };
    if length > BODY_LIMIT_BYTES {
        return Err(RequestError::Reply(Response::text(
            413,
            &format!("the body may be at most {BODY_LIMIT_BYTES} bytes\n"),
        )));
    }
    early.truncate(length);
    let mut chunk = [0u8; 4096];
    while early.len() < length {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return Err(RequestError::Io);
        }
        let want = (length - early.len()).min(chunk.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Err(RequestError::Io),
            Ok(n) => early.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(RequestError::Io),
        }
    }
    Ok(early)
}

enum RequestError {
    /// Answer this instead of calling the handler.
    Reply(Response),
    Io,
}

/// Reads up to the blank line ending the request head: the head, and whatever of the body
/// came with it.
fn read_request_head(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<(String, Vec<u8>), RequestError> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return Err(RequestError::Io);
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(RequestError::Io),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(RequestError::Io),
        };
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        let tail = &head[searched_from..];
        let end = tail
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| searched_from + p)
            .or_else(|| {
                tail.windows(2)
                    .position(|w| w == b"\n\n")
                    .map(|p| searched_from + p)
            });
        if let Some(end) = end.filter(|end| *end <= REQUEST_LIMIT_BYTES) {
            let separator = if head[end..].starts_with(b"\r\n\r\n") {
                4
            } else {
                2
            };
            let body = head.split_off(end + separator);
            head.truncate(end);
            let head = String::from_utf8(head)
                .map_err(|_| RequestError::Reply(Response::text(400, "bad request\n")))?;
            return Ok((head, body));
        }
        if head.len() > REQUEST_LIMIT_BYTES {
            return Err(RequestError::Reply(Response::text(
                431,
                "request too large\n",
            )));
        }
    }
}

/// `write_all` that gives up at `deadline`, however slowly the peer reads.
fn write_all_by(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(remaining))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Client

/// Why [`get`] got no answer.
#[derive(Debug, Error)]
pub enum GetError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("reading from {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("the response from {addr} is larger than {limit} bytes")]
    TooLarge { addr: SocketAddr, limit: usize },
    #[error("malformed HTTP response from {addr}: {reason}")]
    BadResponse { addr: SocketAddr, reason: String },
}

/// A minimal HTTP/1.0 GET (1.0 so that no server answers chunked) of `path` on `addr`, all
/// within `timeout`, reading at most `limit` bytes: status and body.
pub fn get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    limit: usize,
) -> Result<(u16, Vec<u8>), GetError> {
    request(addr, "GET", path, None, timeout, limit)
}

/// [`get`] with any method, and a JSON body when given.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json_body: Option<&[u8]>,
    timeout: Duration,
    limit: usize,
) -> Result<(u16, Vec<u8>), GetError> {
    let deadline = Instant::now() + timeout;
    let timed_out = || GetError::Timeout { addr, timeout };
    let io_error = |source: io::Error| match source.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => timed_out(),
        _ => GetError::Io { addr, source },
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|source| match source.kind() {
            io::ErrorKind::TimedOut => timed_out(),
            _ => GetError::Connect { addr, source },
        })?;
    let _ = stream.set_nodelay(true);
    let mut request =
        format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: vidmesh\r\n").into_bytes();
    match json_body {
        Some(body) => {
            request.extend_from_slice(
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            request.extend_from_slice(body);
        }
        None => request.extend_from_slice(b"\r\n"),
    }
    write_all_by(&mut stream, &request, deadline).map_err(io_error)?;

    let mut response = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timed_out());
        }
        stream.set_read_timeout(Some(remaining)).map_err(io_error)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if response.len() + n > limit => return Err(GetError::TooLarge { addr, limit }),
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    parse_response(&response).map_err(|reason| GetError::BadResponse { addr, reason })
}

/// Splits a complete HTTP/1.x response into status and body.
pub(crate) fn parse_response(response: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let (head_len, sep_len) = match response.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => (p, 4),
        None => response
            .windows(2)
            .position(|w| w == b"\n\n")
            .map(|p| (p, 2))
            .ok_or("no end of headers")?,
    };
    let head = std::str::from_utf8(&response[..head_len]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let status = match status {
        Some(s) if version.starts_with("HTTP/1.") && (100..600).contains(&s) => s,
        _ => return Err(format!("bad status line {:?}", preview(status_line))),
    };
    let mut body = &response[head_len + sep_len..];
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {:?}", preview(line)));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value
                .parse()
                .map_err(|_| format!("bad Content-Length {:?}", preview(value)))?;
            body = body
                .get(..len)
                .ok_or_else(|| format!("body truncated at {} of {len} bytes", body.len()))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(format!(
                "unsupported Transfer-Encoding {:?}",
                preview(value)
            ));
        }
    }
    Ok((status, body.to_vec()))
}

/// At most 40 characters of `s`, for error messages about arbitrary input.
fn preview(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(3);

    fn echo_server() -> HttpServer {
        let handler: Handler = Arc::new(|r: &Request| match r.path.as_str() {
            "/echo" => Response::text(200, &format!("{} {}", r.method, r.query)),
            "/big" => Response::bytes(200, "application/octet-stream", vec![7; 1000]),
            "/panic" => panic!("handler failed on purpose"),
            _ => Response::not_found(),
        });
        serve("test", "127.0.0.1:0".parse().unwrap(), handler).unwrap()
    }

    #[test]
    fn routes_query_methods_and_limits() {
        let server = echo_server();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(
            get(addr, "/echo?a=1", TIMEOUT, 1024).unwrap(),
            (200, b"GET a=1".to_vec())
        );
        assert_eq!(get(addr, "/nope", TIMEOUT, 1024).unwrap().0, 404);
        assert!(matches!(
            get(addr, "/big", TIMEOUT, 100),
            Err(GetError::TooLarge { limit: 100, .. })
        ));
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"HEAD /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.contains("Content-Length: 1000\r\n"), "{answer}");
        assert!(
            answer.ends_with("\r\n\r\n"),
            "a HEAD answer has no body: {answer}"
        );
    }

    #[test]
    fn the_api_server_reads_bodies_within_limits() {
        let handler: Handler = Arc::new(|r: &Request| {
            Response::text(200, &format!("{} {} {}", r.method, r.path, r.body.len()))
        });
        let server = serve_api("test", "127.0.0.1:0".parse().unwrap(), handler).unwrap();
        let addr = server.local_addr();
        let body = vec![b'x'; 20_000];
        assert_eq!(
            request(addr, "POST", "/sources", Some(&body), TIMEOUT, 1024).unwrap(),
            (200, b"POST /sources 20000".to_vec())
        );
        assert_eq!(
            request(addr, "DELETE", "/sources/a", None, TIMEOUT, 1024).unwrap(),
            (200, b"DELETE /sources/a 0".to_vec())
        );
        let raw = |bytes: &[u8]| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(bytes).unwrap();
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer
        };
        let big = raw(b"POST /x HTTP/1.1\r\nContent-Length: 9999999\r\n\r\n");
        assert!(big.starts_with("HTTP/1.1 413 "), "{big}");
        let chunked = raw(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        assert!(chunked.starts_with("HTTP/1.1 411 "), "{chunked}");
        let bad_length = raw(b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
        assert!(bad_length.starts_with("HTTP/1.1 400 "), "{bad_length}");
        let put = raw(b"PUT /x HTTP/1.1\r\n\r\n");
        assert!(
            put.starts_with("HTTP/1.1 405 ") && put.contains("Allow: GET, HEAD, POST, DELETE"),
            "{put}"
        );
        let no_path = raw(b"GET\r\n\r\n");
        assert!(no_path.starts_with("HTTP/1.1 400 "), "{no_path}");
    }

    #[test]
    fn a_guarded_handler_wants_the_token() {
        let handler: Handler = Arc::new(|_: &Request| Response::text(200, "secret"));
        let guarded = guarded(Some("correct-horse-battery".into()), handler);
        let mut request = Request::get("/api/state");
        assert_eq!(guarded(&request).status, 401);
        request.query = "token=correct-horse-batterX".into();
        assert_eq!(guarded(&request).status, 401);
        request.query = "frame=3&token=correct-horse-battery".into();
        assert_eq!(guarded(&request).status, 200);
        request.query.clear();
        request.headers = vec![(
            "authorization".into(),
            "Bearer correct-horse-battery".into(),
        )];
        assert_eq!(guarded(&request).status, 200);
        assert_eq!(guarded(&Request::get("/healthz")).status, 200);
        let open = guarded_none();
        assert_eq!(open(&Request::get("/api/state")).status, 200);
    }

    fn guarded_none() -> Handler {
        guarded(None, Arc::new(|_: &Request| Response::text(200, "open")))
    }

    #[test]
    fn a_panicking_handler_answers_500_and_the_server_goes_on() {
        let server = echo_server();
        let addr = server.local_addr();
        // The panic hook prints a backtrace first, which takes seconds in a loaded debug build.
        let patient = Duration::from_secs(60);
        assert_eq!(get(addr, "/panic", patient, 1024).unwrap().0, 500);
        assert_eq!(get(addr, "/echo", patient, 1024).unwrap().0, 200);
    }

    #[test]
    fn second_serve_on_the_same_port_names_what_and_where() {
        let server = echo_server();
        let addr = server.local_addr();
        let err = serve(
            "dashboard",
            addr,
            Arc::new(|_: &Request| Response::not_found()),
        )
        .unwrap_err();
        assert!(matches!(err, ServeError::PortInUse { addr: a, .. } if a == addr));
        let message = err.to_string();
        assert!(
            message.starts_with("dashboard port") && message.contains(&addr.to_string()),
            "{message}"
        );
    }

    #[test]
    fn http_responses_are_checked() {
        let ok = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").unwrap();
        assert_eq!(ok, (200, b"ok".to_vec()));
        assert_eq!(
            parse_response(b"HTTP/1.0 404 Not Found\n\nx").unwrap(),
            (404, b"x".to_vec())
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
