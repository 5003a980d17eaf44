//! A fake AWS HTTP API for end-to-end tests: SSM StartSession/ResumeSession/TerminateSession, ECS
//! ExecuteCommand/DescribeTasks and KMS GenerateDataKey/Decrypt on one `127.0.0.1` port.
//!
//! It speaks the AWS JSON 1.1 protocol the way botocore (AWS CLI v1) and the Rust SDK send and
//! parse it: `POST /`, `X-Amz-Target: <Service>.<Operation>`, a SigV4 `Authorization` header, and
//! errors as HTTP 4xx with `x-amzn-ErrorType` plus `{"__type": Code, "message": …}`. Sessions
//! themselves live in a [`SessionBackend`] (the simulated agent/relay); this module only
//! translates requests, checks signatures, records every call and injects faults on demand.
//!
//! ```no_run
//! # async fn demo(backend: std::sync::Arc<dyn agent_sim::api::SessionBackend>) -> anyhow::Result<()> {
//! use agent_sim::api::{serve, ApiOptions, Fault};
//! let api = serve(backend, ApiOptions::with_credentials("AKIDTEST", "secret")).await?;
//! api.set_fault("StartSession", Fault::target_not_connected("i-0123456789abcdef0").times(1));
//! println!("aws ssm start-session --endpoint-url {}", api.url());
//! # Ok(()) }
//! ```

pub mod kms;
pub mod sigv4;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::http::{HeaderMap, HeaderValue, Response, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

pub use crate::backend::{BackendError, DataKeyResolver, SessionBackend, SessionSpec, Started};
pub use kms::KmsStore;
pub use sigv4::{verify_presigned_or_signed_ws_upgrade, SignedBy};

/// The content type of every AWS JSON 1.1 request and response.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// `X-Amz-Target` prefixes of the services this fake answers.
pub const SSM_PREFIX: &str = "AmazonSSM";
pub const ECS_PREFIX: &str = "AmazonEC2ContainerServiceV20141113";
pub const KMS_PREFIX: &str = "TrentService";
/// The document real ECS uses for `execute-command` sessions.
pub const ECS_EXEC_DOCUMENT: &str = "AWS-StartInteractiveCommand";
/// Request bodies are tiny; anything larger is a client bug.
const MAX_BODY: usize = 1 << 20;

/// How the fake API behaves. `Default` has no credentials, so signatures are parsed and recorded
/// but not checked.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Access key id → secret access key the clients under test sign with.
    pub credentials: BTreeMap<String, String>,
    /// Check SigV4 signatures (only effective when `credentials` is not empty).
    pub verify_signatures: bool,
    /// Share a KMS store with the simulated agent; a fresh one is made when `None`.
    pub kms: Option<Arc<KmsStore>>,
    /// Region used in ARNs when a request carries no signature to take it from.
    pub region: String,
    /// Account id used in ARNs.
    pub account_id: String,
    /// Container name ECS ExecuteCommand picks when the request names none.
    pub ecs_default_container: String,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            credentials: BTreeMap::new(),
            verify_signatures: true,
            kms: None,
            region: "us-east-1".to_owned(),
            account_id: "123456789012".to_owned(),
            ecs_default_container: "app".to_owned(),
        }
    }
}

impl ApiOptions {
    /// Options that accept (and verify) requests signed with exactly this key pair.
    pub fn with_credentials(access_key_id: &str, secret_access_key: &str) -> Self {
        let mut o = Self::default();
        o.credentials
            .insert(access_key_id.to_owned(), secret_access_key.to_owned());
        o
    }
}

/// A failure injected in place of an operation's normal handling (after signature checks, as
/// AWS authenticates before anything else).
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this AWS error.
    Error {
        status: u16,
        code: String,
        message: String,
    },
    /// Answer 200 with this body instead of calling the backend (e.g. a ResumeSession reply
    /// without `TokenValue`, which the plugin must treat as "session timed out").
    Reply(Value),
    /// Drop the connection without a response, like a network failure.
    CloseConnection,
}

