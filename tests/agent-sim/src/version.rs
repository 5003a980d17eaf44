//! Version comparison as the agent's `agent/versionutil/versionutil.go: Compare` does it with
//! `strictSort` true (the form every session gate uses): dot-separated parts compared as numbers
//! when both parse, as text otherwise; when one runs out of parts, the shorter one is smaller.
//! (For two plain `x.y.z` versions the agent goes through semver first, which orders them the
//! same way.)

use std::cmp::Ordering;

/// Compares two dotted versions like the agent's `versionutil.Compare(a, b, true)`.
pub fn compare(a: &str, b: &str) -> Ordering {
    let pa: Vec<&str> = a.split('.').collect();
    let pb: Vec<&str> = b.split('.').collect();
    for (x, y) in pa.iter().zip(pb.iter()) {
        let ord = match (x.parse::<i64>(), y.parse::<i64>()) {
            (Ok(nx), Ok(ny)) => nx.cmp(&ny),
            _ => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    pa.len().cmp(&pb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates() {
        assert_eq!(compare("1.2.0.0", "1.1.70"), Ordering::Greater);
        assert_eq!(compare("1.1.70", "1.1.70"), Ordering::Equal);
        assert_eq!(compare("1.1.69.0", "1.1.70"), Ordering::Less);
        // more parts with an equal prefix is greater: 1.2.295.0 > 1.2.295
        assert_eq!(compare("1.2.295.0", "1.2.295"), Ordering::Greater);
        assert_eq!(compare("1.2.331.0", "1.2.331.0"), Ordering::Equal);
        assert_eq!(compare("1.2.650.0", "1.2.331.0"), Ordering::Greater);
        assert_eq!(compare("3.0.196.0", "3.0.196.0"), Ordering::Equal);
        assert_eq!(compare("", "1.1.70"), Ordering::Less);
    }
}
