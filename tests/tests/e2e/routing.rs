//! Routing and tenancy: filters, tenants, revoked keys, disabled and edited subscriptions.
