//! Serving a tower service (an axum router, the sidecar endpoint) over plain TCP or TLS with the limits every attache
//! listener has: header read and idle timeouts, graceful shutdown that lets in-flight
//! requests finish.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// How long a client may take to send a request's headers, from their first
/// byte (and to finish a TLS handshake).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a kept-alive connection may wait for its next request. Longer
/// than the 90 s after which Go's HTTP transport (the API server calling the
/// webhook, the Go SDKs) and the other SDKs' pools drop an idle connection,
/// so that the client closes first: a server closing an idle connection races
/// the client's next request on it, which then fails with a broken pipe (for
/// the webhook: a pod refused).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long shutdown waits for in-flight requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a listener serves: an axum `Router` or any tower service answering
/// hyper requests.
pub trait HttpService:
    tower::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = hyper::Response<Self::Body>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    /// The response body.
    type Body: hyper::body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> HttpService for S
where
    S: tower::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    type Body = B;
}

/// Limits of one listener beyond the ones every listener has.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionLimits {
    /// Open connections one peer address may hold; further ones are closed
    /// at once (`None`: no cap, e.g. for the API server calling the webhook).
    pub per_peer: Option<usize>,
    /// Give every request the peer's address as a [`PeerAddr`] extension
    /// (for handlers that limit per address).
    pub tag_peer: bool,
}

/// The address a request came from (a request extension, with
/// [`ConnectionLimits::tag_peer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// A service whose requests get their connection's [`PeerAddr`].
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: Option<SocketAddr>,
}

impl<S: HttpService> tower::Service<hyper::Request<hyper::body::Incoming>> for WithPeer<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(PeerAddr(peer));
        }
        self.inner.call(request)
    }
}

/// Open connections by peer address; a guard gives its slot back on drop.
#[derive(Clone, Default)]
struct PeerCounts(Arc<Mutex<HashMap<IpAddr, usize>>>);

struct PeerSlot {
    counts: PeerCounts,
    ip: IpAddr,
}

impl PeerCounts {
    fn take(&self, ip: IpAddr, cap: usize) -> Option<PeerSlot> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Serves `service` (an axum `Router` or any tower service) on `listener` until `shutdown` resolves, then waits up to
/// [`SHUTDOWN_GRACE`] for open connections to finish. With `tls`, every
/// connection is a TLS handshake first (the acceptor may rotate certificates
/// through its resolver).
pub async fn serve<S: HttpService>(
    listener: TcpListener,
    service: S,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send,
) {
    serve_limited(
        listener,
        service,
        tls,
        shutdown,
        ConnectionLimits::default(),
    )
    .await;
}

/// [`serve`] with [`ConnectionLimits`].
pub async fn serve_limited<S: HttpService>(
    listener: TcpListener,
    service: S,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send,
    limits: ConnectionLimits,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let peers = PeerCounts::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match limits.per_peer {
            Some(cap) => match peers.take(peer.ip(), cap) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(%peer, cap, "connection refused: too many from this peer");
                    continue;
                }
            },
            None => None,
        };
        let watcher = graceful.watcher();
        let service = WithPeer {
            inner: service.clone(),
            peer: limits.tag_peer.then_some(peer),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, service, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => serve_connection(tls_stream, service, watcher).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period ended with connections still open");
    }
}

/// Serves HTTP/1.1 on one accepted connection until the client closes it, it
/// stays idle past [`IDLE_TIMEOUT`], a request's headers take longer than
/// [`HEADER_READ_TIMEOUT`] from their first byte, or graceful shutdown ends it.
///
/// hyper's own header timeout is off: it also runs while a kept-alive
/// connection waits for its next request, so it would close idle connections
/// after 5 s, racing the client's next request on them.
async fn serve_connection<IO, S: HttpService>(
    io: IO,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let io = Watched {
        inner: io,
        activity: activity.clone(),
    };
    let service = TowerToHyperService::new(Tracked {
        inner: service,
        activity: activity.clone(),
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(io), service);
    let conn = watcher.watch(conn);
    let mut conn = std::pin::pin!(conn);
    // One timer per connection, re-armed at most once a second (not per
    // request): requests change the phase without waking this task, and the
    // next check reads it.
    let check = tokio::time::sleep(Duration::ZERO);
    let mut check = std::pin::pin!(check);
    loop {
        let now = Instant::now();
        let next = activity
            .deadline()
            .map_or(now + CHECK_EVERY, |at| at.min(now + CHECK_EVERY));
        check.as_mut().reset(next);
        // The connection first: when the deadline and the client's bytes are
        // both ready (a CPU-starved process notices both late), the bytes are
        // read before the deadline is judged, so a starved server does not
        // blame its clients.
        tokio::select! {
            biased;
            _ = &mut conn => return,
            () = &mut check => {
                if let Some(why) = activity.expired() {
                    tracing::debug!(why, "connection closed");
                    return;
                }
            }
        }
    }
}

/// How often a connection's phase is looked at, at most: a phase that
/// started between two looks gets its full time from when it started.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for the next request since then.
    Idle(Instant),
    /// The first bytes of a request arrived then; its headers are not all in.
    Headers(Instant),
    /// Requests are being answered (bounded by the router's own request
    /// timeout, not here); the word holds how many.
    Busy,
}

