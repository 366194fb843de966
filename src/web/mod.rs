//! `ablate serve`: the web dashboard (axum), over a store opened read-only.
//!
//! Safety rules every handler follows: no filesystem path is ever built from a
//! request (dashboards are found by comparing names with a directory listing;
//! artifacts are listed, not served), request values reach SQL only as bound
//! parameters, all store text is HTML-escaped, and errors become error pages
//! or panel error boxes, not a stopped server.

mod dag;
mod html;
mod pages;
mod panels;
mod study;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use tokio::sync::OnceCell;

use crate::store::{Store, Workspace};

pub use study::report;

pub struct AppState {
    workspace: Workspace,
    /// Opened read-only on the first request that finds the database, so the
    /// server can be started before the first run of a study it will watch.
    store: OnceCell<Store>,
    /// Where `dashboards/*.toml` are read from (on each request, so edits show at once).
    dashboards: PathBuf,
    /// How long one panel's SQL may run: the store stops it then, and when
    /// the browser leaves before.
    query_timeout: Duration,
}

impl AppState {
    pub fn new(workspace: Workspace, dashboards: PathBuf, query_timeout: Duration) -> AppState {
        AppState { workspace, store: OnceCell::new(), dashboards, query_timeout }
    }

    /// The store; `NotFound` while the workspace has none yet.
    async fn store(&self) -> Result<&Store, WebError> {
        self.store
            .get_or_try_init(|| async {
                match Store::open_read_only(&self.workspace).await {
                    Ok(Some(store)) => Ok(store),
                    Ok(None) => {
                        Err(WebError::NotFound(format!("no ablate store in {} yet: nothing has run there", self.workspace.root.display())))
                    }
                    Err(e) => Err(WebError::Internal(e)),
                }
            })
            .await
    }
}

/// A rendered page (200) with headers that keep it from loading anything foreign.
pub struct Page {
    title: String,
    body: String,
    status: StatusCode,
    /// Seconds after which the browser reloads the page (a `Refresh` header).
    refresh: Option<u32>,
}

impl Page {
    fn new(title: &str, body: String) -> Page {
        Page { title: title.to_owned(), body, status: StatusCode::OK, refresh: None }
    }

    /// Has the browser reload the page every `seconds` (what it shows is still changing).
    fn refreshing(mut self, seconds: u32) -> Page {
        self.refresh = Some(seconds);
        self
    }
}

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:";

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let mut response = (self.status, html::page(&self.title, &self.body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if let Some(seconds) = self.refresh {
            headers.insert(header::REFRESH, HeaderValue::from(seconds));
        }
        response
    }
}

/// Why a page could not be shown.
#[derive(Debug)]
pub enum WebError {
    NotFound(String),
    BadRequest(String),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for WebError {
    fn from(e: anyhow::Error) -> WebError {
        WebError::Internal(e)
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self {
            WebError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            WebError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            WebError::Internal(e) => {
                tracing::warn!("request failed: {e:#}");
                (StatusCode::INTERNAL_SERVER_ERROR, "Error", format!("{e:#}"))
            }
        };
        Page { title: title.to_owned(), body: format!("<h1>{}</h1>{}", html::esc(title), html::error_box(&message)), status, refresh: None }
            .into_response()
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(pages::index))
        .route("/runs/{id}", get(pages::run))
        .route("/runs/{id}/events", get(pages::run_events))
        .route("/instances/{key}", get(pages::instance))
        .route("/pipelines", get(pages::pipelines))
        .route("/pipelines/{name}", get(pages::pipeline))
        .route("/pipelines/{name}/pivot", get(pages::pivot))
        .route("/dashboards", get(pages::dashboards))
        .route("/dashboards/{name}", get(pages::dashboard_page))
        .fallback(pages::not_found)
        .with_state(state)
}

/// Whether a `Host` header names this machine's loopback (`localhost`,
/// `127.x.y.z`, `[::1]`, with any port) or is absent.
fn loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.is_empty() || name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// On a loopback-only server, refuses requests addressed to another host name:
/// a web page cannot then read the dashboard through DNS rebinding.
async fn only_loopback_hosts(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if loopback_host(host) {
        next.run(request).await
    } else {
        (StatusCode::FORBIDDEN, "this server answers only requests addressed to localhost\n").into_response()
    }
}

/// Binds, reports the bound address through `listening` (port 0 picks a free
/// one), and serves until Ctrl-C.
pub async fn serve(state: AppState, addr: SocketAddr, listening: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    listening(listener.local_addr()?);
    let mut app = router(Arc::new(state));
    if addr.ip().is_loopback() {
        app = app.layer(axum::middleware::from_fn(only_loopback_hosts));
    }
    // Open event streams would hold a graceful shutdown forever: Ctrl-C just stops serving.
    tokio::select! {
        r = axum::serve(listener, app) => r.context("serving")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn loopback_hosts() {
        for ok in ["", "localhost", "LOCALHOST:8787", "127.0.0.1", "127.0.0.1:1", "[::1]:8787", "[::1]"] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8787", "10.0.0.1:8787", "localhost.evil.example", "127.0.0.1.nip.io:80"] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }
}
