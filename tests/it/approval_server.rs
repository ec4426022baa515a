//! The approval server: API auth and errors, sign-in, CSRF, Host/Origin checks, escaping.

use std::sync::Arc;
use std::time::Duration;

use mcp_gate::approval::{ApprovalService, ApprovalSettings};
use mcp_gate::config::Config;
use mcp_gate::identity::{Credentials, Principal};
use mcp_gate::server::web::WebState;
use mcp_gate::store::{Location, Status, Store};
use reqwest::redirect::Policy;
use serde_json::{Value, json};

const TOKEN: &str = "test-approver-token-0123456789";

struct Server {
    base: String,
    approvals: Arc<ApprovalService>,
    http: reqwest::Client,
}

async fn server() -> Server {
    server_with(Default::default()).await
}

async fn server_with(approvers: Credentials) -> Server {
    let config = Config::from_toml("", "empty.toml").unwrap();
    let store = Store::open(Location::Memory).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let settings = ApprovalSettings {
        wait: Duration::ZERO,
        public_url: base.clone(),
        expiry_by_risk: config.approvals.expiry_by_risk,
        workflows: config.approvals.workflows.clone(),
        redact: Vec::new(),
        ..ApprovalSettings::default()
    };
    let approvals = ApprovalService::new(store, config.policy.clone(), settings);
    let state = WebState::new(approvals.clone(), TOKEN.into(), approvers, Vec::new());
    tokio::spawn(mcp_gate::server::web::serve(listener, state, std::future::pending()));
    let http = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
    Server { base, approvals, http }
}

/// Holds one call with the zero-config policy and returns its approval id.
async fn pending(s: &Server, arguments: Value) -> String {
    super::common::hold_call(&s.approvals, "delete_file", "agent-x", arguments).await
}

