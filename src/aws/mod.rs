//! The AWS side of a session, through the AWS SDK: credentials, SigV4 on the websocket upgrade,
//! the KMS data key for encrypted sessions, and the SSM ResumeSession / TerminateSession calls.
//!
//! Credentials, region and profile come from argv (REGION, PROFILE) through `aws-config`, so every
//! source users have works (environment, shared config/credentials files, SSO, assume-role,
//! `credential_process`, web identity, container and instance metadata). Nothing here blocks a
//! session that does not need AWS: credentials are resolved in the background on first demand,
//! each wait is bounded, and a session without KMS only waits [`SIGNING_WAIT`] for them.

mod https;
pub mod sign;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata};
use http::{HeaderName, HeaderValue};
use tokio::sync::watch;

use crate::cli::{RequestParameters, Secret, SessionArgs, StartSessionResponse};

/// Upper bound on resolving credentials (SSO, assume-role and `credential_process` included).
pub const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the first websocket connection waits for credentials to sign with; after that it
/// connects unsigned (the service accepts unsigned upgrades from older plugins).
pub const SIGNING_WAIT: Duration = Duration::from_secs(5);
/// Upper bound on the KMS action (credentials and GenerateDataKey): the agent gives up on the
/// handshake after 15 s.
pub const KMS_TIMEOUT: Duration = Duration::from_secs(12);
/// Upper bound on one ResumeSession or TerminateSession call (credentials included).
pub const SSM_CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a ResumeSession call (or the websocket after it) failed, as observed; the machine sorts
/// it into final or worth retrying (`session::core::classify_resume`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeFailure {
    /// The service answered without a token: the session is over.
    Expired,
    /// The service answered with an error.
    Service {
        /// HTTP status, when known.
        status: Option<u16>,
        /// The error code (`DoesNotExistException`, `ThrottlingException`, ...).
        code: Option<String>,
        /// The whole message for the user.
        message: String,
    },
    /// No answer: network, timeout, credentials not resolvable right now, the new websocket.
    Network(String),
    /// An answer we must not use (a StreamUrl that is not a Session Manager endpoint).
    Unusable(String),
}

/// What ResumeSession returned.
#[derive(Debug, Clone)]
pub struct Resumed {
    /// The new data-channel token.
    pub token: Secret,
    /// The StreamUrl it returned, if any (the reference ignores it and re-dials the original).
    pub stream_url: Option<String>,
    /// The credentials the call was signed with, to sign the new websocket too.
    pub credentials: Credentials,
}

type CredResult = Result<(SdkConfig, Credentials), CredError>;

/// Why credentials could not be had.
#[derive(Debug, Clone)]
pub struct CredError {
    /// The sentence for the user.
    pub message: String,
    /// The profile named on the command line is not defined: the session must not go on
    /// unsigned (or as anyone else).
    pub missing_profile: bool,
}

impl From<String> for CredError {
    fn from(message: String) -> Self {
        Self {
            message,
            missing_profile: false,
        }
    }
}

impl From<CredError> for String {
    fn from(e: CredError) -> Self {
        e.message
    }
}

impl std::fmt::Display for CredError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Per-session AWS context: argv settings and credentials resolved once in the background.
pub struct Aws {
    region: String,
    profile: Option<String>,
    endpoint: Option<String>,
    target: String,
    session_id: String,
    /// Starts empty; the background resolution fills it once.
    resolved: Mutex<Option<watch::Receiver<Option<CredResult>>>>,
}

