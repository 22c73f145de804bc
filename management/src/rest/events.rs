//! `/api/events` and `/api/events/audit` (the same list, as NetBird serves both): the activity
//! log, newest first.

use axum::extract::State;
use serde_json::{Value, json};

use super::*;
use crate::activity::{Event, LISTED_EVENTS};

fn event_json(e: &Event) -> Value {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.timestamp_ms);
    json!({
        "id": e.id.to_string(),
        "timestamp": humantime::format_rfc3339_millis(time).to_string(),
        "activity": e.activity,
        "activity_code": e.activity_code,
        "initiator_id": e.initiator_id,
        "initiator_name": e.initiator_name,
        "initiator_email": e.initiator_email,
        "target_id": e.target_id,
        "meta": e.meta,
    })
}

pub(super) async fn list_events(State(m): State<AppState>) -> ApiResult {
    let events = m.events(LISTED_EVENTS)?;
    ok(Value::Array(events.iter().map(event_json).collect()))
}