#[tokio::test]
async fn api_requires_the_token_and_reports_stable_errors() {
    let s = server().await;
    let resp = s.http.get(format!("{}/api/v1/approvals", s.base)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "unauthorized");
    let resp = s.http.get(format!("{}/api/v1/approvals", s.base)).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(resp.status(), 401);

    let id = pending(&s, json!({"path": "/etc/hosts"})).await;
    let list: Value = s
        .http
        .get(format!("{}/api/v1/approvals?status=pending", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let item = &list["approvals"][0];
    assert_eq!(item["id"], id);
    for key in ["status", "server", "tool", "arguments", "agent", "risk", "rule", "created_at", "expires_at", "url"] {
        assert!(item.get(key).is_some(), "listing has {key}: {item}");
    }
    assert_eq!(item["arguments"]["path"], "/etc/hosts");
    assert_eq!(item["agent"], "agent-x");

    let resp = s
        .http
        .post(format!("{}/api/v1/approvals/{id}/deny", s.base))
        .bearer_auth(TOKEN)
        .json(&json!({"notes": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "reason_required");
    let resp =
        s.http.post(format!("{}/api/v1/approvals/nope/approve", s.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    let resp = s
        .http
        .post(format!("{}/api/v1/approvals/{id}/approve", s.base))
        .bearer_auth(TOKEN)
        .json(&json!({"notes": "looks fine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "approved");
    let resp = s
        .http
        .post(format!("{}/api/v1/approvals/{id}/deny", s.base))
        .bearer_auth(TOKEN)
        .json(&json!({"reason": "late"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409, "decided requests cannot be decided again");

    let detail: Value = s
        .http
        .get(format!("{}/api/v1/approvals/{id}", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let history = detail["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["notes"], "looks fine");
}

/// `GET /api/v1/hub` says who serves; `POST /api/v1/hub/announce` re-publishes a change made by
/// another process, marked as relayed, and only for the shared token.
#[tokio::test]
async fn hub_endpoints_describe_the_server_and_relay_changes() {
    let mut approvers = Credentials::default();
    approvers.add("alice-token-0123456789", Principal::named("alice"));
    let s = server_with(approvers).await;
    let hub = format!("{}/api/v1/hub", s.base);
    assert_eq!(s.http.get(&hub).send().await.unwrap().status(), 401);
    let info: Value = s.http.get(&hub).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["service"], "mcp-gate");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["pid"], std::process::id());
    assert_eq!(info["database"], Value::Null, "an in-memory database is never shared");

    let id = pending(&s, json!({"path": "/tmp/announced"})).await;
    let mut changes = s.approvals.changes.subscribe();
    let announce =
        |token: &str, body: Value| s.http.post(format!("{hub}/announce")).bearer_auth(token).json(&body).send();
    let note = json!({"kind": "requested", "id": id, "actor": "agent-x"});
    let resp = announce("alice-token-0123456789", note.clone()).await.unwrap();
    assert_eq!(resp.status(), 403, "a named approver cannot announce");
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "forbidden");
    assert_eq!(announce("wrong", note.clone()).await.unwrap().status(), 401);
    let resp = announce(TOKEN, json!({"kind": "exploded", "id": id})).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "bad_request");
    let resp = announce(TOKEN, json!({"kind": "approved", "id": "apr_nope"})).await.unwrap();
    assert_eq!(resp.status(), 404);

    assert_eq!(announce(TOKEN, note).await.unwrap().status(), 204);
    let change = tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.unwrap().unwrap();
    assert_eq!(change.kind.as_str(), "requested");
    assert_eq!(change.approval.id, id);
    assert_eq!(change.actor.as_deref(), Some("agent-x"));
    assert!(change.relayed, "marked as made elsewhere, so no process forwards it again");
    assert!(changes.try_recv().is_err(), "published once");
}

fn cookie_of(resp: &reqwest::Response) -> String {
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    set.split(';').next().unwrap().to_owned()
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("csrf field") + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_page_needs_sign_in_csrf_and_same_origin() {
    let s = server().await;
    let id = pending(&s, json!({"path": "<script>alert(1)</script>"})).await;
    let page = format!("{}/approvals/{id}", s.base);

    // The URL the model gets holds no secret: without a session it leads to sign-in.
    let resp = s.http.get(&page).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], format!("/login?next=/approvals/{id}"));

    let resp =
        s.http.post(format!("{}/login", s.base)).form(&[("token", "wrong"), ("next", "/")]).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = s
        .http
        .post(format!("{}/login", s.base))
        .form(&[("token", TOKEN), ("next", &format!("/approvals/{id}"))])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], format!("/approvals/{id}"));
    let cookie = cookie_of(&resp);
    // An open redirect is refused.
    let resp = s
        .http
        .post(format!("{}/login", s.base))
        .form(&[("token", TOKEN), ("next", "//evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["location"], "/");

    let resp = s.http.get(&page).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    // `no-referrer` would make browsers send `Origin: null` with the forms, and be refused.
    assert_eq!(resp.headers()["referrer-policy"], "same-origin");
    let html = resp.text().await.unwrap();
    assert!(html.contains("delete_file") && html.contains(&id));
    assert!(!html.contains("<script>alert(1)</script>"), "arguments are escaped");
    assert!(html.contains("&lt;script&gt;"));
    let csrf = csrf_of(&html);

    // GET never changes state.
    let resp = s.http.get(format!("{page}/approve")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    // Without the CSRF token, or from another origin or host: refused.
    let post = |path: &str| s.http.post(format!("{page}/{path}")).header("cookie", &cookie);
    let resp = post("approve").form(&[("csrf", "forged"), ("notes", "")]).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let resp =
        post("approve").header("origin", "http://evil.example").form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let resp = post("approve").header("host", "evil.example").form(&[("csrf", csrf.as_str())]).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(s.approvals.store.get_approval(&id).await.unwrap().unwrap().status, Status::Pending);

    // A deny without a reason is refused; an approve with the token goes through.
    let resp = post("deny").form(&[("csrf", csrf.as_str()), ("reason", " ")]).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert!(resp.headers()["location"].to_str().unwrap().contains("error="));
    let resp = post("approve").form(&[("csrf", csrf.as_str()), ("notes", "checked")]).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    let a = s.approvals.store.get_approval(&id).await.unwrap().unwrap();
    assert_eq!(a.status, Status::Approved);
    assert_eq!(a.decided_by.as_deref(), Some("operator"));
}

/// The status line of one raw HTTP/1.1 request `head` (request line and headers, without the
/// blank line) sent to `base`.
async fn raw_status(base: &str, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    conn.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
}

/// DNS rebinding through forms a browser never sends but another client or a proxy may: a Host
/// that only starts like a loopback address, a request target naming another host (which, by
/// RFC 9112, is the request's host whatever the Host header says), and a second Host or Origin
/// header. Each is refused; the ordinary forms still pass.
#[tokio::test]
async fn lookalike_hosts_and_foreign_request_targets_are_refused() {
    let s = server().await;
    let port = s.base.rsplit(':').next().unwrap().to_owned();
    let get = |target: &str, headers: &str| format!("GET {target} HTTP/1.1\r\n{headers}");
    let own = format!("Host: 127.0.0.1:{port}");

    for host in ["[::1]", &format!("[::1]:{port}"), &format!("LOCALHOST:{port}"), &format!("localhost:{port}")] {
        let status = raw_status(&s.base, &get("/login", &format!("Host: {host}"))).await;
        assert!(status.contains(" 200 "), "Host {host}: {status}");
    }
    let status = raw_status(&s.base, &get(&format!("http://127.0.0.1:{port}/login"), &own)).await;
    assert!(status.contains(" 200 "), "a target naming this server: {status}");

    let refused = [
        ("a Host that continues after [::1]", get("/login", "Host: [::1].evil.example")),
        ("a Host glued to [::1]", get("/login", &format!("Host: [::1]evil.example:{port}"))),
        ("an Origin that continues after [::1]", get("/login", &format!("{own}\r\nOrigin: http://[::1].evil.example"))),
        ("a target naming another host", get("/login", &own).replacen("/login", "http://evil.example/login", 1)),
        ("a second Host", get("/login", &format!("{own}\r\nHost: evil.example"))),
        (
            "a second Origin",
            get("/login", &format!("{own}\r\nOrigin: http://localhost\r\nOrigin: http://evil.example")),
        ),
    ];
    for (what, head) in refused {
        let status = raw_status(&s.base, &head).await;
        assert!(status.contains(" 403 ") || status.contains(" 400 "), "{what}: {status}");
    }
}
