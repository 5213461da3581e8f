//! Get-method results: the TVM stack entries the chain API returns.

use num_bigint::BigUint;
use tonlib_core::TonAddress;
use tonlib_core::cell::ArcCell;

use crate::TonError;

#[derive(Debug, Clone)]
pub enum StackEntry {
    /// An integer (TVM integers are signed 257-bit).
    Num(num_bigint::BigInt),
    Cell(ArcCell),
    Slice(ArcCell),
    Null,
}

impl StackEntry {
    pub fn uint(&self, what: &'static str) -> Result<BigUint, TonError> {
        match self {
            StackEntry::Num(n) => n.to_biguint().ok_or_else(|| TonError::Unexpected {
                what,
                expected: "a non-negative integer".into(),
                found: n.to_string(),
            }),
            other => Err(other.mismatch(what, "an integer")),
        }
    }

    /// A signed integer that fits 32 bits (a global id).
    pub fn int32(&self, what: &'static str) -> Result<i32, TonError> {
        match self {
            StackEntry::Num(n) => i32::try_from(n.clone()).map_err(|_| TonError::Unexpected {
                what,
                expected: "a 32-bit signed integer".into(),
                found: n.to_string(),
            }),
            other => Err(other.mismatch(what, "an integer")),
        }
    }

    pub fn boolean(&self, what: &'static str) -> Result<bool, TonError> {
        match self {
            StackEntry::Num(n) if n == &0.into() => Ok(false),
            StackEntry::Num(n) if n == &(-1).into() => Ok(true),
            other => Err(other.mismatch(what, "a boolean (0 or -1)")),
        }
    }

    pub fn address(&self, what: &'static str) -> Result<TonAddress, TonError> {
        match self {
            StackEntry::Slice(c) | StackEntry::Cell(c) => {
                let mut p = c.parser();
                Ok(p.load_address()?)
            }
            other => Err(other.mismatch(what, "an address slice")),
        }
    }

    /// A cell, or `None` for null (an empty dictionary or a missing entry).
    pub fn cell_opt(&self, what: &'static str) -> Result<Option<ArcCell>, TonError> {
        match self {
            StackEntry::Cell(c) => Ok(Some(c.clone())),
            StackEntry::Null => Ok(None),
            other => Err(other.mismatch(what, "a cell or null")),
        }
    }

    fn mismatch(&self, what: &'static str, expected: &str) -> TonError {
        let found = match self {
            StackEntry::Num(n) => format!("the integer {n}"),
            StackEntry::Cell(_) => "a cell".into(),
            StackEntry::Slice(_) => "a slice".into(),
            StackEntry::Null => "null".into(),
        };
        TonError::Unexpected { what, expected: expected.into(), found }
    }
}

/// Get-method stacks are small; a longer one is an API answer to refuse.
pub const MAX_STACK: usize = 64;

/// Reads a stack in the toncenter v2 JSON form: `[["num", "0x1f"], ["cell", {"bytes": "<BOC>"}], ...]`.
pub fn from_toncenter(value: &serde_json::Value) -> Result<Vec<StackEntry>, TonError> {
    let bad = |found: String| TonError::Unexpected {
        what: "get-method stack",
        expected: "an array of [\"num\"|\"cell\"|\"slice\"|\"null\", value] pairs".into(),
        found,
    };
    let entries = value.as_array().ok_or_else(|| bad(short(value)))?;
    if entries.len() > MAX_STACK {
        return Err(bad(format!("{} entries (at most {MAX_STACK})", entries.len())));
    }
    entries
        .iter()
        .map(|e| {
            let pair = e.as_array().filter(|a| a.len() == 2).ok_or_else(|| bad(short(e)))?;
            let kind = pair[0].as_str().ok_or_else(|| bad(short(e)))?;
            match kind {
                "num" => {
                    let text = pair[1].as_str().ok_or_else(|| bad(short(e)))?;
                    let (negative, digits) = match text.strip_prefix('-') {
                        Some(rest) => (true, rest),
                        None => (false, text),
                    };
                    let digits = digits.strip_prefix("0x").ok_or_else(|| bad(short(e)))?;
                    if digits.len() > 80 {
                        return Err(bad(short(e)));
                    }
                    let magnitude =
                        num_bigint::BigInt::parse_bytes(digits.as_bytes(), 16).ok_or_else(|| bad(short(e)))?;
                    Ok(StackEntry::Num(if negative { -magnitude } else { magnitude }))
                }
                "cell" | "slice" => {
                    let b64 = pair[1].get("bytes").and_then(|b| b.as_str()).ok_or_else(|| bad(short(e)))?;
                    let bytes = base64_decode(b64).ok_or_else(|| bad(short(e)))?;
                    let cell = crate::parse_boc(&bytes, 1 << 20)?;
                    Ok(if kind == "cell" { StackEntry::Cell(cell) } else { StackEntry::Slice(cell) })
                }
                "null" => Ok(StackEntry::Null),
                _ => Err(bad(short(e))),
            }
        })
        .collect()
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn short(v: &serde_json::Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 80 { format!("{}…", text.chars().take(80).collect::<String>()) } else { text }
}
