//! Standard_Stream and InteractiveCommands sessions, tokens, resume.

mod common;

use std::time::Duration;

use agent_sim::SessionBackend;
use common::*;
use ssm_plugin::wire::{PayloadType, SizeData};

const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_stale_tokens_are_refused() {
    let sim = sim(fast_config()).await;
    let s = start(&sim, None, &[]);
    let mut bad = Client::connect(&s.stream_url, "not-the-token", NEW_CLIENT).await;
    let close = bad.until_ws_closed(T).await.expect("close frame");
    assert_eq!(close.0, 1008);
    assert!(!close.1.to_lowercase().contains("not-the-token"));
    // After ResumeSession only the new token opens the channel.
    let resumed = sim.backend().resume_session(&s.session_id).unwrap();
    assert_ne!(resumed.token_value, s.token_value);
    let mut stale = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    assert_eq!(stale.until_ws_closed(T).await.map(|c| c.0), Some(1008));
    let mut good = Client::connect(&resumed.stream_url, &resumed.token_value, NEW_CLIENT).await;
    good.prompt(T).await;
    assert_eq!(sim.stats(&s.session_id).unwrap().rejected_tokens, 2);
    sim.backend().terminate_session(&s.session_id).unwrap();
    let (out, _) = good.until_closed(T).await;
    assert_eq!(out, "");
    // A terminated session cannot be resumed.
    let err = sim.backend().resume_session(&s.session_id).unwrap_err();
    assert_eq!(err.code, "TargetNotConnected");
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_while_the_client_is_away_is_delivered_on_resume() {
    let sim = sim(fast_config()).await;
    let s = start(&sim, None, &[]);
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    c.prompt(T).await;
    assert!(sim.cut(&s.session_id));
    drop(c);
    // The agent ends while nobody is connected (the race of a cut and `exit`).
    sim.backend().terminate_session(&s.session_id).unwrap();
    assert_eq!(sim.wait_ended(&s.session_id, T).await.as_deref(), Some(""));
    assert!(!sim.stats(&s.session_id).unwrap().channel_closed_sent);
    // The client resumes and is told the session is over, instead of being refused.
    let resumed = sim.backend().resume_session(&s.session_id).unwrap();
    let mut back = Client::connect(&resumed.stream_url, &resumed.token_value, NEW_CLIENT).await;
    let (out, _) = back.until_closed(T).await;
    assert_eq!(out, "");
    assert!(sim.stats(&s.session_id).unwrap().channel_closed_sent);
    // Delivered once: from now on the session is gone.
    let err = sim.backend().resume_session(&s.session_id).unwrap_err();
    assert_eq!(err.code, "TargetNotConnected");
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_prompt_echo_resize_exit() {
    let sim = sim(fast_config()).await;
    let s = start(&sim, None, &[]);
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    // No handshake: the first message is shell output, seq 0 with Flags 1.
    let first = c.data(T).await.unwrap();
    assert_eq!(first.payload_type, PayloadType::OUTPUT);
    assert_eq!((first.sequence_number, first.flags), (0, 1));
    c.send(
        PayloadType::SIZE,
        &ssm_plugin::wire::to_vec(&SizeData {
            cols: 100,
            rows: 30,
        }),
    )
    .await;
    c.send_text("echo h''i\r").await;
    c.output_until("\nhi", T).await;
    c.send_text("stty size\r").await;
    c.output_until("30 100", T).await;
    c.send_text("exit\r").await;
    let (out, _) = c.until_closed(T).await;
    assert_eq!(out, "");
    let st = sim.stats(&s.session_id).unwrap();
    assert_eq!(st.session_states, vec!["Connected", "Terminating"]);
    assert!(st.channel_closed_sent);
    assert!(st.acks_out >= 4);
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_command_has_no_exit_code() {
    let sim = sim(fast_config()).await;
    let s = start(
        &sim,
        Some("AWS-StartInteractiveCommand"),
        &[("command", "printf 'name? '; read n; echo \"hi $n\"; exit 3")],
    );
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    c.output_until("name? ", T).await;
    c.send_text("bob\r").await;
    let (out, data) = c.until_closed(T).await;
    assert_eq!(out, "");
    let text: String = data
        .iter()
        .map(|m| {
            assert_eq!(m.payload_type, PayloadType::OUTPUT, "only Output payloads");
            String::from_utf8_lossy(&m.payload).into_owned()
        })
        .collect();
    assert!(text.contains("hi bob"), "{text:?}");
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_reacked() {
    let sim = sim(fast_config()).await;
    let s = start(&sim, None, &[]);
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    c.prompt(T).await;
    let m = c.send(PayloadType::OUTPUT, b"true\r").await;
    c.send_raw(m.encode()).await;
    let mut acks = 0;
    let deadline = tokio::time::Instant::now() + T;
    while acks < 2 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.next(left).await.expect("two acks") {
            Event::Ack(seq) if seq == m.sequence_number => acks += 1,
            _ => {}
        }
    }
    // Out of order: seq+2 before seq+1 is acked at once and applied after the gap fills.
    let a = c.input(PayloadType::OUTPUT, b"echo o");
    let b = c.input(PayloadType::OUTPUT, b"rder-ok\r");
    c.send_raw(b.encode()).await;
    c.send_raw(a.encode()).await;
    c.output_until("order-ok", T).await;
    let st = sim.stats(&s.session_id).unwrap();
    assert_eq!(st.duplicates_seen, 1);
    assert_eq!(st.out_of_order, 1);
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_resume_keeps_the_shell() {
    let sim = sim(fast_config()).await;
    let s = start(&sim, None, &[]);
    let mut c = Client::connect(&s.stream_url, &s.token_value, NEW_CLIENT).await;
    c.prompt(T).await;
    c.send_text("X=4''2; echo set-$X\r").await;
    c.output_until("set-42", T).await;
    assert!(sim.cut(&s.session_id));
    assert!(c.until_ws_closed(T).await.is_none());
    // Output produced while nobody is connected is kept for the resumed connection.
    let r = sim.backend().resume_session(&s.session_id).unwrap();
    let mut c2 = Client::connect(&r.stream_url, &r.token_value, NEW_CLIENT).await;
    // Sequence state survives: continue where the first connection stopped.
    c2.seq = c.seq;
    c2.expected = c.expected;
    c2.send_text("echo again-$X\r").await;
    c2.output_until("again-42", T).await;
    // The hourly "Bye": close 1000, the session stays resumable.
    assert!(sim.close_bye(&s.session_id));
    assert_eq!(c2.until_ws_closed(T).await, Some((1000, "Bye".into())));
    let r2 = sim.backend().resume_session(&s.session_id).unwrap();
    let mut c3 = Client::connect(&r2.stream_url, &r2.token_value, NEW_CLIENT).await;
    c3.seq = c2.seq;
    c3.expected = c2.expected;
    c3.send_text("exit\r").await;
    let (out, _) = c3.until_closed(T).await;
    assert_eq!(out, "");
    assert_eq!(sim.stats(&s.session_id).unwrap().connections, 3);
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_generated_certificate() {
    let mut cfg = fast_config();
    cfg.tls = true;
    let sim = sim(cfg).await;
    let pem = sim.ca_pem.clone().unwrap();
    assert!(std::fs::read_to_string(sim.cert_file.as_ref().unwrap())
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    let s = start(&sim, None, &[]);
    assert!(s.stream_url.starts_with("wss://127.0.0.1:"));
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let der = pem_to_der(&pem);
    roots
        .add(tokio_rustls::rustls::pki_types::CertificateDer::from(der))
        .unwrap();
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let tls = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let hostport = s
        .stream_url
        .trim_start_matches("wss://")
        .split('/')
        .next()
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(hostport).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("TLS handshake against the generated CA");
    let mut c = Client::over(Box::new(stream), &s.stream_url, &s.token_value, NEW_CLIENT).await;
    c.prompt(T).await;
    sim.shutdown();
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}
