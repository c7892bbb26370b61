//! A standalone webhook receiver for the README demo that prints whether each delivery verifies.
//!
//! Usage: `demo-receiver [--listen 127.0.0.1:9999] [--secret-file PATH]`. The secret is re-read
//! on every request, so the demo can start the receiver before the subscription (and its
//! secret) exists.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use standardwebhooks::Webhook;

const USAGE: &str = "usage: demo-receiver [--listen 127.0.0.1:9999] [--secret-file PATH]";

/// Command-line options.
struct Args {
    listen: SocketAddr,
    secret_file: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut listen: SocketAddr = "127.0.0.1:9999".parse().context("default listen address")?;
    let mut secret_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let value = args.next().context("--listen needs an address")?;
                listen = value
                    .parse()
                    .with_context(|| format!("invalid --listen address {value}"))?;
            }
            "--secret-file" => {
                secret_file = Some(PathBuf::from(
                    args.next().context("--secret-file needs a path")?,
                ));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(Args {
        listen,
        secret_file,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    let secret_file = Arc::new(args.secret_file);
    let app = Router::new()
        .fallback(handle)
        .with_state(secret_file.clone());
    match secret_file.as_ref() {
        Some(path) => say(&format!(
            "listening on http://{} (secret from {})",
            args.listen,
            path.display()
        )),
        None => say(&format!(
            "listening on http://{} (no --secret-file: deliveries are not verified)",
            args.listen
        )),
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serve")
}

/// Prints one line and flushes, so piped output (`| tee`) shows deliveries as they happen.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Verifies and prints one delivery, answering 204 so the dispatcher records a success.
async fn handle(
    State(secret_file): State<Arc<Option<PathBuf>>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let event_type = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "-".to_owned());
    let summary = format!(
        "webhook-id={} type={} attempt={} body={}",
        header("webhook-id"),
        event_type,
        header("webhook-attempt"),
        String::from_utf8_lossy(&body)
    );

    let secret = match secret_file.as_ref() {
        Some(path) => match tokio::fs::read_to_string(path).await {
            Ok(text) => Ok(text.trim().to_owned()),
            Err(e) => Err(format!("cannot read secret file {}: {e}", path.display())),
        },
        None => Err("no --secret-file given".to_owned()),
    };
    let line = match secret {
        Err(why) => format!("? unverified ({why}) {summary}"),
        Ok(secret) => match Webhook::new(&secret) {
            Err(e) => format!("✘ invalid secret in file: {e} {summary}"),
            Ok(webhook) => match webhook.verify(&body, &headers) {
                Ok(()) => format!("✔ verified {summary}"),
                Err(e) => format!("✘ signature check failed: {e} {summary}"),
            },
        },
    };
    say(&line);
    StatusCode::NO_CONTENT
}
