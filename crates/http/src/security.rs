//! Headers on every response: `X-Content-Type-Options: nosniff`, `Referrer-Policy:
//! no-referrer` (pages and links carry tokens in their URLs), and a
//! `Content-Security-Policy` that allows only the platform's own scripts (no inline
//! script anywhere), its own styles, connections and frames. No page may be framed by
//! another site (`frame-ancestors 'none'`, and `X-Frame-Options: DENY`) except the embed
//! page and the terminal pages, which the platform's own pages and the configured LMS
//! origins (`[ui] embed_origins`) may frame. Terminal pages also allow inline styles:
//! xterm.js styles its own elements at run time.

use crate::HttpConfig;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// What a page is, for its framing and styles: set by its handler as a response
/// extension; responses without one get the strictest policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// `/embed/{token}`: for an LMS iframe.
    Embed,
    /// The terminal page and its replay: framed by the learner, embed and operator pages.
    Terminal,
}

const BASE: &str = "default-src 'none'; script-src 'self'; img-src 'self' data:; \
     font-src 'self'; connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'";

/// The three policies, built once from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Policies {
    strict: HeaderValue,
    embed: HeaderValue,
    terminal: HeaderValue,
}

impl Policies {
    pub(crate) fn new(cfg: &HttpConfig) -> Self {
        let mut ancestors = String::from("'self'");
        for o in cfg.embed_origins() {
            ancestors.push(' ');
            ancestors.push_str(o);
        }
        let value = |style: &str, frame: &str| {
            HeaderValue::from_str(&format!(
                "{BASE}; style-src {style}; frame-ancestors {frame}"
            ))
            .expect("origins were checked to be header-safe")
        };
        Self {
            strict: value("'self'", "'none'"),
            embed: value("'self'", &ancestors),
            terminal: value("'self' 'unsafe-inline'", &ancestors),
        }
    }
}

/// Middleware: the security headers on every response.
pub(crate) async fn headers(
    State(policies): State<Policies>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = next.run(req).await;
    let kind = resp.extensions().get::<PageKind>().copied();
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    let csp = match kind {
        None => {
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            &policies.strict
        }
        Some(PageKind::Embed) => &policies.embed,
        Some(PageKind::Terminal) => &policies.terminal,
    };
    h.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_embed_and_terminal_pages_name_the_lms() {
        let cfg = HttpConfig::new(
            &["https://lms.example".into()],
            &[],
            crate::ServerLimits::default(),
        )
        .unwrap();
        let p = Policies::new(&cfg);
        let s = |v: &HeaderValue| v.to_str().unwrap().to_string();
        assert!(s(&p.strict).contains("frame-ancestors 'none'"));
        assert!(!s(&p.strict).contains("lms.example"));
        for v in [&p.embed, &p.terminal] {
            assert!(
                s(v).contains("frame-ancestors 'self' https://lms.example"),
                "{}",
                s(v)
            );
        }
        for v in [&p.strict, &p.embed, &p.terminal] {
            assert!(s(v).contains("script-src 'self';"), "{}", s(v));
            assert!(!s(v).contains("script-src 'self' 'unsafe"), "{}", s(v));
        }
        assert!(s(&p.terminal).contains("style-src 'self' 'unsafe-inline'"));
        assert!(s(&p.embed).contains("style-src 'self';"));
    }
}
