//! What both HTTP transports share (and the reviewer's model client borrows): the HTTP client and
//! its timeouts, the configured headers, and reading bodies and errors of responses.

use std::error::Error as _;
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Response, StatusCode};

use super::ConnectError;
use crate::wire::jsonrpc::{self, Message};

/// Time allowed to open a TCP (and TLS) connection.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks an upstream URL and builds the headers and client both HTTP transports use.
pub(crate) fn prepare(
    server: &str,
    url: &str,
    headers: &[(String, String)],
) -> Result<(reqwest::Url, reqwest::header::HeaderMap, reqwest::Client), ConnectError> {
    let http_error = |message: String| ConnectError::Http { server: server.to_owned(), message };
    let parsed = reqwest::Url::parse(url).map_err(|e| http_error(format!("invalid URL `{url}`: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(http_error(format!("invalid URL `{url}`: the scheme must be http or https")));
    }
    let headers = header_map(headers).map_err(|e| http_error(e.to_string()))?;
    let client = shared_client().map_err(|e| http_error(format!("cannot create the HTTP client: {}", describe(&e))))?;
    Ok((parsed, headers, client))
}

/// The HTTP client of the HTTP transports, one per process, built on first use.
///
/// Building a client loads the system's certificate authorities: about 5 ms each time, measured
/// here. With a client per connection, every session of `mcp-gate serve` paid that for each HTTP
/// upstream, and so did every reconnection. The clones share one connection pool; nothing of one
/// session's requests can reach another's through it, as every request carries its own headers
/// (the configured ones and the session's) and the client keeps no cookies.
fn shared_client() -> Result<reqwest::Client, reqwest::Error> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client.clone());
    }
    let built = build_client()?;
    Ok(CLIENT.get_or_init(|| built).clone())
}

/// Clients built so far.
#[cfg(test)]
static BUILT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A connect timeout, no overall timeout (response streams may stay open for as long as a tool
/// runs), and redirects followed only within an origin ([`same_origin_redirects`]).
fn build_client() -> Result<reqwest::Client, reqwest::Error> {
    #[cfg(test)]
    BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).redirect(same_origin_redirects()).build()
}

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 10;

/// A redirect that leaves the origin (scheme, host and port) of the URL a request was sent to.
#[derive(Debug, thiserror::Error)]
#[error("redirect to `{0}` refused: it leaves the origin of the configured URL")]
struct OtherOrigin(reqwest::Url);

/// Follows a redirect only to the origin the request was sent to, at most [`MAX_REDIRECTS`]
/// times. Every request carries the server's configured headers (an API key, say), and they go
/// only to the server they were configured for: a redirect elsewhere, or from `https` to `http`,
/// fails the request with an error that names where it pointed.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let leaves = attempt.previous().first().is_none_or(|first| first.origin() != attempt.url().origin());
        if leaves {
            let target = attempt.url().clone();
            attempt.error(OtherOrigin(target))
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    })
}

/// Whether a URL's host (`localhost`, an address, `[::1]`) is this machine.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A configured header that HTTP cannot carry.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("invalid header name `{0}`")]
    Name(String),
    #[error("invalid value for header `{0}`")]
    Value(String),
}

/// Validates the configured headers into a map.
pub(crate) fn header_map(headers: &[(String, String)]) -> Result<HeaderMap, HeaderError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| HeaderError::Name(name.clone()))?;
        let value = HeaderValue::from_str(value).map_err(|_| HeaderError::Value(name.clone()))?;
        map.append(header, value);
    }
    Ok(map)
}

/// A reqwest error with its causes, e.g. `error sending request: ...: connection refused`.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The first `max` characters of a body, for error messages.
pub(crate) fn excerpt(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut out: String = text.chars().take(max).collect();
    if text.chars().nth(max).is_some() {
        out.push_str("...");
    }
    out
}

/// `HTTP 500 Internal Server Error: <start of the body>`.
pub(crate) fn http_failure(status: StatusCode, body: &[u8]) -> String {
    let text = excerpt(body, 200);
    if text.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {text}") }
}

