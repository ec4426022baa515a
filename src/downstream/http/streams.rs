//! Where a session's messages go: the stream of the request they answer or relate to, or the
//! standalone GET stream, each bounded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::session::{Downstream, Route};
use crate::wire::jsonrpc::{self, Message, code};

/// One message on its way to an HTTP response; `last` ends a request's stream.
pub(super) struct Frame {
    pub(super) bytes: Bytes,
    pub(super) last: bool,
}

/// Most messages queued for one response stream. A client that reads its stream slower than
/// messages arrive does not make the proxy buffer without end: past this, its stream is closed,
/// ending with an error that says why.
pub(super) const STREAM_QUEUE: usize = 256;

/// The sending end of a response stream.
pub(super) struct FrameTx {
    pub(super) tx: mpsc::Sender<Frame>,
    /// What the stream ends with when it was closed for falling behind.
    pub(super) overflow: Arc<Mutex<Option<Bytes>>>,
}

/// The receiving end: the queued frames, then the overflow error if there was one.
pub(super) struct FrameRx {
    pub(super) rx: mpsc::Receiver<Frame>,
    pub(super) overflow: Arc<Mutex<Option<Bytes>>>,
}

pub(super) fn frame_channel(capacity: usize) -> (FrameTx, FrameRx) {
    let (tx, rx) = mpsc::channel(capacity);
    let overflow = Arc::new(Mutex::new(None));
    (FrameTx { tx, overflow: overflow.clone() }, FrameRx { rx, overflow })
}

/// Why a frame was not queued.
pub(super) enum Refused {
    /// The client is not keeping up: the stream must be closed.
    Full,
    /// The stream is gone.
    Closed,
}

impl FrameTx {
    pub(super) fn push(&self, frame: Frame) -> Result<(), Refused> {
        self.tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Refused::Full,
            mpsc::error::TrySendError::Closed(_) => Refused::Closed,
        })
    }

    pub(super) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Closes the stream (once this sender is dropped) with `reply` as its last message.
    pub(super) fn end_with(self, reply: Bytes) {
        warn!("a client read its response stream too slowly; the stream was closed");
        if let Ok(mut slot) = self.overflow.lock() {
            *slot = Some(reply);
        }
    }
}

impl FrameRx {
    pub(super) async fn recv(&mut self) -> Option<Frame> {
        match self.rx.recv().await {
            Some(frame) => Some(frame),
            None => {
                let bytes = self.overflow.lock().ok().and_then(|mut o| o.take())?;
                Some(Frame { bytes, last: true })
            }
        }
    }
}

/// The error a request's stream ends with when the client fell behind.
pub(super) fn overflow_reply(id: Option<Box<RawValue>>) -> Bytes {
    let text = format!(
        "the client read its response stream too slowly (more than {STREAM_QUEUE} messages queued); the stream was closed"
    );
    Bytes::from(Message::error(id, code::INTERNAL_ERROR, &text).to_bytes())
}

/// The response stream of one request in flight.
pub(super) struct OpenRequest {
    pub(super) tx: FrameTx,
    pub(super) since: Instant,
}

/// Open response streams of one session; the session's [`Downstream`].
#[derive(Default)]
pub(super) struct Streams {
    pub(super) inner: Mutex<StreamsInner>,
}

#[derive(Default)]
pub(super) struct StreamsInner {
    /// Request id (raw text, as the session sees it) -> its response stream.
    pub(super) by_request: HashMap<String, OpenRequest>,
    /// Standalone GET streams, newest last.
    pub(super) get_streams: Vec<FrameTx>,
    /// Shared sessions: our id -> the client's own id.
    pub(super) original_ids: HashMap<String, Box<RawValue>>,
}

