//! HTML of the pages, the Markdown renderer for instructions, and the static assets. Pages
//! are small server-rendered shells; the scripts in assets/ do the rest against the
//! learner and operator APIs.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
use rnr_checker::Exercise;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Markdown to HTML. Raw HTML in the source is shown as text, never interpreted: the page
/// holds the learner's session token. For the same reason a link or image whose URL could
/// run script (`javascript:`, `data:`, … see [`safe_url`]) is left out, its text kept.
pub fn markdown(md: &str) -> String {
    // Whether each open link and image is kept, to drop the end of one that is not.
    let mut links: Vec<bool> = Vec::new();
    let mut images: Vec<bool> = Vec::new();
    let parser = Parser::new_ext(md, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH)
        .filter_map(|e| match e {
            Event::Html(h) | Event::InlineHtml(h) => Some(Event::Text(h)),
            Event::Start(Tag::Link { ref dest_url, .. }) => {
                let keep = safe_url(dest_url);
                links.push(keep);
                keep.then_some(e)
            }
            Event::End(TagEnd::Link) => links.pop().unwrap_or(true).then_some(e),
            Event::Start(Tag::Image { ref dest_url, .. }) => {
                let keep = safe_url(dest_url);
                images.push(keep);
                keep.then_some(e)
            }
            Event::End(TagEnd::Image) => images.pop().unwrap_or(true).then_some(e),
            e => Some(e),
        });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, parser);
    out
}

/// Whether instructions may link to `url` (character references already decoded): a
/// relative URL, or one of `http:`, `https:`, `mailto:`. Every other scheme is refused,
/// however spelled: browsers ignore its case, leading spaces and control characters, and
/// tabs and newlines anywhere in it.
pub fn safe_url(url: &str) -> bool {
    let url: String = url
        .trim_start_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    match url.find([':', '/', '?', '#']) {
        Some(i) if url[i..].starts_with(':') => matches!(
            url[..i].to_ascii_lowercase().as_str(),
            "http" | "https" | "mailto"
        ),
        _ => true,
    }
}

fn shell(title: &str, body_attrs: &str, body: &str, script: Option<&Asset>) -> String {
    let script = script
        .map(|s| format!("<script src=\"{}\" defer></script>", s.path))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"{}\">{script}</head>\
         <body {body_attrs}>{body}</body></html>\n",
        esc(title),
        CSS.path
    )
}

pub fn index(list: &[(String, String, Vec<String>)]) -> String {
    let items: String = list
        .iter()
        .map(|(name, title, tags)| {
            let tags: String = tags
                .iter()
                .map(|t| format!("<span class=\"tag\">{}</span>", esc(t)))
                .collect();
            format!(
                "<li><a href=\"/exercises/{}\">{}</a> {tags}</li>",
                esc(name),
                esc(title)
            )
        })
        .collect();
    let body = format!(
        "<header class=\"bar\"><h1>rootnroll</h1><span class=\"sub\">Linux exercises on real \
         machines</span></header><main class=\"index\"><h2>Exercises</h2>\
         <ul class=\"exercises\">{}</ul></main>",
        if items.is_empty() {
            "<li>No exercises are installed.</li>".to_string()
        } else {
            items
        }
    );
    shell("Exercises — rootnroll", "", &body, None)
}

/// How the exercise page is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A page of its own.
    Page,
    /// Inside an LMS iframe: compact, and it tells its parent when all checks pass.
    Embed,
}

pub fn exercise(ex: &Exercise, learner_token: &str, mode: Mode) -> String {
    let title = &ex.manifest.title;
    let embed = mode == Mode::Embed;
    let back = if embed {
        String::new()
    } else {
        "<a class=\"back\" href=\"/exercises\">← Exercises</a>".into()
    };
    let body = format!(
        "<header class=\"bar\">{back}<h1>{title}</h1>\
           <span id=\"status\" class=\"status\" data-state=\"starting\">Starting your machine…</span>\
           <span id=\"timer\" class=\"timer\"></span>\
           <button id=\"extend\" type=\"button\" disabled>+ time</button>\
           <button id=\"reset\" type=\"button\" disabled>Reset</button></header>\
         <main class=\"exercise\">\
           <section class=\"side\">\
             <article class=\"instructions\">{instructions}</article>\
             <section class=\"checks\"><div class=\"checks-head\"><h2>Tasks</h2>\
               <button id=\"check\" type=\"button\" disabled>Check</button></div>\
               <p id=\"summary\" class=\"summary\"></p><ol id=\"tasks\"></ol></section>\
           </section>\
           <section class=\"terminal\"><div id=\"overlay\" class=\"overlay\">Starting your machine…</div>\
             <iframe id=\"term\" title=\"Terminal\" allow=\"clipboard-read; clipboard-write\"></iframe></section>\
         </main>",
        title = esc(title),
        instructions = markdown(&ex.instructions),
    );
    let attrs = format!(
        "class=\"{}\" data-exercise=\"{}\" data-learner=\"{}\" data-embed=\"{}\"",
        if embed { "embed" } else { "page" },
        esc(&ex.name),
        esc(learner_token),
        u8::from(embed)
    );
    shell(
        &format!("{title} — rootnroll"),
        &attrs,
        &body,
        Some(&EXERCISE_JS),
    )
}

