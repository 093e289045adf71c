//! The end of a chunked response body, found as the bytes stream by (RFC 9112 section 7.1)
//! without changing one, so the body is relayed as it came and the backend connection can take
//! the next request once it ends.

/// Finds the end of a chunked body as it streams by (RFC 9112 section 7.1), without changing a
/// byte: sizes in hex (at most 15 digits), extensions skipped, CRLF required everywhere (a bare
/// LF is an error), trailer fields passed through up to [`TRAILERS_MAX`] bytes.
#[derive(Debug, Default)]
pub(super) struct Chunks {
    state: State,
    size: u64,
    digits: u8,
    /// Bytes of chunk data seen (for the access log).
    pub data: u64,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Trailer section bytes accepted at most.
const TRAILERS_MAX: usize = 16 * 1024;

impl Chunks {
    /// Feeds body bytes; returns how many of them belong to the body (all, unless it ended
    /// within them) once the body is complete, `Ok(None)` while it goes on.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, &'static str> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 15 {
                            return Err("chunk size too large");
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.size = self.size * 16 + d;
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = State::Ext,
                    b'\r' if self.digits > 0 => self.state = State::SizeLf,
                    _ => return Err("invalid chunk size"),
                },
                State::Ext => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => return Err("bare LF in chunk extension"),
                    0..=8 | 0x0a..=0x1f | 0x7f => return Err("control byte in chunk extension"),
                    _ => {}
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err("chunk size line not ended by CRLF");
                    }
                    self.digits = 0;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::Data => {
                    let take = (self.size as usize).min(bytes.len() - i);
                    self.size -= take as u64;
                    self.data += take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err("chunk data not followed by CRLF");
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err("chunk data not followed by CRLF");
                    }
                    self.state = State::Size;
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::EndLf,
                    b'\n' => return Err("bare LF after the last chunk"),
                    _ => {
                        self.state = State::Trailer;
                        continue;
                    }
                },
                State::Trailer => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > TRAILERS_MAX {
                        return Err("trailers too large");
                    }
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\n' => return Err("bare LF in trailers"),
                        _ => {}
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err("trailer line not ended by CRLF");
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err("chunked body not ended by CRLF");
                    }
                    self.state = State::Done;
                    return Ok(Some(i + 1));
                }
                State::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok((self.state == State::Done).then_some(bytes.len()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_end_where_they_end_however_they_are_split() {
        let body = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..=end {
            let mut c = Chunks::default();
            let first = c.feed(&body[..split]).unwrap();
            let got = match first {
                Some(n) => n,
                None => split + c.feed(&body[split..]).unwrap().expect("ends"),
            };
            assert_eq!(got, end, "split at {split}");
            assert_eq!(c.data, 31);
        }
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"x\r\n",
            b"\r\n",
            b"1000000000000000\r\n",
            b"5\r\nhelloXX",
            b"0\r\n\n",
            b"0\r\nX: 1\n\r\n",
            b"5;a\x01\r\n",
        ] {
            assert!(
                Chunks::default().feed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut huge = b"0\r\nX: ".to_vec();
        huge.resize(TRAILERS_MAX + 16, b'a');
        assert!(Chunks::default().feed(&huge).is_err());
    }
}
