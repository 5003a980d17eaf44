//! A small, independent AWS Signature Version 4 verifier.
//!
//! Written from the public SigV4 specification (canonical request → string to sign → HMAC chain)
//! rather than reusing an SDK signer, so a test that passes proves the client signed the request
//! the way AWS would check it, not merely the way the same library would.
//!
//! Supported: the `Authorization: AWS4-HMAC-SHA256 …` header form and the presigned query form
//! (`X-Amz-Algorithm=…&X-Amz-Signature=…`), session tokens, double URI encoding of the path (every
//! service except S3). Not supported: SigV4a, chunked/streaming payloads, path dot-segment
//! normalisation.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use hyper::http::HeaderMap;
use sha2::{Digest, Sha256};

/// The only algorithm we accept (SigV4a, `AWS4-ECDSA-P256-SHA256`, is out of scope).
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The payload hash clients may declare instead of hashing the body.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// How far a signing time may be from our clock, as AWS enforces.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

/// Who signed a request and for what scope; recorded per call so tests can check, for example,
/// that credentials were rotated between StartSession and ResumeSession.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBy {
    pub access_key_id: String,
    /// `X-Amz-Security-Token`, present for temporary (STS) credentials. Test values only.
    pub session_token: Option<String>,
    pub region: String,
    /// The service in the credential scope (`ssm`, `ecs`, `kms`, `ssmmessages`).
    pub service: String,
    /// `YYYYMMDD` from the credential scope.
    pub date: String,
    /// Lower-case header names the client chose to sign, in its order.
    pub signed_headers: Vec<String>,
    /// True for the query-string form.
    pub presigned: bool,
    /// False when the fields were only parsed (verification switched off or no secret known).
    pub verified: bool,
}

/// Why a request was refused; `code` is the AWS error code clients see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigError {
    pub code: &'static str,
    pub message: String,
}

impl SigError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    fn mismatch() -> Self {
        Self::new(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details.",
        )
    }
}

impl std::fmt::Display for SigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The parts of a request that SigV4 covers.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Path and query exactly as received (`/v1/x?role=a%20b`); a full URL is also accepted.
    pub uri: &'a str,
    pub headers: &'a HeaderMap,
    /// `None` when the body is unknown or absent (a websocket upgrade): then only the empty-body
    /// hash and `UNSIGNED-PAYLOAD` are tried.
    pub body: Option<&'a [u8]>,
}

/// Everything parsed out of the Authorization header or the presigned query.
struct Parsed {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
    session_token: Option<String>,
    presigned: bool,
    expires: Option<u64>,
}

impl Parsed {
    fn signed_by(&self, verified: bool) -> SignedBy {
        SignedBy {
            access_key_id: self.access_key_id.clone(),
            session_token: self.session_token.clone(),
            region: self.region.clone(),
            service: self.service.clone(),
            date: self.date.clone(),
            signed_headers: self.signed_headers.clone(),
            presigned: self.presigned,
            verified,
        }
    }
}

/// Splits a request target into (path, raw query).
fn split_uri(uri: &str) -> (&str, &str) {
    // Drop `scheme://authority` if a full URL was given.
    let rest = match uri.find("://") {
        Some(i) => {
            let after = &uri[i + 3..];
            match after.find(['/', '?']) {
                Some(j) => &after[j..],
                None => "",
            }
        }
        None => uri,
    };
    let rest = rest.split('#').next().unwrap_or("");
    match rest.split_once('?') {
        Some((p, q)) => (p, q),
        None => (rest, ""),
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hi = (b[i + 1] as char).to_digit(16);
            let lo = (b[i + 2] as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// RFC 3986 encoding as SigV4 defines it: only `A-Za-z0-9-_.~` stay literal (and `/` if asked).
fn uri_encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &c in bytes {
        if c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && c == b'/')
        {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Query parameters as decoded (key, value) pairs, in the order received.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                String::from_utf8_lossy(&percent_decode(k)).into_owned(),
                String::from_utf8_lossy(&percent_decode(v)).into_owned(),
            )
        })
        .collect()
}

fn canonical_query(pairs: &[(String, String)], skip: &[&str]) -> String {
    let mut enc: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| {
            (
                uri_encode(k.as_bytes(), false),
                uri_encode(v.as_bytes(), false),
            )
        })
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// `/` for an empty path; otherwise the path as received encoded once more (the SDKs' default
/// "double encoding" for every service but S3).
fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        "/".to_owned()
    } else {
        uri_encode(path.as_bytes(), true)
    }
}

