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
