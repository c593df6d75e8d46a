//! Per-collection read rules: which tokens may read a collection (`read_claims`) and which of
//! its rows (`scope`), turned into the log's [`RowFilter`].

use super::Claims;
use crate::config::{AuthMode, CollectionConfig, Config};
use crate::log::reader::RowFilter;
use crate::log::scope::scope_text;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What a caller may read of one collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    Full,
    /// Only rows whose scope value is this.
    Scoped(String),
    /// Not readable; the reason is for the client.
    Denied(String),
}

/// The configured rules.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `false`: `auth.mode = "none"`, everything is readable.
    pub enabled: bool,
    pub collections: BTreeMap<String, CollectionConfig>,
    pub serve_unlisted: bool,
}

impl Access {
    pub fn from_config(config: &Config) -> Access {
        Access {
            enabled: config.auth.mode == AuthMode::Jwt,
            collections: config.collections.clone(),
            serve_unlisted: config.auth.serve_unlisted,
        }
    }

    /// What `claims` may read of `collection` (`None`: no auth, everything).
    pub fn grant(&self, collection: &str, claims: Option<&Claims>) -> Grant {
        let (true, Some(claims)) = (self.enabled, claims) else {
            return Grant::Full;
        };
        let Some(rules) = self.collections.get(collection) else {
            return if self.serve_unlisted {
                Grant::Full
            } else {
                Grant::Denied(format!("collection {collection:?} is not served"))
            };
        };
        for (claim, accepted) in &rules.read_claims {
            if !claims.get(claim).is_some_and(|v| matches(v, accepted)) {
                return Grant::Denied(format!(
                    "the token's {claim:?} claim does not allow reading {collection:?}"
                ));
            }
        }
        match &rules.scope {
            None => Grant::Full,
            Some(scope) => match claims.get(&scope.claim).and_then(scalar) {
                Some(value) => Grant::Scoped(value),
                None => Grant::Denied(format!(
                    "{collection:?} is scoped by the {:?} claim, which the token does not carry as a string or number",
                    scope.claim
                )),
            },
        }
    }

    /// The filter for a read of `requested` collections (`None`: everything the caller may
    /// read). A named collection the caller may not read is an error (403).
    pub fn filter(
        &self,
        claims: Option<&Claims>,
        requested: Option<&[String]>,
    ) -> Result<RowFilter, String> {
        if !self.enabled {
            return Ok(RowFilter::collections(requested));
        }
        let add = |filter: RowFilter, name: &str, grant: Grant| match grant {
            Grant::Full => Ok(filter.full(name)),
            Grant::Scoped(scope) => Ok(filter.scoped(name, &scope)),
            Grant::Denied(why) => Err(why),
        };
        match requested {
            Some(names) => names.iter().try_fold(RowFilter::none(), |f, name| {
                add(f, name, self.grant(name, claims))
            }),
            None => {
                let mut filter = RowFilter::none();
                for name in self.collections.keys() {
                    // Unreadable listed collections are simply left out.
                    if let Ok(f) = add(filter.clone(), name, self.grant(name, claims)) {
                        filter = f;
                    }
                }
                if self.serve_unlisted {
                    filter =
                        filter.others(self.collections.keys().cloned().collect::<BTreeSet<_>>());
                }
                Ok(filter)
            }
        }
    }
}

/// A claim value as a scope value (see `scalar`).
pub(super) fn scope_value(value: &Value) -> Option<String> {
    scalar(value)
}

/// The claim holds one of `accepted` (see `matches`).
pub(super) fn claim_matches(claim: &Value, accepted: &[Value]) -> bool {
    matches(claim, accepted)
}

/// A claim value as a scope value: strings and numbers; nothing for arrays, objects, null, "".
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(scope_text(value)),
        _ => None,
    }
}

/// The claim holds one of `accepted` (an array claim: any of its elements does).
fn matches(claim: &Value, accepted: &[Value]) -> bool {
    match claim {
        Value::Array(items) => items.iter().any(|item| matches(item, accepted)),
        value => {
            scalar(value).is_some_and(|v| accepted.iter().any(|a| scalar(a).as_ref() == Some(&v)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScopeConfig;
    use serde_json::json;

    fn claims(value: Value) -> Claims {
        Claims(value.as_object().cloned().unwrap())
    }

    fn access() -> Access {
        let mut collections = BTreeMap::new();
        collections.insert(
            "public.todos".to_string(),
            CollectionConfig {
                read_claims: BTreeMap::from([(
                    "role".to_string(),
                    vec![json!("user"), json!("admin")],
                )]),
                scope: Some(ScopeConfig {
                    column: "user_id".into(),
                    claim: "sub".into(),
                }),
                write: None,
            },
        );
        collections.insert("public.tags".to_string(), CollectionConfig::default());
        Access {
            enabled: true,
            collections,
            serve_unlisted: false,
        }
    }

    #[test]
    fn grants_by_claims_and_scope() {
        let access = access();
        let alice = claims(json!({"sub": "alice", "role": "user"}));
        assert_eq!(
            access.grant("public.todos", Some(&alice)),
            Grant::Scoped("alice".into())
        );
        assert_eq!(access.grant("public.tags", Some(&alice)), Grant::Full);
        assert!(matches!(
            access.grant("public.other", Some(&alice)),
            Grant::Denied(_)
        ));
        let guest = claims(json!({"sub": "bob", "role": "guest"}));
        assert!(matches!(
            access.grant("public.todos", Some(&guest)),
            Grant::Denied(_)
        ));
        let roles = claims(json!({"sub": 7, "role": ["x", "admin"]}));
        assert_eq!(
            access.grant("public.todos", Some(&roles)),
            Grant::Scoped("7".into())
        );
        let no_sub = claims(json!({"role": "user"}));
        assert!(matches!(
            access.grant("public.todos", Some(&no_sub)),
            Grant::Denied(_)
        ));
    }

    #[test]
    fn filters_named_and_default_reads() {
        let access = access();
        let alice = claims(json!({"sub": "alice", "role": "user"}));
        let all = access.filter(Some(&alice), None).unwrap();
        assert!(all.allows("public.todos", "alice", crate::record::Op::Insert));
        assert!(!all.allows("public.todos", "bob", crate::record::Op::Delete));
        assert!(all.allows("public.todos", "", crate::record::Op::Truncate));
        assert!(all.allows("public.tags", "", crate::record::Op::Insert));
        assert!(!all.allows("public.other", "", crate::record::Op::Insert));
        let err = access
            .filter(Some(&alice), Some(&["public.other".to_string()]))
            .unwrap_err();
        assert!(err.contains("not served"), "{err}");
    }
}
