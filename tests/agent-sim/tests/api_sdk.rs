//! The fake AWS API against the real Rust SDK (aws-sdk-kms, aws-sdk-ssm) and the real SigV4
//! signer (aws-sigv4): requests must parse, signatures must verify, errors must surface with the
//! right codes.

mod api_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agent_sim::api::{self, serve, ApiHandle, ApiOptions, DataKeyResolver, Fault};
use api_support::FakeBackend;
use aws_credential_types::Credentials;
use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::retry::RetryConfig;

const KEY_ID: &str = "AKIDSDKTEST";
const SECRET: &str = "sdk/test+secret/0123456789abcdefEXAMPLE";
const TOKEN: &str = "sdk-session-token-1";
/// Every SDK call in these tests finishes within this bound or the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

async fn start(backend: Arc<FakeBackend>) -> ApiHandle {
    serve(backend, ApiOptions::with_credentials(KEY_ID, SECRET))
        .await
        .expect("fake API starts")
}

fn sdk_config(
    api: &ApiHandle,
    key: &str,
    secret: &str,
    token: Option<&str>,
) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(api.url())
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(Credentials::new(
                key,
                secret,
                token.map(str::to_owned),
                None,
                "test",
            )),
        )
        .retry_config(RetryConfig::disabled())
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .build()
}

fn kms_client(api: &ApiHandle) -> aws_sdk_kms::Client {
    aws_sdk_kms::Client::new(&sdk_config(api, KEY_ID, SECRET, Some(TOKEN)))
}