impl std::fmt::Debug for Aws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aws")
            .field("region", &self.region)
            .field("profile", &self.profile)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Aws {
    /// The context for a session started with `args`. Does no I/O.
    pub fn new(args: &SessionArgs) -> Arc<Self> {
        let target = args.parameters.as_ref().map_or("", |p| p.target.as_str());
        Arc::new(Self {
            region: args.region.clone(),
            profile: explicit_profile(
                args.profile.as_deref(),
                target,
                std::env::var("AWS_PROFILE").ok().as_deref(),
            ),
            endpoint: args.endpoint.clone(),
            target: args
                .parameters
                .as_ref()
                .map(|p| p.target.clone())
                .unwrap_or_default(),
            session_id: args.response.session_id.clone(),
            resolved: Mutex::new(None),
        })
    }

    /// The context for API calls made before any session exists (StartSession and target look-ups
    /// of the standalone commands, a port forward started again). Does no I/O.
    pub fn for_api(region: &str, profile: Option<&str>, endpoint: Option<&str>) -> Arc<Self> {
        Arc::new(Self {
            region: region.to_owned(),
            profile: profile.map(str::to_owned),
            endpoint: endpoint.map(str::to_owned),
            target: String::new(),
            session_id: String::new(),
            resolved: Mutex::new(None),
        })
    }

    /// SSM StartSession for `request`, bounded by [`SSM_CALL_TIMEOUT`]. Returns the response and
    /// the region the session lives in (the one the call was made in).
    pub async fn start_session(
        &self,
        request: &RequestParameters,
    ) -> Result<(StartSessionResponse, String), String> {
        let work = async {
            let (client, _, region) = self.ssm_client(SSM_CALL_TIMEOUT).await?;
            let mut call = client.start_session().target(&request.target);
            if let Some(d) = &request.document_name {
                call = call.document_name(d);
            }
            if let Some(r) = &request.reason {
                call = call.reason(r);
            }
            for (k, v) in &request.parameters {
                call = call.parameters(k, v.clone());
            }
            let out = call.send().await.map_err(|e| {
                format!(
                    "StartSession for {} failed: {}",
                    request.target,
                    describe_sdk_error(&e)
                )
            })?;
            let field = |v: Option<&str>, name: &str| {
                v.filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .ok_or_else(|| format!("StartSession answered without {name}"))
            };
            let response = StartSessionResponse {
                session_id: field(out.session_id(), "SessionId")?,
                token_value: Secret::new(field(out.token_value(), "TokenValue")?),
                stream_url: field(out.stream_url(), "StreamUrl")?,
            };
            Ok((response, region))
        };
        bounded(SSM_CALL_TIMEOUT, "StartSession", work).await
    }

    /// Online managed nodes matching every filter (`tag:KEY`, `tag-key`, `InstanceIds`, ...):
    /// (node id, its computer name), through DescribeInstanceInformation, every page.
    pub async fn online_nodes(
        &self,
        filters: &[(String, Vec<String>)],
    ) -> Result<Vec<(String, String)>, String> {
        use aws_sdk_ssm::types::InstanceInformationStringFilter as Filter;
        let work = async {
            let (client, _, _) = self.ssm_client(SSM_CALL_TIMEOUT).await?;
            let mut found = Vec::new();
            let mut next: Option<String> = None;
            loop {
                let mut call = client.describe_instance_information().max_results(50);
                for (key, values) in filters.iter().chain(std::iter::once(&(
                    "PingStatus".to_owned(),
                    vec!["Online".to_owned()],
                ))) {
                    let f = Filter::builder()
                        .key(key)
                        .set_values(Some(values.clone()))
                        .build()
                        .map_err(|e| format!("bad filter {key}: {e}"))?;
                    call = call.filters(f);
                }
                if let Some(t) = &next {
                    call = call.next_token(t);
                }
                let out = call.send().await.map_err(|e| {
                    format!(
                        "DescribeInstanceInformation failed: {}",
                        describe_sdk_error(&e)
                    )
                })?;
                for i in out.instance_information_list() {
                    if let Some(id) = i.instance_id() {
                        found.push((id.to_owned(), i.computer_name().unwrap_or("").to_owned()));
                    }
                }
                next = out
                    .next_token()
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned);
                if next.is_none() || found.len() > 1000 {
                    return Ok(found);
                }
            }
        };
        bounded(SSM_CALL_TIMEOUT, "DescribeInstanceInformation", work).await
    }

    /// Loads a fresh SDK configuration: files are re-read, so a profile rewritten on disk (an
    /// SSO login, a rotated key) is picked up.
    async fn load_config(&self) -> SdkConfig {
        let loader = base_loader(&self.region, self.profile.as_deref());
        let Some(profile) = &self.profile else {
            return loader.load().await;
        };
        // An explicit profile: its own settings, and credentials from the chain without the
        // environment's keys (built below once the region is known).
        let config = loader.no_credentials().load().await;
        let chain = explicit_profile_chain(profile, config.region().cloned());
        config
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(chain))
            .build()
    }

    /// Loads a fresh configuration and resolves credentials through it, within `bound`.
    async fn fresh_credentials(&self, bound: Duration) -> CredResult {
        let work = async {
            if let Some(p) = &self.profile {
                check_profile(p).await.map_err(|message| CredError {
                    message,
                    missing_profile: true,
                })?;
            }
            let config = self.load_config().await;
            let provider = config.credentials_provider().ok_or_else(|| {
                CredError::from("no AWS credential provider is configured".to_owned())
            })?;
            let creds = provider.provide_credentials().await.map_err(|e| {
                CredError::from(format!(
                    "cannot get AWS credentials{}: {}",
                    self.profile_note(),
                    one_line(&DisplayErrorContext(&e).to_string())
                ))
            })?;
            Ok((config, creds))
        };
        match tokio::time::timeout(bound, work).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "AWS credentials{} could not be resolved within {} s",
                self.profile_note(),
                bound.as_secs()
            )
            .into()),
        }
    }

    fn profile_note(&self) -> String {
        match &self.profile {
            Some(p) => format!(" (profile {p})"),
            None => String::new(),
        }
    }

    /// The session's credentials, resolved once in the background (started by the first
    /// caller), waiting at most `wait` for them.
    async fn credentials(self: &Arc<Self>, wait: Duration) -> CredResult {
        let mut rx = {
            // The lock only guards a cheap check-and-spawn; poisoning cannot leave it torn.
            let mut slot = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
            match &*slot {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    let me = self.clone();
                    tokio::spawn(async move {
                        let r = me.fresh_credentials(CREDENTIALS_TIMEOUT).await;
                        match &r {
                            Ok((_, c)) => tracing::debug!(
                                access_key_id = c.access_key_id(),
                                "AWS credentials resolved"
                            ),
                            Err(e) => tracing::debug!("AWS credentials unavailable: {e}"),
                        }
                        let _ = tx.send(Some(r));
                    });
                    *slot = Some(rx.clone());
                    rx
                }
            }
        };
        let waited = tokio::time::timeout(wait, async {
            rx.wait_for(Option::is_some).await.map(|v| v.clone())
        })
        .await;
        match waited {
            Ok(Ok(v)) => {
                v.unwrap_or_else(|| Err(String::from("AWS credentials unavailable").into()))
            }
            Ok(Err(_)) => {
                Err(String::from("the credential resolution task ended unexpectedly").into())
            }
            Err(_) => Err(format!(
                "AWS credentials{} not resolved within {} s",
                self.profile_note(),
                wait.as_secs()
            )
            .into()),
        }
    }

    /// The region to sign and call in: argv, else whatever the configuration says.
    fn region_for(&self, config: &SdkConfig) -> String {
        if self.region.is_empty() {
            config
                .region()
                .map(|r| r.as_ref().to_owned())
                .unwrap_or_default()
        } else {
            self.region.clone()
        }
    }

    /// Headers that sign the websocket upgrade to `url`: none when the URL is presigned, or when
    /// no credentials are available (then we connect unsigned and say so in the debug log).
    /// `fresh` are credentials just resolved for a resume; otherwise the session's are used,
    /// waiting at most [`SIGNING_WAIT`]. `Err` only when the profile named on the command line
    /// does not exist: the session must not run unsigned (or as anyone else) then.
    pub async fn upgrade_headers(
        self: &Arc<Self>,
        url: &str,
        fresh: Option<(&Credentials, &str)>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, CredError> {
        if sign::is_presigned(url) {
            tracing::debug!("the StreamUrl is presigned; connecting without SigV4 headers");
            return Ok(Vec::new());
        }
        let (creds, region) = match fresh {
            Some((c, r)) => (c.clone(), r.to_owned()),
            None => match self.credentials(SIGNING_WAIT).await {
                Ok((config, c)) => {
                    let region = self.region_for(&config);
                    (c, region)
                }
                Err(e) if e.missing_profile => return Err(e),
                Err(e) => {
                    tracing::debug!("connecting unsigned (no SigV4 on the websocket upgrade): {e}");
                    return Ok(Vec::new());
                }
            },
        };
        match sign::upgrade_headers(url, &creds, &region, SystemTime::now()) {
            Ok(h) => {
                tracing::debug!(
                    access_key_id = creds.access_key_id(),
                    %region,
                    "websocket upgrade signed with SigV4 ({})",
                    sign::SERVICE
                );
                Ok(h)
            }
            Err(e) => {
                tracing::debug!("connecting unsigned: {e}");
                Ok(Vec::new())
            }
        }
    }

    /// The KMSEncryption action: a 64-byte data key from KMS GenerateDataKey with the session's
    /// encryption context (plus the agent's random challenge when it sent one). Returns
    /// (plaintext, ciphertext blob) or the text the reference puts after
    /// `Failed to process action KMSEncryption: `.
    pub async fn generate_data_key(
        self: &Arc<Self>,
        key_id: &str,
        challenge: Option<&str>,
    ) -> Result<(zeroize::Zeroizing<Vec<u8>>, Vec<u8>), String> {
        let work = async {
            let (config, creds) = self
                .credentials(KMS_TIMEOUT)
                .await
                .map_err(|e| format!("error while creating new KMS service, {e}"))?;
            // KMS uses the region's own endpoint (argv ENDPOINT is SSM's or ECS's), unless the
            // environment or config files name one (AWS_ENDPOINT_URL_KMS, AWS_ENDPOINT_URL).
            let kms_conf = aws_sdk_kms::config::Builder::from(&config)
                .credentials_provider(creds)
                .build();
            let client = aws_sdk_kms::Client::from_conf(kms_conf);
            let mut req = client
                .generate_data_key()
                .key_id(key_id)
                .number_of_bytes(64)
                .encryption_context("aws:ssm:SessionId", &self.session_id)
                .encryption_context("aws:ssm:TargetId", &self.target);
            if let Some(c) = challenge {
                req = req.encryption_context("aws:ssm:RandomChallenge", c);
            }
            let out = req.send().await.map_err(|e| {
                format!(
                    "Error calling KMS GenerateDataKey API: {}",
                    describe_sdk_error(&e)
                )
            })?;
            let plaintext = out
                .plaintext()
                .map(|b| zeroize::Zeroizing::new(b.as_ref().to_vec()))
                .ok_or("Error calling KMS GenerateDataKey API: the answer has no Plaintext")?;
            let blob = out
                .ciphertext_blob()
                .map(|b| b.as_ref().to_vec())
                .ok_or("Error calling KMS GenerateDataKey API: the answer has no CiphertextBlob")?;
            Ok((plaintext, blob))
        };
        tokio::time::timeout(KMS_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "Error calling KMS GenerateDataKey API: no answer within {} s",
                    KMS_TIMEOUT.as_secs()
                ))
            })
    }

    /// An SSM client with freshly resolved credentials and the right endpoint.
    async fn ssm_client(
        &self,
        bound: Duration,
    ) -> Result<(aws_sdk_ssm::Client, Credentials, String), String> {
        let (config, creds) = self.fresh_credentials(bound).await?;
        let region = self.region_for(&config);
        let mut b = aws_sdk_ssm::config::Builder::from(&config).credentials_provider(creds.clone());
        match ssm_endpoint(self.endpoint.as_deref(), &self.target, |k| {
            std::env::var(k).ok()
        }) {
            Some(url) => b = b.endpoint_url(url),
            None => tracing::debug!("SSM endpoint: resolved by the SDK for region {region}"),
        }
        Ok((aws_sdk_ssm::Client::from_conf(b.build()), creds, region))
    }

    /// SSM ResumeSession, with credentials resolved afresh (the hourly reconnect often happens
    /// after the original ones expired). Bounded by [`SSM_CALL_TIMEOUT`].
    pub async fn resume_session(&self) -> Result<Resumed, ResumeFailure> {
        let work = async {
            let (client, creds, _region) = self
                .ssm_client(CREDENTIALS_TIMEOUT.min(SSM_CALL_TIMEOUT))
                .await
                .map_err(ResumeFailure::Network)?;
            tracing::debug!(
                session = %self.session_id,
                access_key_id = creds.access_key_id(),
                "calling ResumeSession"
            );
            let out = client
                .resume_session()
                .session_id(&self.session_id)
                .send()
                .await
                .map_err(|e| {
                    let message = format!("ResumeSession failed: {}", describe_sdk_error(&e));
                    match e.raw_response() {
                        // The service answered: the session machine sorts it by status and code.
                        Some(raw) => ResumeFailure::Service {
                            status: Some(raw.status().as_u16()),
                            code: e.code().map(str::to_owned),
                            message,
                        },
                        None => ResumeFailure::Network(message),
                    }
                })?;
            match out.token_value().filter(|t| !t.is_empty()) {
                None => Err(ResumeFailure::Expired),
                Some(t) => Ok(Resumed {
                    token: Secret::new(t),
                    stream_url: out
                        .stream_url()
                        .filter(|u| !u.is_empty())
                        .map(str::to_owned),
                    credentials: creds,
                }),
            }
        };
        tokio::time::timeout(SSM_CALL_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                Err(ResumeFailure::Network(format!(
                    "ResumeSession did not answer within {} s",
                    SSM_CALL_TIMEOUT.as_secs()
                )))
            })
    }

    /// The region the resumed websocket is signed for.
    pub fn signing_region(&self) -> &str {
        &self.region
    }

    /// SSM TerminateSession, bounded by `bound`; failures are returned for the caller to log.
    pub async fn terminate_session(&self, bound: Duration) -> Result<(), String> {
        let work = async {
            let (client, _, _) = self.ssm_client(bound).await?;
            client
                .terminate_session()
                .session_id(&self.session_id)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| format!("TerminateSession failed: {}", describe_sdk_error(&e)))
        };
        bounded(bound, "TerminateSession", work).await
    }
}

