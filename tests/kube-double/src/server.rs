//! The HTTPS server: TLS accept loop, authentication, URL routing to verbs, discovery,
//! request counting and fault injection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::api::{self, ListOpts, Shared, WriteOpts, lock};
use crate::auth::{API_AUDIENCE, UserInfo};
use crate::patch::PatchType;
use crate::resources::{RESOURCES, ResourceType};
use crate::status::{ApiError, ApiResult};
use crate::watch::{self, WatchOpts};

/// Largest request body accepted (the real server's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Serves `router` over HTTPS on `127.0.0.1:0` with `cert_pem`/`key_pem`; returns the
/// bound address. Used by the double itself and handy for test webhook servers.
pub async fn serve_tls(
    router: axum::Router,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tls_acceptor(cert_pem, key_pem)?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let router = router.clone();
                    async move {
                        use tower::ServiceExt;
                        router.oneshot(req.map(Body::new)).await
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn tls_acceptor(cert_pem: &str, key_pem: &str) -> anyhow::Result<TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// The router for the API server.
pub fn router(sh: Arc<Shared>) -> axum::Router {
    axum::Router::new().fallback(move |req: Request<Body>| {
        let sh = sh.clone();
        async move { handle(sh, req).await }
    })
}

fn write_response(sh: &Shared, code: u16, body: &Value, warnings: &[String]) -> Response<Body> {
    lock(&sh.warnings).extend(warnings.iter().cloned());
    json_response(code, body, warnings)
}

fn json_response(code: u16, body: &Value, warnings: &[String]) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - {:?}", w)) {
            r.headers_mut().append("warning", v);
        }
    }
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_status(), &[]);
    if let Some(s) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert("retry-after", v);
    }
    r
}

async fn handle(sh: Arc<Shared>, req: Request<Body>) -> Response<Body> {
    let latency = sh.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match dispatch(&sh, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

/// A parsed resource URL.
struct Route {
    rt: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_route(path: &str) -> ApiResult<Option<Route>> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Ok(None),
    };
    if rest.is_empty() {
        return Ok(None);
    }
    let find = |r: &str| ResourceType::find(group, version, r).ok_or_else(ApiError::no_route);
    let s = |x: &str| Some(x.to_string());
    let route = match rest {
        ["namespaces", ns, sub @ ("status" | "finalize")] if group.is_empty() => Route {
            rt: find("namespaces")?,
            namespace: None,
            name: s(ns),
            sub: s(sub),
        },
        ["namespaces", ns, res, tail @ ..] => {
            let rt = find(res)?;
            match tail {
                [] => Route {
                    rt,
                    namespace: s(ns),
                    name: None,
                    sub: None,
                },
                [name] => Route {
                    rt,
                    namespace: s(ns),
                    name: s(name),
                    sub: None,
                },
                [name, sub] => Route {
                    rt,
                    namespace: s(ns),
                    name: s(name),
                    sub: s(sub),
                },
                _ => return Err(ApiError::no_route()),
            }
        }
        [res] => Route {
            rt: find(res)?,
            namespace: None,
            name: None,
            sub: None,
        },
        [res, name] => Route {
            rt: find(res)?,
            namespace: None,
            name: s(name),
            sub: None,
        },
        [res, name, sub] => Route {
            rt: find(res)?,
            namespace: None,
            name: s(name),
            sub: s(sub),
        },
        _ => return Err(ApiError::no_route()),
    };
    if route.rt.namespaced && route.namespace.is_none() && route.name.is_some() {
        return Err(ApiError::no_route());
    }
    if !route.rt.namespaced && route.namespace.is_some() {
        return Err(ApiError::no_route());
    }
    Ok(Some(route))
}

fn query_map(q: Option<&str>) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        m.insert(decode_component(k), decode_component(v));
    }
    m
}

