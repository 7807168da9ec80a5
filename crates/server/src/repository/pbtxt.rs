//! Schema-less parser for the protobuf text format used by Triton's `config.pbtxt`.
//!
//! The text is turned into a [`serde_json::Value`] object from which a serde struct can then be
//! deserialized. Integers become JSON integers, floats become `f64`, identifiers (enum values) become
//! strings and `true`/`false`/`True`/`False`/`t`/`f` become booleans. JSON has no infinities or NaN, so
//! non-finite floats (`inf`, `-inf`, `nan`, `1e999`) become the strings `"inf"`, `"-inf"` and `"nan"`.

use serde_json::map::Entry;
use serde_json::{Map, Value};

/// Deepest message nesting accepted; anything deeper is rejected with an error.
const MAX_DEPTH: usize = 64;

/// A text-format syntax error with its 1-based position.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct PbtxtError {
    /// 1-based line of the offending input.
    pub line: usize,
    /// 1-based column (in characters) of the offending input.
    pub column: usize,
    /// What went wrong.
    pub message: String,
}

/// Parses text format into a JSON object. A field that appears once becomes a single value;
/// a field repeated (or given as a `[...]` list) becomes an array (merge: `dims: 1 dims: 2` and
/// `dims: [1, 2]` both give `[1, 2]`; `input {..} input {..}` gives an array of two objects).
pub fn parse(text: &str) -> Result<Value, PbtxtError> {
    let lex = Lexer { chars: text.chars().collect(), i: 0, line: 1, column: 1 };
    Parser { lex, peeked: None }.message(None, 0).map(Value::Object)
}

#[derive(Debug, Clone, Copy)]
struct Pos {
    line: usize,
    column: usize,
}

impl Pos {
    fn err(self, message: impl Into<String>) -> PbtxtError {
        PbtxtError { line: self.line, column: self.column, message: message.into() }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Number(String),
    Str(String),
    Punct(char),
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("identifier '{s}'"),
            Tok::Number(s) => format!("number '{s}'"),
            Tok::Str(_) => "a string".into(),
            Tok::Punct(c) => format!("'{c}'"),
            Tok::Eof => "end of input".into(),
        }
    }
}

struct Lexer {
    chars: Vec<char>,
    i: usize,
    line: usize,
    column: usize,
}

impl Lexer {
    fn peek_at(&self, k: usize) -> Option<char> {
        self.chars.get(self.i + k).copied()
    }

    fn pos(&self) -> Pos {
        Pos { line: self.line, column: self.column }
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek_at(0)?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn next(&mut self) -> Result<(Pos, Tok), PbtxtError> {
        while let Some(c) = self.peek_at(0) {
            if c == '#' {
                while self.bump().is_some_and(|c| c != '\n') {}
            } else if c.is_whitespace() || c == '\u{feff}' {
                self.bump();
            } else {
                break;
            }
        }
        let pos = self.pos();
        let Some(c) = self.peek_at(0) else {
            return Ok((pos, Tok::Eof));
        };
        let digit_next = self.peek_at(1).is_some_and(|d| d.is_ascii_digit());
        let tok = match c {
            '"' | '\'' => Tok::Str(self.string(pos)?),
            c if c.is_ascii_alphabetic() || c == '_' => Tok::Ident(self.word()),
            c if c.is_ascii_digit() || (c == '.' && digit_next) => Tok::Number(self.number()),
            '-' => {
                self.bump();
                match self.peek_at(0) {
                    Some(d) if d.is_ascii_digit() || d == '.' => Tok::Number(format!("-{}", self.number())),
                    Some(d) if d.is_ascii_alphabetic() => Tok::Number(format!("-{}", self.word())),
                    _ => return Err(pos.err("expected a number after '-'")),
                }
            }
            '{' | '}' | '<' | '>' | '[' | ']' | ':' | ',' | ';' | '.' | '/' => {
                self.bump();
                Tok::Punct(c)
            }
            _ => return Err(pos.err(format!("unexpected character {c:?}"))),
        };
        Ok((pos, tok))
    }

    /// Consumes characters while `keep(text so far, next char)` holds.
    fn take(&mut self, keep: impl Fn(&str, char) -> bool) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek_at(0).filter(|&c| keep(&s, c)) {
            s.push(c);
            self.bump();
        }
        s
    }

