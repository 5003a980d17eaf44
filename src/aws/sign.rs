//! SigV4 for the websocket upgrade, as AWS's plugin does from 1.2.764.0: the `GET` that opens
//! the data channel carries `Authorization`, `X-Amz-Date` (and `X-Amz-Security-Token` for
//! temporary credentials) for service `ssmmessages`, unless the StreamUrl is already presigned.
//!
//! Only `host` (plus the SigV4 headers themselves) is signed: the websocket library adds a random
//! `Sec-WebSocket-Key` when it builds the request, so signing the other upgrade headers would
//! sign values that are not the ones sent.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use http::{HeaderName, HeaderValue};

/// The signing name of the data-channel service.
pub const SERVICE: &str = "ssmmessages";

/// Query parameters that mark a presigned URL (any one is enough, as in the reference).
const PRESIGN_PARAMS: [&str; 7] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// True when the URL's query already carries a SigV4 presignature: it must then be sent as is.
pub fn is_presigned(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    u.query_pairs()
        .any(|(k, _)| PRESIGN_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(&k)))
}

/// The headers that sign a websocket upgrade `GET url` with `creds` for `region`, at `time`.
/// Errors say what was wrong without ever containing a secret.
pub fn upgrade_headers(
    url: &str,
    creds: &Credentials,
    region: &str,
    time: SystemTime,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    // The Host header exactly as the websocket library will send it.
    let req = crate::transport::upgrade_request(url, &[]).map_err(|e| e.to_string())?;
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| "the StreamUrl has no host".to_owned())?
        .to_owned();
    let identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("cannot set up SigV4 signing: {e}"))?
        .into();
    let signable = SignableRequest::new(
        "GET",
        url,
        std::iter::once(("host", host.as_str())),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| format!("cannot sign the StreamUrl: {e}"))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| format!("SigV4 signing failed: {e}"))?
        .into_parts();
    let (headers, _params) = instructions.into_parts();
    headers
        .into_iter()
        .map(|h| {
            let name = HeaderName::from_static(h.name());
            let mut value = HeaderValue::from_str(h.value())
                .map_err(|_| format!("SigV4 produced an invalid {} header", h.name()))?;
            // Kept out of any header dump: the session token is a credential, and a
            // signature is replayable for minutes.
            value.set_sensitive(h.sensitive() || h.name() == "authorization");
            Ok((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_detection() {
        assert!(!is_presigned(
            "wss://ssmmessages.us-east-1.amazonaws.com/v1/data-channel/s-1?role=publish_subscribe&cell-number=AAA"
        ));
        assert!(is_presigned(
            "wss://h/v1/data-channel/s-1?role=publish_subscribe&X-Amz-Signature=abc"
        ));
        assert!(is_presigned("wss://h/x?x-amz-security-token=t"));
        assert!(!is_presigned("not a url"));
    }

    #[test]
    fn signs_host_date_and_token_only() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", Some("tok".into()), None, "test");
        let h = upgrade_headers(
            "ws://127.0.0.1:8443/v1/data-channel/s-1?role=publish_subscribe&cell-number=Q",
            &creds,
            "eu-west-1",
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        )
        .unwrap();
        let get = |n: &str| {
            h.iter()
                .find(|(k, _)| k.as_str() == n)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        let auth = get("authorization").unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/eu-west-1/ssmmessages/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature="
            ),
            "{auth}"
        );
        assert_eq!(get("x-amz-date").unwrap(), "20231114T221320Z");
        assert_eq!(get("x-amz-security-token").unwrap(), "tok");
        assert!(h
            .iter()
            .filter(|(k, _)| k.as_str() != "x-amz-date")
            .all(|(_, v)| v.is_sensitive()));
    }
}