/// The drop-in form's PROFILE as an explicit profile (one that wins over environment keys).
/// `aws ssm start-session` passes only `--profile` there; `aws ecs execute-command` passes the
/// session's profile, which is AWS_PROFILE when only that is set. botocore lets environment keys
/// win over a profile that comes from AWS_PROFILE alone, so an ECS target whose PROFILE is
/// AWS_PROFILE is left to the default chain (which reads AWS_PROFILE itself). The one case this
/// cannot tell apart, `--profile p` with AWS_PROFILE=p and environment keys, then uses the keys.
fn explicit_profile(
    profile: Option<&str>,
    target: &str,
    aws_profile: Option<&str>,
) -> Option<String> {
    let p = profile.filter(|p| !p.is_empty())?;
    if target.starts_with("ecs:") && aws_profile == Some(p) {
        return None;
    }
    Some(p.to_owned())
}

/// The SDK's configuration loader with our time limits, retries and HTTPS client, for `region`
/// (empty: the SDK's chain finds it) and `profile`.
fn base_loader(region: &str, profile: Option<&str>) -> aws_config::ConfigLoader {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(8))
                .operation_timeout(Duration::from_secs(15))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .http_client(https::deferred_https_client());
    if !region.is_empty() {
        loader = loader.region(Region::new(region.to_owned()));
    }
    if let Some(p) = profile {
        loader = loader.profile_name(p);
    }
    loader
}

