//! The `-L` and `-D` forward specifications of `forward`, in ssh's syntax, and the StartSession
//! request each forward makes. Pure.

use crate::cli::RequestParameters;

/// One `-L LPORT:[HOST:]RPORT` or `-L BIND:LPORT:HOST:RPORT` (HOST may be empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalForward {
    /// Address or host name the listener binds to; `None`: loopback.
    pub bind: Option<String>,
    /// Local port; 0 picks a free one.
    pub local_port: u16,
    /// Destination host as the target sees it; `None`: the target itself.
    pub host: Option<String>,
    /// Destination port.
    pub remote_port: u16,
}

/// One `-D [BIND:]PORT`: a SOCKS5 proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicForward {
    /// Address the proxy binds to; `None`: loopback.
    pub bind: Option<String>,
    /// Its port; 0 picks a free one.
    pub port: u16,
}

/// Splits on `:` outside `[...]`, so IPv6 addresses can be written `[::1]`.
fn fields(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut depth = 0;
    for c in s.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ':' if depth == 0 => {
                out.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

fn port(s: &str, what: &str, spec: &str) -> Result<u16, String> {
    s.trim()
        .parse::<u16>()
        .map_err(|_| format!("{what} {s:?} in {spec:?} is not a port number (0-65535)"))
}

fn host(s: &str) -> Option<String> {
    let s = s.trim().trim_start_matches('[').trim_end_matches(']');
    (!s.is_empty()).then(|| s.to_owned())
}

/// The forms of `-L`, for help and errors.
pub const LOCAL_FORMS: &str =
    "LOCAL_PORT:REMOTE_PORT, LOCAL_PORT:HOST:REMOTE_PORT or BIND:LOCAL_PORT:HOST:REMOTE_PORT";

impl std::str::FromStr for LocalForward {
    type Err = String;
    /// ssh's rule: three fields are LOCAL_PORT:HOST:REMOTE_PORT, four BIND:LOCAL_PORT:HOST:
    /// REMOTE_PORT; two (ours, ssh has none) forward to TARGET itself, as does an empty HOST.
    fn from_str(spec: &str) -> Result<Self, String> {
        let f = fields(spec);
        let (bind, lport, h, rport) = match f.as_slice() {
            [lport, rport] => (None, lport, None, rport),
            [lport, h, rport] => (None, lport, host(h), rport),
            [bind, lport, h, rport] => (host(bind), lport, host(h), rport),
            _ => {
                return Err(format!(
                    "{spec:?} is not {LOCAL_FORMS} (e.g. 5432:db.internal:5432)"
                ))
            }
        };
        // `127.0.0.1:8080:80` read as BIND:LOCAL_PORT:REMOTE_PORT: ssh reads three fields as
        // LOCAL_PORT:HOST:REMOTE_PORT, so say which spelling means that.
        if let [first, lp, rp] = f.as_slice() {
            if first.trim().parse::<u16>().is_err()
                && lp.trim().parse::<u16>().is_ok()
                && rp.trim().parse::<u16>().is_ok()
            {
                return Err(format!(
                    "local port {first:?} in {spec:?} is not a port number: with three fields -L is LOCAL_PORT:HOST:REMOTE_PORT, as in ssh; to listen on {first} and forward to TARGET's port {rp}, write {first}:{lp}::{rp} (BIND:LOCAL_PORT:HOST:REMOTE_PORT, an empty HOST is TARGET itself)"
                ));
            }
        }
        let remote_port = port(rport, "remote port", spec)?;
        if remote_port == 0 {
            return Err(format!("the remote port in {spec:?} cannot be 0"));
        }
        Ok(Self {
            bind,
            local_port: port(lport, "local port", spec)?,
            host: h,
            remote_port,
        })
    }
}

impl std::str::FromStr for DynamicForward {
    type Err = String;
    fn from_str(spec: &str) -> Result<Self, String> {
        let f = fields(spec);
        match f.as_slice() {
            [p] => Ok(Self {
                bind: None,
                port: port(p, "port", spec)?,
            }),
            [b, p] => Ok(Self {
                bind: host(b),
                port: port(p, "port", spec)?,
            }),
            _ => Err(format!("{spec:?} is not [BIND:]PORT (e.g. 1080)")),
        }
    }
}

/// The document for a forward to the target itself.
pub const PORT_DOCUMENT: &str = "AWS-StartPortForwardingSession";
/// The document for a forward to another host through the target.
pub const REMOTE_HOST_DOCUMENT: &str = "AWS-StartPortForwardingSessionToRemoteHost";

/// The StartSession request of a forward to `host` (None: the target) port `port`.
pub fn request(
    target: &str,
    host: Option<&str>,
    port: u16,
    reason: Option<String>,
) -> RequestParameters {
    let mut parameters = std::collections::BTreeMap::from([
        ("portNumber".to_owned(), vec![port.to_string()]),
        // The listener is ours already; the agent only echoes this back.
        ("localPortNumber".to_owned(), vec!["0".to_owned()]),
    ]);
    let document = match host {
        Some(h) => {
            parameters.insert("host".to_owned(), vec![h.to_owned()]);
            REMOTE_HOST_DOCUMENT
        }
        None => PORT_DOCUMENT,
    };
    RequestParameters {
        target: target.to_owned(),
        document_name: Some(document.to_owned()),
        reason,
        parameters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> Result<LocalForward, String> {
        s.parse()
    }

    #[test]
    fn local_forwards_in_ssh_syntax() {
        assert_eq!(
            l("5432:db.internal:5432").unwrap(),
            LocalForward {
                bind: None,
                local_port: 5432,
                host: Some("db.internal".into()),
                remote_port: 5432
            }
        );
        assert_eq!(
            l("8080:80").unwrap(),
            LocalForward {
                bind: None,
                local_port: 8080,
                host: None,
                remote_port: 80
            }
        );
        assert_eq!(
            l("0.0.0.0:0:10.0.0.5:22").unwrap(),
            LocalForward {
                bind: Some("0.0.0.0".into()),
                local_port: 0,
                host: Some("10.0.0.5".into()),
                remote_port: 22
            }
        );
        assert_eq!(
            l("[::1]:15432:[fd00::5]:5432").unwrap(),
            LocalForward {
                bind: Some("::1".into()),
                local_port: 15432,
                host: Some("fd00::5".into()),
                remote_port: 5432
            }
        );
        assert!(l("5432").unwrap_err().contains("LOCAL_PORT"));
        // Three fields are LOCAL_PORT:HOST:REMOTE_PORT, as in ssh; the error shows the four.
        let e = l("127.0.0.1:8080:80").unwrap_err();
        assert!(
            e.contains("LOCAL_PORT:HOST:REMOTE_PORT, as in ssh")
                && e.contains("write 127.0.0.1:8080::80"),
            "{e}"
        );
        assert_eq!(
            l("127.0.0.1:8080::80").unwrap(),
            LocalForward {
                bind: Some("127.0.0.1".into()),
                local_port: 8080,
                host: None,
                remote_port: 80
            }
        );
        assert!(l("x:80").unwrap_err().contains("not a port number"));
        assert!(l("80:0").unwrap_err().contains("cannot be 0"));
        assert!(l("1:2:3:4:5").is_err());
    }

    #[test]
    fn dynamic_forwards() {
        let d: DynamicForward = "1080".parse().unwrap();
        assert_eq!(
            d,
            DynamicForward {
                bind: None,
                port: 1080
            }
        );
        let d: DynamicForward = "127.0.0.2:0".parse().unwrap();
        assert_eq!(d.bind.as_deref(), Some("127.0.0.2"));
        assert!("a:b:c".parse::<DynamicForward>().is_err());
    }

    #[test]
    fn forwards_pick_the_document_by_host() {
        let r = request("i-1", None, 80, None);
        assert_eq!(r.document_name.as_deref(), Some(PORT_DOCUMENT));
        assert_eq!(r.parameters["portNumber"], vec!["80"]);
        assert!(!r.parameters.contains_key("host"));
        let r = request("i-1", Some("db.internal"), 5432, Some("why".into()));
        assert_eq!(r.document_name.as_deref(), Some(REMOTE_HOST_DOCUMENT));
        assert_eq!(r.parameters["host"], vec!["db.internal"]);
        assert_eq!(r.reason.as_deref(), Some("why"));
    }
}
