//! The browser side: the terminal page and the xterm.js bundle that the build produced
//! (build.rs runs esbuild over terminal-client/) and embedded in the binary. The HTTP
//! layer serves them.

/// The bundled terminal client script, and where the page links it (the HTTP layer
/// serves it there).
pub const SCRIPT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rnr-terminal.js"));
pub const SCRIPT_PATH: &str = "/assets/rnr-terminal.js";
/// Its stylesheet.
pub const STYLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rnr-terminal.css"));
pub const STYLE_PATH: &str = "/assets/rnr-terminal.css";

/// What the terminal page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageMode {
    /// The live terminal (owner or viewer, as the token in the URL says).
    Live,
    /// The terminal's recording, played back.
    Replay,
}

impl PageMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Replay => "replay",
        }
    }
}

/// The page for terminal `id`; the script reads the token from the page's URL.
pub fn page(id: &str, mode: PageMode) -> String {
    // The id is only echoed after validation; the token stays in the URL for the script.
    let id: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let mode = mode.as_str();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rootnroll terminal {id}</title>
<link rel="stylesheet" href="{STYLE_PATH}">
</head><body data-terminal="{id}" data-mode="{mode}">
<div id="bar"><span id="state" data-state="connecting">connecting</span><span id="role"></span><span id="info"></span></div>
<div id="term"></div>
<script src="{SCRIPT_PATH}"></script>
</body></html>"#
    )
}