impl Fault {
    pub fn error(status: u16, code: &str, message: &str) -> Self {
        Fault::Error {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }
    /// IAM denial, e.g. for GenerateDataKey when the caller lacks `kms:GenerateDataKey`.
    pub fn access_denied() -> Self {
        Self::error(
            400,
            "AccessDeniedException",
            "User: arn:aws:iam::123456789012:user/test is not authorized to perform this action",
        )
    }
    /// What SSM answers when the target's agent is offline.
    pub fn target_not_connected(target: &str) -> Self {
        Self::error(
            400,
            "TargetNotConnected",
            &format!("{target} is not connected."),
        )
    }
    /// Retryable throttling; both SDKs retry it, so combine with [`Fault::times`].
    pub fn throttling() -> Self {
        Self::error(400, "ThrottlingException", "Rate exceeded")
    }
    /// Apply this fault only to the next `n` calls of the operation.
    pub fn times(self, n: u32) -> FaultRule {
        FaultRule {
            fault: self,
            remaining: Some(n),
        }
    }
}

/// A fault plus how many more calls it applies to (`None`: until cleared).
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub fault: Fault,
    pub remaining: Option<u32>,
}

impl From<Fault> for FaultRule {
    fn from(fault: Fault) -> Self {
        FaultRule {
            fault,
            remaining: None,
        }
    }
}

/// One API call as the fake saw it, for test assertions.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// Arrival order, from 0.
    pub seq: u64,
    /// The full `X-Amz-Target`, e.g. `AmazonSSM.StartSession` (empty if missing).
    pub target: String,
    /// The operation part, e.g. `StartSession`.
    pub operation: String,
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    /// The JSON request body (`null` if it was not JSON).
    pub body: Value,
    /// Who signed it; `verified` says whether the signature was checked and held.
    pub signed_by: Option<SignedBy>,
    pub status: u16,
    /// The AWS error code returned, if any.
    pub error_code: Option<String>,
}

/// An AWS error response in the making.
#[derive(Debug, Clone)]
struct ApiError {
    status: u16,
    code: String,
    message: String,
}

impl ApiError {
    fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }
    fn validation(message: impl Into<String>) -> Self {
        Self::new(400, "ValidationException", message)
    }
    fn from_backend(e: BackendError) -> Self {
        Self::new(400, &e.code, e.message)
    }
}

/// Shared between the server task and the handle.
struct State {
    backend: Arc<dyn SessionBackend>,
    credentials: RwLock<BTreeMap<String, String>>,
    verify: AtomicBool,
    kms: Arc<KmsStore>,
    region: String,
    account_id: String,
    ecs_default_container: String,
    faults: Mutex<HashMap<String, FaultRule>>,
    log: Mutex<Vec<RequestRecord>>,
    seq: AtomicU64,
    /// (cluster, task id) → container names exec'd into, so DescribeTasks can list them.
    ecs_tasks: Mutex<BTreeMap<(String, String), BTreeSet<String>>>,
    /// Managed nodes DescribeInstanceInformation lists.
    instances: Mutex<Vec<Instance>>,
}