/// The credential chain for a profile named on the command line (`--profile`, argv PROFILE).
///
/// The AWS CLI (botocore's `create_credential_resolver`) drops the environment provider from
/// its chain when a profile is given explicitly, so `aws --profile prod` runs as `prod` even
/// with AWS_ACCESS_KEY_ID set; the SDK's default chain would try the environment first and run
/// the session as another identity. This is that chain without the environment: the profile
/// (keys, SSO, assume-role, `credential_process`), then web identity, the container and the
/// instance, as the default chain orders them.
fn explicit_profile_chain(profile: &str, region: Option<Region>) -> CredentialsProviderChain {
    use aws_config::provider_config::ProviderConfig;
    let conf = ProviderConfig::default()
        .with_http_client(https::deferred_https_client())
        .with_region(region);
    CredentialsProviderChain::first_try(
        "Profile",
        aws_config::profile::ProfileFileCredentialsProvider::builder()
            .configure(&conf)
            .profile_name(profile)
            .build(),
    )
    .or_else(
        "WebIdentityToken",
        aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder()
            .configure(&conf)
            .build(),
    )
    .or_else(
        "EcsContainer",
        aws_config::ecs::EcsCredentialsProvider::builder()
            .configure(&conf)
            .build(),
    )
    .or_else(
        "Ec2InstanceMetadata",
        aws_config::imds::credentials::ImdsCredentialsProvider::builder()
            .configure(&conf)
            .build(),
    )
}

