//! The OpenAPI document served at `GET /openapi.json`, generated from the code.
//!
//! Every handler carries a `#[utoipa::path]` annotation (in `routes/`); the request and response
//! bodies are described by the schema-only types below, which mirror what the handlers parse and
//! answer field by field (the handlers work on `serde_json::Value`, so these types are never
//! built). The schemas that come from the event catalog (the ten `data` schemas, the event input
//! and the envelope, the type names and patterns) are generated from `proto::catalog`, the
//! same table the validator uses, and put in the document verbatim by [`document`], so the
//! document cannot drift from what is enforced.

use std::{collections::BTreeMap, sync::LazyLock};

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use proto::{catalog, validate::ID_PATTERN};
use serde_json::{Map, Value, json};
use utoipa::{
    Modify, OpenApi, PartialSchema, ToResponse, ToSchema,
    openapi::{
        self, ArrayBuilder, ContentBuilder, HeaderBuilder, ObjectBuilder, Ref, RefOr,
        ResponseBuilder, Type,
        schema::{Schema, SchemaType},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

/// The name of the tenant API key security scheme.
pub const TENANT_KEY: &str = "tenant_key";
/// The name of the admin token security scheme.
pub const ADMIN_TOKEN: &str = "admin_token";

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// `subscription ids: sub_<ULID>`.
pub const SUBSCRIPTION_ID_PATTERN: &str = "^sub_[0-9A-Za-z]{26}$";
/// Dead-letter ids: `dl_<stream sequence>`.
pub const DEAD_LETTER_ID_PATTERN: &str = "^dl_[0-9]{1,19}$";
/// Tenant ids, as the admin API enforces them.
pub const TENANT_ID_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,62}$";
/// A stream-sequence cursor (`after` of the events feed and the attempt lists).
pub const SEQUENCE_CURSOR_PATTERN: &str = "^[0-9]{1,19}$";

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An RFC 9457 problem: every error answer, and the `error` of a rejected batch item.
#[derive(ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem, e.g. `https://docs.open.example/problems/validation`.
    pub r#type: String,
    /// The kind of problem, for humans.
    pub title: String,
    /// The HTTP status code.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Every offending field (for `422`; empty otherwise).
    pub errors: Vec<ProblemField>,
    /// Only on a `503` whose outcome is unknown (the event store did not confirm in time): the
    /// event's id. The event may be stored; repeating the request with this `id` is
    /// deduplicated, so it is delivered once either way.
    pub id: Option<String>,
}

/// One offending field of a request.
#[derive(ToSchema)]
pub struct ProblemField {
    /// The path of the field, e.g. `data.confidence`, `event_types[2]`; empty for the whole body.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn problem_response(description: &str, headers: &[(&str, &str, Type)]) -> openapi::Response {
    let mut builder = ResponseBuilder::new().description(description).content(
        PROBLEM_JSON,
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build(),
    );
    for (name, description, schema_type) in headers {
        builder = builder.header(
            *name,
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(schema_type.clone()))
                .description(Some(*description))
                .build(),
        );
    }
    builder.build()
}

macro_rules! problem_responses {
    ($($name:ident => $description:expr, [$($header:expr),*];)*) => {$(
        #[doc = $description]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<openapi::Response>) {
                (stringify!($name), problem_response($description, &[$($header),*]).into())
            }
        }
    )*};
}

const RETRY_AFTER: (&str, &str, Type) = (
    "Retry-After",
    "Seconds to wait before trying again.",
    Type::Integer,
);

problem_responses! {
    BadRequest => "The request is malformed: the body is not JSON, or a path segment is not valid UTF-8.", [];
    Unauthorized => "Missing or invalid bearer token.", [("WWW-Authenticate", "`Bearer`.", Type::String)];
    NotFound => "No such resource for this tenant (another tenant's resource answers the same).", [];
    Conflict => "The resource kept changing while this request tried to change it; try again.", [];
    PayloadTooLarge => "The request body is larger than the limit.", [];
    Unprocessable => "The request is well-formed but invalid; `errors` lists every offending field.", [];
    TooManyRequests => "The tenant is over its rate; nothing was accepted.", [RETRY_AFTER];
    Unavailable => "NATS is unavailable (or no dispatcher answered), or the event store is full of events not yet delivered to their subscriptions; nothing was accepted, unless the problem carries `id`: then the event store did not confirm in time, the event may be stored, and repeating the request with that `id` is deduplicated.", [RETRY_AFTER];
}

