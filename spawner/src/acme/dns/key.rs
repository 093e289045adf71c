//! TSIG key files in the key-clause format BIND's `tsig-keygen` writes, which `named.conf`
//! includes and `nsupdate -k` reads:
//!
//! ```text
//! key "tsig-key" {
//!         algorithm hmac-sha256;
//!         secret "CsCYKWCvaSszyT3uy0uuSN5rGvywkU5whMihXtm+iUI=";
//! };
//! ```
//!
//! Whitespace is free, the name may be quoted or not, `#`, `//` and `/* */` comments are
//! skipped, and the file holds exactly one clause. An error says what is wrong and never
//! quotes the secret, nor any text that could be it.

use base64::Engine as _;

use super::{TsigAlgorithm, TsigKey};

/// How the clause looks, for errors.
const EXPECTED: &str = "expected `key \"NAME\" { algorithm hmac-sha256; secret \"BASE64\"; };`";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Open,
    Close,
    Semicolon,
}

impl Token {
    /// The token's text, in a statement's or a name's place.
    fn text(&self) -> Option<&str> {
        match self {
            Token::Word(s) | Token::Quoted(s) => Some(s),
            _ => None,
        }
    }

    /// How an error names this token: keywords as written, anything that could be a secret
    /// only by its kind.
    fn describe(&self) -> String {
        match self {
            Token::Word(w)
                if w.len() <= 16 && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') =>
            {
                format!("`{w}`")
            }
            Token::Word(_) => "a word".into(),
            Token::Quoted(_) => "a quoted string".into(),
            Token::Open => "`{`".into(),
            Token::Close => "`}`".into(),
            Token::Semicolon => "`;`".into(),
        }
    }
}

/// Splits the text into tokens, skipping whitespace and comments.
fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => skip_line(&mut chars),
            '/' if chars.peek() == Some(&'/') => skip_line(&mut chars),
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut star = false;
                loop {
                    match chars.next() {
                        Some('/') if star => break,
                        Some(c) => star = c == '*',
                        None => return Err("a `/*` comment without its `*/`".into()),
                    }
                }
            }
            '{' => out.push(Token::Open),
            '}' => out.push(Token::Close),
            ';' => out.push(Token::Semicolon),
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => s.push(c),
                            None => return Err("a quoted string without its closing `\"`".into()),
                        },
                        Some(c) => s.push(c),
                        None => return Err("a quoted string without its closing `\"`".into()),
                    }
                }
                out.push(Token::Quoted(s));
            }
            c => {
                let mut s = String::from(c);
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '{' | '}' | ';' | '"' | '#') {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                out.push(Token::Word(s));
            }
        }
    }
    Ok(out)
}

fn skip_line(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    for c in chars.by_ref() {
        if c == '\n' {
            break;
        }
    }
}

