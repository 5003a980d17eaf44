//! TARGET of the standalone commands: an id used as it is, or a `Name` tag / `tag:KEY=VALUE`
//! looked up among the online managed nodes (DescribeInstanceInformation), after aliases from
//! the config file.

use std::collections::BTreeMap;

use crate::aws::Aws;

/// What a TARGET argument asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An instance or managed-node id, or an ECS target, used as it is.
    Id(String),
    /// The online node whose tag `key` has `value` (`Name` for a bare word).
    Tag { key: String, value: String },
}

fn is_node_id(s: &str) -> bool {
    let hex = |rest: &str| rest.len() >= 8 && rest.chars().all(|c| c.is_ascii_hexdigit());
    s.strip_prefix("i-").is_some_and(hex) || s.strip_prefix("mi-").is_some_and(hex)
}

/// Whether `raw` names a target by itself, without any alias (a node id, `ecs:...`,
/// `tag:K=V`).
pub fn is_literal(raw: &str) -> bool {
    let raw = raw.trim();
    is_node_id(raw) || raw.starts_with("ecs:") || raw.starts_with("tag:")
}

/// Reads TARGET, replacing an alias first (one level: an alias names a target, not an alias).
pub fn parse(raw: &str, aliases: &BTreeMap<String, String>) -> Result<Target, String> {
    let raw = raw.trim();
    let raw = aliases.get(raw).map(String::as_str).unwrap_or(raw).trim();
    if raw.is_empty() {
        return Err("the target is empty".into());
    }
    if is_node_id(raw) || raw.starts_with("ecs:") {
        return Ok(Target::Id(raw.to_owned()));
    }
    if let Some(tag) = raw.strip_prefix("tag:") {
        return match tag.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok(Target::Tag {
                key: k.to_owned(),
                value: v.to_owned(),
            }),
            _ => Err(format!("{raw:?} is not tag:KEY=VALUE")),
        };
    }
    Ok(Target::Tag {
        key: "Name".into(),
        value: raw.to_owned(),
    })
}

/// The one node id `target` means; no match or several is an error listing what was found.
pub async fn resolve(target: &Target, aws: &Aws) -> Result<String, String> {
    let (key, value) = match target {
        Target::Id(id) => return Ok(id.clone()),
        Target::Tag { key, value } => (key, value),
    };
    let nodes = aws
        .online_nodes(&[(format!("tag:{key}"), vec![value.clone()])])
        .await
        .map_err(|e| format!("cannot look up the target {key}={value}: {e}"))?;
    choose(key, value, nodes)
}

fn choose(key: &str, value: &str, nodes: Vec<(String, String)>) -> Result<String, String> {
    match nodes.as_slice() {
        // `i-bogus`: meant as an id, but none (an id is i- or mi- and 8 or 17 hex digits).
        [] if key == "Name" && (value.starts_with("i-") || value.starts_with("mi-")) => Err(format!(
            "{value:?} is not a managed node id (i-/mi- followed by 8 or 17 hex digits, e.g. i-0123456789abcdef0), and no online managed node has it as its Name tag; check the id (aws ssm describe-instance-information)"
        )),
        [] => Err(format!(
            "no online managed node has the tag {key}={value}; check the name, the region (--region) and that its SSM Agent is online (aws ssm describe-instance-information)"
        )),
        [(id, _)] => Ok(id.clone()),
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|(id, name)| {
                    if name.is_empty() {
                        id.clone()
                    } else {
                        format!("{id} ({name})")
                    }
                })
                .collect();
            Err(format!(
                "{} online managed nodes have the tag {key}={value}: {}; name one by its id",
                many.len(),
                list.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_ids_tags_or_names() {
        let none = BTreeMap::new();
        assert_eq!(
            parse("i-0123456789abcdef0", &none).unwrap(),
            Target::Id("i-0123456789abcdef0".into())
        );
        assert_eq!(
            parse("mi-0123456789abcdef0", &none).unwrap(),
            Target::Id("mi-0123456789abcdef0".into())
        );
        assert_eq!(
            parse("ecs:c_t_r", &none).unwrap(),
            Target::Id("ecs:c_t_r".into())
        );
        assert_eq!(
            parse("tag:Role=web", &none).unwrap(),
            Target::Tag {
                key: "Role".into(),
                value: "web".into()
            }
        );
        assert_eq!(
            parse("bastion", &none).unwrap(),
            Target::Tag {
                key: "Name".into(),
                value: "bastion".into()
            }
        );
        // "i-web" is a name, not an id.
        assert!(matches!(parse("i-web", &none).unwrap(), Target::Tag { .. }));
        assert!(parse("tag:Role", &none).is_err());
        assert!(parse(" ", &none).is_err());
    }

    #[test]
    fn aliases_come_first() {
        let aliases = BTreeMap::from([("db".to_owned(), "tag:Role=db".to_owned())]);
        assert_eq!(
            parse("db", &aliases).unwrap(),
            Target::Tag {
                key: "Role".into(),
                value: "db".into()
            }
        );
    }

    #[test]
    fn zero_or_several_matches_are_errors_that_list_them() {
        let e = choose("Name", "i-bogus", vec![]).unwrap_err();
        assert!(e.contains("\"i-bogus\" is not a managed node id"), "{e}");
        assert!(choose("Name", "x", vec![])
            .unwrap_err()
            .contains("no online"));
        assert_eq!(
            choose("Name", "x", vec![("i-1".into(), "a".into())]).unwrap(),
            "i-1"
        );
        let e = choose(
            "Name",
            "x",
            vec![("i-1".into(), "a".into()), ("i-2".into(), String::new())],
        )
        .unwrap_err();
        assert!(e.contains("2 online") && e.contains("i-1 (a), i-2"), "{e}");
    }
}