// ---------------------------------------------------------------------------------------------
// Catalog-derived schemas (bodies built by `catalog_schemas`)
// ---------------------------------------------------------------------------------------------

macro_rules! catalog_schema {
    ($($name:ident => $doc:expr;)*) => {$(
        #[doc = $doc]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                // Replaced in `document` by the schema generated from the catalog.
                ObjectBuilder::new().description(Some($doc)).into()
            }
        }

        impl ToSchema for $name {}
    )*};
}

catalog_schema! {
    EventType => "One of the ten event type names.";
    EventTypePattern => "An event type name, a `prefix.*` pattern matching at least one type, or `*`.";
    EventTypeFilter => "An event type name to filter on; empty: every type.";
    EventInput => "An event as a producer sends it; `data` follows the schema of its `type`.";
    Envelope => "An event as receivers get it (and as the feed lists it).";
}

/// The component name of a type's `data` schema: `call.started` → `CallStartedData`.
pub fn data_schema_name(event_type: &str) -> String {
    let mut name = String::new();
    for word in event_type.split(['.', '_']) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
    }
    name.push_str("Data");
    name
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// Every subscription type filter `catalog::type_pattern_is_valid` accepts.
pub fn type_patterns() -> Vec<String> {
    let mut patterns = vec!["*".to_owned()];
    for spec in catalog::all() {
        if let Some((prefix, _)) = spec.name.split_once('.') {
            let pattern = format!("{prefix}.*");
            if !patterns.contains(&pattern) {
                patterns.push(pattern);
            }
        }
    }
    patterns.extend(catalog::all().iter().map(|spec| spec.name.to_owned()));
    patterns
}

/// The schemas generated from the catalog, by component name.
pub fn catalog_schemas() -> Map<String, Value> {
    let id = json!({"type": "string", "pattern": ID_PATTERN});
    let names: Vec<&str> = catalog::all().iter().map(|spec| spec.name).collect();
    let mut schemas = Map::new();
    schemas.insert(
        "EventType".into(),
        json!({"type": "string", "enum": names, "description": "One of the ten event type names."}),
    );
    schemas.insert(
        "EventTypePattern".into(),
        json!({
            "type": "string",
            "enum": type_patterns(),
            "description": "An event type name, a `prefix.*` pattern matching at least one type, or `*` (every type).",
        }),
    );
    let mut filter = vec![""];
    filter.extend(&names);
    schemas.insert(
        "EventTypeFilter".into(),
        json!({"type": "string", "enum": filter, "description": "An event type name to filter on; empty: every type."}),
    );
    let (mut inputs, mut envelopes) = (Vec::new(), Vec::new());
    for spec in catalog::all() {
        let data = data_schema_name(spec.name);
        let variant = data.trim_end_matches("Data").to_owned();
        schemas.insert(data.clone(), catalog::schema(spec));
        let input = format!("{variant}EventInput");
        schemas.insert(
            input.clone(),
            json!({
                "type": "object",
                "description": format!("A `{}` event as a producer sends it.", spec.name),
                "properties": {
                    "type": {"type": "string", "enum": [spec.name]},
                    "agent_id": id,
                    "call_id": id,
                    "id": {
                        "type": "string",
                        "pattern": ID_PATTERN,
                        "description": "A producer-chosen id: a repeat within the dedupe window is answered `duplicate: true` and not delivered again.",
                    },
                    "occurred_at": {
                        "type": "string",
                        "format": "date-time",
                        "description": "When the event happened (RFC 3339); the acceptance time if absent.",
                    },
                    "data": schema_ref(&data),
                },
                "required": ["type", "agent_id", "call_id", "data"],
                "additionalProperties": false,
            }),
        );
        inputs.push(schema_ref(&input));
        let mut links = json!({
            "call": {"type": "string", "format": "uri", "description": "The call's record."},
        });
        let mut required_links = vec!["call"];
        match spec.name {
            "transcript.ready" => {
                links["transcript"] = json!({"type": "string", "format": "uri"});
                required_links.push("transcript");
            }
            "call.ended" => {
                links["recording"] = json!({"type": "string", "format": "uri"});
                required_links.push("recording");
            }
            _ => {}
        }
        let envelope = format!("{variant}Envelope");
        schemas.insert(
            envelope.clone(),
            json!({
                "type": "object",
                "description": format!("A `{}` event as receivers get it.", spec.name),
                "properties": {
                    "id": {"type": "string", "pattern": ID_PATTERN},
                    "type": {"type": "string", "enum": [spec.name]},
                    "timestamp": {
                        "type": "string",
                        "format": "date-time",
                        "description": "When the event occurred (its `occurred_at`, else its acceptance time).",
                    },
                    "tenant_id": {"type": "string", "pattern": TENANT_ID_PATTERN},
                    "agent_id": id,
                    "call_id": id,
                    "data": schema_ref(&data),
                    "links": {
                        "type": "object",
                        "properties": links,
                        "required": required_links,
                    },
                },
                "required": ["id", "type", "timestamp", "tenant_id", "agent_id", "call_id", "data", "links"],
            }),
        );
        envelopes.push(schema_ref(&envelope));
    }
    schemas.insert(
        "EventInput".into(),
        json!({
            "description": "An event as a producer sends it; `data` follows the schema of its `type`.",
            "oneOf": inputs,
        }),
    );
    schemas.insert(
        "Envelope".into(),
        json!({
            "description": "An event as receivers get it, and as `GET /v1/events` lists it.",
            "oneOf": envelopes,
        }),
    );
    schemas
}

