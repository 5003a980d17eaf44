//! KMS-encrypted sessions end to end: the plugin gets the data key from the fake KMS with the
//! session's encryption context, the simulated agent recovers it through the same store, and
//! every payload in both directions is AES-GCM sealed.

mod aws_support;

use std::time::Duration;

use agent_sim::api::Fault;
use aws_support::*;

const LIMIT: Duration = Duration::from_secs(40);
const KEY_ALIAS: &str = "alias/session-key";

fn kms_config() -> agent_sim::SimConfig {
    let mut cfg = fast_config();
    cfg.kms_key_id = Some(KEY_ALIAS.into());
    // Our plugin acknowledges the random challenge, so the strict agent setting works.
    cfg.require_kms_challenge = true;
    cfg
}

/// The GenerateDataKey call was what the agent expects: key, 64 bytes, full context, signed.
fn check_generate_data_key(world: &World, session_id: &str) {
    let calls = world.calls("GenerateDataKey");
    assert_eq!(calls.len(), 1, "{calls:?}");
    let c = &calls[0];
    assert_eq!(c.status, 200, "{c:?}");
    assert_eq!(c.body["KeyId"], KEY_ALIAS);
    assert_eq!(c.body["NumberOfBytes"], 64);
    let ctx = &c.body["EncryptionContext"];
    assert_eq!(ctx["aws:ssm:SessionId"], session_id);
    assert_eq!(ctx["aws:ssm:TargetId"], TARGET);
    assert!(
        ctx["aws:ssm:RandomChallenge"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{ctx}"
    );
    let by = c.signed_by.as_ref().expect("signed");
    assert_eq!(by.access_key_id, KEY);
    assert_eq!(by.service, "kms");
    assert!(by.verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_shell_session() {
    let world = World::start(kms_config()).await;
    let started = world.start_session(TARGET, None, &[]);
    let home = Home::with_keys("default", KEY, SECRET);
    let mut p = Running::spawn(plugin(
        &world,
        &started,
        &home,
        "",
        TARGET,
        &world.api.url(),
    ));
    p.write(b"echo enc-$((6*7))\nexit\n").await;
    let out = p.finish(LIMIT).await;
    assert!(out.status.success(), "{out}");
    let id = &started.session_id;
    let expected_start = format!(
        "\nStarting session with SessionId: {id}\nThis session is encrypted using AWS KMS.\n"
    );
    assert!(out.stdout.starts_with(&expected_start), "{out}");
    assert!(out.stdout.contains("enc-42"), "{out}");
    assert!(
        out.stdout
            .ends_with(&format!("\n\nExiting session with sessionId: {id}.\n\n")),
        "{out}"
    );
    check_generate_data_key(&world, id);
    // The agent decrypted our input (the command ran) and ended cleanly.
    assert_eq!(
        world
            .sim
            .wait_ended(id, Duration::from_secs(5))
            .await
            .as_deref(),
        Some("")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_noninteractive_command_is_byte_exact() {
    let world = World::start(kms_config()).await;
    let started = world.start_session(
        TARGET,
        Some("AWS-StartNonInteractiveCommand"),
        &[
            ("command", "sh -c 'seq 1 3000; echo to-stderr >&2; exit 3'"),
            ("separateOutputStream", "true"),
        ],
    );
    let home = Home::with_keys("default", KEY, SECRET);
    let out = Running::spawn(plugin(
        &world,
        &started,
        &home,
        "",
        TARGET,
        &world.api.url(),
    ))
    .finish(LIMIT)
    .await;
    let id = &started.session_id;
    let mut expected = format!(
        "\nStarting session with SessionId: {id}\nThis session is encrypted using AWS KMS.\n"
    );
    for i in 1..=3000 {
        expected.push_str(&format!("{i}\n"));
    }
    expected.push_str(&format!("\n\nExiting session with sessionId: {id}.\n\n"));
    assert_eq!(out.status.code(), Some(3), "{out}");
    assert!(out.stdout == expected, "stdout differs\n{out}");
    assert_eq!(out.stderr, "to-stderr\n", "{out}");
    check_generate_data_key(&world, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_refusing_the_key_is_a_clear_error_with_exit_77() {
    let world = World::start(kms_config()).await;
    world
        .api
        .set_fault("GenerateDataKey", Fault::access_denied());
    let started = world.start_session(TARGET, None, &[]);
    let home = Home::with_keys("default", KEY, SECRET);
    let out = Running::spawn(plugin(
        &world,
        &started,
        &home,
        "",
        TARGET,
        &world.api.url(),
    ))
    .finish(LIMIT)
    .await;
    assert_eq!(out.status.code(), Some(77), "{out}");
    assert!(
        out.stderr.contains(
            "Failed to process action KMSEncryption: Error calling KMS GenerateDataKey API: AccessDeniedException"
        ),
        "{out}"
    );
    assert!(out.stderr.contains("kms:GenerateDataKey"), "{out}");
    // The agent got the failure in the HandshakeResponse and ended the session over it.
    let ended = world
        .sim
        .wait_ended(&started.session_id, Duration::from_secs(10))
        .await
        .expect("the agent ended the session");
    assert!(
        ended.contains("Failed to process action KMSEncryption"),
        "{ended}"
    );
}
