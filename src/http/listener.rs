//! Serving HTTP with bounds, for the MCP endpoint and the approval server alike:
//!
//! - at most `max_connections` connections at once, and never more than a quarter of the
//!   process's open-file limit, so that a flood of connections cannot take every descriptor;
//! - a client that does not send a request's headers within `header_timeout` (on a new
//!   connection, or on a keep-alive connection between requests) is disconnected;
//! - at the cap, a new connection takes the place of the oldest idle one (a connection with no
//!   request in progress: one that has sent nothing yet, or half a header, or sits between
//!   requests). When every connection is busy, the new one is closed at once.
//!
//! So half-open connections cost at most `header_timeout` each, and cannot keep a real client
//! out: it takes the place of one of them.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::connect_info::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::settings::{Invalid, secs};

/// What one HTTP listener accepts: `max_connections` and `header_timeout_secs` of `[listen]`
/// (the MCP endpoint) and of `[approvals]` (the approval server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Most connections open at once; further ones wait in the kernel's queue.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and the longest an idle keep-alive
    /// connection stays open between requests.
    pub header_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits { max_connections: 256, header_timeout: Duration::from_secs(10) }
    }
}

impl ListenerLimits {
    /// `max_connections` and `header_timeout_secs` of a listener's section.
    pub fn validate(
        section: &str,
        max_connections: Option<usize>,
        header_timeout_secs: Option<u64>,
    ) -> Result<ListenerLimits, Invalid> {
        let default = ListenerLimits::default();
        let max_connections = max_connections.unwrap_or(default.max_connections);
        if max_connections == 0 {
            return Err(Invalid::new(format!("{section}.max_connections"), "must be at least 1"));
        }
        let header_timeout =
            secs(&format!("{section}.header_timeout_secs"), header_timeout_secs, default.header_timeout)?;
        Ok(ListenerLimits { max_connections, header_timeout })
    }
}

/// The local address of the connection a request came on (the address the client reached,
/// where the listener is bound to a wildcard), in each request's extensions beside axum's
/// `ConnectInfo` (the peer's). The handshake of the approval server names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddr(pub std::net::SocketAddr);

/// The connections of one listener, by accept order.
#[derive(Default)]
struct Registry {
    open: Mutex<BTreeMap<u64, Conn>>,
}

struct Conn {
    /// Requests in progress, from the call until the response body is dropped.
    busy: Arc<AtomicUsize>,
    /// Told to close the connection.
    evict: Arc<Notify>,
}

impl Registry {
    fn len(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }

    /// Closes the oldest connection with no request in progress; false when all are busy.
    fn evict_oldest_idle(&self) -> bool {
        let Ok(mut open) = self.open.lock() else { return false };
        let Some(id) = open.iter().find(|(_, c)| c.busy.load(Ordering::Acquire) == 0).map(|(id, _)| *id) else {
            return false;
        };
        if let Some(conn) = open.remove(&id) {
            conn.evict.notify_one();
        }
        true
    }

    fn remove(&self, id: u64) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&id);
        }
    }
}

/// A request target that names its host (`GET http://HOST/path`, or HTTP/2's `:authority`) is
/// the request's host, whatever its Host header says (RFC 9112 3.2.2, RFC 9113 8.3.1): the Host
/// header is set to it, so the Host checks judge the host the request is really for.
fn host_from_target(req: &mut hyper::Request<Body>) {
    let target = req.uri().authority().and_then(|a| hyper::header::HeaderValue::from_str(a.as_str()).ok());
    if let Some(value) = target {
        req.headers_mut().insert(hyper::header::HOST, value);
    }
}

/// The connection cap in effect: the configured one, lowered to a quarter of the open-file
/// limit.
fn effective_cap(configured: usize) -> usize {
    let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) else {
        return configured;
    };
    let quarter = usize::try_from(soft / 4).unwrap_or(usize::MAX).max(1);
    if quarter < configured {
        info!(configured, cap = quarter, "connection cap lowered to a quarter of the open-file limit");
    }
    configured.min(quarter)
}

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting and asks every
/// connection to close once its request in flight is answered. Returns when every connection
/// has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cap = effective_cap(limits.max_connections);
    let registry = Arc::new(Registry::default());
    let (closing_tx, closing) = watch::channel(false);
    // Completes when every connection task has ended (each holds a clone).
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or the like: wait instead of spinning.
                    warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if registry.len() >= cap && !registry.evict_oldest_idle() {
            debug!(cap, "every connection is busy: a new one is closed");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        // Unknown only when the socket is already gone; the handshake then proves nothing.
        let local = stream.local_addr().ok().map(LocalAddr);
        next_id += 1;
        let id = next_id;
        let busy = Arc::new(AtomicUsize::new(0));
        // Whether a first request has arrived: until then hyper may still be telling HTTP/1
        // from HTTP/2, where its own header timeout does not run yet.
        let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let evict = Arc::new(Notify::new());
        if let Ok(mut open) = registry.open.lock() {
            open.insert(id, Conn { busy: busy.clone(), evict: evict.clone() });
        }
        let service = hyper::service::service_fn({
            let router = router.clone();
            let seen = seen.clone();
            move |req: hyper::Request<Incoming>| {
                seen.store(true, Ordering::Release);
                let guard = Busy::enter(&busy);
                let mut req = req.map(Body::new);
                host_from_target(&mut req);
                req.extensions_mut().insert(ConnectInfo(remote));
                if let Some(local) = local {
                    req.extensions_mut().insert(local);
                }
                let router = router.clone();
                async move {
                    let resp = router.oneshot(req).await.unwrap_or_else(|e| match e {});
                    Ok::<_, Infallible>(resp.map(|inner| Guarded { inner, _busy: guard }))
                }
            }
        });
        let builder = builder.clone();
        let mut closing = closing.clone();
        let registry = registry.clone();
        let alive = alive_tx.clone();
        let first_request_by = tokio::time::sleep(limits.header_timeout);
        tokio::spawn(async move {
            let _alive = alive;
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::pin!(first_request_by);
            let mut asked = false;
            let mut waiting_first = true;
            loop {
                tokio::select! {
                    () = &mut first_request_by, if waiting_first => {
                        waiting_first = false;
                        if !seen.load(Ordering::Acquire) {
                            debug!("no request within the header timeout: connection closed");
                            break;
                        }
                    }
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            debug!("connection ended: {e}");
                        }
                        break;
                    }
                    () = evict.notified() => {
                        debug!("idle connection closed to make room");
                        break;
                    }
                    changed = closing.changed(), if !asked => {
                        asked = true;
                        if changed.is_ok() {
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            registry.remove(id);
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
    Ok(())
}

/// Counts a request in progress until dropped (with its response body).
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(count: &Arc<AtomicUsize>) -> Busy {
        count.fetch_add(1, Ordering::AcqRel);
        Busy(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection counted as busy until it is sent or dropped.
struct Guarded {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
