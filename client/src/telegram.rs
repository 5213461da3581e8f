//! Telegram Mini App init data (`Telegram.WebApp.initData`): the user's
//! identity as Telegram hands it to a Mini App, checked as Telegram documents
//! it. The data-check string is every field but `hash`, as `key=value`,
//! sorted, joined by line feeds; the secret is HMAC-SHA256 of the bot's
//! token keyed with "WebAppData"; `hash` is the hex HMAC-SHA256 of the
//! data-check string under that secret. Checked against the
//! `@telegram-apps/init-data-node` package's signatures (see the tests).

use std::collections::BTreeMap;

use hmac::{KeyInit, Mac};
use sha2::Sha256;

/// Longest init data accepted (Telegram's are a few hundred bytes).
pub const MAX_INIT_DATA: usize = 4096;
/// How far in the future an `auth_date` may lie (clocks differ).
const CLOCK_SKEW_S: u64 = 60;

type HmacSha256 = hmac::Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitDataError {
    #[error("init data: expected at most {MAX_INIT_DATA} bytes, found {0}")]
    TooLong(usize),
    #[error("init data: {0}")]
    Malformed(String),
    #[error("init data has no `hash` field")]
    NoHash,
    #[error("init data is not signed with this bot's token (its `hash` does not match)")]
    BadSignature,
    #[error("init data: `auth_date` {0:?} is not a whole number of seconds")]
    AuthDate(Option<String>),
    #[error("init data was issued at {issued} (unix seconds) and is accepted for {max_age} s; it is {now} now")]
    Expired { issued: u64, max_age: u64, now: u64 },
    #[error("init data is dated {issued} (unix seconds), after now ({now})")]
    FromTheFuture { issued: u64, now: u64 },
    #[error("init data names no user: expected `user` to be JSON with a numeric `id`")]
    NoUser,
}

/// Init data whose signature and date checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitData {
    /// The Telegram user's id.
    pub user_id: i64,
    /// When Telegram issued it (unix seconds).
    pub auth_date: u64,
    /// Every field but `hash`, decoded.
    pub fields: BTreeMap<String, String>,
}

/// Checks `init_data` (the query string a Mini App gets) against the bot's
/// token: signed by it, issued at most `max_age` seconds before `now`, and
/// naming a user.
pub fn validate(init_data: &str, bot_token: &str, now: u64, max_age: u64) -> Result<InitData, InitDataError> {
    if init_data.len() > MAX_INIT_DATA {
        return Err(InitDataError::TooLong(init_data.len()));
    }
    let mut fields = BTreeMap::new();
    let mut hash = None;
    for (key, value) in url::form_urlencoded::parse(init_data.as_bytes()) {
        if key == "hash" {
            if hash.replace(value.into_owned()).is_some() {
                return Err(InitDataError::Malformed("`hash` appears twice".into()));
            }
        } else if fields.insert(key.clone().into_owned(), value.into_owned()).is_some() {
            return Err(InitDataError::Malformed(format!("`{key}` appears twice")));
        }
    }
    let hash = hash.ok_or(InitDataError::NoHash)?;
    let given = hex::decode(&hash).map_err(|_| InitDataError::BadSignature)?;
    mac(&fields, bot_token).verify_slice(&given).map_err(|_| InitDataError::BadSignature)?;
    let auth_date = fields.get("auth_date");
    let issued: u64 =
        auth_date.and_then(|d| d.parse().ok()).ok_or_else(|| InitDataError::AuthDate(auth_date.cloned()))?;
    if issued > now.saturating_add(CLOCK_SKEW_S) {
        return Err(InitDataError::FromTheFuture { issued, now });
    }
    if now.saturating_sub(issued) > max_age {
        return Err(InitDataError::Expired { issued, max_age, now });
    }
    let user: serde_json::Value =
        fields.get("user").and_then(|u| serde_json::from_str(u).ok()).ok_or(InitDataError::NoUser)?;
    let user_id = user["id"].as_i64().ok_or(InitDataError::NoUser)?;
    Ok(InitData { user_id, auth_date: issued, fields })
}

/// Init data for `fields` signed with `bot_token`, as Telegram issues it (for
/// tests and tools that stand in for Telegram).
pub fn sign(fields: &BTreeMap<String, String>, bot_token: &str) -> String {
    let hash = hex::encode(mac(fields, bot_token).finalize().into_bytes());
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.extend_pairs(fields.iter());
    query.append_pair("hash", &hash);
    query.finish()
}

