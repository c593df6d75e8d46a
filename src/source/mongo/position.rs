//! The text the log stores as a MongoDB source's position.
//!
//! Streaming: the resume token's relaxed Extended JSON, e.g. `{"_data":"8265…"}`.
//! While an initial copy runs: `copy:` followed by the token the stream was opened at, so that
//! a restart re-copies and then streams from no later than that token.
//! While the target of a rename is copied: `recopy:` followed by
//! `{"collections":[…],"token":{…}}`, the token just after the rename, so that a restart
//! copies those collections again and then streams from that token.

use super::values::{token_from_text, token_text};
use mongodb::bson::Bson;
use serde_json::{json, Value};

const COPYING: &str = "copy:";
const RECOPYING: &str = "recopy:";

#[derive(Debug, Clone, PartialEq)]
pub enum Position {
    Streaming(Bson),
    Copying(Bson),
    /// Copying `collections` again (renamed into place) from a stream opened at the token.
    Recopying {
        collections: Vec<String>,
        token: Bson,
    },
}

impl Position {
    pub fn parse(text: &str) -> Result<Position, String> {
        if let Some(token) = text.strip_prefix(COPYING) {
            return Ok(Position::Copying(token_from_text(token)?));
        }
        if let Some(rest) = text.strip_prefix(RECOPYING) {
            let value: Value =
                serde_json::from_str(rest).map_err(|e| format!("not JSON ({e}): {rest:?}"))?;
            let collections = value["collections"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|c| c.as_str().map(String::from))
                        .collect()
                })
                .ok_or_else(|| format!("no collections in {rest:?}"))?;
            let token = token_from_text(&value["token"].to_string())?;
            return Ok(Position::Recopying { collections, token });
        }
        Ok(Position::Streaming(token_from_text(text)?))
    }

    pub fn text(&self) -> String {
        match self {
            Position::Streaming(token) => token_text(token),
            Position::Copying(token) => format!("{COPYING}{}", token_text(token)),
            Position::Recopying { collections, token } => {
                let token: Value = serde_json::from_str(&token_text(token)).unwrap_or(Value::Null);
                format!(
                    "{RECOPYING}{}",
                    json!({"collections": collections, "token": token})
                )
            }
        }
    }

    pub fn token(&self) -> &Bson {
        match self {
            Position::Streaming(token)
            | Position::Copying(token)
            | Position::Recopying { token, .. } => token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn round_trips() {
        let token = Bson::Document(doc! {"_data": "82AB"});
        for p in [
            Position::Streaming(token.clone()),
            Position::Copying(token.clone()),
            Position::Recopying {
                collections: vec!["archive".into()],
                token: token.clone(),
            },
        ] {
            assert_eq!(Position::parse(&p.text()).unwrap(), p);
        }
        assert_eq!(
            Position::Copying(token.clone()).text(),
            r#"copy:{"_data":"82AB"}"#
        );
        assert_eq!(
            Position::Recopying {
                collections: vec!["archive".into()],
                token
            }
            .text(),
            r#"recopy:{"collections":["archive"],"token":{"_data":"82AB"}}"#
        );
        assert!(Position::parse("0/16B3748").is_err());
        assert!(Position::parse("recopy:{}").is_err());
    }
}