/// A managed node as DescribeInstanceInformation sees it, with the tags its filters match.
#[derive(Debug, Clone)]
pub struct Instance {
    /// `i-...` or `mi-...`.
    pub id: String,
    /// `Online`, `ConnectionLost` or `Inactive`.
    pub ping_status: String,
    /// Tag key → value (`Name` included).
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    /// An online node with these tags.
    pub fn online(id: &str, tags: &[(&str, &str)]) -> Self {
        Self {
            id: id.to_owned(),
            ping_status: "Online".to_owned(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked (all updates are single
/// inserts/removals), so poisoning is ignored rather than turned into a second panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running fake API. Dropping it stops the server.
pub struct ApiHandle {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ApiHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ApiHandle {
    /// `http://127.0.0.1:<port>`, for `--endpoint-url` / `endpoint_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every call so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.state.log).clone()
    }

    /// Calls of one operation (e.g. `"StartSession"`), in arrival order.
    pub fn requests_for(&self, operation: &str) -> Vec<RequestRecord> {
        lock(&self.state.log)
            .iter()
            .filter(|r| r.operation == operation)
            .cloned()
            .collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.state.log).clear();
    }

    /// Waits until at least `count` calls of `operation` were answered, or `timeout` passes.
    pub async fn wait_for_requests(
        &self,
        operation: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<RequestRecord>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.requests_for(operation);
            if got.len() >= count {
                return Ok(got);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "the fake AWS API saw {} {operation} call(s) within {timeout:?}, expected {count}",
                    got.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Injects a fault into `operation` (e.g. `"GenerateDataKey"`): pass a [`Fault`] for "until
    /// cleared" or `fault.times(n)` for the next `n` calls. Replaces any earlier fault.
    pub fn set_fault(&self, operation: &str, rule: impl Into<FaultRule>) {
        lock(&self.state.faults).insert(operation.to_owned(), rule.into());
    }

    pub fn clear_fault(&self, operation: &str) {
        lock(&self.state.faults).remove(operation);
    }

    pub fn clear_faults(&self) {
        lock(&self.state.faults).clear();
    }

    /// Switches signature checking at runtime (it stays off while no credentials are known).
    pub fn set_verify_signatures(&self, on: bool) {
        self.state.verify.store(on, Ordering::SeqCst);
    }

    /// Accepts another key pair from now on, e.g. rotated temporary credentials.
    pub fn add_credentials(&self, access_key_id: &str, secret_access_key: &str) {
        self.state
            .credentials
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(access_key_id.to_owned(), secret_access_key.to_owned());
    }

    /// Replaces the managed nodes DescribeInstanceInformation lists.
    pub fn set_instances(&self, instances: Vec<Instance>) {
        *lock(&self.state.instances) = instances;
    }

    /// The data keys issued by GenerateDataKey; hand it to the simulated agent as its
    /// [`DataKeyResolver`].
    pub fn kms(&self) -> Arc<KmsStore> {
        self.state.kms.clone()
    }

    /// Stops accepting, closes open connections and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ApiHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the fake API on an ephemeral `127.0.0.1` port. Must be called inside a tokio runtime.
pub async fn serve(
    backend: Arc<dyn SessionBackend>,
    opts: ApiOptions,
) -> anyhow::Result<ApiHandle> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("binding the fake AWS API to 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let state = Arc::new(State {
        backend,
        verify: AtomicBool::new(opts.verify_signatures),
        credentials: RwLock::new(opts.credentials),
        kms: opts.kms.unwrap_or_default(),
        region: opts.region,
        account_id: opts.account_id,
        ecs_default_container: opts.ecs_default_container,
        faults: Mutex::new(HashMap::new()),
        log: Mutex::new(Vec::new()),
        seq: AtomicU64::new(0),
        ecs_tasks: Mutex::new(BTreeMap::new()),
        instances: Mutex::new(Vec::new()),
    });
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let st = state.clone();
    let task = tokio::spawn(async move {
        // Connections live in this set so that stopping the server also drops (aborts) them.
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let st = st.clone();
                        conns.spawn(async move {
                            let svc = service_fn(move |req| handle(st.clone(), req));
                            if let Err(e) = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await
                            {
                                tracing::debug!("fake AWS API connection ended: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("fake AWS API accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Ok(ApiHandle {
        addr,
        state,
        stop: Some(stop_tx),
        task: Some(task),
    })
}

/// Returned to hyper to drop a connection without answering ([`Fault::CloseConnection`]).
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault injected: connection dropped")
    }
}

impl std::error::Error for DropConnection {}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn response(status: u16, body: &Value, error_code: Option<&str>) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static(CONTENT_TYPE));
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("x-amzn-requestid", v);
    }
    if let Some(code) = error_code.and_then(|c| HeaderValue::from_str(c).ok()) {
        h.insert("x-amzn-errortype", code);
    }
    r
}

async fn handle(
    state: Arc<State>,
    req: hyper::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::debug!("fake AWS API could not read a request body: {e}");
            return Err(DropConnection);
        }
    };
    let target = header(&parts.headers, "x-amz-target").unwrap_or_default();
    let (prefix, operation) = target
        .split_once('.')
        .map(|(p, o)| (p.to_owned(), o.to_owned()))
        .unwrap_or_default();
    let mut record = RequestRecord {
        seq: state.seq.fetch_add(1, Ordering::SeqCst),
        target: target.clone(),
        operation: operation.clone(),
        content_type: header(&parts.headers, "content-type"),
        user_agent: header(&parts.headers, "user-agent"),
        body: if body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&body).unwrap_or(Value::Null)
        },
        signed_by: None,
        status: 200,
        error_code: None,
    };

    let uri = parts.uri.to_string();
    let outcome = process(
        &state,
        &parts.method,
        &uri,
        &parts.headers,
        &body,
        &prefix,
        &operation,
        &mut record,
    )
    .await;
    let resp = match outcome {
        Ok(Some(v)) => response(200, &v, None),
        Ok(None) => {
            record.status = 0;
            record.error_code = Some("ConnectionDropped".to_owned());
            lock(&state.log).push(record);
            return Err(DropConnection);
        }
        Err(e) => {
            record.status = e.status;
            record.error_code = Some(e.code.clone());
            response(
                e.status,
                &json!({"__type": e.code, "message": e.message}),
                Some(&e.code),
            )
        }
    };
    tracing::debug!(
        target = %record.target,
        status = record.status,
        error = ?record.error_code,
        key = ?record.signed_by.as_ref().map(|s| s.access_key_id.clone()),
        "fake AWS API call"
    );
    lock(&state.log).push(record);
    Ok(resp)
}

/// Authenticates, applies faults and dispatches. `Ok(None)` means "drop the connection".
#[allow(clippy::too_many_arguments)]
async fn process(
    state: &Arc<State>,
    method: &hyper::Method,
    uri: &str,
    headers: &HeaderMap,
    body: &[u8],
    prefix: &str,
    operation: &str,
    record: &mut RequestRecord,
) -> Result<Option<Value>, ApiError> {
    if method != hyper::Method::POST {
        return Err(ApiError::new(
            405,
            "UnknownOperationException",
            "AWS JSON 1.1 operations are POST requests",
        ));
    }
    let service = match prefix {
        SSM_PREFIX => "ssm",
        ECS_PREFIX => "ecs",
        KMS_PREFIX => "kms",
        _ => {
            return Err(ApiError::new(
                400,
                "UnknownOperationException",
                format!(
                    "unknown X-Amz-Target {prefix:?}.{operation:?}; this fake serves {SSM_PREFIX}, \
                     {ECS_PREFIX} and {KMS_PREFIX}"
                ),
            ))
        }
    };

    let sreq = sigv4::Request {
        method: method.as_str(),
        uri,
        headers,
        body: Some(body),
    };
    let creds = state
        .credentials
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if state.verify.load(Ordering::SeqCst) && !creds.is_empty() {
        match sigv4::verify(&sreq, &creds, Some(service), SystemTime::now()) {
            Ok(by) => record.signed_by = Some(by),
            Err(e) => {
                record.signed_by = sigv4::parse_unverified(&sreq);
                return Err(ApiError::new(403, e.code, e.message));
            }
        }
    } else {
        record.signed_by = sigv4::parse_unverified(&sreq);
    }

    let input = match &record.body {
        Value::Object(m) => m.clone(),
        _ => {
            return Err(ApiError::new(
                400,
                "SerializationException",
                "the request body must be a JSON object",
            ))
        }
    };

    // Faults come after authentication, as in AWS.
    let fault = {
        let mut faults = lock(&state.faults);
        let (fault, exhausted) = match faults.get_mut(operation) {
            Some(rule) => match rule.remaining.as_mut() {
                None => (Some(rule.fault.clone()), false),
                Some(0) => (None, true),
                Some(n) => {
                    *n -= 1;
                    (Some(rule.fault.clone()), *n == 0)
                }
            },
            None => (None, false),
        };
        if exhausted {
            faults.remove(operation);
        }
        fault
    };
    match fault {
        Some(Fault::Error {
            status,
            code,
            message,
        }) => return Err(ApiError::new(status, &code, message)),
        Some(Fault::Reply(v)) => return Ok(Some(v)),
        Some(Fault::CloseConnection) => return Ok(None),
        None => {}
    }

    let region = record
        .signed_by
        .as_ref()
        .map(|s| s.region.clone())
        .unwrap_or_else(|| state.region.clone());
    let out = match (prefix, operation) {
        (SSM_PREFIX, "StartSession") => ssm_start_session(state, &input).await?,
        (SSM_PREFIX, "ResumeSession") => ssm_resume_session(state, &input).await?,
        (SSM_PREFIX, "TerminateSession") => ssm_terminate_session(state, &input).await?,
        (SSM_PREFIX, "DescribeInstanceInformation") => ssm_describe_instances(state, &input)?,
        (ECS_PREFIX, "ExecuteCommand") => ecs_execute_command(state, &input, &region).await?,
        (ECS_PREFIX, "DescribeTasks") => ecs_describe_tasks(state, &input, &region)?,
        (KMS_PREFIX, "GenerateDataKey") => kms_generate_data_key(state, &input, &region).await?,
        (KMS_PREFIX, "Decrypt") => kms_decrypt(state, &input)?,
        _ => {
            return Err(ApiError::new(
                400,
                "UnknownOperationException",
                format!("the fake AWS API does not implement {prefix}.{operation}"),
            ))
        }
    };
    Ok(Some(out))
}

/// Runs a backend call on a blocking thread: the trait is synchronous and may block.
async fn call_backend<T, F>(state: &Arc<State>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn SessionBackend) -> T + Send + 'static,
{
    let backend = state.backend.clone();
    tokio::task::spawn_blocking(move || f(&*backend))
        .await
        .map_err(|_| ApiError::new(500, "InternalServerError", "the session backend panicked"))
}

fn missing(field: &str) -> ApiError {
    ApiError::validation(format!(
        "1 validation error detected: Value null at '{field}' failed to satisfy constraint: \
         Member must not be null"
    ))
}

fn req_str(input: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    match input.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(missing(field)),
        Some(_) => Err(ApiError::new(
            400,
            "SerializationException",
            format!("'{field}' must be a string"),
        )),
    }
}

fn opt_str(input: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::new(
            400,
            "SerializationException",
            format!("'{field}' must be a string"),
        )),
    }
}

