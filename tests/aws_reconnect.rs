//! Transparent reconnection: the websocket cut (and closed with 1000 "Bye") under a running
//! shell; ResumeSession with fresh credentials; failures that end the session clearly.

mod aws_support;

use std::time::Duration;

use agent_sim::api::Fault;
use aws_support::*;

const STEP: Duration = Duration::from_secs(20);
const LIMIT: Duration = Duration::from_secs(40);

/// Runs `echo` of a marker built from `$V`, so only the shell's output (not the echo of our
/// input) contains the expanded text, and waits for it.
async fn check_state(p: &mut Running, n: u32) {
    p.write(format!("echo \"m{n}-$(({n}+0))-$V\"\n").as_bytes())
        .await;
    p.wait_stdout(&format!("m{n}-{n}-kept-42"), STEP).await;
}

async fn wait_connections(world: &World, id: &str, n: u64) {
    wait_until(&format!("{n} connections"), STEP, || {
        world.sim.stats(id).is_some_and(|s| s.connections >= n)
    })
    .await;
}

/// Lines that are only digits, in order of appearance.
fn numbers(stdout: &str) -> Vec<u64> {
    stdout
        .split(['\n', '\r'])
        .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|l| l.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_survives_three_cuts_and_the_hourly_bye() {
    let world = World::start(signed_config()).await;
    let started = world.start_session(TARGET, None, &[]);
    let id = started.session_id.clone();
    let home = Home::with_keys("default", KEY, SECRET);
    let mut cmd = plugin(&world, &started, &home, "", TARGET, &world.api.url());
    // The resume notices are asked for: stderr is no terminal here.
    cmd.env("SESSION_MANAGER_PLUGIN_MESSAGES", "notices");
    let mut p = Running::spawn(cmd);
    p.write(b"V=kept-42\n").await;
    check_state(&mut p, 0).await;

    for n in 1..=3u32 {
        assert!(world.sim.cut(&id), "a client was connected");
        // Typed while the connection is down: queued, then delivered once.
        check_state(&mut p, n).await;
        wait_connections(&world, &id, u64::from(n) + 1).await;
    }
    assert!(world.sim.close_bye(&id));
    check_state(&mut p, 4).await;
    wait_connections(&world, &id, 5).await;

    // A long output cut in the middle arrives whole, once, in order.
    p.write(b"seq 1 200000; echo \"done-$((6*7))\"\n").await;
    p.wait_stdout("\n20000\r", STEP).await;
    assert!(world.sim.cut(&id));
    p.wait_stdout("done-42", STEP).await;
    wait_connections(&world, &id, 6).await;
    check_state(&mut p, 5).await;

    p.write(b"exit\n").await;
    let out = p
        .finish_with(LIMIT, || {
            format!("--- simulator\n{:?}", world.sim.stats(&id))
        })
        .await;
    assert!(out.status.success(), "{out}");
    let seq: Vec<u64> = numbers(&out.stdout)
        .into_iter()
        .skip_while(|n| *n != 1)
        .take_while(|n| *n <= 200_000)
        .collect();
    assert_eq!(seq.len(), 200_000, "lines lost or duplicated");
    assert!(seq.iter().copied().eq(1..=200_000), "out of order");
    for n in 0..=5 {
        assert_eq!(
            out.stdout.matches(&format!("m{n}-{n}-kept-42")).count(),
            1,
            "marker {n} exactly once\n{out}"
        );
    }
    assert_eq!(
        out.stderr.matches("resuming session...").count(),
        5,
        "{out}"
    );
    assert_eq!(out.stderr.matches("Session resumed.").count(), 5, "{out}");
    assert!(out.stderr.contains("1000 Bye"), "{out}");

    let resumes = world.calls("ResumeSession");
    assert_eq!(resumes.len(), 5, "{resumes:?}");
    for r in &resumes {
        assert_eq!(r.body["SessionId"], id.as_str());
        let by = r.signed_by.as_ref().expect("signed");
        assert_eq!(
            (by.access_key_id.as_str(), by.service.as_str()),
            (KEY, "ssm")
        );
    }
    let stats = world.sim.stats(&id).unwrap();
    assert_eq!(stats.upgrades.len(), 6);
    assert!(stats
        .upgrades
        .iter()
        .all(|u| u.signed_by.as_ref().is_some_and(|b| b.verified)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_rewritten_on_disk_are_used_to_resume() {
    let world = World::start(signed_config()).await;
    let started = world.start_session(TARGET, None, &[]);
    let id = started.session_id.clone();
    let home = Home::with_keys("dev", KEY, SECRET);
    let mut p = Running::spawn(plugin(
        &world,
        &started,
        &home,
        "dev",
        TARGET,
        &world.api.url(),
    ));
    p.write(b"V=kept-42\n").await;
    check_state(&mut p, 0).await;
    assert!(world.sim.cut(&id));
    check_state(&mut p, 1).await;
    // An SSO login or a key rotation rewrites the profile while the session runs.
    home.write_keys("dev", KEY2, SECRET2);
    assert!(world.sim.cut(&id));
    check_state(&mut p, 2).await;
    p.write(b"exit\n").await;
    let out = p.finish(LIMIT).await;
    assert!(out.status.success(), "{out}");
    // stderr is no terminal (a tool drives the plugin): the resumes are not its business.
    assert_eq!(out.stderr, "", "{out}");

    let signers: Vec<String> = world
        .calls("ResumeSession")
        .iter()
        .map(|r| r.signed_by.as_ref().unwrap().access_key_id.clone())
        .collect();
    assert_eq!(signers, [KEY, KEY2]);
    let ws: Vec<String> = world
        .sim
        .stats(&id)
        .unwrap()
        .upgrades
        .iter()
        .map(|u| u.signed_by.as_ref().unwrap().access_key_id.clone())
        .collect();
    assert_eq!(ws, [KEY, KEY, KEY2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_exec_resumes_through_the_ssm_endpoint_not_the_ecs_one() {
    let world = World::start(signed_config()).await;
    let target = "ecs:cluster_0123456789abcdef_0123456789abcdef0123456789abcdef-1234567890";
    let started = world.start_session(target, None, &[]);
    let id = started.session_id.clone();
    let home = Home::with_keys("default", KEY, SECRET);
    // argv ENDPOINT is ECS's (here: nothing listens); SSM's comes from the environment.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ecs_endpoint = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut cmd = plugin(&world, &started, &home, "", target, &ecs_endpoint);
    cmd.env("AWS_ENDPOINT_URL_SSM", world.api.url());
    let mut p = Running::spawn(cmd);
    p.write(b"V=kept-42\n").await;
    check_state(&mut p, 0).await;
    assert!(world.sim.cut(&id));
    check_state(&mut p, 1).await;
    p.write(b"exit\n").await;
    let out = p.finish(LIMIT).await;
    assert!(out.status.success(), "{out}");
    assert_eq!(world.calls("ResumeSession").len(), 1);
}

/// Runs a shell until it works, then loses its websocket (a cut, or the service's 1000 "Bye"),
/// and returns how the plugin ended.
async fn shell_losing_its_link(
    world: &World,
    started: &agent_sim::Started,
    env: &[(&str, &str)],
    bye: bool,
) -> Finished {
    let home = Home::with_keys("default", KEY, SECRET);
    let mut cmd = plugin(world, started, &home, "", TARGET, &world.api.url());
    cmd.envs(env.iter().copied());
    let mut p = Running::spawn(cmd);
    p.write(b"V=kept-42\n").await;
    check_state(&mut p, 0).await;
    let id = &started.session_id;
    assert!(if bye {
        world.sim.close_bye(id)
    } else {
        world.sim.cut(id)
    });
    p.finish(LIMIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_session_failing_gives_up_clearly_with_exit_69() {
    let world = World::start(signed_config()).await;
    // A 5xx is worth retrying until the budget runs out.
    world.api.set_fault(
        "ResumeSession",
        Fault::error(503, "ServiceUnavailable", "try again later"),
    );
    let started = world.start_session(TARGET, None, &[]);
    let out = shell_losing_its_link(
        &world,
        &started,
        &[
            ("SESSION_MANAGER_PLUGIN_RECONNECT_TIMEOUT", "3"),
            ("SESSION_MANAGER_PLUGIN_MESSAGES", "notices"),
        ],
        false,
    )
    .await;
    assert_eq!(out.status.code(), Some(69), "{out}");
    assert!(out.stderr.contains("resuming session..."), "{out}");
    assert!(
        out.stderr
            .contains("could not be resumed within 3 s: ResumeSession failed: ServiceUnavailable"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains("SESSION_MANAGER_PLUGIN_RECONNECT_TIMEOUT"),
        "{out}"
    );
    assert!(world.calls("ResumeSession").len() >= 2, "retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_on_resume_ends_at_once_without_retrying() {
    let world = World::start(signed_config()).await;
    world.api.set_fault("ResumeSession", Fault::access_denied());
    let started = world.start_session(TARGET, None, &[]);
    let out = shell_losing_its_link(&world, &started, &[], false).await;
    assert_eq!(out.status.code(), Some(69), "{out}");
    assert!(
        out.stderr
            .contains("cannot be resumed: ResumeSession failed: AccessDeniedException"),
        "{out}"
    );
    assert_eq!(
        world.calls("ResumeSession").len(),
        1,
        "a final answer is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_without_a_token_means_the_session_timed_out() {
    let world = World::start(signed_config()).await;
    let started = world.start_session(TARGET, None, &[]);
    let id = started.session_id.clone();
    world.api.set_fault(
        "ResumeSession",
        Fault::Reply(serde_json::json!({ "SessionId": id })),
    );
    let out = shell_losing_its_link(&world, &started, &[], true).await;
    assert_eq!(out.status.code(), Some(69), "{out}");
    assert!(
        out.stderr.contains(&format!("Session: {id} timed out.")),
        "{out}"
    );
    assert_eq!(world.calls("ResumeSession").len(), 1);
}

/// Credentials that live 40 s, from a `credential_process` profile (SSO-like tooling): every
/// ResumeSession is signed with keys fetched afresh, never with the first ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resume_is_signed_with_fresh_keys_from_credential_process() {
    let world = World::start(signed_config()).await;
    let started = world.start_session(TARGET, None, &[]);
    let id = started.session_id.clone();
    let home = Home::empty();
    let script = home.path().join("creds.sh");
    let counter = home.path().join("calls");
    // Hands out KEY, then KEY2, then KEY... each valid for 40 s.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=$(cat '{c}' 2>/dev/null || echo 0)\necho $((n+1)) > '{c}'\n\
             if [ $((n % 2)) = 0 ]; then k={KEY}; s={SECRET}; else k={KEY2}; s={SECRET2}; fi\n\
             exp=$(date -u -d '+40 seconds' +%Y-%m-%dT%H:%M:%SZ)\n\
             printf '{{\"Version\":1,\"AccessKeyId\":\"%s\",\"SecretAccessKey\":\"%s\",\"Expiration\":\"%s\"}}' \"$k\" \"$s\" \"$exp\"\n",
            c = counter.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        home.path().join(".aws/config"),
        format!(
            "[profile jit]\nregion = {REGION}\ncredential_process = {}\n",
            script.display()
        ),
    )
    .unwrap();
    let mut p = Running::spawn(plugin(
        &world,
        &started,
        &home,
        "jit",
        TARGET,
        &world.api.url(),
    ));
    p.write(b"V=kept-42\n").await;
    check_state(&mut p, 0).await;
    for n in 1..=3 {
        assert!(world.sim.cut(&id));
        check_state(&mut p, n).await;
    }
    p.write(b"exit\n").await;
    let out = p.finish(LIMIT).await;
    assert!(out.status.success(), "{out}");
    let signers: Vec<String> = world
        .calls("ResumeSession")
        .iter()
        .map(|r| r.signed_by.as_ref().unwrap().access_key_id.clone())
        .collect();
    assert_eq!(signers.len(), 3, "{signers:?}");
    // Each resume ran the process again: the keys alternate.
    assert_ne!(signers[0], signers[1], "{signers:?}");
    assert_ne!(signers[1], signers[2], "{signers:?}");
    let ws = world.sim.stats(&id).unwrap().upgrades;
    assert!(ws
        .iter()
        .all(|u| u.signed_by.as_ref().is_some_and(|b| b.verified)));
}
