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
    /// The trailer section's bytes, when kept ([`Chunks::keeping_trailers`]).
    trailers: Option<Vec<u8>>,
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
    /// A decoder that also keeps the trailer section's bytes (for [`Chunks::take_trailers`]):
    /// the HTTP/2 fast path turns them into a trailers frame.
    pub(super) fn keeping_trailers() -> Self {
        Self {
            trailers: Some(Vec::new()),
            ..Self::default()
        }
    }

    /// Feeds body bytes; returns how many of them belong to the body (all, unless it ended
    /// within them) once the body is complete, `Ok(None)` while it goes on.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, &'static str> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Data => {
                    let take = (self.size as usize).min(bytes.len() - i);
                    self.take_data(take);
                    i += take;
                }
                State::Done => return Ok(Some(i)),
                _ => {
                    if self.framing_byte(bytes[i])? {
                        i += 1;
                    }
                    if self.state == State::Done {
                        return Ok(Some(i));
                    }
                }
            }
        }
        Ok((self.state == State::Done).then_some(bytes.len()))
    }

    /// Decodes from the start of `bytes`: framing bytes are consumed up to the next chunk data
    /// or the body's end. Each call makes progress unless `bytes` is empty.
    pub(super) fn decode(&mut self, bytes: &[u8]) -> Result<Decoded, &'static str> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Data => {
                    let len = (self.size as usize).min(bytes.len() - i);
                    self.take_data(len);
                    return Ok(Decoded::Data { skip: i, len });
                }
                State::Done => return Ok(Decoded::End(i)),
                _ => {
                    if self.framing_byte(bytes[i])? {
                        i += 1;
                    }
                    if self.state == State::Done {
                        return Ok(Decoded::End(i));
                    }
                }
            }
        }
        Ok(if self.state == State::Done {
            Decoded::End(i)
        } else {
            Decoded::More(i)
        })
    }

    /// The trailer section's bytes (its field lines and the empty line that ends it), once the
    /// body is done, for a decoder made by [`Chunks::keeping_trailers`]; `None` without fields.
    pub(super) fn take_trailers(&mut self) -> Option<Vec<u8>> {
        self.trailers.take().filter(|t| t.len() > 2)
    }

    fn take_data(&mut self, n: usize) {
        self.size -= n as u64;
        self.data += n as u64;
        if self.size == 0 {
            self.state = State::DataCr;
        }
    }

    /// One byte outside chunk data: `Ok(true)` when it is consumed, `Ok(false)` when it must be
    /// read again in the state it moved to.
    fn framing_byte(&mut self, b: u8) -> Result<bool, &'static str> {
        let in_trailers = matches!(self.state, State::Trailer | State::TrailerLf | State::EndLf)
            || (self.state == State::TrailerStart && b == b'\r');
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
                    return Ok(false);
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
            }
            State::Data | State::Done => {}
        }
        if in_trailers {
            if let Some(t) = self.trailers.as_mut() {
                t.push(b);
            }
        }
        Ok(true)
    }
}

/// What [`Chunks::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    /// All of these bytes were framing: more are needed.
    More(usize),
    /// `skip` framing bytes, then `len` bytes of chunk data.
    Data { skip: usize, len: usize },
    /// The body ended after this many bytes.
    End(usize),
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