/// `Err` naming `profile` when neither the config nor the credentials file defines it: the AWS
/// CLI refuses such a profile (ProfileNotFound) instead of falling back to other credentials.
pub async fn check_profile(profile: &str) -> Result<(), String> {
    use aws_runtime::env_config::file::EnvConfigFiles;
    use aws_types::os_shim_internal::{Env, Fs};
    let set = aws_config::profile::load(
        &Fs::real(),
        &Env::real(),
        &EnvConfigFiles::default(),
        Some(profile.to_owned().into()),
    )
    .await
    .map_err(|e| format!("cannot read the AWS config files: {e}"))?;
    if set.get_profile(profile).is_some() {
        return Ok(());
    }
    let mut known: Vec<&str> = set.profiles().collect();
    known.sort_unstable();
    let known = if known.is_empty() {
        "no profile is defined".to_owned()
    } else {
        format!("defined: {}", known.join(", "))
    };
    Err(format!(
        "the AWS profile {profile:?} does not exist ({known}); check --profile, or add it with `aws configure --profile {profile}`"
    ))
}

/// The region for API calls: `given` (--region) if any, else the SDK's chain (AWS_REGION,
/// AWS_DEFAULT_REGION, the profile's `region`, instance metadata). `Err` with what to do when
/// none is found or the name is malformed: the SDK's own errors ("missing signing region", an
/// endpoint-rules failure) do not say it.
pub async fn resolve_region(given: Option<&str>, profile: Option<&str>) -> Result<String, String> {
    let region = match given.filter(|r| !r.is_empty()) {
        Some(r) => r.to_owned(),
        None => {
            let load = base_loader("", profile).no_credentials().load();
            let found = tokio::time::timeout(SSM_CALL_TIMEOUT, load)
                .await
                .ok()
                .and_then(|c| c.region().cloned());
            match found {
                Some(r) => r.as_ref().to_owned(),
                None => {
                    return Err(
                        "no AWS region is set; pass --region (e.g. --region us-east-1), set AWS_REGION, or add `region = ...` to the profile in ~/.aws/config".to_owned(),
                    )
                }
            }
        }
    };
    if valid_region(&region) {
        Ok(region)
    } else {
        Err(format!(
            "{region:?} is not an AWS region name; pass --region (e.g. --region us-east-1) or set AWS_REGION"
        ))
    }
}

