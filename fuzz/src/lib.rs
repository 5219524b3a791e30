//! Fixtures the fuzz targets share: one CA, one tokio runtime, and the local
//! servers that stand in for AWS (or a proxy in front of it) and for the
//! sidecar's own listener. Everything is built once per process.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use attache_aws::cache::{self, CredentialSource, FetchError, RefreshPolicy};
use attache_aws::credentials::Credentials;
use attache_pki::{CaOptions, CertificateAuthority, KeyType, PrivateKey, X509Signer};
use attache_rt::clock::ManualClock;
use attache_sidecar::metrics::Metrics;
use attache_sidecar::server::{EndpointState, ImdsTokens};
use http_body_util::Full;
use hyper::body::Bytes;
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// The endpoint token of the sidecar fixture (what
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` holds).
pub const ENDPOINT_TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
/// The secret access key the sidecar fixture serves; it may only appear in
/// a reply to a request that carried [`ENDPOINT_TOKEN`].
pub const SECRET: &str = "fuzzSECRETfuzzSECRETfuzzSECRETfuzzSECRET";
/// The role of the sidecar fixture's credentials.
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/fuzz";

/// The moment the fixtures were made; certificates are valid then.
pub fn now() -> OffsetDateTime {
    static NOW: OnceLock<OffsetDateTime> = OnceLock::new();
    *NOW.get_or_init(|| {
        OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("0 is a valid nanosecond")
    })
}

/// One runtime for every target that needs tokio (one worker: the fuzzer
/// keeps the other core).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// The cluster CA (ECDSA P-256, valid from [`now`]).
pub fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::create(&CaOptions::default(), now()).expect("CA"))
}

/// The CA certificate, DER.
pub fn ca_der() -> &'static [u8] {
    static DER: OnceLock<Vec<u8>> = OnceLock::new();
    DER.get_or_init(|| {
        attache_pki::cert::parse_certificate_pem(ca().certificate_pem())
            .expect("CA PEM")
            .0
    })
}

/// A workload certificate and its key, as the sidecar signs CreateSession with.
pub fn signer() -> X509Signer {
    let key = PrivateKey::generate(KeyType::EcdsaP256).expect("key");
    let csr =
        attache_pki::VerifiedCsr::parse(key.certificate_signing_request().expect("CSR").as_bytes())
            .expect("own CSR");
    let id = attache_pki::WorkloadIdentity::new("cluster.local", "ns", "sa").expect("identity");
    let leaf = ca()
        .issue_workload(&csr, &id, std::time::Duration::from_secs(3600), now())
        .expect("leaf");
    X509Signer::new(leaf.der, vec![], key).expect("signer")
}

/// A fixed set of credentials valid for an hour after [`now`].
pub fn credentials() -> Credentials {
    Credentials {
        access_key_id: "ASIAFUZZEXAMPLE".into(),
        secret_access_key: Zeroizing::new(SECRET.into()),
        session_token: Zeroizing::new("fuzzTOKENfuzzTOKEN".into()),
        expiration: now() + time::Duration::hours(1),
        issued_at: now(),
        role_arn: ROLE_ARN.into(),
    }
}

struct Fixed;

impl CredentialSource for Fixed {
    async fn fetch(&self) -> Result<Credentials, FetchError> {
        Ok(credentials())
    }
}

/// The sidecar's real listener (`serve` around `server::service`, IMDS paths
/// on) on a loopback port, holding [`credentials`]; returns its address.
pub fn sidecar() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let rt = runtime();
        let (mut cache, _task) = {
            let _guard = rt.enter();
            cache::spawn(
                Fixed,
                RefreshPolicy::default(),
                Arc::new(ManualClock::new(now())),
                Metrics::default(),
            )
        };
        rt.block_on(cache.wait_ready());
        let state = EndpointState {
            cache,
            token: Arc::new(Zeroizing::new(ENDPOINT_TOKEN.into())),
            metrics: Metrics::default(),
            imds: Some(Arc::new(ImdsTokens::default())),
        };
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        rt.spawn(attache_rt::serve::serve(
            listener,
            attache_sidecar::server::service(state),
            None,
            std::future::pending(),
        ));
        addr
    })
}

/// What the stand-in for AWS answers next.
#[derive(Clone, Debug, Default)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `x-amzn-ErrorType`, if any.
    pub error_type: Option<String>,
    /// Body.
    pub body: Vec<u8>,
}

/// A local HTTP server answering every request with the [`Reply`] set last:
/// an AWS endpoint (or a proxy in front of it) that says anything.
pub struct ReplyServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    next: Arc<Mutex<Reply>>,
}

impl ReplyServer {
    /// Starts the server on the shared runtime.
    pub fn start() -> ReplyServer {
        let rt = runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let next = Arc::new(Mutex::new(Reply::default()));
        let shared = next.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let r = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        async move {
                            let mut resp = http::Response::new(Full::new(Bytes::from(r.body)));
                            *resp.status_mut() = http::StatusCode::from_u16(r.status)
                                .unwrap_or(http::StatusCode::OK);
                            if let Some(v) = r
                                .error_type
                                .and_then(|t| http::HeaderValue::from_str(&t).ok())
                            {
                                resp.headers_mut().insert("x-amzn-errortype", v);
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ReplyServer { url, next }
    }

    /// Sets the next answer.
    pub fn set(&self, reply: Reply) {
        *self.next.lock().unwrap_or_else(|e| e.into_inner()) = reply;
    }
}

/// Splits `data` at its first `\n`: (first line, rest).
pub fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
