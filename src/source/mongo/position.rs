//! The text the log stores as a MongoDB source's position.
//!
//! Streaming: the resume token's relaxed Extended JSON, e.g. `{"_data":"8265…"}`.
//! While an initial copy runs: `copy:` followed by the token the stream was opened at, so that
//! a restart re-copies and then streams from no later than that token.

use super::values::{token_from_text, token_text};
use mongodb::bson::Bson;

const COPYING: &str = "copy:";

#[derive(Debug, Clone, PartialEq)]
pub enum Position {
    Streaming(Bson),
    Copying(Bson),
}

impl Position {
    pub fn parse(text: &str) -> Result<Position, String> {
        match text.strip_prefix(COPYING) {
            Some(token) => Ok(Position::Copying(token_from_text(token)?)),
            None => Ok(Position::Streaming(token_from_text(text)?)),
        }
    }

    pub fn text(&self) -> String {
        match self {
            Position::Streaming(token) => token_text(token),
            Position::Copying(token) => format!("{COPYING}{}", token_text(token)),
        }
    }

    pub fn token(&self) -> &Bson {
        match self {
            Position::Streaming(token) | Position::Copying(token) => token,
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
        ] {
            assert_eq!(Position::parse(&p.text()).unwrap(), p);
        }
        assert_eq!(Position::Copying(token).text(), r#"copy:{"_data":"82AB"}"#);
        assert!(Position::parse("0/16B3748").is_err());
    }
}