fn canonical_headers(headers: &HeaderMap, signed: &[String]) -> String {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // Invariant: HMAC-SHA256 accepts keys of any length, so new_from_slice cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The signature over a finished canonical request.
fn signature(
    secret: &str,
    amz_date: &str,
    scope_parts: (&str, &str, &str),
    canonical: &str,
) -> String {
    let (date, region, service) = scope_parts;
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    hex::encode(hmac(&k_signing, string_to_sign.as_bytes()))
}

/// Compares without an early exit so timing does not reveal how much of a signature matched.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn parse_credential(cred: &str) -> Result<(String, String, String, String), SigError> {
    let parts: Vec<&str> = cred.split('/').collect();
    if parts.len() != 5 || parts[4] != "aws4_request" || parts.iter().any(|p| p.is_empty()) {
        return Err(SigError::new(
            "IncompleteSignatureException",
            format!(
                "Credential should be scoped to a valid region, service and date: \
                 expected <key>/<YYYYMMDD>/<region>/<service>/aws4_request, got {} parts",
                parts.len()
            ),
        ));
    }
    Ok((
        parts[0].to_owned(),
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    ))
}

fn parse(req: &Request<'_>) -> Result<Parsed, SigError> {
    let (_, query) = split_uri(req.uri);
    let pairs = query_pairs(query);
    let qget = |k: &str| pairs.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone());

    if let Some(auth) = header_str(req.headers, "authorization") {
        let rest = auth.strip_prefix(ALGORITHM).ok_or_else(|| {
            SigError::new(
                "IncompleteSignatureException",
                "Authorization header must use AWS4-HMAC-SHA256 (SigV4)",
            )
        })?;
        let mut fields = BTreeMap::new();
        for part in rest.split(',') {
            if let Some((k, v)) = part.trim().split_once('=') {
                fields.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        }
        let need = |k: &str| {
            fields.get(k).cloned().ok_or_else(|| {
                SigError::new(
                    "IncompleteSignatureException",
                    format!("Authorization header requires '{k}' parameter."),
                )
            })
        };
        let (access_key_id, date, region, service) = parse_credential(&need("Credential")?)?;
        let signed_headers = need("SignedHeaders")?
            .split(';')
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let signature = need("Signature")?;
        let amz_date = header_str(req.headers, "x-amz-date")
            .map(str::to_owned)
            .ok_or_else(|| {
                SigError::new(
                    "IncompleteSignatureException",
                    "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
                )
            })?;
        return Ok(Parsed {
            access_key_id,
            date,
            region,
            service,
            signed_headers,
            signature,
            amz_date,
            session_token: header_str(req.headers, "x-amz-security-token").map(str::to_owned),
            presigned: false,
            expires: None,
        });
    }

    if let Some(alg) = qget("X-Amz-Algorithm") {
        if alg != ALGORITHM {
            return Err(SigError::new(
                "IncompleteSignatureException",
                "X-Amz-Algorithm must be AWS4-HMAC-SHA256 (SigV4)",
            ));
        }
        let need = |k: &str| {
            qget(k).ok_or_else(|| {
                SigError::new(
                    "IncompleteSignatureException",
                    format!("Presigned request requires the '{k}' query parameter."),
                )
            })
        };
        let (access_key_id, date, region, service) = parse_credential(&need("X-Amz-Credential")?)?;
        return Ok(Parsed {
            access_key_id,
            date,
            region,
            service,
            signed_headers: need("X-Amz-SignedHeaders")?
                .split(';')
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            signature: need("X-Amz-Signature")?,
            amz_date: need("X-Amz-Date")?,
            session_token: qget("X-Amz-Security-Token"),
            presigned: true,
            expires: qget("X-Amz-Expires").and_then(|e| e.parse().ok()),
        });
    }

    Err(SigError::new(
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    ))
}

/// Parses `YYYYMMDDTHHMMSSZ` into Unix seconds.
fn parse_amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), proleptic Gregorian calendar.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Parses the signature fields without checking them, for recording who signed when verification
/// is off. `None` if the request carries no recognisable SigV4 signature.
pub fn parse_unverified(req: &Request<'_>) -> Option<SignedBy> {
    parse(req).ok().map(|p| p.signed_by(false))
}