    fn word(&mut self) -> String {
        self.take(|_, c| c.is_ascii_alphanumeric() || c == '_')
    }

    fn number(&mut self) -> String {
        self.take(|s, c| {
            c.is_ascii_alphanumeric()
                || c == '_'
                || c == '.'
                || (matches!(c, '+' | '-') && s.ends_with(['e', 'E']))
        })
    }

    fn string(&mut self, start: Pos) -> Result<String, PbtxtError> {
        let quote = self.bump();
        let mut buf = Vec::new();
        loop {
            match self.bump() {
                None | Some('\n') => return Err(start.err("unterminated string")),
                Some(c) if Some(c) == quote => break,
                Some('\\') => self.escape(start, &mut buf)?,
                Some(c) => buf.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        String::from_utf8(buf).map_err(|_| start.err("string is not valid UTF-8"))
    }

    /// Consumes up to `max` digits of `radix`, returning the accumulated value and the digit count.
    fn digits(&mut self, radix: u32, max: usize, mut acc: u32) -> (u32, usize) {
        let mut n = 0;
        while let Some(d) = self.peek_at(0).and_then(|c| c.to_digit(radix)).filter(|_| n < max) {
            acc = acc.wrapping_mul(radix).wrapping_add(d);
            n += 1;
            self.bump();
        }
        (acc, n)
    }

    fn escape(&mut self, start: Pos, buf: &mut Vec<u8>) -> Result<(), PbtxtError> {
        let pos = Pos { column: self.column.saturating_sub(1), ..self.pos() };
        let byte = match self.bump() {
            None | Some('\n') => return Err(start.err("unterminated string")),
            Some('n') => b'\n',
            Some('t') => b'\t',
            Some('r') => b'\r',
            Some('a') => 7,
            Some('b') => 8,
            Some('f') => 12,
            Some('v') => 11,
            Some(c @ ('\\' | '"' | '\'' | '?')) => c as u8,
            Some('x' | 'X') => match self.digits(16, 2, 0) {
                (_, 0) => return Err(pos.err("'\\x' escape needs hex digits")),
                (v, _) => v as u8,
            },
            Some(c @ '0'..='7') => match self.digits(8, 2, c as u32 - '0' as u32) {
                (v, _) if v > 255 => return Err(pos.err("octal escape out of range")),
                (v, _) => v as u8,
            },
            Some(c @ ('u' | 'U')) => {
                let want = if c == 'u' { 4 } else { 8 };
                let ch = match self.digits(16, want, 0) {
                    (v, n) if n == want => char::from_u32(v),
                    _ => None,
                };
                let ch = ch.ok_or_else(|| pos.err("invalid unicode escape"))?;
                buf.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                return Ok(());
            }
            Some(c) => return Err(pos.err(format!("unknown escape sequence '\\{c}'"))),
        };
        buf.push(byte);
        Ok(())
    }
}

/// Converts a number token to JSON; see the module docs for non-finite floats.
fn number_value(text: &str, pos: Pos) -> Result<Value, PbtxtError> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(body) => (true, body),
        None => (false, text),
    };
    let invalid = || pos.err(format!("invalid number '{text}'"));
    let hex = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X"));
    let int = match hex {
        Some(h) => Some(u64::from_str_radix(h, 16)),
        None if !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()) => Some(body.parse::<u64>()),
        None => None,
    };
    if let Some(int) = int {
        let out_of_range = || pos.err(format!("integer '{text}' is out of range"));
        let u = int.map_err(|e| match e.kind() {
            std::num::IntErrorKind::PosOverflow => out_of_range(),
            _ => invalid(),
        })?;
        return match neg {
            false => Ok(Value::from(u)),
            true => 0i64.checked_sub_unsigned(u).map(Value::from).ok_or_else(out_of_range),
        };
    }
    let starts_digit = body.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    let f: f64 = if starts_digit {
        body.strip_suffix(['f', 'F']).unwrap_or(body).parse().map_err(|_| invalid())?
    } else if ["inf", "infinity", "nan"].contains(&body.to_ascii_lowercase().as_str()) {
        body.parse().map_err(|_| invalid())?
    } else {
        return Err(invalid());
    };
    let f = if neg { -f } else { f };
    Ok(match serde_json::Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::from("nan"),
        None => Value::from(if f > 0.0 { "inf" } else { "-inf" }),
    })
}

