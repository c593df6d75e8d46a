//! Postgres text-format values → JSON, the value mapping of the unified change record.
//!
//! The replication connection and the initial copy both run with `DateStyle=ISO, MDY`,
//! `TimeZone=UTC`, `extra_float_digits=3`, `bytea_output=hex` and `IntervalStyle=postgres`,
//! so each type arrives in one known text form. Anything that does not parse as expected
//! falls back to the text itself as a JSON string: a value is never lost or rejected here.
//!
//! Text kept as is, by design: `numeric` (exact, may exceed any JSON number), `date`,
//! `time`/`timetz`, `infinity`/`-infinity` and BC dates or timestamps (RFC 3339 cannot
//! express them), timestamps with a year beyond 9999 or a seconds-level zone offset,
//! `uuid`, `interval`, `money`, network and geometric types, ranges, enums and every type
//! this module does not know.

use base64::Engine as _;
use serde_json::Value;

/// What a column's value is, after the caller has resolved domains to their base type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    Scalar(u32),
    Array { element: u32, delimiter: u8 },
}

/// Oids of the built-in types (`pg_type.dat`), named like Postgres' `*OID` macros.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT2VECTOR: u32 = 22;
    pub const INT4: u32 = 23;
    pub const REGPROC: u32 = 24;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const TID: u32 = 27;
    pub const XID: u32 = 28;
    pub const CID: u32 = 29;
    pub const OIDVECTOR: u32 = 30;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const XID8: u32 = 5069;
    pub const POINT: u32 = 600;
    pub const LSEG: u32 = 601;
    pub const PATH: u32 = 602;
    pub const BOX: u32 = 603;
    pub const POLYGON: u32 = 604;
    pub const LINE: u32 = 628;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const CIRCLE: u32 = 718;
    pub const MONEY: u32 = 790;
    pub const MACADDR: u32 = 829;
    pub const INET: u32 = 869;
    pub const CIDR: u32 = 650;
    pub const MACADDR8: u32 = 774;
    pub const ACLITEM: u32 = 1033;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const BIT: u32 = 1560;
    pub const VARBIT: u32 = 1562;
    pub const NUMERIC: u32 = 1700;
    pub const REFCURSOR: u32 = 1790;
    pub const REGPROCEDURE: u32 = 2202;
    pub const REGOPER: u32 = 2203;
    pub const REGOPERATOR: u32 = 2204;
    pub const REGCLASS: u32 = 2205;
    pub const REGTYPE: u32 = 2206;
    pub const REGCOLLATION: u32 = 4191;
    pub const REGROLE: u32 = 4096;
    pub const REGNAMESPACE: u32 = 4089;
    pub const UUID: u32 = 2950;
    pub const PG_LSN: u32 = 3220;
    pub const TSVECTOR: u32 = 3614;
    pub const TSQUERY: u32 = 3615;
    pub const REGCONFIG: u32 = 3734;
    pub const REGDICTIONARY: u32 = 3769;
    pub const JSONB: u32 = 3802;
    pub const JSONPATH: u32 = 4072;
    pub const TXID_SNAPSHOT: u32 = 2970;
    pub const PG_SNAPSHOT: u32 = 5038;
    pub const INT4RANGE: u32 = 3904;
    pub const NUMRANGE: u32 = 3906;
    pub const TSRANGE: u32 = 3908;
    pub const TSTZRANGE: u32 = 3910;
    pub const DATERANGE: u32 = 3912;
    pub const INT8RANGE: u32 = 3926;
    pub const INT4MULTIRANGE: u32 = 4451;
    pub const NUMMULTIRANGE: u32 = 4532;
    pub const TSMULTIRANGE: u32 = 4533;
    pub const TSTZMULTIRANGE: u32 = 4534;
    pub const DATEMULTIRANGE: u32 = 4535;
    pub const INT8MULTIRANGE: u32 = 4536;

    pub const BOOL_ARRAY: u32 = 1000;
    pub const BYTEA_ARRAY: u32 = 1001;
    pub const CHAR_ARRAY: u32 = 1002;
    pub const NAME_ARRAY: u32 = 1003;
    pub const INT2_ARRAY: u32 = 1005;
    pub const INT2VECTOR_ARRAY: u32 = 1006;
    pub const INT4_ARRAY: u32 = 1007;
    pub const REGPROC_ARRAY: u32 = 1008;
    pub const TEXT_ARRAY: u32 = 1009;
    pub const TID_ARRAY: u32 = 1010;
    pub const XID_ARRAY: u32 = 1011;
    pub const CID_ARRAY: u32 = 1012;
    pub const OIDVECTOR_ARRAY: u32 = 1013;
    pub const BPCHAR_ARRAY: u32 = 1014;
    pub const VARCHAR_ARRAY: u32 = 1015;
    pub const INT8_ARRAY: u32 = 1016;
    pub const POINT_ARRAY: u32 = 1017;
    pub const LSEG_ARRAY: u32 = 1018;
    pub const PATH_ARRAY: u32 = 1019;
    pub const BOX_ARRAY: u32 = 1020;
    pub const FLOAT4_ARRAY: u32 = 1021;
    pub const FLOAT8_ARRAY: u32 = 1022;
    pub const POLYGON_ARRAY: u32 = 1027;
    pub const OID_ARRAY: u32 = 1028;
    pub const ACLITEM_ARRAY: u32 = 1034;
    pub const MACADDR_ARRAY: u32 = 1040;
    pub const INET_ARRAY: u32 = 1041;
    pub const CIDR_ARRAY: u32 = 651;
    pub const CIRCLE_ARRAY: u32 = 719;
    pub const MONEY_ARRAY: u32 = 791;
    pub const MACADDR8_ARRAY: u32 = 775;
    pub const LINE_ARRAY: u32 = 629;
    pub const JSON_ARRAY: u32 = 199;
    pub const XML_ARRAY: u32 = 143;
    pub const XID8_ARRAY: u32 = 271;
    pub const TIMESTAMP_ARRAY: u32 = 1115;
    pub const DATE_ARRAY: u32 = 1182;
    pub const TIME_ARRAY: u32 = 1183;
    pub const TIMESTAMPTZ_ARRAY: u32 = 1185;
    pub const INTERVAL_ARRAY: u32 = 1187;
    pub const NUMERIC_ARRAY: u32 = 1231;
    pub const TIMETZ_ARRAY: u32 = 1270;
    pub const BIT_ARRAY: u32 = 1561;
    pub const VARBIT_ARRAY: u32 = 1563;
    pub const REFCURSOR_ARRAY: u32 = 2201;
    pub const REGPROCEDURE_ARRAY: u32 = 2207;
    pub const REGOPER_ARRAY: u32 = 2208;
    pub const REGOPERATOR_ARRAY: u32 = 2209;
    pub const REGCLASS_ARRAY: u32 = 2210;
    pub const REGTYPE_ARRAY: u32 = 2211;
    pub const REGCOLLATION_ARRAY: u32 = 4192;
    pub const REGROLE_ARRAY: u32 = 4097;
    pub const REGNAMESPACE_ARRAY: u32 = 4090;
    pub const UUID_ARRAY: u32 = 2951;
    pub const PG_LSN_ARRAY: u32 = 3221;
    pub const TSVECTOR_ARRAY: u32 = 3643;
    pub const TSQUERY_ARRAY: u32 = 3645;
    pub const REGCONFIG_ARRAY: u32 = 3735;
    pub const REGDICTIONARY_ARRAY: u32 = 3770;
    pub const JSONB_ARRAY: u32 = 3807;
    pub const JSONPATH_ARRAY: u32 = 4073;
    pub const TXID_SNAPSHOT_ARRAY: u32 = 2949;
    pub const PG_SNAPSHOT_ARRAY: u32 = 5039;
    pub const INT4RANGE_ARRAY: u32 = 3905;
    pub const NUMRANGE_ARRAY: u32 = 3907;
    pub const TSRANGE_ARRAY: u32 = 3909;
    pub const TSTZRANGE_ARRAY: u32 = 3911;
    pub const DATERANGE_ARRAY: u32 = 3913;
    pub const INT8RANGE_ARRAY: u32 = 3927;
    pub const INT4MULTIRANGE_ARRAY: u32 = 6150;
    pub const NUMMULTIRANGE_ARRAY: u32 = 6151;
    pub const TSMULTIRANGE_ARRAY: u32 = 6152;
    pub const TSTZMULTIRANGE_ARRAY: u32 = 6153;
    pub const DATEMULTIRANGE_ARRAY: u32 = 6155;
    pub const INT8MULTIRANGE_ARRAY: u32 = 6157;
}