// ---------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------

/// `GET /healthz`.
#[derive(ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(pattern = "^ok$")]
    pub status: String,
}

/// `GET /readyz`.
#[derive(ToSchema)]
pub struct Readiness {
    /// `ready` (`200`) or `not_ready` (`503`).
    #[schema(pattern = "^(ready|not_ready)$")]
    pub status: String,
    pub nats_connected: bool,
    pub streams_ready: bool,
    /// The API keys and subscriptions are mirrored into memory.
    pub config_loaded: bool,
    /// The service is shutting down.
    pub draining: bool,
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// An accepted event: durably stored in JetStream.
#[derive(ToSchema)]
pub struct Accepted {
    /// The producer's id, or an assigned `evt_…`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub id: String,
    /// The event's position in the events stream.
    pub sequence: u64,
    /// Whether the id was seen within the dedupe window (nothing new was stored).
    pub duplicate: bool,
}

/// `POST /v1/events/batch`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 500 events. An invalid item is answered with its own `error` result; the valid
    /// ones are accepted anyway.
    #[schema(min_items = 1, max_items = 500)]
    pub events: Vec<EventInput>,
}

/// One result of a batch, in the order of the input.
#[derive(ToSchema)]
#[serde(untagged)]
pub enum BatchResult {
    Accepted(Accepted),
    Rejected(BatchError),
}

/// A rejected batch item.
#[derive(ToSchema)]
pub struct BatchError {
    pub error: Problem,
}

/// The answer to a batch: one result per input event, in order.
#[derive(ToSchema)]
pub struct BatchResults {
    pub results: Vec<BatchResult>,
}

/// A page of the events feed.
#[derive(ToSchema)]
pub struct EventPage {
    pub data: Vec<Envelope>,
    /// Always present: resume from it with `after` (on an empty page, the cursor given).
    #[schema(pattern = "^[0-9]+$")]
    pub next_cursor: String,
}

/// `POST /v1/events/{id}/replay`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventReplayRequest {
    /// Replay to this subscription only (whatever its filters); absent or `null`: to every
    /// enabled subscription whose filters select the event.
    #[schema(pattern = "^sub_[0-9A-Za-z]{26}$")]
    pub subscription_id: Option<String>,
}

/// How many deliveries an event replay queued.
#[derive(ToSchema)]
pub struct EventReplayed {
    pub deliveries: u64,
}

// ---------------------------------------------------------------------------------------------
// Event types
// ---------------------------------------------------------------------------------------------

/// One event type of the catalog.
#[derive(ToSchema)]
pub struct EventTypeInfo {
    pub r#type: EventType,
    pub description: String,
    /// The JSON Schema (draft 2020-12) of the type's `data`.
    #[schema(value_type = Object)]
    pub schema: Value,
    /// A realistic `data` object.
    #[schema(value_type = Object)]
    pub example: Value,
}

