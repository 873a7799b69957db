//! Turns a stream of token bytes into text pieces that are always whole UTF-8 characters and
//! never show a stop string (or the start of one that may still complete).

/// Incremental detokenizer with stop-string handling.
pub struct TextStream {
    pending: Vec<u8>,
    /// Decoded text not yet emitted because it may be the start of a stop string.
    held: String,
    stops: Vec<String>,
    /// All text emitted so far.
    emitted: String,
}

/// What pushing one token produced.
#[derive(Debug, Default, PartialEq)]
pub struct Pushed {
    /// Text safe to show now (may be empty).
    pub text: String,
    /// A stop string was completed: generation ends, and it is not part of the text.
    pub stopped: bool,
}

impl TextStream {
    /// A stream that stops at any of `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        TextStream {
            pending: Vec::new(),
            held: String::new(),
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            emitted: String::new(),
        }
    }

    /// Adds one token's bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Pushed {
        self.pending.extend_from_slice(bytes);
        // Take the longest valid UTF-8 prefix; an invalid sequence that cannot be completed
        // (not a truncated tail) is replaced so the stream never stalls.
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) => match e.error_len() {
                None => e.valid_up_to(),
                Some(_) => {
                    let s = String::from_utf8_lossy(&self.pending).into_owned();
                    self.pending.clear();
                    return self.accept(s);
                }
            },
        };
        let s = String::from_utf8(self.pending.drain(..valid).collect()).unwrap_or_default();
        self.accept(s)
    }

    fn accept(&mut self, s: String) -> Pushed {
        self.held.push_str(&s);
        for stop in &self.stops {
            if let Some(i) = self.held.find(stop.as_str()) {
                let text = self.held[..i].to_owned();
                self.held.clear();
                self.emitted.push_str(&text);
                return Pushed {
                    text,
                    stopped: true,
                };
            }
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let mut keep = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if self.held.ends_with(&stop[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.held.len() - keep;
        let text: String = self.held.drain(..cut).collect();
        self.emitted.push_str(&text);
        Pushed {
            text,
            stopped: false,
        }
    }

    /// Flushes what is held at the end of generation (incomplete UTF-8 becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let mut text = std::mem::take(&mut self.held);
        if !self.pending.is_empty() {
            text.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
        self.emitted.push_str(&text);
        text
    }

    /// All text emitted so far.
    pub fn text(&self) -> &str {
        &self.emitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_splits_a_character() {
        let mut t = TextStream::new(&[]);
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(t.push(&euro[..1]).text, "");
        assert_eq!(t.push(&euro[1..2]).text, "");
        assert_eq!(t.push(&euro[2..]).text, "€");
        assert_eq!(t.push(b"ab").text, "ab");
    }

    #[test]
    fn stop_string_across_tokens_is_cut_and_not_shown() {
        let mut t = TextStream::new(&["</end>".to_string()]);
        assert_eq!(
            t.push(b"hello </"),
            Pushed {
                text: "hello ".into(),
                stopped: false
            }
        );
        assert_eq!(
            t.push(b"en"),
            Pushed {
                text: "".into(),
                stopped: false
            }
        );
        let p = t.push(b"d> more");
        assert!(p.stopped);
        assert_eq!(t.text(), "hello ");
    }

    #[test]
    fn held_prefix_is_released_when_it_does_not_complete() {
        let mut t = TextStream::new(&["STOP".to_string()]);
        assert_eq!(t.push(b"a ST").text, "a ");
        assert_eq!(t.push(b"AR").text, "STAR");
        assert_eq!(t.push(b"ST").text, "");
        assert_eq!(t.finish(), "ST");
        assert_eq!(t.text(), "a STARST");
    }

    #[test]
    fn invalid_bytes_do_not_stall() {
        let mut t = TextStream::new(&[]);
        assert_eq!(t.push(&[0xff, b'a']).text, "\u{fffd}a");
    }
}