/// Built-in scalar types. `int2vector`/`oidvector` are here too: their text form is
/// space-separated, not an array literal.
const BUILTIN_SCALARS: &[u32] = {
    use oid::*;
    &[
        BOOL,
        BYTEA,
        CHAR,
        NAME,
        INT8,
        INT2,
        INT2VECTOR,
        INT4,
        REGPROC,
        TEXT,
        OID,
        TID,
        XID,
        CID,
        OIDVECTOR,
        JSON,
        XML,
        XID8,
        POINT,
        LSEG,
        PATH,
        BOX,
        POLYGON,
        LINE,
        FLOAT4,
        FLOAT8,
        CIRCLE,
        MONEY,
        MACADDR,
        INET,
        CIDR,
        MACADDR8,
        ACLITEM,
        BPCHAR,
        VARCHAR,
        DATE,
        TIME,
        TIMESTAMP,
        TIMESTAMPTZ,
        INTERVAL,
        TIMETZ,
        BIT,
        VARBIT,
        NUMERIC,
        REFCURSOR,
        REGPROCEDURE,
        REGOPER,
        REGOPERATOR,
        REGCLASS,
        REGTYPE,
        REGCOLLATION,
        REGROLE,
        REGNAMESPACE,
        UUID,
        PG_LSN,
        TSVECTOR,
        TSQUERY,
        REGCONFIG,
        REGDICTIONARY,
        JSONB,
        JSONPATH,
        TXID_SNAPSHOT,
        PG_SNAPSHOT,
        INT4RANGE,
        NUMRANGE,
        TSRANGE,
        TSTZRANGE,
        DATERANGE,
        INT8RANGE,
        INT4MULTIRANGE,
        NUMMULTIRANGE,
        TSMULTIRANGE,
        TSTZMULTIRANGE,
        DATEMULTIRANGE,
        INT8MULTIRANGE,
    ]
};