/// `GET /v1/event-types`: every type in one page.
#[derive(ToSchema)]
pub struct EventTypeList {
    pub data: Vec<EventTypeInfo>,
    /// Always `null`.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------------

/// An agent id.
#[derive(ToSchema)]
#[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
pub struct AgentId(pub String);

/// `schedule_ms` of a retry policy input: at most 30 delays of at most seven days, or `null`.
fn schedule_input() -> Schema {
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(604_800_000)),
        )
        .max_items(Some(30))
        .description(Some(
            "Delays in milliseconds, each at most seven days: `schedule_ms[i]` is the delay before attempt `i + 2`; the last one repeats.",
        ))
        .into()
}

/// `headers` of a subscription input: at most 20 string headers, or `null`.
fn headers_input() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String)))
        .max_properties(Some(20))
        .description(Some(
            "Extra request headers of every delivery (not `webhook-*`, nor transport headers such as `content-type`); `null` clears them.",
        ))
        .into()
}

/// A subscription's retry policy; `null` members are the defaults.
#[derive(ToSchema)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (default 10).
    #[schema(required = true, minimum = 1, maximum = 30)]
    pub max_attempts: Option<u32>,
    /// `schedule_ms[i]` is the delay before attempt `i + 2`; the last one repeats.
    #[schema(required = true)]
    pub schedule_ms: Option<Vec<u64>>,
}

/// A subscription (its signing secret is only at `GET /v1/subscriptions/{id}/secret`).
#[derive(ToSchema)]
pub struct Subscription {
    #[schema(pattern = "^sub_[0-9A-Za-z]{26}$")]
    pub id: String,
    pub url: String,
    pub event_types: Vec<EventTypePattern>,
    /// The agents it is limited to; `null`: every agent.
    #[schema(required = true)]
    pub agent_ids: Option<Vec<String>>,
    pub description: String,
    pub enabled: bool,
    /// Extra request headers of every delivery.
    pub headers: BTreeMap<String, String>,
    #[schema(required = true)]
    pub retry: Option<RetryPolicy>,
    /// Deliveries per second to this endpoint, per dispatcher; `null`: unlimited.
    #[schema(required = true)]
    pub rate_limit_per_s: Option<u32>,
    /// Why the system disabled it (e.g. the endpoint answered `410`); `null` otherwise.
    #[schema(required = true)]
    pub disabled_reason: Option<String>,
    #[schema(required = true, format = DateTime)]
    pub created_at: Option<String>,
    #[schema(required = true, format = DateTime)]
    pub updated_at: Option<String>,
}

/// A created subscription, with its signing secret (shown in this response only).
#[derive(ToSchema)]
pub struct CreatedSubscription {
    #[serde(flatten)]
    pub subscription: Subscription,
    /// `whsec_` and the base64 of the key.
    #[schema(pattern = "^whsec_[A-Za-z0-9+/=]+$")]
    pub secret: String,
}

/// A retry policy in a create or update body; absent or `null` members take the defaults.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicyInput {
    #[schema(minimum = 1, maximum = 30)]
    pub max_attempts: Option<u32>,
    #[schema(schema_with = schedule_input)]
    pub schedule_ms: Option<Vec<u64>>,
}

/// `POST /v1/subscriptions`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscription {
    /// `https://` (unless the service allows `http://`), not resolving to a loopback, private,
    /// link-local or metadata address (unless allowed).
    #[schema(format = "uri")]
    pub url: String,
    #[schema(min_items = 1, max_items = 64)]
    pub event_types: Vec<EventTypePattern>,
    /// Only these agents' events; absent or `null`: every agent.
    #[schema(min_items = 1, max_items = 1000)]
    pub agent_ids: Option<Vec<AgentId>>,
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// Default `true`.
    #[serde(default)]
    pub enabled: bool,
    #[schema(schema_with = headers_input)]
    pub headers: Option<BTreeMap<String, String>>,
    pub retry: Option<RetryPolicyInput>,
    #[schema(minimum = 1, maximum = 100_000)]
    pub rate_limit_per_s: Option<u32>,
}

