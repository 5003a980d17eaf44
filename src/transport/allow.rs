//! Only Session Manager gets the token: the StreamUrl must name AWS's `ssmmessages` service (in
//! any partition and endpoint form), loopback (tests, local relays), or a host the user allowed
//! with `SESSION_MANAGER_PLUGIN_ALLOWED_HOSTS`. Anything else is refused before any DNS lookup
//! or connection, so a forged or mistaken response cannot collect the token and a SigV4-signed
//! upgrade (replayable for minutes). AWS's plugin checks the same from 1.2.889.0.

use url::Url;

/// The setting that allows more hosts: comma-separated names, `*.example.com` for a domain.
pub const ENV_ALLOWED_HOSTS: &str = "SESSION_MANAGER_PLUGIN_ALLOWED_HOSTS";

/// DNS suffixes of AWS partitions (commercial and GovCloud, China, the ISO partitions, the
/// European sovereign cloud) and of the dual-stack endpoints: a host under one of them is AWS's.
const AWS_SUFFIXES: &[&str] = &[
    "amazonaws.com",
    "amazonaws.com.cn",
    "api.aws",
    "api.amazonwebservices.com.cn",
    "c2s.ic.gov",
    "sc2s.sgov.gov",
    "cloud.adc-e.uk",
    "csp.hci.ic.gov",
    "amazonaws.eu",
];

/// Why a URL may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// An AWS `ssmmessages` endpoint.
    Aws,
    /// This machine.
    Loopback,
    /// Listed by the user.
    UserListed,
}

/// Checks `url` before anything is sent to it; `extra` is the user's list. The error names the
/// host and the setting that allows it.
pub fn check(url: &str, extra: Option<&str>) -> Result<Allowed, String> {
    let u = Url::parse(url)
        .map_err(|e| format!("the session's StreamUrl is not a valid ws:// or wss:// URL ({e})"))?;
    let host = u
        .host_str()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let scheme = u.scheme();
    if scheme != "ws" && scheme != "wss" {
        return Err(format!(
            "the session's StreamUrl is not a valid ws:// or wss:// URL (scheme {scheme})"
        ));
    }
    if is_loopback(&host) {
        return Ok(Allowed::Loopback);
    }
    if scheme == "wss" && is_ssmmessages(&host) {
        return Ok(Allowed::Aws);
    }
    if scheme == "wss" && extra.is_some_and(|list| listed(&host, list)) {
        return Ok(Allowed::UserListed);
    }
    Err(format!(
        "refusing to send the session token to {host}: the StreamUrl ({scheme}://{host}) is not a Session Manager endpoint (wss://ssmmessages.<region>.amazonaws.com and the like). If {host} is your PrivateLink alias or relay, allow it with {ENV_ALLOWED_HOSTS}={host} (wss:// only)"
    ))
}

/// Whether `host` is under one of AWS's domains (any service).
pub fn is_aws_domain(host: &str) -> bool {
    AWS_SUFFIXES
        .iter()
        .any(|s| host.strip_suffix(s).is_some_and(|r| r.ends_with('.')))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `ssmmessages[-fips].<region>.<suffix>` and VPC endpoint names
/// `<endpoint-id>[-<az>].ssmmessages.<region>.vpce.<suffix>`.
fn is_ssmmessages(host: &str) -> bool {
    let Some(rest) = AWS_SUFFIXES
        .iter()
        .find_map(|s| host.strip_suffix(s).and_then(|r| r.strip_suffix('.')))
    else {
        return false;
    };
    let labels: Vec<&str> = rest.split('.').collect();
    let region_ok = |r: &str| {
        !r.is_empty()
            && r.contains('-')
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    match labels.as_slice() {
        [svc, region] => (*svc == "ssmmessages" || *svc == "ssmmessages-fips") && region_ok(region),
        [endpoint, svc, region, vpce] => {
            *vpce == "vpce"
                && *svc == "ssmmessages"
                && region_ok(region)
                && endpoint.starts_with("vpce-")
        }
        _ => false,
    }
}

fn listed(host: &str, list: &str) -> bool {
    list.split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|e| match e.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == e,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_endpoints_in_every_partition_and_form() {
        for h in [
            "ssmmessages.us-east-1.amazonaws.com",
            "ssmmessages.cn-north-1.amazonaws.com.cn",
            "ssmmessages-fips.us-gov-west-1.amazonaws.com",
            "ssmmessages.eu-west-1.api.aws",
            "vpce-0123456789abcdef0-abcdefgh.ssmmessages.us-east-1.vpce.amazonaws.com",
            "vpce-0123456789abcdef0-abcdefgh-us-east-1a.ssmmessages.us-east-1.vpce.amazonaws.com",
            "ssmmessages.us-iso-east-1.c2s.ic.gov",
        ] {
            assert_eq!(
                check(
                    &format!("wss://{h}/v1/data-channel/s?role=publish_subscribe"),
                    None
                ),
                Ok(Allowed::Aws),
                "{h}"
            );
        }
    }

    #[test]
    fn loopback_in_either_scheme() {
        for u in [
            "ws://127.0.0.1:1234/x",
            "wss://127.0.0.2/x",
            "ws://[::1]:9/x",
            "ws://localhost:80/x",
        ] {
            assert_eq!(check(u, None), Ok(Allowed::Loopback), "{u}");
        }
    }

    #[test]
    fn everything_else_is_refused_with_the_setting_named() {
        for u in [
            "wss://evil.example.com/v1/data-channel/s",
            "wss://ssmmessages.us-east-1.amazonaws.com.evil.example/x",
            "wss://ssmmessages.amazonaws.com/x",
            "wss://ssm.us-east-1.amazonaws.com/x",
            "wss://s3.us-east-1.amazonaws.com/x",
            "ws://ssmmessages.us-east-1.amazonaws.com/x",
            "wss://10.0.0.5/x",
            "wss://foo.ssmmessages.us-east-1.vpce.amazonaws.com/x",
        ] {
            let e = check(u, None).expect_err(u);
            assert!(e.contains(ENV_ALLOWED_HOSTS), "{e}");
        }
        let e = check("https://ssmmessages.us-east-1.amazonaws.com/x", None).unwrap_err();
        assert!(e.contains("ws://"), "{e}");
    }

    #[test]
    fn the_users_list_allows_names_and_domains_over_wss() {
        let list = Some("relay.corp.example, *.privatelink.example");
        assert_eq!(
            check("wss://relay.corp.example/x", list),
            Ok(Allowed::UserListed)
        );
        assert_eq!(
            check("wss://ssm.privatelink.example/x", list),
            Ok(Allowed::UserListed)
        );
        assert!(check("wss://privatelink.example/x", list).is_err());
        assert!(check("ws://relay.corp.example/x", list).is_err());
        assert!(check("wss://other.example/x", list).is_err());
    }
}