/// Built-in array types as (array oid, element oid).
const BUILTIN_ARRAYS: &[(u32, u32)] = {
    use oid::*;
    &[
        (BOOL_ARRAY, BOOL),
        (BYTEA_ARRAY, BYTEA),
        (CHAR_ARRAY, CHAR),
        (NAME_ARRAY, NAME),
        (INT2_ARRAY, INT2),
        (INT2VECTOR_ARRAY, INT2VECTOR),
        (INT4_ARRAY, INT4),
        (REGPROC_ARRAY, REGPROC),
        (TEXT_ARRAY, TEXT),
        (TID_ARRAY, TID),
        (XID_ARRAY, XID),
        (CID_ARRAY, CID),
        (OIDVECTOR_ARRAY, OIDVECTOR),
        (BPCHAR_ARRAY, BPCHAR),
        (VARCHAR_ARRAY, VARCHAR),
        (INT8_ARRAY, INT8),
        (POINT_ARRAY, POINT),
        (LSEG_ARRAY, LSEG),
        (PATH_ARRAY, PATH),
        (BOX_ARRAY, BOX),
        (FLOAT4_ARRAY, FLOAT4),
        (FLOAT8_ARRAY, FLOAT8),
        (POLYGON_ARRAY, POLYGON),
        (OID_ARRAY, OID),
        (ACLITEM_ARRAY, ACLITEM),
        (MACADDR_ARRAY, MACADDR),
        (INET_ARRAY, INET),
        (CIDR_ARRAY, CIDR),
        (CIRCLE_ARRAY, CIRCLE),
        (MONEY_ARRAY, MONEY),
        (MACADDR8_ARRAY, MACADDR8),
        (LINE_ARRAY, LINE),
        (JSON_ARRAY, JSON),
        (XML_ARRAY, XML),
        (XID8_ARRAY, XID8),
        (TIMESTAMP_ARRAY, TIMESTAMP),
        (DATE_ARRAY, DATE),
        (TIME_ARRAY, TIME),
        (TIMESTAMPTZ_ARRAY, TIMESTAMPTZ),
        (INTERVAL_ARRAY, INTERVAL),
        (NUMERIC_ARRAY, NUMERIC),
        (TIMETZ_ARRAY, TIMETZ),
        (BIT_ARRAY, BIT),
        (VARBIT_ARRAY, VARBIT),
        (REFCURSOR_ARRAY, REFCURSOR),
        (REGPROCEDURE_ARRAY, REGPROCEDURE),
        (REGOPER_ARRAY, REGOPER),
        (REGOPERATOR_ARRAY, REGOPERATOR),
        (REGCLASS_ARRAY, REGCLASS),
        (REGTYPE_ARRAY, REGTYPE),
        (REGCOLLATION_ARRAY, REGCOLLATION),
        (REGROLE_ARRAY, REGROLE),
        (REGNAMESPACE_ARRAY, REGNAMESPACE),
        (UUID_ARRAY, UUID),
        (PG_LSN_ARRAY, PG_LSN),
        (TSVECTOR_ARRAY, TSVECTOR),
        (TSQUERY_ARRAY, TSQUERY),
        (REGCONFIG_ARRAY, REGCONFIG),
        (REGDICTIONARY_ARRAY, REGDICTIONARY),
        (JSONB_ARRAY, JSONB),
        (JSONPATH_ARRAY, JSONPATH),
        (TXID_SNAPSHOT_ARRAY, TXID_SNAPSHOT),
        (PG_SNAPSHOT_ARRAY, PG_SNAPSHOT),
        (INT4RANGE_ARRAY, INT4RANGE),
        (NUMRANGE_ARRAY, NUMRANGE),
        (TSRANGE_ARRAY, TSRANGE),
        (TSTZRANGE_ARRAY, TSTZRANGE),
        (DATERANGE_ARRAY, DATERANGE),
        (INT8RANGE_ARRAY, INT8RANGE),
        (INT4MULTIRANGE_ARRAY, INT4MULTIRANGE),
        (NUMMULTIRANGE_ARRAY, NUMMULTIRANGE),
        (TSMULTIRANGE_ARRAY, TSMULTIRANGE),
        (TSTZMULTIRANGE_ARRAY, TSTZMULTIRANGE),
        (DATEMULTIRANGE_ARRAY, DATEMULTIRANGE),
        (INT8MULTIRANGE_ARRAY, INT8MULTIRANGE),
    ]
};

