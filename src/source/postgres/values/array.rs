//! Array literals as `array_out` prints them, mapped element by element.

use super::scalar_to_json;
use serde_json::Value;

/// Postgres' limit on array dimensions (MAXDIM); also bounds our recursion.
const MAX_ARRAY_DIMENSIONS: usize = 6;

/// Parses an array literal as `array_out` prints it (and `array_in` accepts it), mapping each
/// element with the element type. `None` when the literal is malformed.
pub(super) fn parse_array(text: &str, element: u32, delimiter: u8) -> Option<Value> {
    let mut parser = ArrayParser {
        chars: text.chars().peekable(),
        element,
        delimiter: char::from(delimiter),
    };
    parser.skip_whitespace();
    if parser.chars.peek() == Some(&'[') {
        parser.dimensions()?;
    }
    parser.skip_whitespace();
    parser.expect('{')?;
    let value = parser.array_body(1)?;
    parser.skip_whitespace();
    parser.chars.next().is_none().then_some(value)
}

struct ArrayParser<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    element: u32,
    delimiter: char,
}

/// The characters `array_in` treats as whitespace.
fn is_array_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}')
}

impl ArrayParser<'_> {
    fn skip_whitespace(&mut self) {
        while self.chars.next_if(|&c| is_array_space(c)).is_some() {}
    }

    fn expect(&mut self, wanted: char) -> Option<()> {
        self.chars.next_if_eq(&wanted).map(|_| ())
    }

    /// `[lower:upper]` per dimension followed by `=`. Only non-default lower bounds make
    /// Postgres print this; JSON arrays start at 0 anyway, so the bounds are dropped.
    fn dimensions(&mut self) -> Option<()> {
        while self.expect('[').is_some() {
            self.bound()?;
            if self.expect(':').is_some() {
                self.bound()?;
            }
            self.expect(']')?;
        }
        self.skip_whitespace();
        self.expect('=')
    }

    fn bound(&mut self) -> Option<()> {
        let _ = self.chars.next_if(|&c| c == '-' || c == '+');
        let mut any = false;
        while self.chars.next_if(char::is_ascii_digit).is_some() {
            any = true;
        }
        any.then_some(())
    }

    /// The inside of `{…}`, after the opening brace, through the closing one. Every item of
    /// one level is either a nested array or an element, never a mix.
    fn array_body(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_ARRAY_DIMENSIONS {
            return None;
        }
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.expect('}').is_some() {
            return Some(Value::Array(items));
        }
        let mut nested = None;
        loop {
            self.skip_whitespace();
            let is_array = self.expect('{').is_some();
            if *nested.get_or_insert(is_array) != is_array {
                return None;
            }
            items.push(if is_array {
                self.array_body(depth + 1)?
            } else {
                self.element()?
            });
            self.skip_whitespace();
            match self.chars.next()? {
                '}' => return Some(Value::Array(items)),
                c if c == self.delimiter => continue,
                _ => return None,
            }
        }
    }

    /// One element: `"quoted"` with backslash escapes, or unquoted up to the delimiter or
    /// `}` with surrounding whitespace dropped. Only an unquoted, unescaped `NULL` is null.
    fn element(&mut self) -> Option<Value> {
        let text = if self.expect('"').is_some() {
            self.quoted()?
        } else {
            match self.unquoted()? {
                Some(text) => text,
                None => return Some(Value::Null),
            }
        };
        Some(scalar_to_json(self.element, &text))
    }

    fn quoted(&mut self) -> Option<String> {
        let mut text = String::new();
        loop {
            match self.chars.next()? {
                '"' => return Some(text),
                '\\' => text.push(self.chars.next()?),
                c => text.push(c),
            }
        }
    }

    /// `Some(None)` for SQL NULL.
    fn unquoted(&mut self) -> Option<Option<String>> {
        let mut text = String::new();
        // Length without trailing whitespace; escaped characters are always kept.
        let mut kept = 0;
        let mut escaped = false;
        while let Some(&c) = self.chars.peek() {
            if c == self.delimiter || c == '}' {
                break;
            }
            self.chars.next();
            match c {
                '"' | '{' => return None,
                '\\' => {
                    text.push(self.chars.next()?);
                    escaped = true;
                    kept = text.len();
                }
                c => {
                    text.push(c);
                    if !is_array_space(c) {
                        kept = text.len();
                    }
                }
            }
        }
        text.truncate(kept);
        if text.is_empty() && !escaped {
            return None; // an empty element, as in `{1,,2}`
        }
        if !escaped && text.eq_ignore_ascii_case("NULL") {
            return Some(None);
        }
        Some(Some(text))
    }
}