/// A region name as AWS spells them (`us-east-1`, `cn-north-1`, `us-gov-west-1`, and local
/// emulators' names such as `local`): lower-case letters, digits and inner hyphens.
fn valid_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 64
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !r.starts_with('-')
        && !r.ends_with('-')
}

/// `work` within `bound`; past it, an error saying which call did not answer.
async fn bounded<T>(
    bound: Duration,
    call: &str,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(bound, work).await.unwrap_or_else(|_| {
        Err(format!(
            "{call} did not answer within {} s",
            bound.as_secs()
        ))
    })
}

/// The SDK's multi-line error texts (the credential chain lists every provider it tried, then
/// repeats it all as a Debug dump) as one line: the first sentence, and for a provider chain
/// the names of the providers tried.
fn one_line(text: &str) -> String {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("").trim();
    let tried: Vec<&str> = lines
        .filter_map(|l| {
            let l = l.strip_prefix("  ")?;
            let (name, _) = l.split_once(':')?;
            (!name.contains(' ')).then_some(name)
        })
        .collect();
    // Cut the Debug dump that follows the Display text.
    let first = first.split(" (").next().unwrap_or(first);
    if tried.is_empty() {
        first.to_owned()
    } else {
        format!(
            "no credentials found (looked in: {}); set a profile (--profile, AWS_PROFILE) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run `aws sso login`",
            tried.join(", ")
        )
    }
}

