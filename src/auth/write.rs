//! Per-collection write rules (`[collections."…".write]`): whether a caller may write a
//! collection, and the row scope its writes are held to.

use super::access::{claim_matches, scope_value};
use super::{Access, Claims};
use crate::config::WriteConfig;

/// What a caller may write to one collection.
#[derive(Debug, Clone)]
pub enum WriteGrant {
    Allowed {
        rules: WriteConfig,
        /// `(column, value)`: only rows whose column holds the caller's claim.
        scope: Option<(String, String)>,
    },
    /// Not writable; the reason is for the client.
    Denied(String),
}

impl Access {
    /// What `claims` may write to `collection`. Without auth (`auth.mode = "none"`) claims and
    /// scopes are ignored, as for reads; the collection still needs a `write` section.
    pub fn write_grant(&self, collection: &str, claims: Option<&Claims>) -> WriteGrant {
        let Some(rules) = self
            .collections
            .get(collection)
            .and_then(|c| c.write.as_ref())
        else {
            return WriteGrant::Denied(format!(
                "writes to {collection:?} are not enabled: add [collections.\"{collection}\".write] to the config"
            ));
        };
        let (true, Some(claims)) = (self.enabled, claims) else {
            return WriteGrant::Allowed {
                rules: rules.clone(),
                scope: None,
            };
        };
        if rules.claims.is_empty() {
            return WriteGrant::Denied(format!(
                "{collection:?} lists no write.claims, so no token may write it"
            ));
        }
        for (claim, accepted) in &rules.claims {
            if !claims
                .get(claim)
                .is_some_and(|v| claim_matches(v, accepted))
            {
                return WriteGrant::Denied(format!(
                    "the token's {claim:?} claim does not allow writing {collection:?}"
                ));
            }
        }
        let scope = match self.collections.get(collection).and_then(|c| c.scope.as_ref()) {
            None => None,
            Some(scope) => match claims.get(&scope.claim).and_then(scope_value) {
                Some(value) => Some((scope.column.clone(), value)),
                None => {
                    return WriteGrant::Denied(format!(
                        "{collection:?} is scoped by the {:?} claim, which the token does not carry as a string or number",
                        scope.claim
                    ))
                }
            },
        };
        WriteGrant::Allowed {
            rules: rules.clone(),
            scope,
        }
    }
}