fn context(session: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("aws:ssm:SessionId".to_owned(), session.to_owned()),
        (
            "aws:ssm:TargetId".to_owned(),
            "i-0123456789abcdef0".to_owned(),
        ),
    ])
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .expect("SDK call finished in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_generate_and_decrypt_roundtrip() {
    let api = start(Arc::new(FakeBackend::default())).await;
    let kms = kms_client(&api);
    let ctx = context("test-user-1");

    let out = bounded(
        kms.generate_data_key()
            .key_id("alias/session-key")
            .number_of_bytes(64)
            .set_encryption_context(Some(ctx.clone().into_iter().collect()))
            .send(),
    )
    .await
    .expect("GenerateDataKey succeeds");
    let plaintext = out.plaintext().expect("plaintext").as_ref().to_vec();
    let blob = out.ciphertext_blob().expect("blob").as_ref().to_vec();
    assert_eq!(plaintext.len(), 64);
    assert_eq!(
        out.key_id(),
        Some("arn:aws:kms:us-east-1:123456789012:alias/session-key")
    );

    // The simulated agent's path and the SDK's Decrypt agree.
    assert_eq!(api.kms().decrypt(&blob, &ctx), Some(plaintext.clone()));
    let dec = bounded(
        kms.decrypt()
            .ciphertext_blob(Blob::new(blob.clone()))
            .set_encryption_context(Some(ctx.clone().into_iter().collect()))
            .key_id("alias/session-key")
            .send(),
    )
    .await
    .expect("Decrypt succeeds");
    assert_eq!(dec.plaintext().unwrap().as_ref(), plaintext.as_slice());

    // A different context fails as with real KMS, and the SDK maps it to its typed error.
    let err = bounded(
        kms.decrypt()
            .ciphertext_blob(Blob::new(blob.clone()))
            .set_encryption_context(Some(context("other").into_iter().collect()))
            .send(),
    )
    .await
    .expect_err("context mismatch is refused")
    .into_service_error();
    assert!(err.is_invalid_ciphertext_exception(), "{err:?}");
    assert_eq!(api.kms().decrypt(&blob, &context("other")), None);

    let err = bounded(
        kms.decrypt()
            .ciphertext_blob(Blob::new(blob))
            .set_encryption_context(Some(ctx.into_iter().collect()))
            .key_id("some-other-key")
            .send(),
    )
    .await
    .expect_err("a different key is refused")
    .into_service_error();
    assert!(err.is_incorrect_key_exception(), "{err:?}");

    // Every call was signed by the SDK and verified by our own verifier.
    let reqs = api.requests();
    assert_eq!(reqs.len(), 4);
    for r in &reqs {
        let by = r.signed_by.as_ref().expect("signed");
        assert!(by.verified, "{r:?}");
        assert_eq!(by.access_key_id, KEY_ID);
        assert_eq!(by.session_token.as_deref(), Some(TOKEN));
        assert_eq!(by.service, "kms");
        assert_eq!(r.content_type.as_deref(), Some(api::CONTENT_TYPE));
    }
    assert_eq!(reqs[0].target, "TrentService.GenerateDataKey");
    assert_eq!(reqs[0].body["NumberOfBytes"], 64);
    assert_eq!(
        reqs[2].error_code.as_deref(),
        Some("InvalidCiphertextException")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_refuses_a_key_other_than_the_sessions() {
    let backend = Arc::new(FakeBackend::with_kms_key(
        "arn:aws:kms:us-east-1:123456789012:key/good",
    ));
    let api = start(backend.clone()).await;
    let ssm = aws_sdk_ssm::Client::new(&sdk_config(&api, KEY_ID, SECRET, None));
    let s = bounded(ssm.start_session().target("i-0123456789abcdef0").send())
        .await
        .unwrap();
    let sid = s.session_id().unwrap().to_owned();
    let kms = kms_client(&api);
    let gen = |key: &str| {
        kms.generate_data_key()
            .key_id(key)
            .number_of_bytes(64)
            .set_encryption_context(Some(context(&sid).into_iter().collect()))
            .send()
    };
    bounded(gen("good")).await.expect("the session's key works");
    let err = bounded(gen("bad"))
        .await
        .expect_err("another key is unknown")
        .into_service_error();
    assert!(err.is_not_found_exception(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_faults_reach_the_sdk_with_their_codes() {
    let api = start(Arc::new(FakeBackend::default())).await;
    let kms = kms_client(&api);
    api.set_fault("GenerateDataKey", Fault::access_denied().times(1));
    let gen = || {
        kms.generate_data_key()
            .key_id("k")
            .number_of_bytes(64)
            .send()
    };
    let err = bounded(gen()).await.expect_err("fault injected");
    assert_eq!(err.code(), Some("AccessDeniedException"));
    assert!(err.message().unwrap_or_default().contains("not authorized"));
    // `times(1)`: the next call is normal again.
    bounded(gen()).await.expect("fault used up");

    // Throttling is retried by the SDK's standard retry strategy.
    api.set_fault("GenerateDataKey", Fault::throttling().times(1));
    let retrying = aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::config::Builder::from(&sdk_config(&api, KEY_ID, SECRET, None))
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .build(),
    );
    bounded(
        retrying
            .generate_data_key()
            .key_id("k")
            .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
            .send(),
    )
    .await
    .expect("succeeds after one retry");
    let gens = api.requests_for("GenerateDataKey");
    assert_eq!(gens.len(), 4);
    assert_eq!(gens[2].error_code.as_deref(), Some("ThrottlingException"));
    assert_eq!(gens[3].status, 200);

    // Validation: neither NumberOfBytes nor KeySpec.
    let err = bounded(kms.generate_data_key().key_id("k").send())
        .await
        .expect_err("invalid request");
    assert_eq!(err.code(), Some("ValidationException"));

    // A dropped connection is a dispatch failure, not a service error.
    api.set_fault("GenerateDataKey", Fault::CloseConnection);
    let err = bounded(gen()).await.expect_err("connection dropped");
    assert!(err.as_service_error().is_none(), "{err:?}");
}

/// Changes the body after the SDK signed it, like an on-path attacker would.
#[derive(Debug)]
struct TamperBody;

impl Intercept for TamperBody {
    fn name(&self) -> &'static str {
        "TamperBody"
    }
    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let req = context.request_mut();
        let body = req.body().bytes().ok_or("body is not in memory")?.to_vec();
        let tampered = String::from_utf8(body)?.replace("64", "32");
        *req.body_mut() = SdkBody::from(tampered);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_checked() {
    let api = start(Arc::new(FakeBackend::default())).await;
    let gen = |client: aws_sdk_kms::Client| async move {
        bounded(
            client
                .generate_data_key()
                .key_id("k")
                .number_of_bytes(64)
                .send(),
        )
        .await
    };

    let tampering = aws_sdk_kms::Client::from_conf(
        aws_sdk_kms::config::Builder::from(&sdk_config(&api, KEY_ID, SECRET, None))
            .interceptor(TamperBody)
            .build(),
    );
    let err = gen(tampering).await.expect_err("tampered body is refused");
    assert_eq!(err.code(), Some("InvalidSignatureException"));
    let rec = api.requests_for("GenerateDataKey").pop().unwrap();
    assert_eq!(rec.status, 403);
    assert_eq!(rec.body["NumberOfBytes"], 32, "the tamper really happened");

    let wrong_secret = aws_sdk_kms::Client::new(&sdk_config(&api, KEY_ID, "not-the-secret", None));
    let err = gen(wrong_secret)
        .await
        .expect_err("wrong secret is refused");
    assert_eq!(err.code(), Some("InvalidSignatureException"));

    let unknown = aws_sdk_kms::Client::new(&sdk_config(&api, "AKIDUNKNOWN", SECRET, None));
    let err = gen(unknown).await.expect_err("unknown key id is refused");
    assert_eq!(err.code(), Some("UnrecognizedClientException"));
    // Who tried is still recorded, unverified.
    let by = api.requests().pop().unwrap().signed_by.unwrap();
    assert_eq!(
        (by.access_key_id.as_str(), by.verified),
        ("AKIDUNKNOWN", false)
    );

    // Rotated credentials become valid once added; switching verification off accepts anything.
    api.add_credentials("AKIDUNKNOWN", SECRET);
    gen(aws_sdk_kms::Client::new(&sdk_config(
        &api,
        "AKIDUNKNOWN",
        SECRET,
        None,
    )))
    .await
    .expect("added key works");
    api.set_verify_signatures(false);
    gen(aws_sdk_kms::Client::new(&sdk_config(
        &api,
        KEY_ID,
        "not-the-secret",
        None,
    )))
    .await
    .expect("verification off");
    assert!(!api.requests().pop().unwrap().signed_by.unwrap().verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_session_lifecycle_with_the_sdk() {
    let backend = Arc::new(FakeBackend::default());
    let api = start(backend.clone()).await;
    let first = aws_sdk_ssm::Client::new(&sdk_config(&api, KEY_ID, SECRET, Some(TOKEN)));

    let s = bounded(
        first
            .start_session()
            .target("i-0123456789abcdef0")
            .document_name("AWS-StartPortForwardingSession")
            .parameters("portNumber", vec!["80".to_owned()])
            .reason("because")
            .send(),
    )
    .await
    .expect("StartSession");
    let sid = s.session_id().unwrap().to_owned();
    let issued = backend.issued(&sid).unwrap();
    assert_eq!(s.token_value(), Some(issued.token_value.as_str()));
    assert_eq!(s.stream_url(), Some(issued.stream_url.as_str()));
    let spec = &backend.calls().started[0];
    assert_eq!(
        spec.document_name.as_deref(),
        Some("AWS-StartPortForwardingSession")
    );
    assert_eq!(spec.parameters["portNumber"], vec!["80".to_owned()]);
    assert_eq!(spec.reason.as_deref(), Some("because"));

    // Resume with rotated temporary credentials: the log shows which key signed which call.
    api.add_credentials("ASIAROTATED", "rotated-secret");
    let rotated = aws_sdk_ssm::Client::new(&sdk_config(
        &api,
        "ASIAROTATED",
        "rotated-secret",
        Some("token-2"),
    ));
    let r = bounded(rotated.resume_session().session_id(&sid).send())
        .await
        .expect("ResumeSession");
    assert_eq!(r.session_id(), Some(sid.as_str()));
    let new_token = backend.issued(&sid).unwrap().token_value;
    assert_ne!(new_token, issued.token_value);
    assert_eq!(r.token_value(), Some(new_token.as_str()));
    let signer = |op: &str| api.requests_for(op)[0].signed_by.clone().unwrap();
    assert_eq!(signer("StartSession").access_key_id, KEY_ID);
    assert_eq!(signer("StartSession").session_token.as_deref(), Some(TOKEN));
    assert_eq!(signer("ResumeSession").access_key_id, "ASIAROTATED");
    assert_eq!(
        signer("ResumeSession").session_token.as_deref(),
        Some("token-2")
    );
    assert!(signer("ResumeSession").verified);

    let t = bounded(rotated.terminate_session().session_id(&sid).send())
        .await
        .expect("TerminateSession");
    assert_eq!(t.session_id(), Some(sid.as_str()));
    assert_eq!(backend.calls().terminated, vec![sid.clone()]);

    // Backend errors and injected faults arrive as the SDK's typed errors.
    let err = bounded(first.resume_session().session_id("nope").send())
        .await
        .expect_err("unknown session")
        .into_service_error();
    assert!(err.is_does_not_exist_exception(), "{err:?}");
    let err = bounded(first.start_session().target("i-ffff0000000000000").send())
        .await
        .expect_err("backend says offline")
        .into_service_error();
    assert!(err.is_target_not_connected(), "{err:?}");
    api.set_fault(
        "StartSession",
        Fault::target_not_connected("i-0123456789abcdef0"),
    );
    let err = bounded(first.start_session().target("i-0123456789abcdef0").send())
        .await
        .expect_err("fault")
        .into_service_error();
    assert!(err.is_target_not_connected(), "{err:?}");
    assert_eq!(
        err.meta().message(),
        Some("i-0123456789abcdef0 is not connected.")
    );

    // A ResumeSession reply without a token (the plugin's "session timed out" case).
    api.set_fault(
        "ResumeSession",
        Fault::Reply(serde_json::json!({"SessionId": sid})),
    );
    let r = bounded(first.resume_session().session_id(&sid).send())
        .await
        .expect("reply fault");
    assert_eq!(r.token_value(), None);
    assert_eq!(
        backend.calls().resumed.len(),
        1,
        "reply faults skip the backend"
    );
}

/// Signs a websocket upgrade GET the way a client using aws-sigv4 would.
fn sign_ws(
    url: &str,
    presign: bool,
    token: Option<&str>,
    secret: &str,
) -> hyper::http::Request<()> {
    use aws_sigv4::http_request::{
        sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    };
    let mut req = hyper::http::Request::get(url)
        .header("host", "127.0.0.1:4443")
        .body(())
        .unwrap();
    let mut settings = SigningSettings::default();
    if presign {
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(Duration::from_secs(60));
    }
    let identity = Credentials::new(KEY_ID, secret, token.map(str::to_owned), None, "test").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("ssmmessages")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    let signable = SignableRequest::new(
        "GET",
        url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(&[]),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(&mut req);
    req
}

#[test]
fn websocket_upgrade_signatures_from_aws_sigv4_verify() {
    let creds = BTreeMap::from([(KEY_ID.to_owned(), SECRET.to_owned())]);
    let url = "http://127.0.0.1:4443/v1/data-channel/test-user-1?role=publish_subscribe&cell-number=AAAA%2FBB";
    for presign in [false, true] {
        for token in [None, Some("ws-token")] {
            let req = sign_ws(url, presign, token, SECRET);
            let uri = req.uri().to_string();
            let by = api::verify_presigned_or_signed_ws_upgrade(
                "GET",
                &uri,
                req.headers(),
                &creds,
                "ssmmessages",
            )
            .unwrap_or_else(|e| panic!("presign={presign} token={token:?}: {e}"));
            assert_eq!(by.presigned, presign);
            assert_eq!(by.session_token.as_deref(), token);
            assert_eq!(by.service, "ssmmessages");
            assert!(by.verified);

            // Another service, a changed query, or a wrong secret must all fail.
            assert!(api::verify_presigned_or_signed_ws_upgrade(
                "GET",
                &uri,
                req.headers(),
                &creds,
                "ssm"
            )
            .is_err());
            let changed = uri.replace("role=publish_subscribe", "role=subscribe");
            assert!(api::verify_presigned_or_signed_ws_upgrade(
                "GET",
                &changed,
                req.headers(),
                &creds,
                "ssmmessages"
            )
            .is_err());
            let bad = sign_ws(url, presign, token, "wrong-secret");
            let err = api::verify_presigned_or_signed_ws_upgrade(
                "GET",
                &bad.uri().to_string(),
                bad.headers(),
                &creds,
                "ssmmessages",
            )
            .unwrap_err();
            assert!(err.contains("InvalidSignatureException"), "{err}");
            assert!(!err.contains(SECRET));
        }
    }
    let unsigned = hyper::http::HeaderMap::new();
    let err = api::verify_presigned_or_signed_ws_upgrade(
        "GET",
        "/v1/data-channel/x",
        &unsigned,
        &creds,
        "ssmmessages",
    )
    .unwrap_err();
    assert!(err.contains("MissingAuthenticationToken"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_port() {
    let api = start(Arc::new(FakeBackend::default())).await;
    let addr = api.addr();
    tokio::net::TcpStream::connect(addr)
        .await
        .expect("listening while running");
    tokio::time::timeout(CALL_TIMEOUT, api.shutdown())
        .await
        .expect("shutdown finishes");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
