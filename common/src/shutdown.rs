//! SIGTERM and SIGINT into a cancellation token (no global state: the token is passed in).

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT.
///
/// The handlers are installed here, before this returns, not in the task that waits: a
/// SIGTERM that came between a process reporting ready and that task's first poll found no
/// handler and killed it outright (`faults::a_stopping_dispatcher_hands_each_unstarted_event_back_once`
/// failed so, once, under a loaded suite).
pub fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let installed = signal(SignalKind::terminate())
            .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)));
        match installed {
            Ok((mut term, mut int)) => {
                tokio::spawn(async move {
                    tokio::select! {
                        _ = int.recv() => tracing::info!("SIGINT received, draining"),
                        _ = term.recv() => tracing::info!("SIGTERM received, draining"),
                    }
                    token.cancel();
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot listen for SIGTERM or SIGINT"),
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("SIGINT received, draining");
            token.cancel();
        }
    });
}