/// The ValueType of a built-in type oid, `None` for a non-built-in oid (the caller then asks
/// the catalog: typtype, typbasetype, typelem, typdelim).
pub fn builtin_value_type(oid: u32) -> Option<ValueType> {
    if BUILTIN_SCALARS.contains(&oid) {
        return Some(ValueType::Scalar(oid));
    }
    let &(_, element) = BUILTIN_ARRAYS.iter().find(|&&(array, _)| array == oid)?;
    // `box` is the only built-in type whose typdelim is not a comma: its text has commas.
    let delimiter = if element == oid::BOX { b';' } else { b',' };
    Some(ValueType::Array { element, delimiter })
}

/// Never fails, never panics: text that does not parse as its type falls back to a JSON string.
pub fn text_to_json(ty: ValueType, text: &str) -> Value {
    match ty {
        ValueType::Scalar(oid) => scalar_to_json(oid, text),
        ValueType::Array { element, delimiter } => {
            parse_array(text, element, delimiter).unwrap_or_else(|| Value::String(text.to_string()))
        }
    }
}

fn scalar_to_json(type_oid: u32, text: &str) -> Value {
    use oid::*;
    let converted = match type_oid {
        INT2 | INT4 | INT8 | OID | XID | CID | XID8 => integer(text),
        FLOAT4 | FLOAT8 => float(text),
        BOOL => boolean(text),
        JSON | JSONB => serde_json::from_str(text).ok(),
        BYTEA => bytea(text),
        TIMESTAMPTZ => timestamp(text, true),
        TIMESTAMP => timestamp(text, false),
        _ => None,
    };
    converted.unwrap_or_else(|| Value::String(text.to_string()))
}

/// The largest integer a JSON consumer using IEEE doubles (JavaScript) reads exactly.
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A number when a double holds it exactly; beyond ±(2^53 - 1) the caller keeps the text.
fn integer(text: &str) -> Option<Value> {
    let value: i64 = text.parse().ok()?;
    (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER)
        .contains(&value)
        .then(|| Value::from(value))
}

/// Finite floats become numbers; `NaN` and `±Infinity` have no JSON form and stay text.
fn float(text: &str) -> Option<Value> {
    let value: f64 = text.parse().ok()?;
    serde_json::Number::from_f64(value).map(Value::Number)
}

fn boolean(text: &str) -> Option<Value> {
    match text {
        "t" => Some(Value::Bool(true)),
        "f" => Some(Value::Bool(false)),
        _ => None,
    }
}

/// `\x0a0b` (bytea_output=hex) → standard padded base64.
fn bytea(text: &str) -> Option<Value> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = hex
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some((hex_digit(*hi)? << 4) | hex_digit(*lo)?),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()?;
    Some(Value::String(
        base64::engine::general_purpose::STANDARD.encode(bytes),
    ))
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// ISO `2025-01-15 11:00:00.123+00` → `2025-01-15T11:00:00.123000Z` (with a zone), or
/// `2025-01-15 11:00:00` → `2025-01-15T11:00:00.000000` (without). `None` for anything
/// RFC 3339 cannot say as is (BC, infinity, years beyond 9999, seconds in the offset).
fn timestamp(text: &str, with_zone: bool) -> Option<Value> {
    let mut s = Scanner::new(text);
    let year = s.digits(4)?;
    s.expect(b'-')?;
    let month = s.digits(2)?;
    s.expect(b'-')?;
    let day = s.digits(2)?;
    s.expect(b' ')?;
    let hour = s.digits(2)?;
    s.expect(b':')?;
    let minute = s.digits(2)?;
    s.expect(b':')?;
    let second = s.digits(2)?;
    let micros = if s.eat(b'.') { s.fraction_micros()? } else { 0 };
    let zone = if with_zone {
        utc_offset(&mut s)?
    } else {
        String::new()
    };
    s.end()?;
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 59;
    valid.then(|| {
        Value::String(format!(
            "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{micros:06}{zone}"
        ))
    })
}

