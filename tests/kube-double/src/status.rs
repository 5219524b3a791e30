//! API errors and the `Status` objects the real API server answers them with.

use serde_json::{Value, json};

/// One `details.causes` entry of an `Invalid` Status.
#[derive(Clone, Debug)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueDuplicate`, `FieldValueForbidden`, ...
    pub reason: &'static str,
    /// JSON path of the offending field, e.g. `spec.containers[0].name`.
    pub field: String,
    /// Human text as the API server phrases it (without the field prefix).
    pub message: String,
}

impl Cause {
    /// An invalid value.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl AsRef<str>) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {}", value, detail.as_ref()),
        }
    }
    /// A missing required value.
    pub fn required(field: impl Into<String>, detail: impl AsRef<str>) -> Cause {
        let d = detail.as_ref();
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: if d.is_empty() {
                "Required value".into()
            } else {
                format!("Required value: {d}")
            },
        }
    }
    /// A duplicate value.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Cause {
        Cause {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {value}"),
        }
    }
    /// A value that may not be set here.
    pub fn forbidden(field: impl Into<String>, detail: impl AsRef<str>) -> Cause {
        Cause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {}", detail.as_ref()),
        }
    }
    /// A reference to something that does not exist.
    pub fn not_found(field: impl Into<String>, value: &Value) -> Cause {
        Cause {
            reason: "FieldValueNotFound",
            field: field.into(),
            message: format!("Not found: {value}"),
        }
    }
    /// A value outside the supported set.
    pub fn not_supported(field: impl Into<String>, value: &Value, allowed: &[&str]) -> Cause {
        let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ),
        }
    }
}

/// An error answered to a client as a `Status` object.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `Status.reason`.
    pub reason: String,
    /// `Status.message`.
    pub message: String,
    /// `Status.details` (may be `Null`).
    pub details: Value,
    /// Extra response headers (e.g. `Retry-After`).
    pub retry_after: Option<u64>,
    /// A conflict caused by a concurrent write inside the double (patches retry these).
    pub race: bool,
}

/// Shorthand result type of request handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// The identifying part of `Status.details` for an object.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    /// API group ("" for core).
    pub group: &'a str,
    /// Resource plural (what the real server puts in `details.kind`).
    pub resource: &'a str,
    /// Object name.
    pub name: &'a str,
}

impl Target<'_> {
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
    fn details(&self) -> Value {
        let mut d = json!({"name": self.name, "kind": self.resource});
        if !self.group.is_empty() {
            d["group"] = json!(self.group);
        }
        d
    }
}

impl ApiError {
    /// A bare error with no details.
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason: reason.into(),
            message: message.into(),
            details: Value::Null,
            retry_after: None,
            race: false,
        }
    }
    /// 404 for an object.
    pub fn not_found(t: &Target<'_>) -> ApiError {
        let mut e = ApiError::new(
            404,
            "NotFound",
            format!("{} {:?} not found", t.qualified(), t.name),
        );
        e.details = t.details();
        e
    }
    /// 404 for a path the server does not serve.
    pub fn no_route() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }
    /// 409 AlreadyExists on create.
    pub fn already_exists(t: &Target<'_>) -> ApiError {
        let mut e = ApiError::new(
            409,
            "AlreadyExists",
            format!("{} {:?} already exists", t.qualified(), t.name),
        );
        e.details = t.details();
        e
    }
    /// 409 Conflict on a stale `resourceVersion` (or a failed precondition).
    pub fn conflict(t: &Target<'_>, why: &str) -> ApiError {
        let mut e = ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {:?}: {why}",
                t.qualified(),
                t.name
            ),
        );
        e.details = t.details();
        e
    }
    /// The standard stale-object conflict.
    pub fn stale(t: &Target<'_>) -> ApiError {
        ApiError::conflict(
            t,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }
    /// 422 Invalid with field causes; `kind` is the object's Kind (e.g. `Pod`).
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let text: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let joined = if text.len() == 1 {
            text[0].clone()
        } else {
            format!("[{}]", text.join(", "))
        };
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!("{kind} {name:?} is invalid: {joined}"),
        );
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        let mut d = json!({"name": name, "kind": kind, "causes": causes});
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        e.details = d;
        e
    }
    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }
    /// 403 Forbidden for an object.
    pub fn forbidden(t: &Target<'_>, why: impl AsRef<str>) -> ApiError {
        let mut e = ApiError::new(
            403,
            "Forbidden",
            format!(
                "{} {:?} is forbidden: {}",
                t.qualified(),
                t.name,
                why.as_ref()
            ),
        );
        e.details = t.details();
        e
    }
    /// 500 InternalError.
    pub fn internal(message: impl AsRef<str>) -> ApiError {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.as_ref()),
        )
    }
    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }
    /// 401 Unauthorized.
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }
    /// 410 Expired (too old resourceVersion), as sent on a watch or list.
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }
    /// A generic error for an arbitrary injected status code.
    pub fn injected(code: u16) -> ApiError {
        let (reason, message) = match code {
            400 => ("BadRequest", "injected fault"),
            401 => ("Unauthorized", "Unauthorized"),
            403 => ("Forbidden", "injected fault: forbidden"),
            404 => (
                "NotFound",
                "the server could not find the requested resource",
            ),
            409 => (
                "Conflict",
                "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
            ),
            410 => ("Expired", "injected fault: expired"),
            422 => ("Invalid", "injected fault: invalid"),
            429 => (
                "TooManyRequests",
                "too many requests, please try again later",
            ),
            503 => (
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            ),
            504 => (
                "Timeout",
                "the server was unable to return a response in the time allotted",
            ),
            _ => ("InternalError", "Internal error occurred: injected fault"),
        };
        let mut e = ApiError::new(code, reason, message);
        if code == 429 {
            e.retry_after = Some(1);
        }
        e
    }
    /// The `Status` JSON body.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            s["details"] = self.details.clone();
        }
        if let Some(secs) = self.retry_after {
            s["details"]["retryAfterSeconds"] = json!(secs);
        }
        s
    }
}

/// A `Status` of success, as returned by some deletes.
pub fn success(group: &str, resource: &str, name: &str, uid: &str) -> Value {
    let mut details = json!({"name": name, "kind": resource, "uid": uid});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}