/// Parses one key clause.
pub(crate) fn parse(text: &str) -> Result<TsigKey, String> {
    let tokens = tokens(text)?;
    let mut it = tokens.iter().peekable();
    match it.next() {
        None => return Err(format!("no key clause: {EXPECTED}")),
        Some(Token::Word(w)) if w == "key" => {}
        Some(_) => return Err(format!("not a key clause: {EXPECTED}")),
    }
    let name = match it.next().and_then(Token::text) {
        Some(name) => key_name(name)?,
        None => return Err(format!("no name after `key`: {EXPECTED}")),
    };
    if it.next() != Some(&Token::Open) {
        return Err(format!("key \"{name}\": no `{{` after its name"));
    }
    let mut algorithm = None;
    let mut secret = None;
    loop {
        let statement = match it.next() {
            Some(Token::Close) => break,
            None => return Err(format!("key \"{name}\": no `}}` at its end")),
            Some(token @ (Token::Word(_) | Token::Quoted(_))) => token,
            Some(token) => {
                return Err(format!(
                    "key \"{name}\": {} where a statement (`algorithm`, `secret`) belongs",
                    token.describe()
                ))
            }
        };
        let keyword = match statement {
            Token::Word(w) if w == "algorithm" || w == "secret" => w.as_str(),
            other => {
                return Err(format!(
                    "key \"{name}\": unknown statement {} (expected `algorithm` or `secret`)",
                    other.describe()
                ))
            }
        };
        let Some(value) = it.next().and_then(Token::text) else {
            return Err(format!("key \"{name}\": `{keyword}` without a value"));
        };
        if it.next() != Some(&Token::Semicolon) {
            return Err(format!("key \"{name}\": no `;` after its `{keyword}`"));
        }
        let slot = if keyword == "algorithm" {
            &mut algorithm
        } else {
            &mut secret
        };
        if slot.replace(value).is_some() {
            return Err(format!("key \"{name}\": two `{keyword}` statements"));
        }
    }
    // tsig-keygen ends the clause with `};`; a missing `;` is forgiven.
    it.next_if_eq(&&Token::Semicolon);
    match it.next() {
        None => {}
        Some(Token::Word(w)) if w == "key" => {
            let other = it.next().and_then(Token::text).unwrap_or("");
            return Err(format!(
                "more than one key clause (key \"{name}\", then key \"{}\"): give a file with one key",
                printable(other)
            ));
        }
        Some(token) => {
            return Err(format!(
                "key \"{name}\": {} after the clause's `}};`",
                token.describe()
            ))
        }
    }
    let Some(algorithm) = algorithm else {
        return Err(format!("key \"{name}\" has no `algorithm`"));
    };
    let algorithm = TsigAlgorithm::from_name(algorithm).ok_or_else(|| {
        format!(
            "key \"{name}\": algorithm {} is not supported (hmac-sha256, hmac-sha384 or hmac-sha512)",
            printable(algorithm)
        )
    })?;
    let Some(secret) = secret else {
        return Err(format!("key \"{name}\" has no `secret`"));
    };
    let secret = base64::engine::general_purpose::STANDARD
        .decode(secret)
        .map_err(|_| format!("key \"{name}\": its secret is not valid base64"))?;
    if secret.is_empty() {
        return Err(format!("key \"{name}\": its secret is empty"));
    }
    Ok(TsigKey {
        name,
        algorithm,
        secret,
    })
}

/// The key's name as a DNS name (without a trailing dot), checked to fit the wire.
fn key_name(name: &str) -> Result<String, String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let fits = !trimmed.is_empty()
        && trimmed.len() <= 253
        && trimmed.split('.').all(|l| {
            (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
        });
    if fits {
        Ok(trimmed.to_string())
    } else {
        Err(format!(
            "key name \"{}\": not a DNS name (dot-separated labels of 1 to 63 printable characters)",
            printable(name)
        ))
    }
}

