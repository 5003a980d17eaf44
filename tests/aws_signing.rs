//! SigV4 on the websocket upgrade, checked by the simulated relay: signed with the profile's
//! credentials, a presigned StreamUrl left alone, bad credentials refused, none at all: unsigned.

mod aws_support;

use std::time::{Duration, SystemTime};

use aws_support::*;

const LIMIT: Duration = Duration::from_secs(40);

async fn run_shell(world: &World, home: &Home, started: &agent_sim::Started) -> Finished {
    let mut cmd = plugin(world, started, home, "", TARGET, &world.api.url());
    // These tests read the debug log on stderr.
    cmd.env("SESSION_MANAGER_PLUGIN_LOG", "debug")
        .env_remove("SESSION_MANAGER_PLUGIN_LOG_FILE");
    let mut p = Running::spawn(cmd);
    p.write(b"echo signed-$((20+22))\nexit\n").await;
    p.finish(LIMIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_is_signed_with_the_profile_credentials() {
    let mut cfg = fast_config();
    cfg.ws_credentials = ws_credentials();
    cfg.require_signed_upgrade = true;
    let world = World::start(cfg).await;
    let started = world.start_session(TARGET, None, &[]);
    let home = Home::with_keys("default", KEY, SECRET);
    let out = run_shell(&world, &home, &started).await;
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("signed-42"), "{out}");
    let stats = world.sim.stats(&started.session_id).unwrap();
    assert_eq!(stats.rejected_signatures, 0);
    assert_eq!(stats.upgrades.len(), 1, "{:?}", stats.upgrades);
    let up = &stats.upgrades[0];
    assert!(up.authorization_header);
    let by = up.signed_by.as_ref().expect("signed");
    assert_eq!(by.access_key_id, KEY);
    assert_eq!(by.service, "ssmmessages");
    assert_eq!(by.region, REGION);
    assert!(by.verified && !by.presigned, "{by:?}");
    assert!(by.signed_headers.contains(&"host".to_owned()));
    assert!(
        !out.stderr.contains(SECRET),
        "the secret must never be logged"
    );
}

/// Presigns `url` for `ssmmessages` with the test key, as a service could hand it out.
fn presign(url: &str) -> String {
    use aws_sigv4::http_request::{
        sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    };
    let creds = aws_credential_types::Credentials::new(KEY, SECRET, None, None, "test");
    let identity = creds.into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(300));
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("ssmmessages")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let host = url::Url::parse(url).unwrap();
    let host = format!("{}:{}", host.host_str().unwrap(), host.port().unwrap());
    let req = SignableRequest::new(
        "GET",
        url,
        std::iter::once(("host", host.as_str())),
        SignableBody::Bytes(&[]),
    )
    .unwrap();
    let (instructions, _) = sign(req, &params).unwrap().into_parts();
    let mut u = url::Url::parse(url).unwrap();
    for (k, v) in instructions.params() {
        u.query_pairs_mut().append_pair(k, v);
    }
    u.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presigned_stream_url_is_sent_as_is() {
    let mut cfg = fast_config();
    cfg.ws_credentials = ws_credentials();
    cfg.require_signed_upgrade = true;
    let world = World::start(cfg).await;
    let mut started = world.start_session(TARGET, None, &[]);
    started.stream_url = presign(&started.stream_url);
    // Credentials are available: the plugin must still not add its own signature.
    let home = Home::with_keys("default", KEY2, SECRET2);
    let out = run_shell(&world, &home, &started).await;
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("signed-42"), "{out}");
    let stats = world.sim.stats(&started.session_id).unwrap();
    assert_eq!(stats.upgrades.len(), 1, "{:?}", stats.upgrades);
    let up = &stats.upgrades[0];
    assert!(!up.authorization_header, "{up:?}");
    let by = up.signed_by.as_ref().expect("presignature recorded");
    assert!(by.presigned && by.verified, "{by:?}");
    assert_eq!(by.access_key_id, KEY);
    assert!(out.stderr.contains("presigned"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_credentials_are_refused_by_the_service_with_a_clear_error() {
    let mut cfg = fast_config();
    cfg.ws_credentials = ws_credentials();
    let world = World::start(cfg).await;
    let started = world.start_session(TARGET, None, &[]);
    let home = Home::with_keys("default", "AKIDUNKNOWN000000000", "not-the-secret");
    let out = run_shell(&world, &home, &started).await;
    assert_eq!(out.status.code(), Some(69), "{out}");
    assert!(out.stderr.contains("HTTP 403"), "{out}");
    assert!(
        world
            .sim
            .stats(&started.session_id)
            .unwrap()
            .rejected_signatures
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_the_upgrade_is_unsigned_and_the_log_says_so() {
    let world = World::start(fast_config()).await;
    let started = world.start_session(TARGET, None, &[]);
    let home = Home::empty();
    let out = run_shell(&world, &home, &started).await;
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("signed-42"), "{out}");
    assert!(out.stderr.contains("connecting unsigned"), "{out}");
    let stats = world.sim.stats(&started.session_id).unwrap();
    assert_eq!(stats.upgrades.len(), 1);
    assert_eq!(stats.upgrades[0].signed_by, None);
    assert!(!stats.upgrades[0].authorization_header);
}
