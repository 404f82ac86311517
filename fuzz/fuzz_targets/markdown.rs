//! The Markdown renderer of exercise instructions (the page holds the learner's session
//! token): whatever the Markdown, the HTML it makes has only the elements and attributes
//! Markdown itself produces — raw HTML in the source never becomes markup — and no link or
//! image leads to a `javascript:`, `data:` or other script-capable URL, however the scheme
//! is spelled (case, entities, control characters, whitespace). Checked by a tokenizer of
//! its own over the output, not by the renderer's code.

#![no_main]

use libfuzzer_sys::fuzz_target;

/// The elements pulldown-cmark writes for CommonMark with tables and strikethrough, and the
/// attributes each may carry.
fn allowed(tag: &str, attr: &str) -> bool {
    match (tag, attr) {
        ("a", "href" | "title") => true,
        ("img", "src" | "alt" | "title") => true,
        ("ol", "start") => true,
        ("code", "class") => true,
        ("th" | "td", "style") => true,
        (
            "p" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "em" | "strong" | "del" | "code"
            | "pre" | "a" | "img" | "ul" | "ol" | "li" | "blockquote" | "hr" | "br" | "table"
            | "thead" | "tbody" | "tr" | "th" | "td",
            "",
        ) => true,
        _ => false,
    }
}

/// An attribute value as the browser reads it: character references decoded.
fn decode(v: &str) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(';').unwrap_or(rest.len());
        let name = &rest[1..end];
        let c = match name {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "colon" => Some(':'),
            "Tab" => Some('\t'),
            "NewLine" => Some('\n'),
            n if n.starts_with("#x") || n.starts_with("#X") => u32::from_str_radix(&n[2..], 16)
                .ok()
                .and_then(char::from_u32),
            n if n.starts_with('#') => n[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match c {
            Some(c) if end < rest.len() => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            _ => {
                // Not a reference we know: the browser would keep it; so do we, and a
                // scheme hidden behind one fails the scheme test below anyway.
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether the browser would load `url` (as written in an attribute) as something other
/// than a web page, mail address or relative link.
fn dangerous(url: &str) -> bool {
    let url = decode(url);
    // What URL parsers drop: leading C0 controls and spaces, tabs and newlines anywhere.
    let url: String = url
        .trim_start_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let scheme_end = url.find(|c: char| matches!(c, ':' | '/' | '?' | '#'));
    match scheme_end {
        Some(i) if url[i..].starts_with(':') => {
            let scheme = url[..i].to_ascii_lowercase();
            !matches!(scheme.as_str(), "http" | "https" | "mailto")
        }
        _ => false,
    }
}

/// Every tag in `html`, checked; panics on the first that is not allowed.
fn check(html: &str, md: &str) {
    let b = html.as_bytes();
    let mut i = 0;
    while let Some(off) = html[i..].find('<') {
        let start = i + off;
        let mut j = start + 1;
        if b.get(j) == Some(&b'/') {
            j += 1;
        }
        let name_start = j;
        while j < b.len() && b[j].is_ascii_alphanumeric() {
            j += 1;
        }
        let tag = &html[name_start..j];
        assert!(allowed(tag, ""), "element <{tag}> from {md:?}: {html}");
        // Attributes: name="value", values never holding a quote.
        loop {
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            match b.get(j) {
                Some(b'>') => {
                    j += 1;
                    break;
                }
                Some(b'/') if b.get(j + 1) == Some(&b'>') => {
                    j += 2;
                    break;
                }
                Some(_) => {}
                None => panic!("unterminated tag <{tag} from {md:?}: {html}"),
            }
            let a = j;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'-') {
                j += 1;
            }
            let attr = &html[a..j];
            assert!(
                !attr.is_empty() && allowed(tag, attr),
                "attribute {attr:?} on <{tag}> from {md:?}: {html}"
            );
            if html[j..].starts_with("=\"") {
                let v = j + 2;
                let len = html[v..].find('"').expect("a closed attribute value");
                let value = &html[v..v + len];
                assert!(!value.contains('<'), "{value:?} from {md:?}");
                if attr == "href" || attr == "src" {
                    assert!(!dangerous(value), "{attr}={value:?} from {md:?}: {html}");
                }
                j = v + len + 1;
            }
        }
        i = j;
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(md) = std::str::from_utf8(data) else {
        return;
    };
    let html = rnr_ui::pages::markdown(md);
    check(&html, md);
    // Rendering is a function of the text alone.
    assert_eq!(rnr_ui::pages::markdown(md), html);
});