/// At most 64 characters of `s`, control characters escaped: for naming what was found.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "CsCYKWCvaSszyT3uy0uuSN5rGvywkU5whMihXtm+iUI=";

    /// What `tsig-keygen` (BIND 9.18) writes, byte for byte.
    fn keygen_output(algorithm: &str, secret: &str) -> String {
        format!("key \"tsig-key\" {{\n\talgorithm {algorithm};\n\tsecret \"{secret}\";\n}};\n")
    }

    fn parse_err(text: &str) -> String {
        let e = parse(text).expect_err("refused");
        assert!(
            !e.contains(SECRET) && !e.contains("CsCYKW"),
            "the secret in {e}"
        );
        e
    }

    #[test]
    fn tsig_keygen_output_parses() {
        let key = parse(&keygen_output("hmac-sha256", SECRET)).expect("parses");
        assert_eq!(key.name, "tsig-key");
        assert_eq!(key.algorithm, TsigAlgorithm::HmacSha256);
        assert_eq!(key.secret.len(), 32);
        let sha512 = "nLK346IXGS0xu2x+Q9E7CHUiv4QfamLi4jJZh2AIDdjO64wvBtvUibekKZijt+KN1DBA8RQSsS5HTRkqN4WABw==";
        let key = parse(&keygen_output("hmac-sha512", sha512)).expect("parses");
        assert_eq!(key.algorithm, TsigAlgorithm::HmacSha512);
        assert_eq!(key.secret.len(), 64);
        let key = parse(&keygen_output("HMAC-SHA384", SECRET)).expect("parses");
        assert_eq!(key.algorithm, TsigAlgorithm::HmacSha384);
    }

    #[test]
    fn free_layout_unquoted_names_and_comments() {
        let text = format!(
            "# made by hand\n// another comment\n/* a\n block */ key k.example. {{ \
             secret \"{SECRET}\"; /* x */ algorithm \"hmac-sha256\"; }} # end\n"
        );
        let key = parse(&text).expect("parses");
        assert_eq!(key.name, "k.example");
        let key = parse(&format!(
            "key k{{algorithm hmac-sha256;secret \"{SECRET}\";}}"
        ))
        .expect("parses");
        assert_eq!(key.name, "k");
    }

    #[test]
    fn debug_leaves_the_secret_out() {
        let key = parse(&keygen_output("hmac-sha256", SECRET)).expect("parses");
        let debug = format!("{key:?}");
        assert!(
            !debug.contains("secret") && !debug.contains("CsCYKW"),
            "{debug}"
        );
        assert!(!debug.contains(&format!("{:?}", key.secret)), "{debug}");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let cases = [
            ("", "no key clause"),
            ("   # only a comment\n", "no key clause"),
            (SECRET, "not a key clause"),
            ("options { };", "not a key clause"),
            ("key", "no name after `key`"),
            ("key k algorithm hmac-sha256;", "no `{` after its name"),
            ("key k { algorithm hmac-sha256;", "no `}` at its end"),
            ("key k { algorithm hmac-sha256; };", "has no `secret`"),
            (
                &format!("key k {{ secret \"{SECRET}\"; }};"),
                "has no `algorithm`",
            ),
            (
                &format!("key k {{ algorithm hmac-md5; secret \"{SECRET}\"; }};"),
                "algorithm hmac-md5 is not supported (hmac-sha256, hmac-sha384 or hmac-sha512)",
            ),
            (
                &format!("key k {{ algorithm hmac-sha1; secret \"{SECRET}\"; }};"),
                "hmac-sha1 is not supported",
            ),
            (
                "key k { algorithm hmac-sha256; secret \"CsCYKW!!not base64\"; };",
                "its secret is not valid base64",
            ),
            (
                "key k { algorithm hmac-sha256; secret \"\"; };",
                "its secret is empty",
            ),
            (
                &format!("key k {{ algorithm hmac-sha256; secret \"{SECRET}\" }};"),
                "no `;` after its `secret`",
            ),
            (
                &format!(
                    "key k {{ algorithm hmac-sha256; secret \"{SECRET}\"; secret \"{SECRET}\"; }};"
                ),
                "two `secret` statements",
            ),
            (
                &format!("key k {{ algorithm hmac-sha256; secrte \"{SECRET}\"; }};"),
                "unknown statement `secrte`",
            ),
            (
                &format!("key k {{ algorithm hmac-sha256; \"{SECRET}\"; }};"),
                "unknown statement a quoted string",
            ),
            (
                &format!("key k {{ algorithm hmac-sha256; {SECRET}; }};"),
                "unknown statement a word",
            ),
            ("key k { algorithm; };", "`algorithm` without a value"),
            (
                &format!(
                    "{}{}",
                    keygen_output("hmac-sha256", SECRET),
                    keygen_output("hmac-sha256", SECRET)
                ),
                "more than one key clause",
            ),
            (
                &format!("{} junk", keygen_output("hmac-sha256", SECRET)),
                "`junk` after the clause",
            ),
            ("key \"a..b\" { };", "not a DNS name"),
            (
                "key k { secret \"abc",
                "a quoted string without its closing",
            ),
            ("/* key k", "a `/*` comment without its `*/`"),
        ];
        for (text, expected) in cases {
            let e = parse_err(text);
            assert!(
                e.contains(expected),
                "{text:?}: {e:?}, expected {expected:?}"
            );
        }
    }
}
