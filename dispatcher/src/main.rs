//! The `dispatcher` binary: telemetry, settings, build, run until SIGTERM, drain.

use tokio_util::sync::CancellationToken;

/// mimalloc instead of the system allocator: glibc's malloc and free were about a fifth of
/// the CPU under load (docs/benchmarks.md, "Profile").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = common::telemetry::init("dispatcher");
    let settings = dispatcher::Settings::from_env(&common::config::Env::process())?;
    let app = dispatcher::App::build(settings).await?;
    tracing::info!(addr = %app.local_addr()?, "dispatcher running");
    let token = CancellationToken::new();
    common::shutdown::cancel_on_signal(token.clone());
    app.run(token).await?;
    tracing::info!("dispatcher stopped");
    telemetry.shutdown();
    Ok(())
}
