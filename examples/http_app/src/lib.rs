//! A small JSON API as a host plugin, built on the `http_proto` library (the http plugin's
//! protocol): the library does the connection handling, HTTP/1.1 and HTTP/2 (h2 by ALPN over
//! TLS, h2c with prior knowledge: `curl --http2-prior-knowledge`), this file only the routes.
//!
//! Run: `cargo build -p host-example-http-app && target/debug/host --plugin http_app --listen 127.0.0.1:8080`
//!
//! - `GET /hello?name=x` → `{"hello":"x"}` (`name` defaults to `world`)
//! - `POST /sum` with a JSON array of numbers → `{"sum":N}`; anything else in the body is 400
//! - another method on those paths → 405 with `Allow`; any other path → 404
//!
//! No config keys.

use http_proto::{App, AppServer, Method, Request, ResponseWriter, Status};
use plugin_api::{export_plugin, WorkerInfo};
use serde_json::{json, Value};

/// The application: no state.
pub struct JsonApi;

impl App for JsonApi {
    // No state of its own: its connections move on a reload with the library's state for them.
    const HANDOVER_VERSION: u32 = 1;

    fn new(config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
        match config.trim() {
            "" => Ok(JsonApi),
            _ => Err("http_app takes no config".into()),
        }
    }

    fn handle(&mut self, req: &Request<'_>, res: &mut ResponseWriter) {
        let (status, body) = match (req.path(), req.method()) {
            ("/hello", Method::Get | Method::Head) => {
                let name = req.query_param("name").unwrap_or_else(|| "world".into());
                (Status::OK, json!({ "hello": name }))
            }
            ("/sum", Method::Post) => sum(req.body()),
            ("/hello", _) => return not_allowed(res, "GET, HEAD"),
            ("/sum", _) => return not_allowed(res, "POST"),
            _ => (Status::NOT_FOUND, json!({ "error": "no such route" })),
        };
        reply(res, status, &body);
    }
}

/// The sum of a JSON array of numbers, or 400.
fn sum(body: &[u8]) -> (Status, Value) {
    let numbers: Option<Vec<f64>> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items.iter().map(Value::as_f64).collect(),
        _ => None,
    };
    match numbers {
        Some(numbers) => {
            let total: f64 = numbers.iter().sum();
            // Whole sums stay integers in the JSON (`6`, not `6.0`).
            let total = match total.fract() == 0.0 && total.abs() < 9.0e15 {
                true => json!(total as i64),
                false => json!(total),
            };
            (Status::OK, json!({ "sum": total }))
        }
        None => (Status::BAD_REQUEST, json!({ "error": "expected a JSON array of numbers" })),
    }
}

fn not_allowed(res: &mut ResponseWriter, allow: &str) {
    res.header("Allow", allow);
    reply(res, Status::METHOD_NOT_ALLOWED, &json!({ "error": "method not allowed" }));
}

fn reply(res: &mut ResponseWriter, status: Status, body: &Value) {
    res.status(status).header("Content-Type", "application/json").body(body.to_string());
}

export_plugin!(AppServer<JsonApi>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums() {
        assert_eq!(sum(b"[1, 2, 3]"), (Status::OK, json!({ "sum": 6 })));
        assert_eq!(sum(b"[0.5, 0.25]"), (Status::OK, json!({ "sum": 0.75 })));
        assert_eq!(sum(b"[]"), (Status::OK, json!({ "sum": 0 })));
        assert_eq!(sum(b"[1, \"a\"]").0, Status::BAD_REQUEST);
        assert_eq!(sum(b"{}").0, Status::BAD_REQUEST);
        assert_eq!(sum(b"not json").0, Status::BAD_REQUEST);
    }
}
