//! Exact numbers for filters: decimal text of any length (big `int8`, `numeric`) compared
//! without rounding, with Postgres's order for the special values (`NaN` above everything).

use std::cmp::Ordering;

/// A number as a filter compares it. Variant order is the sort order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Num {
    NegInf,
    Finite(Decimal),
    PosInf,
    NaN,
}

/// A finite decimal: `0.digits × 10^exp` with no leading or trailing zero digits (zero has
/// none and is never negative).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exp: i64,
}

/// Exponents beyond this are not numbers a filter means (and would make huge strings).
const MAX_EXP: i64 = 100_000;

impl Num {
    /// Parses decimal text (`-12.5`, `1e3`, `NaN`, `Infinity`); `None` when it is not a number.
    pub fn parse(text: &str) -> Option<Num> {
        match text {
            "NaN" => return Some(Num::NaN),
            "Infinity" | "+Infinity" | "inf" => return Some(Num::PosInf),
            "-Infinity" | "-inf" => return Some(Num::NegInf),
            _ => {}
        }
        let b = text.as_bytes();
        let (negative, rest) = match b.first()? {
            b'-' => (true, &b[1..]),
            b'+' => (false, &b[1..]),
            _ => (false, b),
        };
        let mantissa_len = rest
            .iter()
            .position(|c| *c == b'e' || *c == b'E')
            .unwrap_or(rest.len());
        let (mantissa, exponent) = rest.split_at(mantissa_len);
        let mut exp: i64 = 0;
        if !exponent.is_empty() {
            let e = std::str::from_utf8(&exponent[1..]).ok()?;
            let digits = e.trim_start_matches(['+', '-']);
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) || digits.len() > 7
            {
                return None;
            }
            exp = e.parse().ok()?;
        }
        let mut digits = Vec::with_capacity(mantissa.len());
        let mut point = None;
        for (i, c) in mantissa.iter().enumerate() {
            match c {
                b'0'..=b'9' => digits.push(c - b'0'),
                b'.' if point.is_none() => point = Some(i),
                _ => return None,
            }
        }
        if digits.is_empty() {
            return None;
        }
        let int_len = point.unwrap_or(mantissa.len()) as i64;
        exp += int_len;
        let leading = digits.iter().take_while(|d| **d == 0).count();
        digits.drain(..leading);
        exp -= leading as i64;
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            return Some(Num::Finite(Decimal {
                negative: false,
                digits,
                exp: 0,
            }));
        }
        if exp.abs() > MAX_EXP {
            return None;
        }
        Some(Num::Finite(Decimal {
            negative,
            digits,
            exp,
        }))
    }

    pub fn from_f64(value: f64) -> Num {
        if value.is_nan() {
            Num::NaN
        } else if value == f64::INFINITY {
            Num::PosInf
        } else if value == f64::NEG_INFINITY {
            Num::NegInf
        } else {
            // Display prints the shortest digits that read back as the same double.
            Num::parse(&format!("{value:e}")).unwrap_or(Num::NaN)
        }
    }

    pub fn from_i64(value: i64) -> Num {
        Num::parse(&value.to_string()).unwrap_or(Num::NaN)
    }

    /// Whether it is a whole number (what an integer column accepts as text).
    pub fn is_integer(&self) -> bool {
        match self {
            Num::Finite(d) => d.digits.len() as i64 <= d.exp.max(0),
            _ => false,
        }
    }
}

impl Decimal {
    fn magnitude_cmp(&self, other: &Decimal) -> Ordering {
        match (self.digits.is_empty(), other.digits.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        self.exp
            .cmp(&other.exp)
            .then_with(|| self.digits.cmp(&other.digits))
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.magnitude_cmp(other),
            (true, true) => other.magnitude_cmp(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(text: &str) -> Num {
        Num::parse(text).unwrap_or_else(|| panic!("{text}"))
    }

    #[test]
    fn orders_like_numbers() {
        let sorted = [
            "-Infinity",
            "-1e30",
            "-12.5",
            "-12.25",
            "-0.001",
            "0",
            "0.000123",
            "1",
            "1.5",
            "9007199254740993",
            "9007199254740994",
            "123456789012345678901234567890.5",
            "Infinity",
            "NaN",
        ];
        for pair in sorted.windows(2) {
            assert!(n(pair[0]) < n(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(n("1.50"), n("001.5"));
        assert_eq!(n("-0"), n("0.000"));
        assert_eq!(n("1e3"), n("1000"));
        assert_eq!(n("12e-1"), n("1.2"));
        assert_eq!(Num::from_f64(0.1), n("0.1"));
        assert_eq!(Num::from_f64(-2.5e-300), n("-2.5e-300"));
        assert!(n("10").is_integer() && n("1e2").is_integer() && !n("1.5").is_integer());
        for bad in ["", "-", ".", "1.2.3", "1e", "e5", "1x", "1e99999999", "--1"] {
            assert!(Num::parse(bad).is_none(), "{bad}");
        }
    }
}