/// `PATCH /v1/subscriptions/{id}`: the fields to change; `null` resets an optional one.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSubscription {
    #[serde(default)]
    #[schema(format = "uri")]
    pub url: String,
    #[serde(default)]
    #[schema(min_items = 1, max_items = 64)]
    pub event_types: Vec<EventTypePattern>,
    #[schema(min_items = 1, max_items = 1000)]
    pub agent_ids: Option<Vec<AgentId>>,
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// Re-enabling clears `disabled_reason`.
    #[serde(default)]
    pub enabled: bool,
    #[schema(schema_with = headers_input)]
    pub headers: Option<BTreeMap<String, String>>,
    pub retry: Option<RetryPolicyInput>,
    #[schema(minimum = 1, maximum = 100_000)]
    pub rate_limit_per_s: Option<u32>,
}

/// A page of subscriptions.
#[derive(ToSchema)]
pub struct SubscriptionPage {
    pub data: Vec<Subscription>,
    /// The `after` of the next page; `null` on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// A subscription's current signing secret.
#[derive(ToSchema)]
pub struct SigningSecret {
    /// `whsec_` and the base64 of the key.
    pub secret: String,
}

/// `POST /v1/subscriptions/{id}/secret/rotate` (the body may be empty).
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old secret keeps signing alongside the new one (default 86400).
    #[schema(minimum = 0, maximum = 604_800)]
    pub grace_period_s: Option<u64>,
}

/// `POST /v1/subscriptions/{id}/test` (the body may be empty).
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSendRequest {
    /// The type of the sample event (default `call.started`).
    pub r#type: Option<EventType>,
}

/// What the endpoint answered to a test send.
#[derive(ToSchema)]
pub struct TestSendResult {
    /// A `2xx` within the timeout.
    pub delivered: bool,
    /// `null` when there was no HTTP answer.
    #[schema(required = true)]
    pub status_code: Option<u16>,
    pub latency_ms: u32,
    /// The first KiB of the answer; `null` when there was none.
    #[schema(required = true)]
    pub response_body: Option<String>,
    /// Why it failed; `null` on success.
    #[schema(required = true)]
    pub error: Option<String>,
}

/// `POST /v1/subscriptions/{id}/replay`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionReplayRequest {
    /// Replay events accepted from this time (RFC 3339).
    #[schema(format = DateTime)]
    pub since: String,
    /// … until this time (default: now); later than `since`.
    #[schema(format = DateTime)]
    pub until: Option<String>,
    /// Only these types (and only those the subscription selects).
    #[schema(min_items = 1)]
    pub event_types: Option<Vec<EventTypePattern>>,
}

/// How many deliveries a subscription replay queued.
#[derive(ToSchema)]
pub struct SubscriptionReplayed {
    pub replayed: u64,
    /// One call's bound was reached; call again with `since` = `next_since`.
    pub truncated: bool,
    /// Present when `truncated`.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub next_since: String,
}

// ---------------------------------------------------------------------------------------------
// Attempts and stats
// ---------------------------------------------------------------------------------------------

/// The outcome of an attempt.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    Failed,
}

/// One delivery attempt.
#[derive(ToSchema)]
pub struct Attempt {
    pub event_id: String,
    pub subscription_id: String,
    /// 1-based; starts again at 1 after a redrive.
    #[schema(minimum = 1)]
    pub attempt: u32,
    pub outcome: Outcome,
    /// `null` when there was no HTTP answer.
    #[schema(required = true)]
    pub status_code: Option<u32>,
    #[schema(required = true)]
    pub error: Option<String>,
    pub latency_ms: u32,
    #[schema(required = true, format = DateTime)]
    pub at: Option<String>,
}