/// A connection's [`Phase`], shared by its reader ([`Watched`]), its service
/// ([`Tracked`]) and the task that closes it when a deadline passes.
///
/// Packed in one atomic word, since it changes on every request: the top two
/// bits say which phase, the rest hold the busy count or when the phase
/// started (nanoseconds since the connection opened). All three users run in
/// the connection's own task, so the word is never contended.
#[derive(Clone)]
struct Activity(Arc<Packed>);

struct Packed {
    opened: Instant,
    word: AtomicU64,
}

const PHASE_BITS: u64 = 0b11 << 62;
const IDLE: u64 = 0;
const HEADERS: u64 = 0b01 << 62;
const BUSY: u64 = 0b10 << 62;

impl Activity {
    /// A new connection owes its first request's headers at once: clients
    /// open a connection to send a request.
    fn new() -> Self {
        Activity(Arc::new(Packed {
            opened: Instant::now(),
            word: AtomicU64::new(HEADERS),
        }))
    }

    /// `phase` starting now.
    fn starting_now(&self, phase: u64) -> u64 {
        let nanos = Instant::now()
            .saturating_duration_since(self.0.opened)
            .as_nanos();
        phase | (u64::try_from(nanos).unwrap_or(u64::MAX) & !PHASE_BITS)
    }

    fn update(&self, change: impl Fn(u64) -> u64) {
        let _ = self
            .0
            .word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| Some(change(w)));
    }

    fn phase(&self) -> Phase {
        let word = self.0.word.load(Ordering::Relaxed);
        let value = word & !PHASE_BITS;
        let since = self.0.opened + Duration::from_nanos(value);
        match word & PHASE_BITS {
            IDLE => Phase::Idle(since),
            HEADERS => Phase::Headers(since),
            _ => Phase::Busy,
        }
    }

    /// Bytes arrived: on an idle connection they start a request's headers.
    fn bytes_read(&self) {
        let word = self.0.word.load(Ordering::Relaxed);
        if word & PHASE_BITS == IDLE {
            let headers = self.starting_now(HEADERS);
            let _ =
                self.0
                    .word
                    .compare_exchange(word, headers, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// A request's headers are in and it is being answered until the guard drops.
    fn request_started(&self) -> BusyGuard {
        self.update(|w| match w & PHASE_BITS {
            BUSY => w + 1,
            _ => BUSY | 1,
        });
        BusyGuard(self.clone())
    }

    fn deadline(&self) -> Option<Instant> {
        match self.phase() {
            Phase::Idle(since) => Some(since + IDLE_TIMEOUT),
            Phase::Headers(since) => Some(since + HEADER_READ_TIMEOUT),
            Phase::Busy => None,
        }
    }

    /// Why the connection must close now, if it must.
    fn expired(&self) -> Option<&'static str> {
        let now = Instant::now();
        match self.phase() {
            Phase::Idle(since) if now >= since + IDLE_TIMEOUT => Some("idle"),
            Phase::Headers(since) if now >= since + HEADER_READ_TIMEOUT => {
                Some("request headers too slow")
            }
            _ => None,
        }
    }
}

struct BusyGuard(Activity);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let idle = self.0.starting_now(IDLE);
        self.0.update(|w| {
            if w & PHASE_BITS == BUSY && w & !PHASE_BITS > 1 {
                w - 1
            } else {
                idle
            }
        });
    }
}

/// The connection's byte stream, reporting reads to its [`Activity`].
struct Watched<IO> {
    inner: IO,
    activity: Activity,
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The service, marking the connection busy while it answers a request.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Activity,
}

impl<S, R> tower::Service<R> for Tracked<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let busy = Some(self.activity.request_started());
        TrackedFuture {
            answer: self.inner.call(request),
            busy,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer; the connection is busy until it is ready.
    struct TrackedFuture<F> {
        #[pin]
        answer: F,
        busy: Option<BusyGuard>,
    }
}

impl<F: Future> Future for TrackedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let answered = std::task::ready!(this.answer.poll(cx));
        this.busy.take();
        Poll::Ready(answered)
    }
}

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
