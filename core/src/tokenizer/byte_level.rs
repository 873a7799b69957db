//! GPT-2 byte-level alphabet: every byte maps to one printable character so that byte-level BPE
//! vocabularies can be stored as text (`Ġ` is the space byte, `Ċ` the newline byte).

use std::sync::OnceLock;

/// The two directions of the byte <-> character table.
struct ByteTable {
    to_char: [char; 256],
    // Index by `char as usize - 0`: every mapped char is below U+0144.
    to_byte: [Option<u8>; 324],
}

fn table() -> &'static ByteTable {
    static TABLE: OnceLock<ByteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u32| {
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
        };
        let mut to_char = ['\0'; 256];
        let mut to_byte = [None; 324];
        let mut next = 256u32;
        for b in 0..256u32 {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            // All values are below 0x144, so they are valid chars.
            let ch = char::from_u32(c).unwrap_or('\0');
            to_char[b as usize] = ch;
            to_byte[c as usize] = Some(b as u8);
        }
        ByteTable { to_char, to_byte }
    })
}

/// Appends the byte-level encoding of `text` to `out`.
pub(crate) fn encode_into(text: &str, out: &mut String) {
    let t = table();
    for &b in text.as_bytes() {
        out.push(t.to_char[b as usize]);
    }
}

/// The byte-level character of one byte.
pub(crate) fn byte_char(b: u8) -> char {
    table().to_char[b as usize]
}

/// Decodes a byte-level token text back to raw bytes; `None` when a character is not in the
/// alphabet (the token is then not a byte-level token, e.g. an added special token).
pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
    let t = table();
    text.chars()
        .map(|c| t.to_byte.get(c as usize).copied().flatten())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_and_newline_map_like_gpt2() {
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(b'\n'), 'Ċ');
        assert_eq!(byte_char(b'a'), 'a');
        let all: Vec<u8> = (0..=255).collect();
        let mut s = String::new();
        for &b in &all {
            s.push(byte_char(b));
        }
        assert_eq!(decode(&s), Some(all));
        assert_eq!(decode("€"), None);
    }
}
