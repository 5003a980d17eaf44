//! The AWS options: profile and region.
//!
//! An explicit profile wins over the environment's keys, as in the AWS CLI (botocore drops the
//! environment provider when `--profile` is given): the drop-in form's argv PROFILE and the
//! standalone `--profile` sign every call and every websocket with the profile's keys. A
//! profile only in AWS_PROFILE still loses to the environment's keys, as botocore's does. A
//! profile that does not exist is an error naming it. A standalone command without a region,
//! or with a malformed one, says what to pass before any call (exit 64).

mod aws_support;

use std::time::Duration;

use aws_support::*;

const STEP: Duration = Duration::from_secs(20);
const LIMIT: Duration = Duration::from_secs(40);

/// The profile `prod` holds KEY; the environment holds KEY2.
fn prod_home_and_env_keys(c: &mut tokio::process::Command) {
    c.env("AWS_ACCESS_KEY_ID", KEY2)
        .env("AWS_SECRET_ACCESS_KEY", SECRET2);
}

fn upgrade_signers(world: &World, id: &str) -> Vec<String> {
    world
        .sim
        .stats(id)
        .unwrap()
        .upgrades
        .iter()
        .map(|u| {
            u.signed_by
                .as_ref()
                .map(|b| b.access_key_id.clone())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drop_in_profile_signs_the_websocket_and_the_resume_over_environment_keys() {
    let world = World::start(signed_config()).await;
    let started = world.start_session(TARGET, None, &[]);
    let id = started.session_id.clone();
    let home = Home::with_keys("prod", KEY, SECRET);
    let mut cmd = plugin(&world, &started, &home, "prod", TARGET, &world.api.url());
    prod_home_and_env_keys(&mut cmd);
    let mut p = Running::spawn(cmd);
    p.write(b"echo one-$((40+2))\n").await;
    p.wait_stdout("one-42", STEP).await;
    assert!(world.sim.cut(&id));
    p.write(b"echo two-$((40+2))\nexit\n").await;
    p.wait_stdout("two-42", STEP).await;
    let out = p.finish(LIMIT).await;
    assert!(out.status.success(), "{out}");
    assert_eq!(upgrade_signers(&world, &id), [KEY, KEY], "{out}");
    let resumes: Vec<String> = world
        .calls("ResumeSession")
        .iter()
        .map(|r| r.signed_by.as_ref().unwrap().access_key_id.clone())
        .collect();
    assert_eq!(resumes, [KEY], "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_only_in_aws_profile_loses_to_environment_keys_as_in_the_cli() {
    let world = World::start(signed_config()).await;
    let started = world.start_session(TARGET, None, &[]);
    let home = Home::with_keys("prod", KEY, SECRET);
    let mut cmd = plugin(&world, &started, &home, "", TARGET, &world.api.url());
    prod_home_and_env_keys(&mut cmd);
    cmd.env("AWS_PROFILE", "prod");
    let mut p = Running::spawn(cmd);
    p.write(b"echo one-$((40+2))\nexit\n").await;
    let out = p.finish(LIMIT).await;
    assert!(out.status.success(), "{out}");
    assert_eq!(
        upgrade_signers(&world, &started.session_id),
        [KEY2],
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_in_profile_that_does_not_exist_is_refused_naming_it() {
    let world = World::start(fast_config()).await;
    let started = world.start_session(TARGET, None, &[]);
    let home = Home::with_keys("prod", KEY, SECRET);
    let mut cmd = plugin(&world, &started, &home, "nosuch", TARGET, &world.api.url());
    prod_home_and_env_keys(&mut cmd);
    let out = Running::spawn(cmd).finish(LIMIT).await;
    assert_eq!(out.status.code(), Some(64), "{out}");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"nosuch\" does not exist") && l.contains("prod")),
        "{out}"
    );
    assert_eq!(
        world.sim.stats(&started.session_id).unwrap().connections,
        0,
        "no connection with a profile that does not exist\n{out}"
    );
}

/// A standalone command with the environment's keys (KEY2) beside the profile's.
fn standalone_with_env_keys(world: &World, home: &Home, args: &[&str]) -> tokio::process::Command {
    let mut c = standalone(world, home, args);
    prod_home_and_env_keys(&mut c);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_profile_starts_and_signs_as_the_profile() {
    let world = World::start(signed_config()).await;
    let home = Home::with_keys("prod", KEY, SECRET);
    let out = Running::spawn(standalone_with_env_keys(
        &world,
        &home,
        &["exec", TARGET, "--profile", "prod", "--", "echo", "hi"],
    ))
    .finish(LIMIT)
    .await;
    assert!(out.status.success(), "{out}");
    assert_eq!(out.stdout, "hi\n", "{out}");
    let starts = world.calls("StartSession");
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].signed_by.as_ref().unwrap().access_key_id, KEY);
    let id = world.sim.session_ids();
    assert_eq!(id.len(), 1);
    assert_eq!(upgrade_signers(&world, &id[0]), [KEY], "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_profile_that_does_not_exist_fails_before_starting() {
    let world = World::start(signed_config()).await;
    let home = Home::with_keys("prod", KEY, SECRET);
    let out = Running::spawn(standalone_with_env_keys(
        &world,
        &home,
        &["exec", TARGET, "--profile", "nosuch", "--", "true"],
    ))
    .finish(LIMIT)
    .await;
    assert_eq!(out.status.code(), Some(64), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "one line\n{out}");
    assert!(out.stderr.contains("\"nosuch\" does not exist"), "{out}");
    assert!(world.calls("StartSession").is_empty());
}

/// `exec` with only the given options (no --region), keys in ~/.aws/credentials and a config
/// file with no region.
fn exec_without_region(world: &World, home: &Home, extra: &[&str]) -> tokio::process::Command {
    std::fs::write(home.path().join(".aws/config"), "[default]\n").unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!("[default]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    let mut c = isolated(world, home, &format!("region-{}", std::process::id()));
    c.arg("exec")
        .args(["--endpoint-url", &world.api.url()])
        .args(extra)
        .args([TARGET, "--", "true"])
        .env("XDG_CONFIG_HOME", home.path().join("xdg"));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_region_says_how_to_give_one() {
    let world = World::start(fast_config()).await;
    let home = Home::empty();
    let out = Running::spawn(exec_without_region(&world, &home, &[]))
        .finish(LIMIT)
        .await;
    assert_eq!(out.status.code(), Some(64), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "one line\n{out}");
    assert!(
        out.stderr.contains("no AWS region is set; pass --region")
            && out.stderr.contains("AWS_REGION"),
        "{out}"
    );
    assert!(world.calls("StartSession").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_region_is_named() {
    let world = World::start(fast_config()).await;
    let home = Home::empty();
    let out = Running::spawn(exec_without_region(&world, &home, &["--region", "xx yy"]))
        .finish(LIMIT)
        .await;
    assert_eq!(out.status.code(), Some(64), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "one line\n{out}");
    assert!(
        out.stderr
            .contains("\"xx yy\" is not an AWS region name; pass --region"),
        "{out}"
    );
    assert!(world.calls("StartSession").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_region_from_the_environment_is_used() {
    let world = World::start(unpaced_config()).await;
    let home = Home::empty();
    let mut c = exec_without_region(&world, &home, &[]);
    c.env("AWS_REGION", REGION);
    let out = Running::spawn(c).finish(LIMIT).await;
    assert!(out.status.success(), "{out}");
    let starts = world.calls("StartSession");
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].signed_by.as_ref().unwrap().region, REGION);
}
