//! The sidecar's commands as library functions, so the binary stays a thin
//! flag parser and tests can run the exact same code in-process.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::{Cli, Command, ProbeArgs, ServeArgs, SourceArgs, UpdateArgs, system_clock};
use crate::metrics::Metrics;
use crate::server::{EndpointState, ImdsTokens, service};
use crate::source::RolesAnywhereSource;
use crate::startup::Breakdown;
use crate::{endpoint_token, update};
use attache_aws::cache::{self, CredentialSource as _};
use attache_rt::logging::init_logging;
use attache_rt::serve;

fn fail(problems: &[String]) -> ExitCode {
    for p in problems {
        eprintln!("attache-sidecar: {p}");
    }
    ExitCode::FAILURE
}

fn source(args: &SourceArgs, metrics: &Metrics) -> Result<RolesAnywhereSource, Vec<String>> {
    source_timed(args, metrics, &mut Breakdown::default())
}

fn source_timed(
    args: &SourceArgs,
    metrics: &Metrics,
    marks: &mut Breakdown,
) -> Result<RolesAnywhereSource, Vec<String>> {
    let setup = args.build(metrics)?;
    marks.tls_client = setup.client_took;
    marks.certificate = setup.certificate_took;
    Ok(RolesAnywhereSource {
        certs: setup.certs,
        client: setup.client,
        clock: system_clock(),
    })
}

/// Runs one command until it is done or `shutdown` resolves (for `serve` and
/// `update`). Problems are printed to stderr, one line each.
pub async fn run(cli: Cli, shutdown: impl Future<Output = ()> + Send) -> ExitCode {
    match cli.command {
        Command::Probe(args) => probe(&args).await,
        Command::CredentialProcess(args) => credential_process(&args).await,
        Command::Update(args) => update(&args, shutdown).await,
        Command::Serve(args) => serve_endpoint(args, shutdown).await,
    }
}

/// `probe`: exit 0 when the local endpoint answers `/readyz` with 200.
async fn probe(args: &ProbeArgs) -> ExitCode {
    let url = format!("http://{}/readyz", args.listen);
    let ok = async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(2))
            .build()
            .ok()?;
        client
            .get(&url)
            .send()
            .await
            .ok()
            .map(|r| r.status().is_success())
    };
    match ok.await {
        Some(true) => ExitCode::SUCCESS,
        Some(false) => fail(&[format!("{url}: not ready")]),
        None => fail(&[format!("{url}: not reachable")]),
    }
}

/// `credential-process`: one credentials document on stdout.
async fn credential_process(args: &SourceArgs) -> ExitCode {
    init_logging(args.log_format);
    let src = match source(args, &Metrics::default()) {
        Ok(s) => s,
        Err(p) => return fail(&p),
    };
    match src.fetch().await {
        Ok(c) => match serde_json::to_string(&c.process_json()) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&[e.to_string()]),
        },
        Err(e) => fail(&[e.message]),
    }
}

/// `update`: keep one profile of a shared credentials file fresh (or write
/// it once with `--once`).
async fn update(args: &UpdateArgs, shutdown: impl Future<Output = ()> + Send) -> ExitCode {
    let mut shutdown = std::pin::pin!(shutdown);
    let metrics = Metrics::default();
    init_logging(args.source.log_format);
    let src = match source(&args.source, &metrics) {
        Ok(s) => s,
        Err(p) => return fail(&p),
    };
    let path = crate::cli::expand_home(&args.credentials_file);
    if args.once {
        return match src.fetch().await {
            Ok(c) => match update::update_file(&path, &args.profile, &c) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&[format!("cannot write {}: {e}", path.display())]),
            },
            Err(e) => fail(&[e.message]),
        };
    }
    let (mut cache, _task) = cache::spawn(src, Default::default(), system_clock(), metrics);
    let mut last = None;
    loop {
        cache.wait_ready().await;
        if let Some(c) = cache.current()
            && last.as_deref() != Some(c.access_key_id.as_str())
        {
            if let Err(e) = update::update_file(&path, &args.profile, &c) {
                tracing::error!(path = %path.display(), error = %e, "cannot write credentials file");
            } else {
                tracing::info!(path = %path.display(), profile = %args.profile, "updated credentials file");
                last = Some(c.access_key_id.clone());
            }
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
            () = &mut shutdown => return ExitCode::SUCCESS,
        }
    }
}

/// `serve`: the loopback credentials endpoint, until `shutdown`.
async fn serve_endpoint(args: ServeArgs, shutdown: impl Future<Output = ()> + Send) -> ExitCode {
    let metrics = Metrics::default();
    let mut marks = Breakdown::new();
    let t = std::time::Instant::now();
    init_logging(args.source.log_format);
    marks.logging = t.elapsed();
    let t = std::time::Instant::now();
    let mut problems = Vec::new();
    let policy = args.policy().map_err(|e| problems.push(e)).ok();
    let endpoint_token = endpoint_token::load_or_create(&args.token_file)
        .map_err(|e| problems.push(e.to_string()))
        .ok();
    let src = source_timed(&args.source, &metrics, &mut marks)
        .map_err(|p| problems.extend(p))
        .ok();
    let (Some(policy), Some(token), Some(src)) = (policy, endpoint_token, src) else {
        return fail(&problems);
    };
    let listener = match serve::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => return fail(&[e.to_string()]),
    };
    let (cache, task) = cache::spawn(src, policy, system_clock(), metrics.clone());
    marks.other = t
        .elapsed()
        .saturating_sub(marks.tls_client + marks.certificate);
    marks.listening_at = crate::startup::since_start();
    let mut first = cache.clone();
    let spawned = std::time::Instant::now();
    tokio::spawn(async move {
        first.wait_ready().await;
        marks.log_ready(spawned.elapsed());
    });
    let state = EndpointState {
        cache,
        token: Arc::new(token),
        metrics,
        imds: args.imds.then(|| Arc::new(ImdsTokens::default())),
    };
    tracing::info!(listen = %args.listen, imds = args.imds, "serving credentials");
    serve::serve(listener, service(state), None, shutdown).await;
    task.abort();
    ExitCode::SUCCESS
}

/// `attache-sidecar` running inside this process (the demo, tests): the same
/// code as the binary, stopped with [`InProcess::stop`].
pub struct InProcess {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<ExitCode>,
}

impl InProcess {
    /// Runs `cli` on the current runtime.
    pub fn spawn(cli: Cli) -> InProcess {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(cli, async move {
            let _ = stopped.await;
        }));
        InProcess {
            stop: Some(stop),
            task,
        }
    }

    /// Shuts it down gracefully and returns its exit code.
    pub async fn stop(mut self) -> ExitCode {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.unwrap_or(ExitCode::FAILURE)
    }
}

/// Polls `http://<listen>/readyz` until it answers 200 or `within` passes.
pub async fn wait_ready(listen: &str, within: std::time::Duration) -> bool {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if http
            .get(format!("http://{listen}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}
