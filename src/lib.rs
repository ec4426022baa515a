//! mcp-gate: a transparent MCP proxy that puts a person (or a reviewer model) between an AI
//! agent and the tools it calls.
//!
//! # Layout
//!
//! A message from the client enters through a **downstream** ([`downstream::stdio`] when the client
//! started us, [`downstream::http`] for `mcp-gate serve`), is read strictly and made canonical by
//! [`jsonrpc::strict`] (what two parsers could read differently is refused), parsed into the raw
//! envelope of [`jsonrpc`] (params and results stay those canonical bytes) and handed to its
//! [`session`]. Messages from upstreams go through the same strict reading. The session is an actor
//! that owns the id maps and routes: it gives the request a fresh id for the upstream it belongs to
//! ([`router`] holds the pure helpers for several upstreams: exposed names, merged capabilities,
//! cursors), sends it through that upstream's **transport** ([`transport::child`] for a stdio
//! server, [`transport::http_client`] for Streamable HTTP, [`transport::sse_client`] for legacy
//! HTTP+SSE), and maps the answer back.
//!
//! What the proxy writes itself (its own results, merged results, list changes) takes the shape
//! of the client's protocol era, which [`era`] decides from each request.
//!
//! `tools/call` takes one detour: the session looks the tool up in the upstream's tool list
//! ([`tools`], fetched by the proxy itself when the client has not listed tools) and asks the
//! [`gate`] whether the call may go upstream.
//!
//! The gate of a real run is [`approval::ApprovalGate`]: it evaluates the compiled [`policy`]
//! (pure, first match wins, fails closed) and either lets the call through, answers with a denial,
//! or holds it. Held calls live in the SQLite [`store`] as approval requests; callers wait on them
//! or get the approval URL at once. The approval server in [`web`] (JSON API and pages) records
//! decisions through the same [`approval::Approvals`] core, which wakes the waiting calls. A held
//! call belongs to its caller: cancelled or disconnected, it is never run for anybody, and the
//! identical retry runs the approval once. Approvers, and agents connecting over HTTP, are known by
//! their own tokens ([`identity`]); workflows say who may vote, and nobody approves their own
//! request. A workflow with `approval_type = "ai_driven"` is decided first by the [`review`]
//! module's reviewer, a model asked inline against written guidelines; what it is unsure of goes to
//! people. Every decision lands in the hash-chained [`audit`] log. The processes of one machine
//! that share a database share one approval server: [`hub`] decides at start-up whether this
//! process serves it or follows the process that does, and hands it over when that one exits. Every
//! change of a request is published on [`approval::Approvals::changes`], which feeds the server's
//! event stream and, in the hub, the [`notify`] webhooks and desktop notifications (and, in each
//! process whose stderr is a terminal, one line per call it holds).
//!
//! Before a bearer token travels to the approval address, [`handshake`] has the listener prove it
//! knows the token (and the client prove it too). `mcp-gate approvals open` then asks for a
//! one-time link that signs a browser in ([`web::signin`]), so nobody has to find the token file.
//!
//! Untrusted text shown to a person (arguments, names, descriptions) goes through [`visible`],
//! which marks invisible and look-alike characters.
//!
//! Both HTTP servers (the MCP endpoint and the approval server) accept connections through
//! [`listener`], which caps them and times out clients that send nothing.
//!
//! [`config`] loads `proxy.toml`; [`cli`] is the command line; [`approver`] is
//! `mcp-gate approvals`, a client of the approval server's API; [`demo`] is `mcp-gate demo`.

pub mod approval;
pub mod approver;
pub mod audit;
pub mod cli;
pub mod config;
pub mod demo;
pub mod downstream;
pub mod era;
pub mod gate;
pub mod handshake;
pub mod hub;
pub mod identity;
pub mod jsonrpc;
pub mod listener;
pub mod notify;
pub mod policy;
pub mod random;
pub mod review;
pub mod router;
pub mod session;
pub mod store;
pub mod tools;
pub mod transport;
pub mod visible;
pub mod web;