fn decode_component(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(x) => {
                        out.push(x);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn verb_of(method: &Method, route: &Route, q: &HashMap<String, String>) -> ApiResult<&'static str> {
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    Ok(match (method.as_str(), route.name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("POST", true) if route.sub.is_some() => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    })
}

fn authenticate(sh: &Shared, req: &Request<Body>) -> ApiResult<UserInfo> {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(ApiError::unauthorized)?;
    let store = sh.store();
    sh.auth
        .authenticate(&store, token, &[API_AUDIENCE.to_string()])
        .map(|(u, _)| u)
        .map_err(|_| ApiError::unauthorized())
}

fn discovery(sh: &Shared, path: &str) -> Option<Value> {
    let base = lock(&sh.base_url).clone();
    match path.trim_end_matches('/') {
        "/version" => {
            let (major, minor) = lock(&sh.version).clone();
            Some(
                json!({"major": major, "minor": minor, "gitVersion": format!("v{major}.{minor}.0"),
                        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25.0", "compiler": "gc", "platform": "linux/amd64"}),
            )
        }
        "/healthz" | "/readyz" | "/livez" => Some(Value::String("ok".into())),
        "/api" => Some(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": base.trim_start_matches("https://")}]}),
        ),
        "/apis" => {
            let mut groups: Vec<&str> = RESOURCES
                .iter()
                .map(|r| r.group)
                .filter(|g| !g.is_empty())
                .collect();
            groups.dedup();
            let groups: Vec<Value> = groups
                .iter()
                .map(|g| {
                    let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
                    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        "/.well-known/openid-configuration" => Some(sh.auth.openid_configuration(&base)),
        "/openid/v1/jwks" => Some(sh.auth.jwks()),
        p => {
            let gv = p
                .strip_prefix("/api/")
                .or_else(|| p.strip_prefix("/apis/"))?;
            let (group, version) = match gv.split_once('/') {
                Some((g, v)) if !v.contains('/') => (g, v),
                None if p.starts_with("/api/") => ("", gv),
                _ => return None,
            };
            let mut resources = vec![];
            for r in RESOURCES
                .iter()
                .filter(|r| r.group == group && r.version == version)
            {
                let verbs = if r.stored {
                    json!([
                        "create",
                        "delete",
                        "deletecollection",
                        "get",
                        "list",
                        "patch",
                        "update",
                        "watch"
                    ])
                } else {
                    json!(["create"])
                };
                resources.push(json!({"name": r.resource, "singularName": r.kind.to_ascii_lowercase(), "namespaced": r.namespaced, "kind": r.kind, "verbs": verbs}));
                if r.status_subresource {
                    resources.push(json!({"name": format!("{}/status", r.resource), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
                }
                if r.resource == "serviceaccounts" {
                    resources.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true, "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}));
                }
            }
            if resources.is_empty() {
                return None;
            }
            Some(
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": if group.is_empty() { version.to_string() } else { format!("{group}/{version}") }, "resources": resources}),
            )
        }
    }
}

async fn dispatch(sh: &Arc<Shared>, req: Request<Body>) -> ApiResult<Response<Body>> {
    let path = req.uri().path().to_string();
    let open = matches!(
        path.as_str(),
        "/healthz"
            | "/readyz"
            | "/livez"
            | "/version"
            | "/.well-known/openid-configuration"
            | "/openid/v1/jwks"
    );
    let user = if open {
        UserInfo::default()
    } else {
        authenticate(sh, &req)?
    };
    let route = parse_route(&path)?;
    let Some(route) = route else {
        if req.method() != Method::GET {
            return Err(ApiError::no_route());
        }
        return discovery(sh, &path)
            .map(|v| json_response(200, &v, &[]))
            .ok_or_else(ApiError::no_route);
    };
    let q = query_map(req.uri().query());
    let verb = verb_of(req.method(), &route, &q)?;
    let resource = match &route.sub {
        Some(s) => format!("{}/{s}", route.rt.resource),
        None => route.rt.resource.to_string(),
    };
    *lock(&sh.counts)
        .entry((verb.to_string(), resource.clone()))
        .or_default() += 1;
    {
        let mut audit = lock(&sh.audit);
        if audit.len() < crate::AUDIT_MAX {
            audit.push(crate::AuditEntry {
                user: user.username.clone(),
                verb: verb.to_string(),
                group: route.rt.group.to_string(),
                resource: resource.clone(),
                namespace: route.namespace.clone(),
                name: route.name.clone(),
            });
        }
    }
    let name = route.name.clone().unwrap_or_default();
    if let Some(e) = sh.faults.take(verb, &resource, &name, route.rt.group) {
        return Err(e);
    }
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| {
            ApiError::new(
                413,
                "RequestEntityTooLarge",
                "Request entity too large: limit is 3145728",
            )
        })?;
    let json_body = |b: &Bytes| -> ApiResult<Value> {
        if b.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(b).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })
    };
    let rt = route.rt;
    let ns = route.namespace.clone().unwrap_or_default();
    let opts = WriteOpts {
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
        field_manager: q.get("fieldManager").cloned(),
        user,
        webhooks: true,
        sub: route.sub.clone(),
    };
    if let Some(d) = q.get("dryRun")
        && d != "All"
    {
        return Err(ApiError::bad_request(format!(
            "dryRun: Unsupported value: {d:?}: supported values: \"All\""
        )));
    }
    // Virtual and subresource endpoints.
    match (rt.resource, route.sub.as_deref(), verb) {
        ("tokenreviews", None, "create") => {
            let out = {
                let store = sh.store();
                sh.auth.token_review(&store, json_body(&body)?)?
            };
            return Ok(json_response(201, &out, &[]));
        }
        ("tokenreviews", _, _) => return Err(ApiError::method_not_allowed()),
        ("serviceaccounts", Some("token"), "create") => {
            let out = {
                let store = sh.store();
                sh.auth
                    .token_request(&store, &ns, &name, json_body(&body)?)?
            };
            return Ok(json_response(201, &out, &[]));
        }
        (_, Some("status"), "get" | "update" | "patch") if rt.status_subresource => {}
        (_, Some(_), _) => return Err(ApiError::no_route()),
        _ => {}
    }
    match verb {
        "get" => Ok(json_response(200, &api::get(sh, rt, &ns, &name)?, &[])),
        "list" => {
            let lo = ListOpts::parse(rt, &q)?;
            Ok(json_response(
                200,
                &api::list(sh, rt, route.namespace.as_deref(), &lo)?,
                &[],
            ))
        }
        "watch" => {
            let wo = WatchOpts {
                list: ListOpts::parse(rt, &q)?,
                resource_version: q.get("resourceVersion").cloned().unwrap_or_default(),
                timeout: Duration::from_secs(
                    q.get("timeoutSeconds")
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(1800),
                ),
                bookmarks: q.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
                initial_events: q.get("sendInitialEvents").is_some_and(|b| b == "true"),
            };
            let body = watch::start(sh.clone(), rt, route.namespace.clone(), wo)?;
            let mut r = Response::new(body);
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            r.headers_mut()
                .insert("transfer-encoding", HeaderValue::from_static("chunked"));
            Ok(r)
        }
        "create" => {
            if !rt.stored {
                return Err(ApiError::method_not_allowed());
            }
            let (v, w) = api::create(sh, rt, &ns, json_body(&body)?, &opts).await?;
            Ok(write_response(sh, 201, &v, &w))
        }
        "update" => {
            let (v, w) = api::update(sh, rt, &ns, &name, json_body(&body)?, &opts).await?;
            Ok(write_response(sh, 200, &v, &w))
        }
        "patch" => {
            let pt = PatchType::from_content_type(&content_type)?;
            let (code, v, w) = api::patch(sh, rt, &ns, &name, pt, &body, &opts).await?;
            Ok(write_response(sh, code, &v, &w))
        }
        "delete" => {
            let b = json_body(&body)?;
            let dry = opts.dry_run
                || b.get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|d| d.iter().any(|x| x == "All"));
            Ok(json_response(
                200,
                &crate::delete::delete(sh, rt, &ns, &name, &b, dry)?,
                &[],
            ))
        }
        "deletecollection" => {
            let lo = ListOpts::parse(rt, &q)?;
            let b = json_body(&body)?;
            let dry = opts.dry_run
                || b.get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|d| d.iter().any(|x| x == "All"));
            Ok(json_response(
                200,
                &crate::delete::delete_collection(
                    sh,
                    rt,
                    route.namespace.as_deref(),
                    &lo,
                    &b,
                    dry,
                )?,
                &[],
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = parse_route("/api/v1/namespaces/ns/pods/p/status")
            .ok()
            .flatten();
        assert!(
            r.as_ref()
                .is_some_and(|r| r.rt.resource == "pods" && r.sub.as_deref() == Some("status"))
        );
        let r = parse_route("/api/v1/namespaces/ns").ok().flatten();
        assert!(
            r.is_some_and(|r| r.rt.resource == "namespaces" && r.name.as_deref() == Some("ns"))
        );
        let r = parse_route("/apis/coordination.k8s.io/v1/namespaces/x/leases")
            .ok()
            .flatten();
        assert!(r.is_some_and(|r| r.rt.resource == "leases" && r.name.is_none()));
        assert!(parse_route("/api/v1/bogus").is_err());
        assert_eq!(decode_component("a%3Db%2Cc+d"), "a=b,c d");
    }
}
