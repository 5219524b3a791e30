//! The listener: accepts (optionally TLS) connections, reads each request
//! whole, routes it to an operation, applies injected faults, and answers.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::faults::Injected;
use crate::state::{Operation, Shared};
use crate::wire::{ApiError, Body, RawRequest, Service, response};
use crate::{crl, ecr, rolesanywhere, sts};

/// Largest request body accepted (CRL operations: [`crl::MAX_CRL_BODY_BYTES`]).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long shutdown waits for in-flight requests.
const DRAIN: Duration = Duration::from_secs(5);

/// Returned by the request handler to make hyper close the connection
/// without writing a response (the "dropped connection" fault).
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by fault injection")]
pub(crate) struct DropConnection;

/// Accepts connections until `shutdown` turns true, then drains.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let shared = shared.clone();
                let tls = tls.clone();
                let rx = shutdown.clone();
                conns.spawn(async move {
                    match tls {
                        None => serve_conn(stream, shared, rx).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                                Ok(Ok(s)) => serve_conn(s, shared, rx).await,
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        conns.abort_all();
    }
}

async fn serve_conn<S>(io: S, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(shared.clone(), req));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, DropConnection> {
    let raw = match read_request(req).await? {
        Ok(raw) => raw,
        Err(e) => return Ok(Service::Unknown.error_response(&e)),
    };
    if raw.method == "GET" && raw.path == "/healthz" {
        return Ok(response(
            200,
            "text/plain",
            "ok\n".into(),
            &crate::state::request_id(),
        ));
    }
    dispatch(&shared, &raw).await
}

/// The request with its body read, headers as text; an error to answer for
/// a header that is not visible ASCII or a body over the limit of its path.
async fn read_request(
    req: Request<Incoming>,
) -> Result<Result<RawRequest, ApiError>, DropConnection> {
    let (parts, body) = req.into_parts();
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        match value.to_str() {
            Ok(v) => headers.push((name.as_str().to_string(), v.to_string())),
            Err(_) => {
                return Ok(Err(ApiError::new(
                    400,
                    "InvalidHeader",
                    format!("header {name} is not visible ASCII"),
                )));
            }
        }
    }
    let limit = if crl::is_crl_path(parts.uri.path()) {
        crl::MAX_CRL_BODY_BYTES
    } else {
        MAX_BODY_BYTES
    };
    let too_large = || {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("request body exceeds {limit} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Ok(Err(too_large()));
    }
    let body = match Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Ok(Err(too_large()));
        }
        Err(e) => {
            tracing::debug!(error = %e, "reading request body failed");
            return Err(DropConnection);
        }
    };
    Ok(Ok(RawRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers,
        body,
    }))
}

/// Routes the request, counts it, applies the configured faults, then
/// answers it as its service would.
async fn dispatch(shared: &Shared, raw: &RawRequest) -> Result<Response<Body>, DropConnection> {
    let (service, op) = match route(raw) {
        Ok(r) => r,
        Err((service, e)) => {
            tracing::info!(method = %raw.method, path = %raw.path, status = e.status, code = e.code, "unroutable request");
            return Ok(service.error_response(&e));
        }
    };
    shared.count(op);
    let latency = shared.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let result = match shared.faults.next() {
        Injected::Drop => {
            tracing::info!(operation = op.name(), "fault: dropping connection");
            return Err(DropConnection);
        }
        Injected::Fail(status) => Err(service.internal(status)),
        Injected::Throttle => Err(service.throttling()),
        Injected::None => match op {
            Operation::CreateSession if !shared.admit_session() => Err(service.throttling()),
            Operation::CreateSession => rolesanywhere::create_session(shared, raw),
            Operation::GetCallerIdentity => sts::handle(shared, raw),
            Operation::GetAuthorizationToken => ecr::handle(shared, raw),
            crl_op => crl::handle(shared, raw, crl_op),
        },
    };
    match result {
        Ok(resp) => Ok(resp),
        Err(e) => {
            tracing::info!(operation = op.name(), status = e.status, code = e.code, message = %e.message, "request refused");
            Ok(service.error_response(&e))
        }
    }
}

/// Picks the service and operation: `POST /sessions`, `/crls` and `/crl/{id}`
/// are Roles Anywhere, an ECR `X-Amz-Target` is ECR, an `Action` parameter is
/// STS; otherwise the `Host` prefix (`rolesanywhere.`, `sts.`, `api.ecr.`) decides.
fn route(req: &RawRequest) -> Result<(Service, Operation), (Service, ApiError)> {
    if let Some(op) = crl::operation(&req.method, &req.path) {
        return op
            .map(|op| (Service::RolesAnywhere, op))
            .map_err(|e| (Service::RolesAnywhere, e));
    }
    let host = req.header("host").unwrap_or_default().to_ascii_lowercase();
    let ra_host = host.starts_with("rolesanywhere.");
    if req.path == "/sessions" || ra_host {
        let refused = if req.path != "/sessions" {
            ApiError::new(
                404,
                "ResourceNotFoundException",
                format!("no emulated Roles Anywhere operation at {}", req.path),
            )
        } else if req.method != "POST" {
            ApiError::new(
                405,
                "MethodNotAllowed",
                format!("{} /sessions: CreateSession is POST", req.method),
            )
        } else {
            return Ok((Service::RolesAnywhere, Operation::CreateSession));
        };
        return Err((Service::RolesAnywhere, refused));
    }
    if let Some(target) = req.header("x-amz-target") {
        if target.starts_with(ecr::TARGET_PREFIX) {
            return Ok((Service::Ecr, Operation::GetAuthorizationToken));
        }
        return Err((
            Service::Unknown,
            ApiError::new(
                400,
                "UnknownOperationException",
                format!("X-Amz-Target {target:?} is not an emulated service"),
            ),
        ));
    }
    if sts::action(req).is_some() || host.starts_with("sts.") {
        return Ok((Service::Sts, Operation::GetCallerIdentity));
    }
    if host.starts_with("api.ecr.") {
        return Ok((Service::Ecr, Operation::GetAuthorizationToken));
    }
    Err((
        Service::Unknown,
        ApiError::new(
            404,
            "UnknownOperation",
            format!(
                "{} {}: not an emulated operation (expected POST /sessions, /crls, /crl/{{id}}, an STS Action, or an ECR X-Amz-Target)",
                req.method, req.path
            ),
        ),
    ))
}
