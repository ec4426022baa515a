//! Opening a URL in the browser of the person at this machine, for `mcp-gate approvals open` and
//! the desktop notifications' "Open" action.

/// The program that opens a URL in the person's browser on this platform, if there is one to
/// try: `open` on macOS; `xdg-open` elsewhere, only when a graphical session exists.
pub fn opener() -> Option<&'static str> {
    if cfg!(target_os = "macos") {
        return Some("open");
    }
    let has = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    (cfg!(unix) && (has("DISPLAY") || has("WAYLAND_DISPLAY"))).then_some("xdg-open")
}

/// Starts the opener on `url` without waiting for it; whether it could be started.
pub fn launch(url: &str) -> bool {
    let Some(program) = opener() else { return false };
    let started = std::process::Command::new(program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match started {
        Ok(mut child) => {
            // Reaped in the background; never waited for here (an opener may run as long as the
            // browser it started).
            std::thread::spawn(move || child.wait());
            true
        }
        Err(_) => false,
    }
}