fn string_map(
    input: &Map<String, Value>,
    field: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(ApiError::new(
                    400,
                    "SerializationException",
                    format!("'{field}.{k}' must be a string"),
                )),
            })
            .collect(),
        Some(_) => Err(ApiError::new(
            400,
            "SerializationException",
            format!("'{field}' must be a map of strings"),
        )),
    }
}

fn blob(input: &Map<String, Value>, field: &str) -> Result<Vec<u8>, ApiError> {
    let s = req_str(input, field)?;
    base64::engine::general_purpose::STANDARD
        .decode(s.as_bytes())
        .map_err(|_| {
            ApiError::new(
                400,
                "SerializationException",
                format!("'{field}' must be base64"),
            )
        })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn started_json(s: &Started) -> Value {
    // Member order of the SSM model (StartSessionResponse / ResumeSessionResponse).
    json!({"SessionId": s.session_id, "TokenValue": s.token_value, "StreamUrl": s.stream_url})
}

async fn ssm_start_session(
    state: &Arc<State>,
    input: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let target = req_str(input, "Target")?;
    let document_name = opt_str(input, "DocumentName")?;
    let reason = opt_str(input, "Reason")?;
    let mut parameters = BTreeMap::new();
    match input.get("Parameters") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let list = v
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|x| x.as_str().map(str::to_owned))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or_else(|| {
                        ApiError::new(
                            400,
                            "SerializationException",
                            format!("Parameters.{k} must be a list of strings"),
                        )
                    })?;
                parameters.insert(k.clone(), list);
            }
        }
        Some(_) => {
            return Err(ApiError::new(
                400,
                "SerializationException",
                "Parameters must be a map of string lists",
            ))
        }
    }
    let spec = SessionSpec {
        target,
        document_name,
        parameters,
        reason,
    };
    let started = call_backend(state, move |b| b.start_session(spec))
        .await?
        .map_err(ApiError::from_backend)?;
    Ok(started_json(&started))
}

