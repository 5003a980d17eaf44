//! Starting a session: the agent's first output or its handshake, the KMS action between
//! request and response, the encryption challenge, and the start of the handler.

use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

use super::{
    channel, handshake, wire, DataKey, Event, Exit, Inbox, Mode, Outcome, PayloadType, PendingKms,
    Phase, Priority, Session, SessionKind,
};

impl Session {
    /// KMS answered the data-key request.
    pub fn data_key(&mut self, now: Instant, key: Result<DataKey, String>) {
        let Phase::Handshake { pending, .. } = &mut self.phase else {
            return;
        };
        let Some(PendingKms {
            mut plan,
            challenge,
        }) = pending.take()
        else {
            return;
        };
        let keys = key.and_then(|k| {
            channel::crypto::SessionKeys::new(&k.plaintext)
                .map(|keys| (keys, k.ciphertext))
                .map_err(|e| {
                    format!("Error calling KMS GenerateDataKey API: unusable data key ({e})")
                })
        });
        let mut failure = None;
        if let Some(slot) = plan
            .actions
            .iter_mut()
            .find(|a| a.action_type == "KMSEncryption")
        {
            match keys {
                Ok((keys, blob)) => {
                    use base64::Engine;
                    let result = wire::KmsEncryptionResponse {
                        kms_cipher_text_key: base64::engine::general_purpose::STANDARD
                            .encode(&blob),
                        kms_cipher_text_hash: None,
                        // The challenge went into the encryption context; the agent then adds
                        // it to its Decrypt context (agents from 3.3.808.0).
                        challenge_acknowledgement: challenge.as_ref().map(|_| true),
                    };
                    slot.action_status = wire::ActionStatus::Success as i32;
                    slot.action_result = serde_json::to_value(&result).unwrap_or(Value::Null);
                    slot.error.clear();
                    self.ch.set_encryption(keys);
                }
                Err(text) => {
                    slot.error = format!("Failed to process action KMSEncryption: {text}");
                    failure = Some(slot.error.clone());
                }
            }
        }
        self.answer_handshake(now, plan);
        if let Some(msg) = failure {
            // The agent has our answer (it cancels the session); leave once it acknowledged it.
            self.begin_end(
                now,
                Mode::Drain,
                Outcome::error(
                    Exit::NoPerm,
                    format!("{msg}\nThis session requires KMS encryption: check that your credentials allow kms:GenerateDataKey on the session's KMS key (Session Manager preferences) in this region."),
                ),
            );
        }
        self.pump(now);
    }

    pub(super) fn on_message(&mut self, now: Instant, payload_type: PayloadType, payload: Bytes) {
        match payload_type {
            PayloadType::HANDSHAKE_REQUEST => self.on_handshake_request(now, &payload),
            PayloadType::ENC_CHALLENGE_REQUEST => self.on_challenge(now, &payload),
            PayloadType::HANDSHAKE_COMPLETE => self.on_handshake_complete(now, &payload),
            _ => {
                if payload_type == PayloadType::EXIT_CODE {
                    self.remote_exit = wire::parse_exit_code(&payload).or(self.remote_exit);
                }
                if matches!(self.phase, Phase::AwaitingType) {
                    if payload_type != PayloadType::OUTPUT {
                        tracing::warn!(
                            "ignoring a {} payload before the session started",
                            payload_type.name()
                        );
                        return;
                    }
                    // No handshake: the agent does this for shells without KMS. Its first
                    // output starts the shell, as in the reference.
                    self.start_handler(SessionKind::StandardStream, Value::Null);
                }
                let payload = match &mut self.status_tail {
                    Some(tail) if payload_type == PayloadType::OUTPUT => {
                        match tail.push(&payload) {
                            Some(p) => p,
                            None => return,
                        }
                    }
                    _ => payload,
                };
                self.inbox.push_back(Inbox::Message(payload_type, payload));
            }
        }
    }