pub fn error_page(title: &str, message: &str) -> String {
    let body = format!(
        "<header class=\"bar\"><h1>{}</h1></header><main class=\"index\"><p>{}</p>\
         <p><a href=\"/exercises\">All exercises</a></p></main>",
        esc(title),
        esc(message)
    );
    shell(title, "", &body, None)
}

pub fn operator_login(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<header class=\"bar\"><h1>rootnroll operator</h1></header><main class=\"index\">\
         <form method=\"post\" action=\"/operator/login\" class=\"login\">{error}\
         <label>API key <input type=\"password\" name=\"api_key\" autocomplete=\"off\" required></label>\
         <button type=\"submit\">Sign in</button></form>\
         <p class=\"sub\">Create a key with <code>rnr apikey create NAME</code>.</p></main>"
    );
    shell("Sign in — rootnroll operator", "", &body, None)
}

pub fn operator() -> String {
    let body = "<header class=\"bar\"><h1>rootnroll operator</h1>\
        <span id=\"capacity\" class=\"status\"></span>\
        <form method=\"post\" action=\"/operator/logout\"><button type=\"submit\">Sign out</button></form></header>\
        <main class=\"operator\"><table id=\"machines\"><thead><tr><th>Machine</th><th>Owner</th>\
        <th>Exercise</th><th>State</th><th>Age</th><th>Left</th><th>CPU</th><th>Memory</th><th></th></tr></thead>\
        <tbody></tbody></table><section id=\"detail\" class=\"detail\" hidden><h2 id=\"detail-title\"></h2>\
        <iframe id=\"watch\" title=\"Read-only terminal\"></iframe><h3>Check history</h3><ol id=\"history\"></ol></section></main>";
    shell("rootnroll operator", "", body, Some(&OPERATOR_JS))
}

/// A static file the pages link to; served at `path`, so the link and the route are one
/// string.
#[derive(Debug)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// The pages' stylesheet.
pub const CSS: Asset = Asset {
    path: "/assets/rnr-web.css",
    content_type: "text/css; charset=utf-8",
    body: include_str!("../assets/web.css"),
};
/// The exercise page's script.
pub const EXERCISE_JS: Asset = Asset {
    path: "/assets/rnr-exercise.js",
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("../assets/exercise.js"),
};
/// The operator view's script.
pub const OPERATOR_JS: Asset = Asset {
    path: "/assets/rnr-operator.js",
    content_type: "text/javascript; charset=utf-8",
    body: include_str!("../assets/operator.js"),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_shows_raw_html_as_text() {
        let html = markdown("# Title\n\nRun `ls`.\n\n<script>alert(1)</script>\n");
        assert!(html.contains("<h1>Title</h1>"));
        assert!(html.contains("<code>ls</code>"));
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
    }

    /// Found by fuzz/markdown: `[x](javascript:…)` became a live `javascript:` link.
    #[test]
    fn markdown_renders_no_script_links() {
        let html = markdown(
            "[a](javascript:alert(1)) [b](JaVaScRiPt:x) [c](&#106;avascript:x) \
             [d](java&#x09;script:x) [e](data:text/html,x) <vbscript:x> \
             ![i](javascript:x) [![j](data:image/png,x)](https://example.org/ok)\n\n\
             [ref]: javascript:alert(1)\n\n[k][ref] [l](/relative) [m](#frag) \
             [n](mailto:a@example.org) [o](http://example.org/a:b)\n",
        );
        // The safe links stay links, the others are their text alone.
        let hrefs: Vec<&str> = html
            .split("href=\"")
            .skip(1)
            .map(|h| &h[..h.find('"').unwrap()])
            .collect();
        assert_eq!(
            hrefs,
            [
                "https://example.org/ok",
                "/relative",
                "#frag",
                "mailto:a@example.org",
                "http://example.org/a:b"
            ],
            "{html}"
        );
        assert!(!html.contains("src="), "{html}");
        assert!(html.starts_with("<p>a b c d e vbscript:x i <a"), "{html}");
        assert!(!safe_url(" \u{1}javascript:x"));
        assert!(safe_url("folder/file:name") && safe_url("?q=a:b"));
    }

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }
}
