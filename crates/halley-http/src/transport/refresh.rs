//! Client pull, as Netscape introduced it: `transport=refresh` answers at once with a small HTML
//! page of a channel's newest messages and a `Refresh` header that loads it again after `every`
//! seconds, its URL carrying the newest id shown (`last_id`), so that the next page marks what
//! came after it as new. It needs no script, no plugin and no held connection: the last resort of
//! a browser with scripting off behind a proxy that cuts every held request.

use std::fmt::Write;

use bytes::Bytes;
use halley_proto::{Channel, Message, MessageId};
use hyper::Response;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};

use crate::body::{Body, full};
use crate::error::ApiError;
use crate::query::Query;
use crate::state::App;

/// Messages a refresh page shows unless `lines` says otherwise.
pub const DEFAULT_REFRESH_LINES: usize = 20;
/// Most messages a refresh page shows (`lines`): the page is read whole at every refresh.
pub const MAX_REFRESH_LINES: usize = 100;
/// Seconds between refreshes unless `every` says otherwise.
pub const DEFAULT_REFRESH_SECONDS: u64 = 5;
/// Bounds of `every`, in seconds: a page reloaded more often than once a second is a request
/// loop; one reloaded less often than hourly is not live.
pub const REFRESH_SECONDS: std::ops::RangeInclusive<u64> = 1..=3600;

/// What a refresh page shows, from its query: the channel (one, exact), how many lines, how
/// often, and where the previous page ended.
pub struct Refresh {
    pub channel: Channel,
    pub lines: usize,
    pub every: u64,
    pub last: Option<MessageId>,
}

impl Refresh {
    pub fn from_query(
        patterns: &[halley_proto::Pattern],
        query: &Query,
        last: Option<MessageId>,
    ) -> Result<Refresh, ApiError> {
        let channel = match patterns {
            [one] => one.exact(),
            _ => None,
        }
        .ok_or_else(|| {
            ApiError::BadRequest("transport=refresh shows one channel, without wildcards".into())
        })?;
        let number = |name: &str, default: u64, range: std::ops::RangeInclusive<u64>| match query
            .get(name)
        {
            None => Ok(default),
            Some(text) => text
                .parse::<u64>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "{name} must be {} to {}",
                        range.start(),
                        range.end()
                    ))
                }),
        };
        Ok(Refresh {
            channel: channel.clone(),
            lines: number(
                "lines",
                DEFAULT_REFRESH_LINES as u64,
                1..=MAX_REFRESH_LINES as u64,
            )? as usize,
            every: number("every", DEFAULT_REFRESH_SECONDS, REFRESH_SECONDS)?,
            last,
        })
    }
}

/// The page, for a request to `path` with `query` (the next URL keeps every parameter but
/// `last_id`, which becomes the newest id shown).
pub async fn page(
    app: &App,
    refresh: Refresh,
    path: &str,
    raw_query: &str,
) -> Result<Response<Body>, ApiError> {
    let messages = app.engine.recent(&refresh.channel, refresh.lines).await?;
    let newest = messages.last().map(|m| m.id).or(refresh.last);
    let mut next = String::from(path);
    let kept: Vec<&str> = raw_query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.starts_with("last_id="))
        .collect();
    next.push('?');
    next.push_str(&kept.join("&"));
    if let Some(id) = newest {
        let _ = write!(next, "&last_id={id}");
    }
    let is_new = |m: &Message| {
        refresh
            .last
            .is_some_and(|l| m.id.epoch != l.epoch || m.id.offset > l.offset)
    };
    let title = escape(&refresh.channel.to_string());
    let mut html = String::with_capacity(512 + messages.len() * 96);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font:15px/1.5 system-ui,sans-serif;margin:1em 2em}}\
         ol{{padding-left:1.5em}}li.new{{font-weight:bold}}\
         small{{color:#666}}</style></head><body><h1>{title}</h1>\n<ol>\n"
    );
    for m in &messages {
        let class = if is_new(m) { " class=\"new\"" } else { "" };
        let _ = writeln!(html, "<li{class}>{}</li>", escape(m.line()));
    }
    let _ = write!(
        html,
        "</ol>\n<p><small>{} message{}; this page reloads every {} s \
         (<a href=\"{}\">now</a>).</small></p>\n</body></html>\n",
        messages.len(),
        if messages.len() == 1 { "" } else { "s" },
        refresh.every,
        escape(&next),
    );
    let mut response = Response::new(full(Bytes::from(html)));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Text only: no script, no image, nothing from elsewhere.
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("{}; url={next}", refresh.every)) {
        headers.insert("refresh", value);
    }
    Ok(response)
}

/// `text` as HTML text or attribute value.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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