    pub(super) fn on_handshake_request(&mut self, now: Instant, payload: &[u8]) {
        if !matches!(self.phase, Phase::AwaitingType) {
            tracing::debug!("a second handshake request, ignored");
            return;
        }
        let req: wire::HandshakeRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                return self.protocol_error(
                    now,
                    format!("the agent sent an unreadable handshake request: {e}"),
                )
            }
        };
        let mut plan = handshake::plan(&req);
        self.agent_version = plan.agent_version.clone();
        tracing::debug!(agent_version = %plan.agent_version, kind = ?plan.kind, "handshake request");
        let kind = plan.kind.clone();
        let properties = plan.properties.clone();
        match plan.kms.take() {
            Some(kms) => {
                if self.cfg.legacy_cli {
                    self.phase = Phase::Handshake {
                        kind,
                        properties,
                        pending: Some(PendingKms {
                            plan,
                            challenge: kms.challenge,
                        }),
                    };
                    return self.data_key(now, Err("Installed version of CLI does not support Session Manager encryption feature. Please upgrade to the latest version of your CLI (e.g., AWS CLI).".into()));
                }
                self.events.push_back(Event::NeedDataKey {
                    key_id: kms.kms_key_id.clone(),
                    challenge: kms.challenge.clone(),
                });
                self.phase = Phase::Handshake {
                    kind,
                    properties,
                    pending: Some(PendingKms {
                        plan,
                        challenge: kms.challenge,
                    }),
                };
            }
            None => {
                self.phase = Phase::Handshake {
                    kind,
                    properties,
                    pending: None,
                };
                self.answer_handshake(now, plan);
            }
        }
    }

    pub(super) fn answer_handshake(&mut self, now: Instant, plan: handshake::Plan) {
        // A KMS failure is reported when we exit (with its own status); others now.
        let failed: Vec<String> = plan
            .actions
            .iter()
            .filter(|a| {
                a.action_status != wire::ActionStatus::Success as i32
                    && a.action_type != "KMSEncryption"
            })
            .map(|a| a.error.clone())
            .collect();
        let resp = handshake::response(crate::cli::WIRE_VERSION, plan.actions);
        let _ = self.ch.send(
            now,
            PayloadType::HANDSHAKE_RESPONSE,
            Bytes::from(wire::to_vec(&resp)),
            Priority::Control,
        );
        if !failed.is_empty() {
            // The agent cancels the session on any failed action; say why now rather than
            // waiting for its channel_closed.
            self.events.push_back(Event::Warn(failed.join("\n")));
        }
    }

    pub(super) fn on_challenge(&mut self, now: Instant, payload: &[u8]) {
        let req: wire::EncryptionChallenge = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                return self.protocol_error(
                    now,
                    format!("the agent sent an unreadable encryption challenge: {e}"),
                )
            }
        };
        match self.ch.answer_encryption_challenge(&req.challenge) {
            None => self.protocol_error(
                now,
                "the agent sent an encryption challenge before asking for encryption".into(),
            ),
            Some(Err(e)) => self.begin_end(
                now,
                Mode::Tell,
                Outcome::error(
                    Exit::NoPerm,
                    format!("cannot answer the agent's encryption challenge: {e}"),
                ),
            ),
            Some(Ok(answer)) => {
                let resp = wire::EncryptionChallenge { challenge: answer };
                let _ = self.ch.send(
                    now,
                    PayloadType::ENC_CHALLENGE_RESPONSE,
                    Bytes::from(wire::to_vec(&resp)),
                    Priority::Control,
                );
            }
        }
    }

    pub(super) fn on_handshake_complete(&mut self, now: Instant, payload: &[u8]) {
        let done: wire::HandshakeComplete = serde_json::from_slice(payload).unwrap_or_default();
        if !done.customer_message.is_empty() {
            self.events
                .push_back(Event::Status(format!("{}\n", done.customer_message)));
        }
        let Phase::Handshake {
            kind,
            properties,
            pending: None,
        } = &self.phase
        else {
            tracing::debug!("HandshakeComplete out of turn, ignored");
            return;
        };
        match kind.clone() {
            Some(kind) => {
                let properties = properties.clone();
                self.start_handler(kind, properties);
            }
            None => self.protocol_error(
                now,
                "Cannot perform start session: unable to determine SessionType".into(),
            ),
        }
    }

    pub(super) fn start_handler(&mut self, kind: SessionKind, properties: Value) {
        self.kind = Some(kind.clone());
        self.properties = properties.clone();
        self.handler_running = true;
        self.phase = Phase::Running;
        self.events.push_back(Event::StartHandler {
            kind,
            properties,
            agent_version: self.agent_version.clone(),
        });
    }
}
