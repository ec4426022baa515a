//! The client-facing side: stdio (the client started us) and Streamable HTTP (`serve`).

pub mod http;
pub mod stdio;