/// A page of attempts.
#[derive(ToSchema)]
pub struct AttemptPage {
    pub data: Vec<Attempt>,
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// Latency percentiles, in milliseconds.
#[derive(ToSchema)]
pub struct Latency {
    pub p50: u32,
    pub p90: u32,
    pub p99: u32,
    pub max: u32,
}

/// A subscription's attempts in a window.
#[derive(ToSchema)]
pub struct SubscriptionStats {
    pub subscription_id: String,
    pub window_s: u64,
    pub attempts: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// `null` when there were no attempts.
    #[schema(required = true)]
    pub latency_ms: Option<Latency>,
    /// More attempts than one call examines (100,000) were in the window.
    pub truncated: bool,
}

// ---------------------------------------------------------------------------------------------
// Dead letters
// ---------------------------------------------------------------------------------------------

/// A delivery that will not be retried any more.
#[derive(ToSchema)]
pub struct DeadLetter {
    #[schema(pattern = "^dl_[0-9]+$")]
    pub id: String,
    pub event_id: String,
    pub subscription_id: String,
    pub event_type: String,
    /// Endpoint attempts made.
    pub attempts: u32,
    #[schema(required = true)]
    pub last_status_code: Option<u32>,
    #[schema(required = true)]
    pub last_error: Option<String>,
    /// `attempts_exhausted`, `permanent_failure`, `subscription_disabled` or `system_error`.
    pub reason: String,
    /// `endpoint` or `system`.
    pub failed_by: String,
    #[schema(required = true, format = DateTime)]
    pub dead_at: Option<String>,
}

/// A page of dead letters.
#[derive(ToSchema)]
pub struct DeadLetterPage {
    pub data: Vec<DeadLetter>,
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// `POST /v1/dead-letters/redrive`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveAllRequest {
    #[schema(pattern = "^sub_[0-9A-Za-z]{26}$")]
    pub subscription_id: String,
}

/// How many dead letters were queued again.
#[derive(ToSchema)]
pub struct Redriven {
    pub redriven: u64,
}

// ---------------------------------------------------------------------------------------------
// Admin
// ---------------------------------------------------------------------------------------------

/// A new API key: `key` is shown once; only its hash is stored.
#[derive(ToSchema)]
pub struct ApiKeyCreated {
    #[schema(pattern = "^key_[0-9A-Z]{26}$")]
    pub id: String,
    pub tenant_id: String,
    /// `owk_<id>_<secret>`; send it as `Authorization: Bearer <key>`.
    pub key: String,
}

// ---------------------------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------------------------

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            TENANT_KEY,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A tenant's API key (`owk_…`), issued by the admin API; every `/v1` call but the admin ones.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ADMIN_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token (`WEBHOOKS_ADMIN_TOKEN`); `/v1/admin` only.",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Open Webhooks",
        description = "Voice-agent events in, signed Standard Webhooks out. Errors are RFC 9457 \
            `application/problem+json`; lists answer `{\"data\": […], \"next_cursor\"}` and take \
            `limit` and `after`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        crate::routes::health::healthz,
        crate::routes::health::readyz,
        crate::routes::openapi_json,
        crate::metrics::handler,
        crate::routes::events::create,
        crate::routes::events::batch,
        crate::routes::feed::list,
        crate::routes::feed::get,
        crate::routes::replay::event,
        crate::routes::attempts::by_event,
        crate::routes::event_types::list,
        crate::routes::subscriptions::list,
        crate::routes::subscriptions::create,
        crate::routes::subscriptions::get,
        crate::routes::subscriptions::update,
        crate::routes::subscriptions::remove,
        crate::routes::subscriptions::secret,
        crate::routes::subscriptions::rotate,
        crate::routes::test_send::send,
        crate::routes::replay::subscription,
        crate::routes::attempts::by_subscription,
        crate::routes::attempts::stats,
        crate::routes::dead_letters::list,
        crate::routes::dead_letters::get,
        crate::routes::dead_letters::redrive,
        crate::routes::dead_letters::redrive_all,
        crate::routes::admin::create_key,
        crate::routes::admin::revoke_key,
    ),
    components(
        schemas(
            Problem,
            ProblemField,
            EventType,
            EventTypePattern,
            EventTypeFilter,
            EventInput,
            Envelope
        ),
        responses(
            BadRequest,
            Unauthorized,
            NotFound,
            Conflict,
            PayloadTooLarge,
            Unprocessable,
            TooManyRequests,
            Unavailable
        ),
    ),
    modifiers(&Security),
    tags(
        (name = "operations", description = "Liveness, readiness, metrics and this document."),
        (name = "events", description = "Sending events, the events feed, replays."),
        (name = "subscriptions", description = "Endpoints, their filters, secrets and test sends."),
        (name = "attempts", description = "The delivery attempt log and stats."),
        (name = "dead-letters", description = "Deliveries that will not be retried, and their redrive."),
        (name = "admin", description = "Tenant API keys (admin token only)."),
    ),
)]
struct ApiDoc;

