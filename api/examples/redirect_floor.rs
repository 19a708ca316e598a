//! The floor a redirect handler on this stack can reach: axum 0.8 on tokio (the node's
//! runtime, one worker per CPU it may use, mimalloc as its allocator), answering
//! `GET /{code}` with a 302 to the code's URL from a read-only `HashMap`, and nothing else
//! (no shard, no replica, no click, no metric, no middleware). `bench/redirect.sh` runs it
//! beside Linkrift and nginx, so that the gap to nginx splits into what the stack costs
//! and what Linkrift's own work costs.
//!
//!   cargo run --release -p linkrift-api --example redirect_floor -- ADDRESS CODES_FILE
//!
//! `CODES_FILE` holds one code per line (the codes the benchmark requests); each one
//! redirects to `https://example.com/<line number>`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Links = Arc<HashMap<String, String>>;

async fn redirect(State(links): State<Links>, Path(code): Path<String>) -> Response {
    match links.get(&code) {
        Some(url) => match HeaderValue::from_str(url) {
            Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: redirect_floor ADDRESS CODES_FILE";
    let address = args.next().ok_or(usage)?;
    let codes = std::fs::read_to_string(args.next().ok_or(usage)?)?;
    let links: Links = Arc::new(
        codes
            .lines()
            .enumerate()
            .map(|(i, code)| (code.to_string(), format!("https://example.com/{i}")))
            .collect(),
    );
    let app = Router::new()
        .route("/{code}", get(redirect))
        .with_state(links);
    let listener = tokio::net::TcpListener::bind(&address).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