/// `+00` → `Z`; `+05:30` or `-03` → `+05:30`, `-03:00`. Postgres prints seconds only for
/// historical local mean time offsets, which RFC 3339 cannot express: `None`.
fn utc_offset(s: &mut Scanner) -> Option<String> {
    let sign = if s.eat(b'+') {
        '+'
    } else if s.eat(b'-') {
        '-'
    } else {
        return None;
    };
    let hours = s.digits(2)?;
    let minutes = if s.eat(b':') { s.digits(2)? } else { 0 };
    if s.eat(b':') {
        let seconds = s.digits(2)?;
        if seconds != 0 {
            return None;
        }
    }
    if minutes > 59 {
        return None;
    }
    Some(if hours == 0 && minutes == 0 {
        "Z".to_string()
    } else {
        format!("{sign}{hours:02}:{minutes:02}")
    })
}

/// A cursor over ASCII text for the fixed-layout date/time forms.
struct Scanner<'a> {
    rest: &'a [u8],
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            rest: text.as_bytes(),
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        match self.rest.split_first() {
            Some((&first, rest)) if first == byte => {
                self.rest = rest;
                true
            }
            _ => false,
        }
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// Exactly `count` ASCII digits as a number.
    fn digits(&mut self, count: usize) -> Option<u32> {
        let mut value = 0;
        for _ in 0..count {
            let (&c, rest) = self.rest.split_first()?;
            if !c.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u32::from(c - b'0');
            self.rest = rest;
        }
        Some(value)
    }

    /// 1 to 6 fractional digits, scaled to microseconds.
    fn fraction_micros(&mut self) -> Option<u32> {
        let mut value = 0;
        let mut count = 0;
        while let Some((&c, rest)) = self.rest.split_first() {
            if !c.is_ascii_digit() {
                break;
            }
            count += 1;
            if count > 6 {
                return None;
            }
            value = value * 10 + u32::from(c - b'0');
            self.rest = rest;
        }
        if count == 0 {
            return None;
        }
        Some(value * 10u32.pow(6 - count))
    }

    fn end(&self) -> Option<()> {
        self.rest.is_empty().then_some(())
    }
}

/// Postgres' limit on array dimensions (MAXDIM); also bounds our recursion.
const MAX_ARRAY_DIMENSIONS: usize = 6;