/// The media type of a response, lowercased, without parameters.
pub(crate) fn media_type(resp: &Response) -> String {
    resp.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Why a response body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("{}", describe(.0))]
    Read(reqwest::Error),
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
}

/// Reads a body of at most `limit` bytes; a longer one is an error.
pub(crate) async fn read_body(resp: &mut Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads at most `limit` bytes of a body (for error messages); the rest is dropped.
pub(crate) async fn read_body_prefix(resp: &mut Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    body
}

/// A JSON-RPC error body re-addressed to the proxy id `id`, when `body` is one.
pub(crate) fn recorrelated_error(body: &[u8], id: u64) -> Option<Message> {
    let mut msg = Message::parse(body).ok()?;
    if msg.error.is_none() || msg.method.is_some() {
        return None;
    }
    msg.id = Some(jsonrpc::number_id(id));
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_recorrelated_and_excerpted() {
        let msg =
            recorrelated_error(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"x"}}"#, 9).unwrap();
        assert_eq!(msg.id_text(), Some("9"));
        assert!(recorrelated_error(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#, 9).is_none());
        assert!(recorrelated_error(b"Not Found", 9).is_none());
        assert_eq!(excerpt(&[b'a'; 300], 200).len(), 203);
        assert_eq!(excerpt(" short \n".as_bytes(), 200), "short");
    }

    /// Connecting again, to the same server or another, builds no new client: each build costs
    /// milliseconds of loading certificate authorities.
    #[test]
    fn connections_share_one_client() {
        use std::sync::atomic::Ordering;
        prepare("a", "http://127.0.0.1:9/mcp", &[]).unwrap();
        let built = BUILT.load(Ordering::Relaxed);
        assert!(built >= 1);
        for (server, url) in
            [("a", "http://127.0.0.1:9/mcp"), ("b", "https://example.com/mcp"), ("c", "http://[::1]:1/sse")]
        {
            prepare(server, url, &[("X-Key".into(), "v".into())]).unwrap();
        }
        assert_eq!(BUILT.load(Ordering::Relaxed), built, "a connection built a client of its own");
        assert!(prepare("d", "ftp://example.com/", &[]).is_err(), "a URL is still checked");
    }

    /// A redirect within the server is followed; one to another origin (here another port of the
    /// same host) fails the request, and the other origin never sees it or its key.
    #[tokio::test]
    async fn redirects_stay_on_the_configured_origin() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use axum::Router;
        use axum::http::{HeaderMap as AxHeaders, StatusCode as AxStatus, header};
        use axum::routing::post;

        async fn listen(app: Router) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            format!("http://{addr}")
        }
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let other = listen(Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { "stolen" }
        }))
        .await;
        let away = format!("{other}/mcp");
        let app = Router::new()
            .route("/away", post(move || async move { (AxStatus::TEMPORARY_REDIRECT, [(header::LOCATION, away)]) }))
            .route("/moved", post(|| async { (AxStatus::PERMANENT_REDIRECT, [(header::LOCATION, "/mcp")]) }))
            .route("/loop", post(|| async { (AxStatus::TEMPORARY_REDIRECT, [(header::LOCATION, "/loop")]) }))
            .route(
                "/mcp",
                post(|headers: AxHeaders| async move {
                    format!("key {}", headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or("none"))
                }),
            );
        let up = listen(app).await;
        let (_, headers, client) = prepare("up", &up, &[("X-Api-Key".into(), "k1".into())]).unwrap();
        let post = |path: &str| client.post(format!("{up}{path}")).headers(headers.clone()).body("{}").send();

        let resp = post("/moved").await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.text().await.unwrap(), "key k1", "a redirect within the origin is followed, with its key");

        let err = post("/away").await.unwrap_err();
        let text = describe(&err);
        assert!(text.contains(&format!("redirect to `{other}/mcp` refused")), "{text}");
        assert_eq!(hits.load(Ordering::SeqCst), 0, "the other origin received the request");

        let err = post("/loop").await.unwrap_err();
        assert!(describe(&err).contains("too many redirects"), "{}", describe(&err));
    }
}