impl Downstream for Streams {
    fn send(&self, msg: &Message, route: Route<'_>) {
        let Ok(mut inner) = self.inner.lock() else { return };
        match route {
            Route::Reply => {
                let Some(key) = msg.id_text().map(str::to_owned) else { return };
                let Some(OpenRequest { tx, .. }) = inner.by_request.remove(&key) else {
                    debug!(id = key, "response for a request whose stream is gone");
                    return;
                };
                let original = inner.original_ids.remove(&key);
                let client_id = original.clone().or_else(|| msg.id.clone());
                let bytes = match original {
                    Some(original) => {
                        let mut restored = Message { id: Some(original), ..Message::default() };
                        restored.result = msg.result.as_ref().map(|r| r.to_owned());
                        restored.error = msg.error.as_ref().map(|r| r.to_owned());
                        restored.extra = msg.extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                        restored.to_bytes()
                    }
                    None => msg.to_bytes(),
                };
                if let Err(Refused::Full) = tx.push(Frame { bytes: Bytes::from(bytes), last: true }) {
                    tx.end_with(overflow_reply(client_id));
                }
            }
            Route::Related(id) => {
                let bytes = match inner.original_ids.get(id) {
                    Some(original) => Bytes::from(with_subscription_id(msg, id, original)),
                    None => Bytes::from(msg.to_bytes()),
                };
                if let Some(OpenRequest { tx, .. }) = inner.by_request.get(id) {
                    match tx.push(Frame { bytes: bytes.clone(), last: false }) {
                        Ok(()) => return,
                        Err(Refused::Full) => {
                            let client_id =
                                inner.original_ids.remove(id).or_else(|| RawValue::from_string(id.to_owned()).ok());
                            if let Some(open) = inner.by_request.remove(id) {
                                open.tx.end_with(overflow_reply(client_id));
                            }
                            return;
                        }
                        Err(Refused::Closed) => {}
                    }
                }
                inner.send_unrelated(bytes);
            }
            Route::Unrelated => inner.send_unrelated(Bytes::from(msg.to_bytes())),
        }
    }
}

/// A notification of a `subscriptions/listen` stream names the stream by the request's id: in a
/// shared session that is the client's own id, not the one the session knew the request by.
pub(super) fn with_subscription_id(msg: &Message, ours: &str, original: &RawValue) -> Vec<u8> {
    let tagged = msg.params.as_deref().and_then(|p| {
        let mut params = jsonrpc::parse_object(p).ok()?;
        let mut meta = jsonrpc::parse_object(jsonrpc::get(&params, "_meta")?).ok()?;
        (jsonrpc::get(&meta, crate::wire::era::SUBSCRIPTION_META)?.get() == ours).then_some(())?;
        jsonrpc::set(&mut meta, crate::wire::era::SUBSCRIPTION_META, original.to_owned());
        jsonrpc::set(&mut params, "_meta", jsonrpc::object_to_raw(&meta));
        Some(jsonrpc::object_to_raw(&params))
    });
    match tagged {
        Some(params) => {
            Message { method: msg.method.clone(), params: Some(params), id: msg.id.clone(), ..Message::default() }
                .to_bytes()
        }
        None => msg.to_bytes(),
    }
}

impl Streams {
    /// Adds a standalone GET stream. Only the newest receives messages, so it replaces the
    /// others, which end: a client opening stream after stream neither makes the session keep
    /// them all nor holds a connection per stream (and so cannot take every connection).
    pub(super) fn open_get_stream(&self, tx: FrameTx) {
        if let Ok(mut inner) = self.inner.lock() {
            if !inner.get_streams.is_empty() {
                debug!("a newer GET stream replaces the session's older one");
            }
            inner.get_streams.clear();
            inner.get_streams.push(tx);
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.inner.lock().map(|i| i.by_request.len()).unwrap_or(0)
    }

    /// Ends every stream: requests still in flight are answered with an error.
    pub(super) fn close(&self, why: &str) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let open: Vec<_> = inner.by_request.drain().collect();
        for (key, OpenRequest { tx, .. }) in open {
            let id = inner.original_ids.remove(&key).or_else(|| RawValue::from_string(key).ok());
            let reply = Message::error(id, code::INTERNAL_ERROR, why);
            if let Err(Refused::Full) = tx.push(Frame { bytes: Bytes::from(reply.to_bytes()), last: true }) {
                tx.end_with(Bytes::from(reply.to_bytes()));
            }
        }
        inner.get_streams.clear();
    }
}

impl StreamsInner {
    pub(super) fn send_unrelated(&mut self, bytes: Bytes) {
        self.get_streams.retain(|tx| !tx.is_closed());
        let frame = Frame { bytes, last: false };
        if let Some(tx) = self.get_streams.last() {
            if let Err(Refused::Full) = tx.push(frame) {
                // A standalone stream that fell behind is closed; the client opens another.
                warn!("a client read its standalone stream too slowly; the stream was closed");
                self.get_streams.pop();
            }
            return;
        }
        // No standalone stream: any open request stream will do (if it has room).
        if let Some(OpenRequest { tx, .. }) = self.by_request.values().find(|open| !open.tx.is_closed()) {
            let _ = tx.push(frame);
            return;
        }
        debug!("message for the client dropped: no open stream");
    }
}
