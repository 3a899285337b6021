//! Directory listings (`autoindex`): names HTML-escaped, links percent-encoded.

use http_proto::response;

use crate::{Http, Persist, Request, Response, Status};

impl Http {
    /// A directory listing (`autoindex`), names HTML-escaped and links percent-encoded.
    pub(crate) fn listing(
        &mut self,
        req: &Request<'_>,
        dir: &std::os::fd::OwnedFd,
        persist: Persist,
        head_only: bool,
    ) -> Response {
        let Some(files) = &self.files else { return Response::Whole };
        let names = match files.list(dir) {
            Ok(names) => names,
            Err(e) => {
                plugin_api::tracing::warn!(path = req.path(), error = %e, "could not list directory");
                return self.error(Status::INTERNAL_ERROR, persist, head_only, &[]);
            }
        };
        let title = html_escape(&http_proto::percent_decode(req.path()));
        let mut html = format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n\
             <body><h1>Index of {title}</h1>\n<ul>\n"
        );
        if req.path() != "/" {
            html.push_str("<li><a href=\"../\">../</a></li>\n");
        }
        for name in &names {
            html.push_str(&format!("<li><a href=\"{}\">{}</a></li>\n", href_escape(name), html_escape(name)));
        }
        html.push_str("</ul></body></html>\n");
        response::begin(&mut self.out, Status::OK, self.date.get());
        response::header(&mut self.out, "Content-Type", b"text/html; charset=utf-8");
        response::finish(&mut self.out, html.len() as u64, persist);
        if !head_only {
            self.out.extend_from_slice(html.as_bytes());
        }
        Response::Whole
    }
}

fn html_escape(s: &str) -> String {
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

/// Percent-encodes a name for a relative link (a trailing `/` of a directory kept).
fn href_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let (body, slash) = match name.strip_suffix('/') {
        Some(b) => (b, "/"),
        None => (name, ""),
    };
    for &b in body.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out.push_str(slash);
    // `./` first: a name with a colon must not read as a scheme.
    format!("./{out}")
}