/// The HMAC over the data-check string of `fields`, keyed from the bot's token.
fn mac(fields: &BTreeMap<String, String>, bot_token: &str) -> HmacSha256 {
    let mut secret = <HmacSha256 as KeyInit>::new_from_slice(b"WebAppData").expect("HMAC takes any key");
    secret.update(bot_token.as_bytes());
    let secret = secret.finalize().into_bytes();
    let mut pairs: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&secret).expect("HMAC takes any key");
    mac.update(pairs.join("\n").as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "123:ABC";
    /// Signed by `@telegram-apps/init-data-node` 2.0.10 (npm), independently of this code:
    /// `sign({user: {id: 42, first_name: "Ann"}, query_id: "AAA", chat_instance: "1"}, "123:ABC",
    /// new Date(1700000000000))`.
    const REFERENCE: &str = "user=%7B%22id%22%3A42%2C%22first_name%22%3A%22Ann%22%7D&query_id=AAA&chat_instance=1&\
                             auth_date=1700000000&signature=&hash=\
                             177ff7165d8d3ed202586aff69ef4e7099b24e01dd2d65b22c29e48e63931de7";
    /// The same package, `sign({user: {id: 7, first_name: "Zoë & co", username: "z_o"}, query_id:
    /// "q+1/2", start_param: "ref=a b"}, "987654:XYZ-abc_DEF", new Date(1765000000000))`: escapes,
    /// `+`, spaces and non-ASCII.
    const REFERENCE_ESCAPED: &str = include_str!("../tests/data/telegram_init_data_escaped.txt");

    #[test]
    fn init_data_signed_by_the_reference_package_is_accepted() {
        let d = validate(REFERENCE, TOKEN, 1_700_000_100, 86_400).unwrap();
        assert_eq!((d.user_id, d.auth_date), (42, 1_700_000_000));
        assert_eq!(d.fields["query_id"], "AAA");
        let d = validate(REFERENCE_ESCAPED.trim(), "987654:XYZ-abc_DEF", 1_765_000_000, 86_400).unwrap();
        assert_eq!(d.user_id, 7);
        assert!(d.fields["user"].contains("Zoë & co"), "{:?}", d.fields);
        assert_eq!(d.fields["start_param"], "ref=a b");
    }

    #[test]
    fn what_we_sign_the_reference_accepts_and_round_trips() {
        let d = validate(REFERENCE, TOKEN, 1_700_000_000, 86_400).unwrap();
        let again = sign(&d.fields, TOKEN);
        assert_eq!(validate(&again, TOKEN, 1_700_000_000, 86_400).unwrap(), d);
        // The same fields and token give the reference's hash.
        assert!(again.ends_with("hash=177ff7165d8d3ed202586aff69ef4e7099b24e01dd2d65b22c29e48e63931de7"), "{again}");
    }

    #[test]
    fn tampered_foreign_stale_and_malformed_init_data_is_refused() {
        let now = 1_700_000_100;
        let v = |s: &str| validate(s, TOKEN, now, 86_400);
        assert_eq!(validate(REFERENCE, "123:ABD", now, 86_400), Err(InitDataError::BadSignature));
        assert_eq!(v(&REFERENCE.replace("%3A42", "%3A43")), Err(InitDataError::BadSignature), "another user");
        assert_eq!(v(&REFERENCE.replace("query_id=AAA&", "")), Err(InitDataError::BadSignature), "a field dropped");
        assert_eq!(v(&REFERENCE.replace("hash=177f", "hash=277f")), Err(InitDataError::BadSignature));
        assert_eq!(v(&REFERENCE.replace("hash=", "hash=zz")), Err(InitDataError::BadSignature), "not hex");
        let (unhashed, _) = REFERENCE.split_once("&hash=").unwrap();
        assert_eq!(v(unhashed), Err(InitDataError::NoHash));
        assert!(matches!(v(&format!("{REFERENCE}&hash=00")), Err(InitDataError::Malformed(_))));
        assert!(matches!(v(&format!("a=1&a=2&{REFERENCE}")), Err(InitDataError::Malformed(_))));
        assert_eq!(v(&"a".repeat(MAX_INIT_DATA + 1)), Err(InitDataError::TooLong(MAX_INIT_DATA + 1)));
        assert_eq!(
            validate(REFERENCE, TOKEN, 1_700_000_000 + 86_401, 86_400),
            Err(InitDataError::Expired { issued: 1_700_000_000, max_age: 86_400, now: 1_700_086_401 })
        );
        assert!(matches!(validate(REFERENCE, TOKEN, 1_699_000_000, 86_400), Err(InitDataError::FromTheFuture { .. })));
        // Signed correctly, but without a date or a user.
        let mut f: BTreeMap<String, String> = [("user".to_string(), r#"{"id":5}"#.to_string())].into();
        assert_eq!(v(&sign(&f, TOKEN)), Err(InitDataError::AuthDate(None)));
        f.insert("auth_date".into(), "yesterday".into());
        assert_eq!(v(&sign(&f, TOKEN)), Err(InitDataError::AuthDate(Some("yesterday".into()))));
        f.insert("auth_date".into(), now.to_string());
        f.insert("user".into(), r#"{"name":"x"}"#.into());
        assert_eq!(v(&sign(&f, TOKEN)), Err(InitDataError::NoUser));
    }
}