/// The OpenAPI document: utoipa's, with the catalog-derived schemas put in verbatim.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (name, schema) in catalog_schemas() {
            schemas.insert(name, schema);
        }
        schemas.sort_keys();
    }
    // utoipa spells an optional body (`Option<T>`) as `oneOf: [null, T]`; the handlers read an
    // absent or empty body as `{}`, and a `null` one is refused, so the schema is just `T`.
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for operation in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in operation.values_mut() {
                let Some(schema) = op.pointer_mut("/requestBody/content/application~1json/schema")
                else {
                    continue;
                };
                let non_null = schema
                    .get("oneOf")
                    .and_then(Value::as_array)
                    .and_then(|one| match one.as_slice() {
                        [null, other] if null == &json!({"type": "null"}) => Some(other.clone()),
                        _ => None,
                    });
                if let Some(other) = non_null {
                    *schema = other;
                }
            }
        }
    }
    doc
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| document().to_string());

/// `GET /openapi.json`.
pub fn response() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// Every route `routes::router` registers, as (method, path): the unit tests check the document
/// lists exactly these, the e2e test `openapi` that the router answers each.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
    ("get", "/metrics"),
    ("post", "/v1/events"),
    ("get", "/v1/events"),
    ("post", "/v1/events/batch"),
    ("get", "/v1/events/{id}"),
    ("post", "/v1/events/{id}/replay"),
    ("get", "/v1/events/{id}/attempts"),
    ("get", "/v1/event-types"),
    ("get", "/v1/subscriptions"),
    ("post", "/v1/subscriptions"),
    ("get", "/v1/subscriptions/{id}"),
    ("patch", "/v1/subscriptions/{id}"),
    ("delete", "/v1/subscriptions/{id}"),
    ("get", "/v1/subscriptions/{id}/secret"),
    ("post", "/v1/subscriptions/{id}/secret/rotate"),
    ("post", "/v1/subscriptions/{id}/test"),
    ("post", "/v1/subscriptions/{id}/replay"),
    ("get", "/v1/subscriptions/{id}/attempts"),
    ("get", "/v1/subscriptions/{id}/stats"),
    ("get", "/v1/dead-letters"),
    ("get", "/v1/dead-letters/{id}"),
    ("post", "/v1/dead-letters/{id}/redrive"),
    ("post", "/v1/dead-letters/redrive"),
    ("post", "/v1/admin/tenants/{tenant_id}/api-keys"),
    ("delete", "/v1/admin/api-keys/{id}"),
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeSet;

    use super::*;

    const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch"];

    #[test]
    fn the_document_is_openapi_3_and_lists_exactly_the_routes() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let mut listed = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                if item.get(*method).is_some() {
                    listed.insert((method.to_string(), path.clone()));
                }
            }
        }
        let expected: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(listed, expected);
    }

    #[test]
    fn every_data_schema_is_the_catalogs() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        for spec in catalog::all() {
            let name = data_schema_name(spec.name);
            assert_eq!(schemas[&name], catalog::schema(spec), "{name}");
        }
        assert_eq!(data_schema_name("call.started"), "CallStartedData");
        assert_eq!(data_schema_name("qa.scored"), "QaScoredData");
    }

    #[test]
    fn every_reference_resolves_and_operation_ids_are_unique() {
        let doc = document();
        let text = doc.to_string();
        let mut ids = BTreeSet::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                    assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
                }
            }
        }
        for piece in text.split("\"$ref\":\"#/").skip(1) {
            let pointer = format!("/{}", piece.split('"').next().unwrap());
            assert!(doc.pointer(&pointer).is_some(), "dangling $ref {pointer}");
        }
    }

    #[test]
    fn type_patterns_are_exactly_the_valid_ones() {
        let patterns = type_patterns();
        for p in &patterns {
            assert!(catalog::type_pattern_is_valid(p), "{p}");
        }
        assert_eq!(patterns.len(), 1 + 7 + catalog::all().len());
    }

    #[test]
    fn every_v1_operation_has_security_and_problem_answers() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if !path.starts_with("/v1") {
                    assert!(op.get("security").is_none(), "{method} {path}");
                    continue;
                }
                let scheme = if path.starts_with("/v1/admin") {
                    ADMIN_TOKEN
                } else {
                    TENANT_KEY
                };
                assert!(
                    op["security"][0].get(scheme).is_some(),
                    "{method} {path} lacks {scheme}"
                );
                assert!(
                    op["responses"].get("401").is_some(),
                    "{method} {path} lacks 401"
                );
            }
        }
    }
}