async fn ssm_resume_session(
    state: &Arc<State>,
    input: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let id = req_str(input, "SessionId")?;
    let started = call_backend(state, move |b| b.resume_session(&id))
        .await?
        .map_err(ApiError::from_backend)?;
    Ok(started_json(&started))
}

async fn ssm_terminate_session(
    state: &Arc<State>,
    input: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let id = req_str(input, "SessionId")?;
    let id2 = id.clone();
    call_backend(state, move |b| b.terminate_session(&id2))
        .await?
        .map_err(ApiError::from_backend)?;
    Ok(json!({"SessionId": id}))
}

/// DescribeInstanceInformation with the filters clients use to find a node: `tag:KEY`,
/// `tag-key`, `PingStatus` and `InstanceIds` (values within a filter are OR'ed, filters AND'ed).
/// One page: the fake never has enough nodes to paginate.
fn ssm_describe_instances(state: &State, input: &Map<String, Value>) -> Result<Value, ApiError> {
    let mut filters: Vec<(String, Vec<String>)> = Vec::new();
    if let Some(list) = input.get("Filters").and_then(Value::as_array) {
        for f in list {
            let key = f.get("Key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<String> = f
                .get("Values")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if key.is_empty() || values.is_empty() {
                return Err(ApiError::validation("a filter needs a Key and Values"));
            }
            filters.push((key.to_owned(), values));
        }
    }
    let nodes = lock(&state.instances);
    let list: Vec<Value> = nodes
        .iter()
        .filter(|n| {
            filters.iter().all(|(key, values)| {
                if let Some(tag) = key.strip_prefix("tag:") {
                    n.tags.get(tag).is_some_and(|v| values.contains(v))
                } else {
                    match key.as_str() {
                        "tag-key" => values.iter().any(|k| n.tags.contains_key(k)),
                        "PingStatus" => values.contains(&n.ping_status),
                        "InstanceIds" => values.contains(&n.id),
                        _ => false,
                    }
                }
            })
        })
        .map(|n| {
            json!({
                "InstanceId": n.id,
                "PingStatus": n.ping_status,
                "ComputerName": n.tags.get("Name").cloned().unwrap_or_default(),
                "PlatformType": "Linux",
                "ResourceType": if n.id.starts_with("mi-") { "ManagedInstance" } else { "EC2Instance" },
            })
        })
        .collect();
    Ok(json!({ "InstanceInformationList": list }))
}

/// The last `/`-separated part: ECS accepts names or ARNs for clusters and tasks.
fn short_name(s: &str) -> String {
    s.rsplit('/').next().unwrap_or(s).to_owned()
}

/// A stable fake Docker runtime id shaped like real ones (`<32 hex>-<10 digits>`), so that
/// ExecuteCommand and DescribeTasks agree without storing it.
pub fn ecs_runtime_id(cluster: &str, task: &str, container: &str) -> String {
    let d = Sha256::digest(format!("{cluster}/{task}/{container}").as_bytes());
    let n = u32::from_be_bytes([d[16], d[17], d[18], d[19]]) % 4_000_000_000;
    format!("{}-{:010}", hex::encode(&d[..16]), n)
}

/// The SSM target real ECS creates for an exec session (and the CLI passes to the plugin).
pub fn ecs_target(cluster: &str, task: &str, container: &str) -> String {
    format!(
        "ecs:{cluster}_{task}_{}",
        ecs_runtime_id(cluster, task, container)
    )
}

struct EcsArns {
    cluster: String,
    task: String,
}

fn ecs_arns(state: &State, region: &str, cluster: &str, task: &str) -> EcsArns {
    let a = &state.account_id;
    EcsArns {
        cluster: format!("arn:aws:ecs:{region}:{a}:cluster/{cluster}"),
        task: format!("arn:aws:ecs:{region}:{a}:task/{cluster}/{task}"),
    }
}

fn ecs_container_arn(
    state: &State,
    region: &str,
    cluster: &str,
    task: &str,
    container: &str,
) -> String {
    // Stable per container, so ExecuteCommand and DescribeTasks report the same ARN.
    let d = Sha256::digest(format!("container:{cluster}/{task}/{container}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    let id = uuid::Uuid::from_bytes(b);
    format!(
        "arn:aws:ecs:{region}:{}:container/{cluster}/{task}/{id}",
        state.account_id
    )
}

async fn ecs_execute_command(
    state: &Arc<State>,
    input: &Map<String, Value>,
    region: &str,
) -> Result<Value, ApiError> {
    let cluster = short_name(&opt_str(input, "cluster")?.unwrap_or_else(|| "default".to_owned()));
    let task = short_name(&req_str(input, "task")?);
    let container =
        opt_str(input, "container")?.unwrap_or_else(|| state.ecs_default_container.clone());
    let command = req_str(input, "command")?;
    if input.get("interactive").and_then(Value::as_bool) != Some(true) {
        return Err(ApiError::new(
            400,
            "InvalidParameterException",
            "Interactive is the only mode supported currently.",
        ));
    }
    let spec = SessionSpec {
        target: ecs_target(&cluster, &task, &container),
        document_name: Some(ECS_EXEC_DOCUMENT.to_owned()),
        parameters: BTreeMap::from([("command".to_owned(), vec![command])]),
        reason: None,
    };
    let started = call_backend(state, move |b| b.start_session(spec))
        .await?
        .map_err(|e| {
            // ECS reports SSM's offline-agent error under its own name.
            let code = if e.code == "TargetNotConnected" {
                "TargetNotConnectedException".to_owned()
            } else {
                e.code
            };
            ApiError::new(400, &code, e.message)
        })?;
    lock(&state.ecs_tasks)
        .entry((cluster.clone(), task.clone()))
        .or_default()
        .insert(container.clone());
    let arns = ecs_arns(state, region, &cluster, &task);
    // Member order of the ECS model's ExecuteCommandResponse and Session shapes.
    Ok(json!({
        "clusterArn": arns.cluster,
        "containerArn": ecs_container_arn(state, region, &cluster, &task, &container),
        "containerName": container,
        "interactive": true,
        "session": {
            "sessionId": started.session_id,
            "streamUrl": started.stream_url,
            "tokenValue": started.token_value,
        },
        "taskArn": arns.task,
    }))
}

fn ecs_describe_tasks(
    state: &Arc<State>,
    input: &Map<String, Value>,
    region: &str,
) -> Result<Value, ApiError> {
    let cluster = short_name(&opt_str(input, "cluster")?.unwrap_or_else(|| "default".to_owned()));
    let ids: Vec<String> = match input.get("tasks") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(short_name))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::new(400, "SerializationException", "tasks must be strings"))?,
        _ => return Err(missing("tasks")),
    };
    let known = lock(&state.ecs_tasks).clone();
    let (mut tasks, mut failures) = (Vec::new(), Vec::new());
    for task in ids {
        let arns = ecs_arns(state, region, &cluster, &task);
        match known.get(&(cluster.clone(), task.clone())) {
            Some(containers) => {
                let containers: Vec<Value> = containers
                    .iter()
                    .map(|name| {
                        json!({
                            "containerArn": ecs_container_arn(state, region, &cluster, &task, name),
                            "taskArn": arns.task,
                            "name": name,
                            "runtimeId": ecs_runtime_id(&cluster, &task, name),
                            "lastStatus": "RUNNING",
                            "managedAgents": [{"name": "ExecuteCommandAgent", "lastStatus": "RUNNING"}],
                        })
                    })
                    .collect();
                tasks.push(json!({
                    "clusterArn": arns.cluster,
                    "containers": containers,
                    "desiredStatus": "RUNNING",
                    "enableExecuteCommand": true,
                    "lastStatus": "RUNNING",
                    "launchType": "FARGATE",
                    "taskArn": arns.task,
                }));
            }
            None => failures.push(json!({"arn": arns.task, "reason": "MISSING"})),
        }
    }
    Ok(json!({"tasks": tasks, "failures": failures}))
}