/// `Code: message` for service errors, the whole cause chain for the rest.
fn describe_sdk_error<E, R>(e: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            match (err.code(), err.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_owned(),
                _ => one_line(&DisplayErrorContext(e).to_string()),
            }
        }
        SdkError::TimeoutError(_) => "the request timed out".to_owned(),
        _ => {
            let summary = one_line(&DisplayErrorContext(e).to_string());
            if summary.starts_with("no credentials found") {
                return summary;
            }
            let causes = cause_chain(e);
            format!("{causes}{}", crate::transport::tls_hint(&causes))
        }
    }
}

/// Each cause's own message, outermost first, joined by ": ". The SDK's error types display
/// only their own level ("dispatch failure", "io error", "client error"), so the reason a
/// request failed (a refused connection, an untrusted certificate) is in the last cause.
fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        let text = text.lines().next().unwrap_or("").trim();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(text)) {
            parts.push(text.to_owned());
        }
        next = err.source();
    }
    parts.join(": ")
}

/// Where SSM calls (ResumeSession, TerminateSession) go. `Some(url)`: that URL; `None`: the
/// SDK resolves it (region, partition, FIPS/dual-stack settings, `AWS_ENDPOINT_URL_SSM`,
/// `AWS_ENDPOINT_URL`, config-file `endpoint_url`).
///
/// argv ENDPOINT is the SSM endpoint for `aws ssm start-session`, used as given. Under ECS Exec
/// (the target starts with `ecs:` or the endpoint's host with `ecs.`/`ecs-fips.`) it is ECS's,
/// where the reference's SSM calls fail: then the SDK resolves SSM's, unless the endpoint is a
/// custom one (not an AWS domain, e.g. a local emulator serving every service) and no SSM
/// endpoint is configured in the environment, in which case it is kept as the reference does.
pub fn ssm_endpoint(
    endpoint: Option<&str>,
    target: &str,
    getenv: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let endpoint = endpoint.filter(|e| !e.is_empty())?;
    let host = url::Url::parse(endpoint)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_default();
    let ecs =
        target.starts_with("ecs:") || host.starts_with("ecs.") || host.starts_with("ecs-fips.");
    if !ecs {
        return Some(endpoint.to_owned());
    }
    let configured = ["AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|k| getenv(k).is_some_and(|v| !v.is_empty()));
    let aws_domain = crate::transport::allow::is_aws_domain(&host);
    if configured || aws_domain {
        tracing::debug!(
            "ECS Exec: argv ENDPOINT {endpoint} is ECS's; SSM calls use SSM's endpoint"
        );
        None
    } else {
        Some(endpoint.to_owned())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_drop_in_profile_is_explicit_unless_ecs_passed_aws_profile() {
        use super::explicit_profile as e;
        assert_eq!(
            e(Some("prod"), "i-1", Some("prod")).as_deref(),
            Some("prod")
        );
        assert_eq!(e(Some("prod"), "ecs:c_t_r", None).as_deref(), Some("prod"));
        assert_eq!(e(Some("prod"), "ecs:c_t_r", Some("prod")), None);
        assert_eq!(e(Some(""), "i-1", None), None);
        assert_eq!(e(None, "i-1", Some("prod")), None);
    }

    #[test]
    fn region_names() {
        for ok in ["us-east-1", "cn-north-1", "us-gov-west-1", "local"] {
            assert!(super::valid_region(ok), "{ok}");
        }
        for bad in [
            "xx yy",
            "US-EAST-1",
            "-a",
            "a-",
            "",
            "us_east_1",
            "us-east-1/x",
        ] {
            assert!(!super::valid_region(bad), "{bad}");
        }
    }

    #[test]
    fn the_credential_chain_dump_becomes_one_line() {
        let dump = "the credential provider was not enabled: no credentials found in chain. Attempted:\n  Environment: the credential provider was not enabled: environment variable not set\n  Profile: the credential provider was not enabled\n  Ec2InstanceMetadata: the credential provider was not enabled: IMDS disabled (CredentialsNotLoaded(CredentialsNotLoaded { source: Some(ProviderChainError { attempts: [] }) }))";
        let line = super::one_line(dump);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with(
                "no credentials found (looked in: Environment, Profile, Ec2InstanceMetadata)"
            ),
            "{line}"
        );
        assert_eq!(
            super::one_line("dispatch failure: io error (ConnectError(..))"),
            "dispatch failure: io error"
        );
    }

    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn ssm_endpoint_selection() {
        let none = env(&[]);
        assert_eq!(ssm_endpoint(None, "i-1", &none), None);
        assert_eq!(
            ssm_endpoint(Some("https://ssm.us-east-1.amazonaws.com"), "i-1", &none).as_deref(),
            Some("https://ssm.us-east-1.amazonaws.com")
        );
        // ECS Exec: the ECS endpoint is not used for SSM calls.
        assert_eq!(
            ssm_endpoint(
                Some("https://ecs.eu-west-1.amazonaws.com"),
                "ecs:c_t_r",
                &none
            ),
            None
        );
        assert_eq!(
            ssm_endpoint(
                Some("https://ecs.cn-north-1.amazonaws.com.cn"),
                "i-1",
                &none
            ),
            None
        );
        assert_eq!(
            ssm_endpoint(
                Some("https://ecs-fips.us-east-1.amazonaws.com"),
                "i-1",
                &none
            ),
            None
        );
        // A custom endpoint under ECS (an emulator) is kept unless SSM's is configured.
        assert_eq!(
            ssm_endpoint(Some("http://localhost:4566"), "ecs:c_t_r", &none).as_deref(),
            Some("http://localhost:4566")
        );
        assert_eq!(
            ssm_endpoint(
                Some("http://localhost:4566"),
                "ecs:c_t_r",
                env(&[("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:9")])
            ),
            None
        );
    }
}
