//! mcp-gate: a transparent MCP proxy that puts a person (or a reviewer model) between an AI
//! agent and the tools it calls.
//!
//! # Layout
//!
//! The folders follow a message along its path, lower layers first; a module uses only those
//! above it in this list (a test checks that there are no cycles):
//!
//! - [`wire`]: what travels, before anything is decided about it. Every message is read strictly
//!   and made canonical by [`wire::jsonrpc::strict`] (what two parsers could read differently is
//!   refused), then parsed into the raw envelope of [`wire::jsonrpc`] (params and results stay those
//!   canonical bytes). Newline framing, the SSE codec, and [`wire::era`], which decides the protocol
//!   era of each request so that what the proxy writes itself takes that era's shape.
//! - [`settings`]: what the settings of every subsystem share: [`settings::Invalid`], the error
//!   that names the wrong key. Each subsystem owns its sections of `proxy.toml`, as written and
//!   validated, usually in a `settings` module of its own: [`upstream::settings`] (`[proxy]`,
//!   `[upstream]`, `[servers.NAME]`), [`downstream::settings`] (`[listen]`, `[stdio]`),
//!   [`http::listener::ListenerLimits`], [`approval::settings`] (`[approvals]`, `[[workflows]]`),
//!   [`review::settings`] (`[providers.NAME]` and the `ai_*` keys of a workflow),
//!   [`server::notify::settings`] (`[[webhooks]]`), [`identity`] (`[[approvers]]`, `[[agents]]`),
//!   [`metrics::settings`] (`[metrics]`), [`traces::settings`] (`[tracing]`), [`logging`] (`[log]`)
//!   and [`policy`] (`[policy]`, `[[rules]]`).
//! - [`identity`], [`visible`], [`random`], [`secret`]: who is asking (approver and agent tokens,
//!   compared in constant time; no agent holds an approver's token), how untrusted text is shown to a
//!   person (invisible characters marked), random bytes (failing closed: no randomness refuses the
//!   work), tokens and keys held as secrets (wiped when dropped, never printed); [`browser`] opens a URL for the person at this
//!   machine.
//! - [`logging`]: `tracing` to stderr as text or JSON lines (`MCP_GATE_LOG_FORMAT`).
//! - [`metrics`]: the process's Prometheus registry; what happens elsewhere updates it through
//!   small named functions, and the approval server renders it at `/metrics`.
//! - [`http`]: what both HTTP servers share: the bounded [`http::listener`], the request
//!   [`http::guard`] (Host/Origin, bearer tokens) and the [`http::health`] probes.
//! - [`upstream`]: the transports to the servers behind the proxy ([`upstream::stdio`] for a child
//!   process, [`upstream::streamable_http`], [`upstream::legacy_sse`]). They move messages and know
//!   nothing of policy or routing.
//! - [`gate`]: the seam on the `tools/call` path. The session asks a [`gate::Gate`] whether a call
//!   goes upstream, is answered by the proxy, or waits; [`gate::tools`] is each upstream's tool list
//!   as the policy needs it.
//! - [`traces`]: OpenTelemetry traces over OTLP ([`traces::settings`]: `[tracing]`), off by
//!   default: a wrapper around the [`gate::Gate`] gives each `tools/call` a span (its parent the
//!   `traceparent` of the request's `_meta`), which the approval gate fills in through small
//!   named functions ([`traces::decision`], [`traces::approval`]).
//! - [`session`]: one client's session, an actor that owns the id maps and routes. It gives each
//!   request a fresh id for the upstream it belongs to ([`session::merge`] holds the pure helpers for
//!   several upstreams: exposed names, merged capabilities, cursors), sends it through that
//!   upstream's transport and maps the answer back.
//! - [`downstream`]: where clients come in: [`downstream::stdio`] when the client started us
//!   (with [`downstream::busy_poll`], its polling of the pipes while messages come close together),
//!   [`downstream::http`] for `mcp-gate serve` (its sessions, the response stream of each message,
//!   `POST`/`GET`/`DELETE`, and the refusals with their HTTP statuses).
//! - [`policy`]: the compiled rules (pure, first match wins, fails closed).
//! - [`store`]: the database (SQLite, or PostgreSQL shared by replicas: [`store::db`] runs the
//!   same statements on both, [`store::listen`] hears other replicas' changes), the only module
//!   that speaks SQL: approval requests, votes,
//!   claims, gate tasks ([`store::tasks`]), and the hash-chained [`store::audit`] log where every
//!   decision lands; in stdio mode the event loop commits the deferred audit rows when no call is
//!   in flight ([`store::idle`]). Its [`store::Clock`] is where the store, the approvals and the sweeper read the
//!   time (a test holds it still with tokio's paused time).
//! - [`review`]: the AI reviewer, a model asked inline against written guidelines.
//! - [`approval`]: the gate of a real run, [`approval::ApprovalGate`]. It evaluates the policy and
//!   lets the call through, answers with a denial, or holds it: held calls are approval requests in
//!   the store; callers wait on them or get the approval URL at once. A held call belongs to its
//!   caller: cancelled or disconnected, it is never run for anybody, and the identical retry runs
//!   the approval once. [`approval::channel`] chooses how each held call reaches its client (task,
//!   input_required, elicitation, wait or fail fast) and when a client that waits must be answered.
//!   A call made as a task is answered at once with a task of the gate's own ([`approval::tasks`])
//!   that runs once approved. A 2026-07-28 client that takes URL elicitation is answered at once
//!   with `input_required` (open the approval page) and continues on its retry, which brings back a
//!   signed `requestState` ([`approval::state`]) that is used once. A workflow with
//!   `approval_type = "ai_driven"` is decided first by the
//!   reviewer; what it is unsure of goes to people. Every change of a request is published on
//!   [`approval::ApprovalService::changes`].
//! - [`server`]: the approval server ([`server::web`]: JSON API, pages and event stream, over the
//!   same [`approval::ApprovalService`] core, which wakes the waiting calls; [`server::web::signin`] turns
//!   `mcp-gate approvals open` into a one-time link that signs a browser in); the per-machine
//!   [`server::hub`] (the processes of one machine that share a database share one approval server);
//!   the [`server::handshake`] by which both ends prove they know a token, and for which listener,
//!   before it travels; the [`server::notify`] webhooks and desktop notifications (and, in each
//!   process whose stderr is a terminal, one line per call it holds).
//! - At the top, what nothing below imports. [`config`] loads `proxy.toml` (figment: defaults, the
//!   file, `MCP_GATE_` variables) into a [`config::RawConfig`] made of the subsystems' raw
//!   sections, has each subsystem validate its own into a [`config::Config`] made of their
//!   settings (it adds the file to the key an error names, and expands `${VAR}` for them), and
//!   explains the result for `check-config`. [`app`] is the composition root that wires a run from
//!   it; [`cli`] is the command line (with [`cli::approvals`], the `mcp-gate approvals` client of
//!   the API); [`demo`] is `mcp-gate demo`.

pub mod app;
pub mod approval;
pub mod browser;
pub mod cli;
pub mod config;
pub mod demo;
pub mod downstream;
pub mod gate;
pub mod http;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod random;
pub mod review;
pub mod secret;
pub mod server;
pub mod session;
pub mod settings;
pub mod store;
pub mod traces;
pub mod upstream;
pub mod visible;
pub mod wire;