/// Parses an array literal as `array_out` prints it (and `array_in` accepts it), mapping each
/// element with the element type. `None` when the literal is malformed.
fn parse_array(text: &str, element: u32, delimiter: u8) -> Option<Value> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scalar(type_oid: u32, text: &str) -> Value {
        text_to_json(ValueType::Scalar(type_oid), text)
    }

    fn array(array_oid: u32, text: &str) -> Value {
        match builtin_value_type(array_oid) {
            Some(ty @ ValueType::Array { .. }) => text_to_json(ty, text),
            other => panic!("{array_oid} is not a built-in array: {other:?}"),
        }
    }

    #[test]
    fn builtin_types_resolve() {
        assert_eq!(
            builtin_value_type(oid::INT4),
            Some(ValueType::Scalar(oid::INT4))
        );
        assert_eq!(
            builtin_value_type(oid::INT4_ARRAY),
            Some(ValueType::Array {
                element: oid::INT4,
                delimiter: b','
            })
        );
        assert_eq!(
            builtin_value_type(oid::BOX_ARRAY),
            Some(ValueType::Array {
                element: oid::BOX,
                delimiter: b';'
            })
        );
        assert_eq!(builtin_value_type(16_384), None);
        assert_eq!(builtin_value_type(0), None);
    }

    #[test]
    fn builtin_tables_are_consistent() {
        for &(array, element) in BUILTIN_ARRAYS {
            assert!(BUILTIN_SCALARS.contains(&element), "element of {array}");
            assert!(
                !BUILTIN_SCALARS.contains(&array),
                "{array} listed as scalar"
            );
            let same = BUILTIN_ARRAYS.iter().filter(|(a, _)| *a == array).count();
            assert_eq!(same, 1, "{array} listed twice");
        }
        for &scalar in BUILTIN_SCALARS {
            let same = BUILTIN_SCALARS.iter().filter(|&&s| s == scalar).count();
            assert_eq!(same, 1, "{scalar} listed twice");
        }
    }

    #[test]
    fn integers() {
        assert_eq!(scalar(oid::INT2, "-32768"), json!(-32768));
        assert_eq!(scalar(oid::INT4, "2147483647"), json!(2147483647));
        assert_eq!(scalar(oid::OID, "4294967295"), json!(4294967295u32));
        assert_eq!(scalar(oid::XID, "771"), json!(771));
        assert_eq!(scalar(oid::INT4, "0"), json!(0));
        assert_eq!(scalar(oid::INT4, "12abc"), json!("12abc"));
        assert_eq!(scalar(oid::INT4, ""), json!(""));
    }

    #[test]
    fn int8_beyond_two_to_the_53_is_a_string() {
        assert_eq!(
            scalar(oid::INT8, "9007199254740991"),
            json!(9007199254740991i64)
        );
        assert_eq!(
            scalar(oid::INT8, "-9007199254740991"),
            json!(-9007199254740991i64)
        );
        assert_eq!(
            scalar(oid::INT8, "9007199254740992"),
            json!("9007199254740992")
        );
        assert_eq!(
            scalar(oid::INT8, "-9007199254740992"),
            json!("-9007199254740992")
        );
        assert_eq!(
            scalar(oid::INT8, "9223372036854775807"),
            json!("9223372036854775807")
        );
        assert_eq!(
            scalar(oid::INT8, "-9223372036854775808"),
            json!("-9223372036854775808")
        );
        assert_eq!(
            scalar(oid::XID8, "18446744073709551615"),
            json!("18446744073709551615")
        );
    }

    #[test]
    fn floats() {
        assert_eq!(scalar(oid::FLOAT8, "1.5"), json!(1.5));
        assert_eq!(scalar(oid::FLOAT8, "-2.5e-300"), json!(-2.5e-300));
        assert_eq!(scalar(oid::FLOAT4, "0.1"), json!(0.1));
        assert_eq!(scalar(oid::FLOAT8, "1e+100"), json!(1e100));
        assert_eq!(scalar(oid::FLOAT8, "42"), json!(42.0));
        assert_eq!(scalar(oid::FLOAT8, "NaN"), json!("NaN"));
        assert_eq!(scalar(oid::FLOAT8, "Infinity"), json!("Infinity"));
        assert_eq!(scalar(oid::FLOAT4, "-Infinity"), json!("-Infinity"));
        assert_eq!(scalar(oid::FLOAT8, "one"), json!("one"));
    }

    #[test]
    fn numeric_is_always_text() {
        assert_eq!(scalar(oid::NUMERIC, "12.50"), json!("12.50"));
        assert_eq!(scalar(oid::NUMERIC, "NaN"), json!("NaN"));
        assert_eq!(scalar(oid::NUMERIC, "Infinity"), json!("Infinity"));
        let forty = "1234567890123456789012345678901234567890";
        assert_eq!(scalar(oid::NUMERIC, forty), json!(forty));
        assert_eq!(scalar(oid::NUMERIC, "-0.000001"), json!("-0.000001"));
    }

    #[test]
    fn booleans() {
        assert_eq!(scalar(oid::BOOL, "t"), json!(true));
        assert_eq!(scalar(oid::BOOL, "f"), json!(false));
        assert_eq!(scalar(oid::BOOL, "yes"), json!("yes"));
    }

    #[test]
    fn json_and_jsonb_are_embedded() {
        let text = r#"{"a": [1, 2.5, null, true], "b": {"c": "d"}}"#;
        let expected = json!({"a": [1, 2.5, null, true], "b": {"c": "d"}});
        assert_eq!(scalar(oid::JSON, text), expected);
        assert_eq!(scalar(oid::JSONB, text), expected);
        assert_eq!(
            scalar(oid::JSONB, "\"just a string\""),
            json!("just a string")
        );
        assert_eq!(scalar(oid::JSONB, "null"), Value::Null);
        assert_eq!(scalar(oid::JSON, "{not json"), json!("{not json"));
    }

    #[test]
    fn bytea_is_base64() {
        assert_eq!(scalar(oid::BYTEA, "\\x"), json!(""));
        assert_eq!(scalar(oid::BYTEA, "\\x0a0b"), json!("Cgs="));
        assert_eq!(scalar(oid::BYTEA, "\\xDEADBEEF"), json!("3q2+7w=="));
        assert_eq!(scalar(oid::BYTEA, "\\x48656c6c6f"), json!("SGVsbG8="));
        // Not hex form: kept as text.
        assert_eq!(scalar(oid::BYTEA, "\\x0a0"), json!("\\x0a0"));
        assert_eq!(scalar(oid::BYTEA, "\\x0g"), json!("\\x0g"));
        assert_eq!(scalar(oid::BYTEA, "abc"), json!("abc"));
    }

    #[test]
    fn timestamptz_is_rfc3339_utc() {
        assert_eq!(
            scalar(oid::TIMESTAMPTZ, "2025-01-15 11:00:00.123+00"),
            json!("2025-01-15T11:00:00.123000Z")
        );
        assert_eq!(
            scalar(oid::TIMESTAMPTZ, "2025-01-15 11:00:00+00"),
            json!("2025-01-15T11:00:00.000000Z")
        );
        assert_eq!(
            scalar(oid::TIMESTAMPTZ, "2024-02-29 23:59:59.999999+00"),
            json!("2024-02-29T23:59:59.999999Z")
        );
        assert_eq!(
            scalar(oid::TIMESTAMPTZ, "2025-01-15 11:00:00.5+05:30"),
            json!("2025-01-15T11:00:00.500000+05:30")
        );
        assert_eq!(
            scalar(oid::TIMESTAMPTZ, "2025-01-15 11:00:00-03"),
            json!("2025-01-15T11:00:00.000000-03:00")
        );
    }

    #[test]
    fn timestamp_without_zone() {
        assert_eq!(
            scalar(oid::TIMESTAMP, "2025-01-15 11:00:00.123"),
            json!("2025-01-15T11:00:00.123000")
        );
        assert_eq!(
            scalar(oid::TIMESTAMP, "2025-01-15 11:00:00"),
            json!("2025-01-15T11:00:00.000000")
        );
        // An offset on a timestamp without time zone is not its form: text.
        assert_eq!(
            scalar(oid::TIMESTAMP, "2025-01-15 11:00:00+00"),
            json!("2025-01-15 11:00:00+00")
        );
    }

    #[test]
    fn timestamps_rfc3339_cannot_express_stay_text() {
        for text in [
            "infinity",
            "-infinity",
            "0044-03-15 12:00:00+00 BC",
            "10000-01-01 00:00:00+00",
            "1850-01-01 00:00:00+00:53:28",
            "2025-13-01 00:00:00+00",
            "2025-01-15 11:00:00.1234567+00",
            "2025-01-15T11:00:00+00",
            "2025-01-15 11:00:00.+00",
            "2025-01-15 11:00:00",
            "",
        ] {
            assert_eq!(scalar(oid::TIMESTAMPTZ, text), json!(text), "{text}");
        }
        assert_eq!(
            scalar(oid::TIMESTAMP, "2025-01-15 11:00:00 BC"),
            json!("2025-01-15 11:00:00 BC")
        );
    }

    #[test]
    fn dates_and_times_are_iso_text() {
        assert_eq!(scalar(oid::DATE, "2025-01-15"), json!("2025-01-15"));
        assert_eq!(scalar(oid::DATE, "infinity"), json!("infinity"));
        assert_eq!(scalar(oid::DATE, "0001-01-01 BC"), json!("0001-01-01 BC"));
        assert_eq!(scalar(oid::TIME, "11:00:00.123"), json!("11:00:00.123"));
        assert_eq!(
            scalar(oid::TIMETZ, "11:00:00+05:30"),
            json!("11:00:00+05:30")
        );
    }

    #[test]
    fn other_types_are_their_text() {
        let uuid = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(scalar(oid::UUID, uuid), json!(uuid));
        assert_eq!(
            scalar(oid::INTERVAL, "1 year 2 mons 3 days 04:05:06"),
            json!("1 year 2 mons 3 days 04:05:06")
        );
        assert_eq!(scalar(oid::MONEY, "$1,000.00"), json!("$1,000.00"));
        assert_eq!(scalar(oid::INET, "192.168.0.1/24"), json!("192.168.0.1/24"));
        assert_eq!(scalar(oid::TEXT, "hello"), json!("hello"));
        assert_eq!(scalar(oid::INT2VECTOR, "1 2 3"), json!("1 2 3"));
        // An enum or any other non-built-in type.
        assert_eq!(scalar(70_000, "happy"), json!("happy"));
    }

    #[test]
    fn integer_arrays_with_nulls() {
        assert_eq!(array(oid::INT4_ARRAY, "{1,2,NULL}"), json!([1, 2, null]));
        assert_eq!(array(oid::INT4_ARRAY, "{null, 3}"), json!([null, 3]));
        assert_eq!(array(oid::INT4_ARRAY, "{}"), json!([]));
        assert_eq!(
            array(oid::INT8_ARRAY, "{9007199254740992,1}"),
            json!(["9007199254740992", 1])
        );
    }

    #[test]
    fn text_arrays_with_quoting() {
        assert_eq!(
            array(oid::TEXT_ARRAY, r#"{"a b","say \"hi\"","NULL",NULL,plain}"#),
            json!(["a b", "say \"hi\"", "NULL", null, "plain"])
        );
        assert_eq!(
            array(oid::TEXT_ARRAY, r#"{"back\\slash","",  spaced out  }"#),
            json!(["back\\slash", "", "spaced out"])
        );
        assert_eq!(
            array(oid::TEXT_ARRAY, r#"{"{braces}","a,b",héllo}"#),
            json!(["{braces}", "a,b", "héllo"])
        );
        // A backslash in an unquoted element escapes the next character.
        assert_eq!(
            array(oid::TEXT_ARRAY, r"{N\ULL,a\,b}"),
            json!(["NULL", "a,b"])
        );
    }

    #[test]
    fn multidimensional_arrays() {
        assert_eq!(
            array(oid::INT4_ARRAY, "{{1,2},{3,4}}"),
            json!([[1, 2], [3, 4]])
        );
        assert_eq!(
            array(oid::INT4_ARRAY, "{{{1},{2}},{{3},{NULL}}}"),
            json!([[[1], [2]], [[3], [null]]])
        );
        assert_eq!(
            array(oid::TEXT_ARRAY, " { { a , b } , { c , d } } "),
            json!([["a", "b"], ["c", "d"]])
        );
    }

    #[test]
    fn dimension_prefix_is_dropped() {
        assert_eq!(array(oid::INT4_ARRAY, "[0:1]={1,2}"), json!([1, 2]));
        assert_eq!(
            array(oid::INT4_ARRAY, "[-1:0][1:2]={{1,2},{3,4}}"),
            json!([[1, 2], [3, 4]])
        );
    }

    #[test]
    fn arrays_of_mapped_types() {
        assert_eq!(
            array(oid::JSONB_ARRAY, r#"{"{\"a\": 1}","[1, 2]",NULL,"\"s\""}"#),
            json!([{"a": 1}, [1, 2], null, "s"])
        );
        assert_eq!(
            array(oid::JSON_ARRAY, r#"{"{\"nested\": {\"x\": [true]}}"}"#),
            json!([{"nested": {"x": [true]}}])
        );
        assert_eq!(
            array(oid::BYTEA_ARRAY, r#"{"\\x0a0b",NULL,"\\x"}"#),
            json!(["Cgs=", null, ""])
        );
        assert_eq!(
            array(oid::NUMERIC_ARRAY, "{1.50,NaN,NULL}"),
            json!(["1.50", "NaN", null])
        );
        assert_eq!(
            array(oid::BOOL_ARRAY, "{t,f,NULL}"),
            json!([true, false, null])
        );
        assert_eq!(
            array(
                oid::TIMESTAMPTZ_ARRAY,
                r#"{"2025-01-15 11:00:00.123+00",infinity,NULL}"#
            ),
            json!(["2025-01-15T11:00:00.123000Z", "infinity", null])
        );
        assert_eq!(
            array(oid::FLOAT8_ARRAY, "{1.5,NaN,-Infinity}"),
            json!([1.5, "NaN", "-Infinity"])
        );
        assert_eq!(
            array(oid::UUID_ARRAY, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"),
            json!(["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"])
        );
    }

    #[test]
    fn box_arrays_use_semicolons() {
        assert_eq!(
            array(oid::BOX_ARRAY, "{(1,1),(0,0);(2,2),(1,1)}"),
            json!(["(1,1),(0,0)", "(2,2),(1,1)"])
        );
    }

    #[test]
    fn custom_array_type_from_catalog() {
        // E.g. an enum array the caller resolved through the catalog.
        let ty = ValueType::Array {
            element: 70_000,
            delimiter: b',',
        };
        assert_eq!(text_to_json(ty, "{happy,sad}"), json!(["happy", "sad"]));
    }

    #[test]
    fn malformed_arrays_are_text() {
        for text in [
            "",
            "{",
            "}",
            "{1,2",
            "{1,2}}",
            "{1,,2}",
            "{1,2,}",
            "{,}",
            "{{1},2}",
            "{1,{2}}",
            r#"{"unterminated}"#,
            r#"{a"b}"#,
            "{1} trailing",
            "[0:1]{1,2}",
            "[x]={1}",
            "1,2",
            "{{{{{{{1}}}}}}}",
            r"{abc\",
        ] {
            assert_eq!(array(oid::INT4_ARRAY, text), json!(text), "{text}");
        }
        // Six dimensions is Postgres' maximum and still parses.
        assert_eq!(
            array(oid::INT4_ARRAY, "{{{{{{1}}}}}}"),
            json!([[[[[[1]]]]]])
        );
    }

    #[test]
    fn never_panics_on_odd_input() {
        let types = [
            ValueType::Scalar(oid::TIMESTAMPTZ),
            ValueType::Scalar(oid::BYTEA),
            ValueType::Scalar(oid::INT8),
            ValueType::Scalar(oid::FLOAT8),
            ValueType::Scalar(oid::JSONB),
            ValueType::Array {
                element: oid::TEXT,
                delimiter: b',',
            },
            ValueType::Array {
                element: oid::INT4,
                delimiter: 0xE9, // a non-ASCII delimiter byte
            },
        ];
        let samples = [
            "",
            "\\",
            "\\x",
            "{",
            "[",
            "[1",
            "[1:",
            "=",
            "{\"",
            "{\\",
            "é",
            "2025-",
            "{{{{{{{{",
            "9".repeat(400).leak(),
            "\u{0}",
        ];
        for ty in types {
            for text in samples {
                let _ = text_to_json(ty, text);
            }
        }
    }
}
