//! The web pages, built into the binary (no build step, no CDN, nothing to
//! install beside it): `/` the live wallboard, `/reports` the report page,
//! `/assets/<file>` their scripts and style sheet, from `assets/web/`.
//!
//! The files carry an `ETag` (a hash of their bytes) and `Cache-Control:
//! no-cache`: a browser keeps them and asks again with `If-None-Match`,
//! answered `304` until a new binary serves new files. The asset URLs carry
//! no version, so a longer `max-age` would leave a wall screen running old
//! scripts against a new server. The pages use relative URLs, so they also
//! work behind a reverse proxy under a sub-path.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The Content-Security-Policy of the pages: only their own scripts,
/// styles and API; no inline script. Framing is allowed (a Home Assistant
/// iframe card or a signage player may embed the wallboard).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'";

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// One embedded file.
#[derive(Debug)]
pub(super) struct Asset {
    /// The file name under `assets/web/`.
    pub(super) name: &'static str,
    /// Its `Content-Type`.
    pub(super) content_type: &'static str,
    /// Its bytes.
    pub(super) body: &'static [u8],
    /// A hash of the bytes, for the `ETag`.
    hash: u64,
}

impl Asset {
    const fn new(name: &'static str, content_type: &'static str, body: &'static [u8]) -> Self {
        Self {
            name,
            content_type,
            body,
            hash: fnv1a(body),
        }
    }

    /// The quoted entity tag.
    fn etag(&self) -> String {
        format!("\"{:016x}\"", self.hash)
    }
}

/// FNV-1a (64 bit), computed at compile time: an entity tag, not security.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The wallboard page.
pub(super) static INDEX: Asset = Asset::new(
    "index.html",
    HTML,
    include_bytes!("../../assets/web/index.html"),
);

/// The report page.
pub(super) static REPORTS: Asset = Asset::new(
    "reports.html",
    HTML,
    include_bytes!("../../assets/web/reports.html"),
);

/// What `/assets/<file>` serves.
pub(super) static ASSETS: [Asset; 4] = [
    Asset::new(
        "style.css",
        CSS,
        include_bytes!("../../assets/web/style.css"),
    ),
    Asset::new(
        "status.js",
        JAVASCRIPT,
        include_bytes!("../../assets/web/status.js"),
    ),
    Asset::new(
        "wallboard.js",
        JAVASCRIPT,
        include_bytes!("../../assets/web/wallboard.js"),
    ),
    Asset::new(
        "reports.js",
        JAVASCRIPT,
        include_bytes!("../../assets/web/reports.js"),
    ),
];

/// `GET /`: the wallboard.
pub(super) async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

/// `GET /reports`: the report page.
pub(super) async fn reports(headers: HeaderMap) -> Response {
    serve(&REPORTS, &headers)
}

/// `GET /assets/<file>`: a script or the style sheet; 404 for anything else.
pub(super) async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => serve(asset, &headers),
        None => (
            StatusCode::NOT_FOUND,
            [(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            "no such asset\n",
        )
            .into_response(),
    }
}

/// The file, or `304 Not Modified` when the browser has this version.
fn serve(asset: &'static Asset, headers: &HeaderMap) -> Response {
    let etag = asset.etag();
    let fresh = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    // A hex hash in quotes is always a valid header value.
    let etag = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(CONTENT_TYPE, HeaderValue::from_static(asset.content_type))],
            asset.body,
        )
            .into_response()
    };
    let response_headers = response.headers_mut();
    response_headers.insert(ETAG, etag);
    response_headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response_headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    if asset.content_type == HTML {
        response_headers.insert(
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static(CSP),
        );
        response_headers.insert(
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("same-origin"),
        );
    }
    response
}