/// `expected {what}, found {token}` at `pos`.
fn expected(pos: Pos, what: &str, tok: &Tok) -> PbtxtError {
    pos.err(format!("expected {what}, found {}", tok.describe()))
}

/// `unterminated {what} '{name}' opened at ...`, reported at `at` (the end of input).
fn unterminated(what: &str, name: &str, open: Pos, at: Pos) -> PbtxtError {
    let Pos { line, column } = open;
    at.err(format!("unterminated {what} '{name}' opened at line {line}, column {column}"))
}

struct Parser {
    lex: Lexer,
    peeked: Option<(Pos, Tok)>,
}

impl Parser {
    fn next(&mut self) -> Result<(Pos, Tok), PbtxtError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex.next(),
        }
    }

    fn peek(&mut self) -> Result<(Pos, Tok), PbtxtError> {
        let t = self.next()?;
        self.peeked = Some(t.clone());
        Ok(t)
    }

    /// Parses fields until end of input (`open` is `None`) or until the close of the message `open`,
    /// given as (field name, position of its opening bracket, closing bracket).
    fn message(
        &mut self,
        open: Option<(&str, Pos, char)>,
        depth: usize,
    ) -> Result<Map<String, Value>, PbtxtError> {
        let mut map = Map::new();
        loop {
            let name = match (self.next()?, open) {
                ((_, Tok::Eof), None) => return Ok(map),
                ((at, Tok::Eof), Some((name, pos, _))) => return Err(unterminated("message", name, pos, at)),
                ((_, Tok::Punct(c)), Some((.., close))) if c == close => return Ok(map),
                ((at, Tok::Punct(c @ ('}' | '>'))), None) => {
                    return Err(at.err(format!("unexpected '{c}' outside any message")))
                }
                ((at, t @ Tok::Punct('}' | '>')), Some((name, pos, close))) => {
                    let line = pos.line;
                    return Err(expected(
                        at,
                        &format!("'{close}' to close message '{name}' opened at line {line}"),
                        &t,
                    ));
                }
                ((_, Tok::Ident(s)), _) => s,
                ((_, Tok::Punct('[')), _) => self.extension_name()?,
                ((at, t), _) => return Err(expected(at, "a field name", &t)),
            };
            let value = self.field_value(&name, depth)?;
            merge(&mut map, name, value);
            if let (_, Tok::Punct(',' | ';')) = self.peek()? {
                self.next()?;
            }
        }
    }

    fn extension_name(&mut self) -> Result<String, PbtxtError> {
        let mut name = String::from("[");
        loop {
            match self.next()? {
                (_, Tok::Ident(s)) => name.push_str(&s),
                (at, t) => return Err(expected(at, "an extension name", &t)),
            }
            match self.next()? {
                (_, Tok::Punct(c @ ('.' | '/'))) => name.push(c),
                (_, Tok::Punct(']')) => return Ok(name + "]"),
                (at, t) => return Err(expected(at, "'.' or ']' in extension name", &t)),
            }
        }
    }

    /// Parses what follows a field name; the flag tells whether it was a `[...]` list.
    fn field_value(&mut self, name: &str, depth: usize) -> Result<(Value, bool), PbtxtError> {
        match self.next()? {
            (_, Tok::Punct(':')) => match self.next()? {
                (at, Tok::Punct('[')) => Ok((self.list(name, at, true, depth)?, true)),
                tok => Ok((self.value(name, tok, depth, &format!("after '{name}:'"))?, false)),
            },
            (at, Tok::Punct('[')) => Ok((self.list(name, at, false, depth)?, true)),
            tok @ (_, Tok::Punct('{' | '<')) => Ok((self.value(name, tok, depth, "")?, false)),
            (at, t) => Err(expected(at, &format!("':' or '{{' after field name '{name}'"), &t)),
        }
    }

    /// Parses the value starting with `tok`; `ctx` completes the "expected a value" error.
    fn value(&mut self, name: &str, tok: (Pos, Tok), depth: usize, ctx: &str) -> Result<Value, PbtxtError> {
        match tok {
            (at, Tok::Punct(c @ ('{' | '<'))) => {
                if depth >= MAX_DEPTH {
                    return Err(at.err(format!("message '{name}' is nested deeper than {MAX_DEPTH} levels")));
                }
                let close = if c == '{' { '}' } else { '>' };
                self.message(Some((name, at, close)), depth + 1).map(Value::Object)
            }
            (at, Tok::Number(text)) => number_value(&text, at),
            (_, Tok::Ident(w)) => Ok(match w.as_str() {
                "true" | "True" | "t" => Value::Bool(true),
                "false" | "False" | "f" => Value::Bool(false),
                _ => Value::String(w),
            }),
            (_, Tok::Str(mut s)) => {
                while let (_, Tok::Str(more)) = self.peek()? {
                    s.push_str(&more);
                    self.next()?;
                }
                Ok(Value::String(s))
            }
            (at, t) => Err(expected(at, &format!("a value {ctx}"), &t)),
        }
    }

    /// Parses list items after the `[` at `open`; without a colon only messages are allowed.
    fn list(&mut self, name: &str, open: Pos, colon: bool, depth: usize) -> Result<Value, PbtxtError> {
        let mut items = Vec::new();
        let mut tok = self.next()?;
        if tok.1 == Tok::Punct(']') {
            return Ok(Value::Array(items));
        }
        loop {
            match tok {
                (at, Tok::Eof) => return Err(unterminated("list", name, open, at)),
                (at, t) if !colon && !matches!(t, Tok::Punct('{' | '<')) => {
                    let what =
                        format!("a message in list '{name}' (a list of scalars needs '{name}: [...]')");
                    return Err(expected(at, &what, &t));
                }
                tok => items.push(self.value(name, tok, depth, &format!("in list '{name}'"))?),
            }
            tok = match self.next()? {
                (_, Tok::Punct(']')) => return Ok(Value::Array(items)),
                (_, Tok::Punct(',')) => self.next()?,
                (at, Tok::Eof) => return Err(unterminated("list", name, open, at)),
                (at, t) => return Err(expected(at, &format!("',' or ']' in list '{name}'"), &t)),
            };
        }
    }
}

