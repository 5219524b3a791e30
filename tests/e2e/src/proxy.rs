//! A fault-injecting HTTPS reverse proxy in front of kube-apiserver, for the
//! failures a real API server does not produce on cue (a 409 Conflict on the
//! next update, a 5xx on the next create).
//!
//! It listens on `127.0.0.1:0` with a certificate of its own CA
//! ([`FaultProxy::ca_pem`]) and forwards every request, headers unchanged
//! (the `Authorization` header too, so RBAC still sees the caller; only
//! `Host` is rewritten), over a fresh TLS connection that trusts the API
//! server's CA. Responses are streamed back as they arrive, so watches (long
//! chunked responses) work through it. [`FaultProxy::fail_next`] makes the
//! next N requests that match a method and a path answer with a status and a
//! Kubernetes `Status` body instead, without reaching the API server.
//!
//! Clients authenticate through it with bearer tokens only: a client
//! certificate ends at the proxy's TLS.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

type Body = BoxBody<Bytes, hyper::Error>;
type PathMatch = Box<dyn Fn(&str) -> bool + Send + Sync>;

struct Rule {
    remaining: usize,
    methods: Vec<String>,
    path: PathMatch,
    status: u16,
}

#[derive(Default)]
struct State {
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
}

/// One request the proxy received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// Path and query, e.g. `/api/v1/namespaces/a/serviceaccounts/app`.
    pub path: String,
    /// The injected status, or `None` when the request was forwarded.
    pub injected: Option<u16>,
}

struct Upstream {
    addr: String,
    authority: HeaderValue,
    name: ServerName<'static>,
    tls: TlsConnector,
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    url: String,
    ca_pem: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl FaultProxy {
    /// Starts a proxy to `upstream_url` (`https://host:port`), whose serving
    /// certificate `upstream_ca_pem` signed.
    pub async fn start(upstream_url: &str, upstream_ca_pem: &str) -> Result<FaultProxy> {
        let uri: Uri = upstream_url.parse().context("upstream URL")?;
        let host = uri
            .host()
            .context("upstream URL without a host")?
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(upstream_ca_pem.as_bytes()) {
            roots.add(cert.context("upstream CA PEM")?)?;
        }
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let upstream = Arc::new(Upstream {
            addr: format!("{host}:{port}"),
            authority: HeaderValue::from_str(&format!("{host}:{port}"))?,
            name: ServerName::try_from(host)?,
            tls: TlsConnector::from(Arc::new(client)),
        });

        let (ca_pem, server) = serving_config()?;
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}", listener.local_addr()?);
        let state = Arc::new(State::default());
        let task = tokio::spawn(accept_loop(listener, acceptor, upstream, state.clone()));
        Ok(FaultProxy {
            url,
            ca_pem,
            state,
            task,
        })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The CA that signed the proxy's serving certificate (for kubeconfigs).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Answers the next `n` requests whose method is one of `methods` (any
    /// when empty) and whose path and query satisfy `path` with `status` and
    /// a Kubernetes `Status` body (429 adds `Retry-After: 1`). Rules are
    /// checked in the order they were added.
    pub fn fail_next(
        &self,
        n: usize,
        methods: &[&str],
        path: impl Fn(&str) -> bool + Send + Sync + 'static,
        status: u16,
    ) {
        lock(&self.state.rules).push(Rule {
            remaining: n,
            methods: methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            path: Box::new(path),
            status,
        });
    }

    /// Drops every rule not yet used up.
    pub fn clear(&self) {
        lock(&self.state.rules).clear();
    }

    /// How many injected answers are still to be given.
    pub fn pending(&self) -> usize {
        lock(&self.state.rules).iter().map(|r| r.remaining).sum()
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.state.seen).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A CA of the proxy's own and a serving certificate for 127.0.0.1 it signed.
fn serving_config() -> Result<(String, rustls::ServerConfig)> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "attache-e2e fault proxy CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((ca.pem(), config))
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    upstream: Arc<Upstream>,
    state: Arc<State>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, upstream, state) = (acceptor.clone(), upstream.clone(), state.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let (upstream, state) = (upstream.clone(), state.clone());
                async move { Ok::<_, Infallible>(handle(req, &upstream, &state).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, upstream: &Upstream, state: &State) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let injected = {
        let mut rules = lock(&state.rules);
        let hit = rules.iter_mut().find(|r| {
            r.remaining > 0
                && (r.methods.is_empty() || r.methods.contains(&method))
                && (r.path)(&path)
        });
        let status = hit.map(|r| {
            r.remaining -= 1;
            r.status
        });
        rules.retain(|r| r.remaining > 0);
        status
    };
    lock(&state.seen).push(Seen {
        method: method.clone(),
        path: path.clone(),
        injected,
    });
    if let Some(status) = injected {
        return status_response(
            status,
            &format!("injected by the e2e fault proxy: {method} {path}"),
        );
    }
    match forward(req, upstream).await {
        Ok(resp) => resp.map(|b| b.boxed()),
        Err(e) => status_response(502, &format!("e2e fault proxy: upstream: {e:#}")),
    }
}

/// Sends one request over a new connection; the response body streams from
/// the connection's task, which ends when the response is complete.
async fn forward(mut req: Request<Incoming>, upstream: &Upstream) -> Result<Response<Incoming>> {
    let tcp = TcpStream::connect(&upstream.addr).await?;
    tcp.set_nodelay(true)?;
    let tls = upstream.tls.connect(upstream.name.clone(), tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    req.headers_mut().insert(HOST, upstream.authority.clone());
    // Dropping `sender` afterwards lets the connection close once the
    // response body has been read.
    Ok(sender.send_request(req).await?)
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

/// A response as kube-apiserver words a failure: a `Status` object.
fn status_response(status: u16, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason(status),
        "code": status,
    });
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == 429 {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}
