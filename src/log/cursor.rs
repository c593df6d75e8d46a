//! Cursors: `<epoch>-<seq>`. The epoch names one incarnation of the log, so a cursor from a
//! log that was reset or rebuilt is recognised as foreign; the seq orders entries.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    pub epoch: u32,
    pub seq: u64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed cursor {0:?}: pass back a cursor exactly as the relay returned it, or 0 to start from the beginning")]
pub struct ParseCursorError(pub String);

impl FromStr for Cursor {
    type Err = ParseCursorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseCursorError(s.chars().take(100).collect());
        let (epoch, seq) = s.split_once('-').ok_or_else(err)?;
        let digits =
            |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(epoch) || !digits(seq) {
            return Err(err());
        }
        Ok(Cursor {
            epoch: epoch.parse().map_err(|_| err())?,
            seq: seq.parse().map_err(|_| err())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let c = Cursor { epoch: 7, seq: 42 };
        assert_eq!(c.to_string(), "7-42");
        assert_eq!("7-42".parse::<Cursor>().unwrap(), c);
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "7",
            "7-",
            "-1",
            "a-1",
            "1-b",
            "1--2",
            "+1-2",
            "1-2-3",
            "99999999999-1",
            "1-99999999999999999999999",
        ] {
            assert!(s.parse::<Cursor>().is_err(), "{s}");
        }
    }
}