/// Adds a field to `map`, turning repeated fields into arrays.
fn merge(map: &mut Map<String, Value>, name: String, (value, is_list): (Value, bool)) {
    match map.entry(name) {
        Entry::Vacant(slot) => {
            slot.insert(value);
        }
        Entry::Occupied(mut slot) => {
            let old = slot.get_mut();
            if !old.is_array() {
                *old = Value::Array(vec![old.take()]);
            }
            if let Value::Array(items) = old {
                match value {
                    Value::Array(mut more) if is_list => items.append(&mut more),
                    v => items.push(v),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const TRITON: &str = r#"
# A realistic Triton model configuration.
name: "resnet50"
platform: 'onnxruntime_onnx'
max_batch_size: 8
input [
  {
    name: "input__0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  }
]
output {
  name: "output__0"; data_type: TYPE_FP32,
  dims: 1000
  label_filename: "labels.txt"
}
output { name: "aux" data_type: TYPE_INT64 dims: [ -1 ] }
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [4, 8]
  max_queue_delay_microseconds: 100
  default_queue_policy { timeout_action: REJECT max_queue_size: 4 }
}
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
parameters { key: "execution_mode" value: { string_value: "0" } }
version_policy: { latest: { num_versions: 2 } }
response_cache { enable: true }
"#;

    #[test]
    fn parses_realistic_triton_config() {
        let v = parse(TRITON).unwrap();
        assert_eq!(v["name"], "resnet50");
        assert_eq!(v["platform"], "onnxruntime_onnx");
        assert_eq!(v["max_batch_size"], 8);
        let input = json!([{"name": "input__0", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW",
            "dims": [3, 224, 224]}]);
        assert_eq!(v["input"], input);
        assert_eq!(v["output"][0]["dims"], 1000);
        assert_eq!(v["output"][0]["label_filename"], "labels.txt");
        assert_eq!(v["output"][1], json!({"name": "aux", "data_type": "TYPE_INT64", "dims": [-1]}));
        assert_eq!(v["instance_group"], json!([{"count": 2, "kind": "KIND_CPU"}]));
        let batching = json!({"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 100,
            "default_queue_policy": {"timeout_action": "REJECT", "max_queue_size": 4}});
        assert_eq!(v["dynamic_batching"], batching);
        let params = json!([{"key": "intra_op_thread_count", "value": {"string_value": "2"}},
            {"key": "execution_mode", "value": {"string_value": "0"}}]);
        assert_eq!(v["parameters"], params);
        assert_eq!(v["version_policy"], json!({"latest": {"num_versions": 2}}));
        assert_eq!(v["response_cache"], json!({"enable": true}));
        assert_eq!(parse("version_policy { all { } }").unwrap(), json!({"version_policy": {"all": {}}}));
    }

    #[test]
    fn repeated_fields_and_lists_merge() {
        let expected = json!({"dims": [1, 2]});
        assert_eq!(parse("dims: 1 dims: 2").unwrap(), expected);
        assert_eq!(parse("dims: [1, 2]").unwrap(), expected);
        assert_eq!(parse("dims: [1] dims: 2").unwrap(), expected);
        assert_eq!(parse("dims: 1 dims: [2]").unwrap(), expected);
        assert_eq!(parse("dims: [] dims: [1] dims: [2]").unwrap(), expected);
        assert_eq!(parse("dims: []").unwrap(), json!({"dims": []}));
        assert_eq!(parse("dims: [7]").unwrap(), json!({"dims": [7]}));
        assert_eq!(parse("dims: 7").unwrap(), json!({"dims": 7}));
        let two = json!({"input": [{"a": 1}, {"a": 2}]});
        assert_eq!(parse("input { a: 1 } input { a: 2 }").unwrap(), two);
        assert_eq!(parse("input: [{ a: 1 }, < a: 2 >]").unwrap(), two);
        assert_eq!(parse("input [{ a: 1 }] input: { a: 2 }").unwrap(), two);
    }

    #[test]
    fn scalar_kinds() {
        let text = r#"s: "a\n\t\\\"\'\x41\101\0" q: 'it''s' c: "a" 'b' "c" u: "\u00e9\U0001F600" raw: "é"
            i: 42 n: -7 h: 0x1F nh: -0x10 big: 18446744073709551615 min: -9223372036854775808
            f: 1.5 e: -2e-3 g: 1.0f dot: .5 up: 1E+2 inf: inf ninf: -inf nan: nan huge: 1e999
            k: KIND_CPU b1: true b2: false b3: True b4: False b5: t b6: f word: tru t: f"#;
        let expected = json!({"s": "a\n\t\\\"'AA\0", "q": "its", "c": "abc", "u": "é😀", "raw": "é",
            "i": 42, "n": -7, "h": 31, "nh": -16, "big": u64::MAX, "min": i64::MIN,
            "f": 1.5, "e": -2e-3, "g": 1.0, "dot": 0.5, "up": 100.0,
            "inf": "inf", "ninf": "-inf", "nan": "nan", "huge": "inf", "k": "KIND_CPU",
            "b1": true, "b2": false, "b3": true, "b4": false, "b5": true, "b6": false,
            "word": "tru", "t": false});
        let v = parse(text).unwrap();
        assert_eq!(v, expected);
        assert!(v["i"].is_u64() && v["n"].is_i64() && v["g"].is_f64() && v["up"].is_f64());
    }

    #[test]
    fn comments_separators_and_extensions() {
        let text = "# header\na: 1; # trailing\nb: 'x', # more\nm < c: 2 > n: < d: 3 >\n\
                    [foo.bar]: 4 [type.googleapis.com/pkg.Msg] { e: 5 } s: \"#not a comment\"\n# end";
        let expected = json!({"a": 1, "b": "x", "m": {"c": 2}, "n": {"d": 3}, "[foo.bar]": 4,
            "[type.googleapis.com/pkg.Msg]": {"e": 5}, "s": "#not a comment"});
        assert_eq!(parse(text).unwrap(), expected);
        assert_eq!(parse("").unwrap(), json!({}));
        assert_eq!(parse("  # only a comment").unwrap(), json!({}));
        assert_eq!(parse("\u{feff}a: 1\r\nb: 2\r\n").unwrap(), json!({"a": 1, "b": 2}));
    }

    #[test]
    fn errors_carry_positions() {
        let cases: &[(&str, usize, usize, &str)] = &[
            ("max_batch_size:", 1, 16, "a value after 'max_batch_size:', found end"),
            ("a: }", 1, 4, "expected a value after 'a:', found '}'"),
            ("name: \"abc\nx: 1", 1, 7, "unterminated string"),
            ("name: 'abc", 1, 7, "unterminated string"),
            ("a: \"x\\", 1, 4, "unterminated string"),
            ("a: 1\nb: 2\ninput {\n  c: 3\n", 5, 1, "message 'input' opened at line 3, column 7"),
            ("m < a: 1 }", 1, 10, "expected '>' to close message 'm' opened"),
            ("a: 1 }", 1, 6, "unexpected '}' outside any message"),
            ("dims: [1, 2", 1, 12, "unterminated list 'dims' opened at line 1"),
            ("dims: [1 2]", 1, 10, "expected ',' or ']' in list 'dims'"),
            ("dims: [1,]", 1, 10, "expected a value in list 'dims', found ']'"),
            ("dims [1]", 1, 7, "expected a message in list 'dims'"),
            ("a 1", 1, 3, "expected ':' or '{' after field name 'a'"),
            ("\n  : 1", 2, 3, "expected a field name, found ':'"),
            ("a: 1 @", 1, 6, "unexpected character '@'"),
            ("a: -x", 1, 4, "invalid number '-x'"),
            ("a: - 1", 1, 4, "expected a number after '-'"),
            ("a: 12abc", 1, 4, "invalid number '12abc'"),
            ("a: 0xZZ", 1, 4, "invalid number '0xZZ'"),
            ("a: 18446744073709551616", 1, 4, "is out of range"),
            ("a: -9223372036854775809", 1, 4, "is out of range"),
            ("a: 'x\\q'", 1, 6, "unknown escape sequence '\\q'"),
            ("a: 'x\\xg'", 1, 6, "'\\x' escape needs hex digits"),
            ("a: '\\777'", 1, 5, "octal escape out of range"),
            ("a: '\\ud800'", 1, 5, "invalid unicode escape"),
            ("a: '\\xff'", 1, 4, "string is not valid UTF-8"),
            ("[foo.]: 1", 1, 6, "expected an extension name, found ']'"),
            ("[foo: 1", 1, 5, "expected '.' or ']' in extension name"),
        ];
        for &(text, line, column, message) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!((err.line, err.column), (line, column), "{text:?}: {err}");
            assert!(err.message.contains(message), "{text:?}: got {:?}", err.message);
        }
        let err = parse("a: }").unwrap_err();
        assert_eq!(err.to_string(), "line 1, column 4: expected a value after 'a:', found '}'");
    }

    #[test]
    fn nesting_depth_is_limited() {
        let nested = |n: usize| format!("{}{}", "m { ".repeat(n), "} ".repeat(n));
        assert!(parse(&nested(MAX_DEPTH)).is_ok());
        let err = parse(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert_eq!((err.line, err.column), (1, 4 * MAX_DEPTH + 3));
        assert!(err.message.contains("nested deeper than 64"), "{err}");
        assert!(parse(&"a: [{ ".repeat(10_000)).is_err());
    }

    #[test]
    fn fuzzed_input_never_panics() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut rand = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n.max(1) as u64) as usize
        };
        let pieces = [
            "a", ":", "{", "}", "<", ">", "[", "]", ",", ";", "\"", "'", "\\", "#", "\n", " ", "-", ".", "/",
            "0x", "1", "e", "+", "inf", "f", "x", "\\x", "\\7", "\\u", "é", "KIND_CPU", "dims: [", "m {",
        ];
        let base: Vec<char> = TRITON.chars().collect();
        for case in 0..4000 {
            let text: String = if case % 2 == 0 {
                (0..rand(40)).map(|_| pieces[rand(pieces.len())]).collect()
            } else {
                let mut chars = base.clone();
                for _ in 0..=rand(6) {
                    let at = rand(chars.len());
                    match rand(5) {
                        0 | 1 if at < chars.len() => drop(chars.remove(at)),
                        2 | 3 => chars.insert(at, pieces[rand(pieces.len())].chars().next().unwrap_or(' ')),
                        _ => chars.truncate(at),
                    }
                }
                chars.into_iter().collect()
            };
            if let Err(err) = parse(&text) {
                let line_len = text.split('\n').nth(err.line.wrapping_sub(1)).map(|l| l.chars().count());
                assert!(line_len.is_some_and(|len| (1..=len + 1).contains(&err.column)), "{text:?}: {err}");
            }
        }
    }
}
