//! Connecting to NATS.

use crate::config::SharedSettings;

/// Connects to the configured servers. The client reconnects on its own afterwards;
/// callers check [`async_nats::Client::connection_state`] before promising anything.
pub async fn connect(settings: &SharedSettings, name: &str) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                other => tracing::info!(event = %other, "nats event"),
            }
        });
    if let Some(path) = &settings.nats_creds {
        options = options.credentials_file(path).await?;
    }
    let urls: Vec<async_nats::ServerAddr> = settings
        .nats_url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()?;
    let client = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        options.connect(urls.as_slice()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out connecting to nats at {}", settings.nats_url))??;
    Ok(client)
}

/// Whether the client is connected right now.
pub fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Whether a publish was refused because its stream is full (bytes, messages, or a subject's
/// share of them), as opposed to a timeout or a leader election: trying again at once would
/// only be refused again.
pub fn is_full(error: &anyhow::Error) -> bool {
    const FULL: [&str; 3] = [
        "maximum bytes exceeded",
        "maximum messages exceeded",
        "maximum messages per subject exceeded",
    ];
    error.chain().any(|cause| {
        let text = cause.to_string().to_lowercase();
        FULL.iter().any(|f| text.contains(f)) || text.contains("insufficient resources")
    })
}

/// How long closing waits for the server to have everything written so far.
const FLUSH_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Closes `client` at shutdown: first waits (up to [`FLUSH_WITHIN`]) until the server has
/// everything written so far, acks above all, then drains its subscriptions.
/// `Client::drain` only asks the connection's task to drain and returns at once, so a process
/// that exits right after it can lose what is still buffered: a delivery completed during a
/// SIGTERM drain whose ack was lost was sent again by the next dispatcher
/// (`faults::sigterm_drains_in_flight_deliveries_and_hands_back_the_rest`, 1 in 1 to 6 runs
/// beside a CPU hog).
pub async fn close(client: &async_nats::Client) {
    match tokio::time::timeout(FLUSH_WITHIN, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(error = %error, "nats flush failed"),
        Err(_) => tracing::warn!("nats flush did not finish in {FLUSH_WITHIN:?}"),
    }
    if let Err(error) = client.drain().await {
        tracing::warn!(error = %error, "nats drain failed");
    }
}