/// Verifies a request signed with SigV4 against `credentials` (access key id → secret).
///
/// `expected_service` (e.g. `Some("kms")`) rejects a signature scoped to another service, as AWS
/// does. `now` is the verifier's clock, for the 15-minute skew window and presign expiry.
pub fn verify(
    req: &Request<'_>,
    credentials: &BTreeMap<String, String>,
    expected_service: Option<&str>,
    now: SystemTime,
) -> Result<SignedBy, SigError> {
    let p = parse(req)?;
    if let Some(svc) = expected_service {
        if p.service != svc {
            return Err(SigError::new(
                "InvalidSignatureException",
                format!("Credential should be scoped to correct service: '{svc}'. "),
            ));
        }
    }
    let secret = credentials.get(&p.access_key_id).ok_or_else(|| {
        SigError::new(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    })?;
    if !p.signed_headers.iter().any(|h| h == "host") {
        return Err(SigError::new(
            "InvalidSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    if !p.amz_date.starts_with(&p.date) {
        return Err(SigError::new(
            "InvalidSignatureException",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP",
        ));
    }
    let signed_at = parse_amz_date(&p.amz_date).ok_or_else(|| {
        SigError::new(
            "IncompleteSignatureException",
            "X-Amz-Date must have the ISO-8601 basic format YYYYMMDDTHHMMSSZ",
        )
    })?;
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if p.presigned {
        let expires = p.expires.unwrap_or(0);
        if signed_at > now_s + MAX_CLOCK_SKEW.as_secs() || now_s > signed_at + expires {
            return Err(SigError::new(
                "InvalidSignatureException",
                "Signature expired or not yet valid (X-Amz-Date + X-Amz-Expires); sign the URL again",
            ));
        }
    } else if signed_at.abs_diff(now_s) > MAX_CLOCK_SKEW.as_secs() {
        return Err(SigError::new(
            "InvalidSignatureException",
            "Signature expired: the X-Amz-Date is more than 15 minutes away from the server time; \
             check the client's clock",
        ));
    }

    // Payload hashes to try. A declared x-amz-content-sha256 must match the body we got.
    let declared = header_str(req.headers, "x-amz-content-sha256");
    let payload_hashes: Vec<String> = match (req.body, declared) {
        (Some(body), Some(d)) if d != UNSIGNED_PAYLOAD => {
            if d != sha256_hex(body) {
                return Err(SigError::new(
                    "InvalidSignatureException",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                ));
            }
            vec![d.to_owned()]
        }
        (_, Some(d)) => vec![d.to_owned()],
        (Some(body), None) if !p.presigned => vec![sha256_hex(body)],
        (Some(body), None) => vec![UNSIGNED_PAYLOAD.to_owned(), sha256_hex(body)],
        (None, None) => vec![sha256_hex(b""), UNSIGNED_PAYLOAD.to_owned()],
    };

    let (path, query) = split_uri(req.uri);
    let pairs = query_pairs(query);
    // Presigners differ on whether the session token is part of the signed query.
    let query_variants: Vec<String> = if p.presigned {
        let mut v = vec![canonical_query(&pairs, &["X-Amz-Signature"])];
        if p.session_token.is_some() {
            v.push(canonical_query(
                &pairs,
                &["X-Amz-Signature", "X-Amz-Security-Token"],
            ));
        }
        v
    } else {
        vec![canonical_query(&pairs, &[])]
    };
    let c_uri = canonical_uri(path);
    let c_headers = canonical_headers(req.headers, &p.signed_headers);
    let signed_list = p.signed_headers.join(";");
    let scope = (p.date.as_str(), p.region.as_str(), p.service.as_str());

    for q in &query_variants {
        for h in &payload_hashes {
            let canonical = format!(
                "{}\n{c_uri}\n{q}\n{c_headers}\n{signed_list}\n{h}",
                req.method.to_ascii_uppercase()
            );
            let expected = signature(secret, &p.amz_date, scope, &canonical);
            if constant_time_eq(&expected, &p.signature.to_ascii_lowercase()) {
                return Ok(p.signed_by(true));
            }
        }
    }
    Err(SigError::mismatch())
}

/// The check the simulated relay runs on a websocket upgrade `GET` (service `ssmmessages`):
/// accepts either the Authorization-header form or a presigned URL. On failure the `String` says
/// why, in AWS's words, and never contains secrets.
pub fn verify_presigned_or_signed_ws_upgrade(
    method: &str,
    uri: &str,
    headers: &HeaderMap,
    creds: &BTreeMap<String, String>,
    service: &str,
) -> Result<SignedBy, String> {
    let req = Request {
        method,
        uri,
        headers,
        body: None,
    };
    verify(&req, creds, Some(service), SystemTime::now()).map_err(|e| e.to_string())
}

/// Produces an `Authorization` header value for a request, for tests that need a correctly (or
/// deliberately wrongly) signed request without an SDK. `headers` must already hold every header
/// named in `signed_headers` (including `host` and `x-amz-date` = `amz_date`).
#[allow(clippy::too_many_arguments)]
pub fn authorization_header(
    method: &str,
    uri: &str,
    headers: &HeaderMap,
    body: &[u8],
    signed_headers: &[&str],
    access_key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
    amz_date: &str,
) -> String {
    let (path, query) = split_uri(uri);
    let signed: Vec<String> = signed_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        method.to_ascii_uppercase(),
        canonical_uri(path),
        canonical_query(&query_pairs(query), &[]),
        canonical_headers(headers, &signed),
        signed.join(";"),
        sha256_hex(body)
    );
    let date = amz_date.get(..8).unwrap_or(amz_date);
    let sig = signature(secret, amz_date, (date, region, service), &canonical);
    format!(
        "{ALGORITHM} Credential={access_key_id}/{date}/{region}/{service}/aws4_request, \
         SignedHeaders={}, Signature={sig}",
        signed.join(";")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::http::HeaderValue;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn at(s: &str) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(parse_amz_date(s).unwrap())
    }

    /// `get-vanilla` from the public AWS SigV4 test suite.
    #[test]
    fn aws_test_suite_get_vanilla() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        h.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        let auth = authorization_header(
            "GET",
            "/",
            &h,
            b"",
            &["host", "x-amz-date"],
            "AKIDEXAMPLE",
            SECRET,
            "us-east-1",
            "service",
            "20150830T123600Z",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        h.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        let creds = BTreeMap::from([("AKIDEXAMPLE".to_owned(), SECRET.to_owned())]);
        let req = Request {
            method: "GET",
            uri: "/",
            headers: &h,
            body: Some(b""),
        };
        let by = verify(&req, &creds, Some("service"), at("20150830T123600Z")).unwrap();
        assert!(by.verified);
        assert_eq!(by.access_key_id, "AKIDEXAMPLE");
        // Wrong service scope, unknown key, clock skew, wrong secret.
        assert_eq!(
            verify(&req, &creds, Some("kms"), at("20150830T123600Z"))
                .unwrap_err()
                .code,
            "InvalidSignatureException"
        );
        assert_eq!(
            verify(&req, &BTreeMap::new(), None, at("20150830T123600Z"))
                .unwrap_err()
                .code,
            "UnrecognizedClientException"
        );
        assert!(verify(&req, &creds, None, at("20150830T130600Z")).is_err());
        let wrong = BTreeMap::from([("AKIDEXAMPLE".to_owned(), "nope".to_owned())]);
        assert_eq!(
            verify(&req, &wrong, None, at("20150830T123600Z"))
                .unwrap_err()
                .code,
            "InvalidSignatureException"
        );
    }

    /// `get-vanilla-query-order-key-case` from the AWS suite: query keys are sorted by code point.
    #[test]
    fn aws_test_suite_query_order() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        h.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        let auth = authorization_header(
            "GET",
            "/?Param2=value2&Param1=value1",
            &h,
            b"",
            &["host", "x-amz-date"],
            "AKIDEXAMPLE",
            SECRET,
            "us-east-1",
            "service",
            "20150830T123600Z",
        );
        assert!(
            auth.ends_with(
                "Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
            ),
            "{auth}"
        );
    }

    #[test]
    fn amz_date_parses() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("2015-08-30T12:36"), None);
    }

    #[test]
    fn missing_signature_is_reported() {
        let h = HeaderMap::new();
        let req = Request {
            method: "POST",
            uri: "/",
            headers: &h,
            body: Some(b"{}"),
        };
        let e = verify(&req, &BTreeMap::new(), None, SystemTime::now()).unwrap_err();
        assert_eq!(e.code, "MissingAuthenticationTokenException");
        assert!(parse_unverified(&req).is_none());
    }
}
