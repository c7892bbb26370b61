//! Ingest API: validation, idempotency, batches, limits, auth errors, the catalog.