async fn kms_generate_data_key(
    state: &Arc<State>,
    input: &Map<String, Value>,
    region: &str,
) -> Result<Value, ApiError> {
    let key_id = req_str(input, "KeyId")?;
    let context = string_map(input, "EncryptionContext")?;
    let n = input.get("NumberOfBytes");
    let spec = opt_str(input, "KeySpec")?;
    let len = match (n, spec.as_deref()) {
        (Some(n), None) => match n.as_u64() {
            Some(n @ 1..=1024) => n as usize,
            _ => {
                return Err(ApiError::validation(
                    "1 validation error detected: Value at 'numberOfBytes' failed to satisfy \
                     constraint: Member must have value between 1 and 1024",
                ))
            }
        },
        (None, Some("AES_256")) => 32,
        (None, Some("AES_128")) => 16,
        (None, Some(other)) => {
            return Err(ApiError::validation(format!(
                "KeySpec {other:?} is not one of AES_256, AES_128"
            )))
        }
        _ => {
            return Err(ApiError::validation(
                "Please specify either number of bytes or key spec.",
            ))
        }
    };
    let arn = kms::key_arn(&key_id, region, &state.account_id);
    // In this fake world the only key that exists for a session is the one its agent uses: a
    // client asking for another one is caught here, as real KMS would at the agent's Decrypt.
    if let Some(session_id) = context.get("aws:ssm:SessionId").cloned() {
        if let Some(expected) = call_backend(state, move |b| b.kms_key_for(&session_id)).await? {
            if !kms::key_matches(&key_id, &expected) {
                return Err(ApiError::new(
                    400,
                    "NotFoundException",
                    format!("Key '{arn}' does not exist"),
                ));
            }
        }
    }
    let (ciphertext, plaintext) = state.kms.generate_data_key(&arn, len, context);
    Ok(json!({
        "CiphertextBlob": b64(&ciphertext),
        "Plaintext": b64(&plaintext),
        "KeyId": arn,
    }))
}

fn kms_decrypt(state: &Arc<State>, input: &Map<String, Value>) -> Result<Value, ApiError> {
    let ciphertext = blob(input, "CiphertextBlob")?;
    let context = string_map(input, "EncryptionContext")?;
    let key_id = opt_str(input, "KeyId")?;
    match state
        .kms
        .decrypt_with_key(&ciphertext, &context, key_id.as_deref())
    {
        Ok((plaintext, arn)) => Ok(json!({
            "KeyId": arn,
            "Plaintext": b64(&plaintext),
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
        })),
        Err(kms::KmsError::InvalidCiphertext) => Err(ApiError::new(
            400,
            "InvalidCiphertextException",
            "The ciphertext was not issued by this KMS or the encryption context differs from \
             the one given to GenerateDataKey",
        )),
        Err(kms::KmsError::IncorrectKey) => Err(ApiError::new(
            400,
            "IncorrectKeyException",
            "The key ID in the request does not identify a KMS key that can perform this operation.",
        )),
    }
}
