//! The JSON walker's byte scanning ([`crate::json_walk`]): where a string may end, and
//! what a byte is to a number or literal being read.

/// What a byte is to a scalar being read: part of it, its end, or not JSON.
const NOT_SCALAR: u8 = 0;
pub(crate) const IN_SCALAR: u8 = 1;
pub(crate) const ENDS_SCALAR: u8 = 2;
pub(crate) static SCALAR_CLASS: [u8; 256] = {
    let mut t = [NOT_SCALAR; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.') {
            t[b] = IN_SCALAR;
        } else if matches!(c, b',' | b']' | b'}' | b' ' | b'\n' | b'\r' | b'\t') {
            t[b] = ENDS_SCALAR;
        }
        b += 1;
    }
    t
};

/// Where a string may end in `s`: its first `"` or `\`. Most keys and values end within a
/// few words, so those are searched a word at a time before memchr's vector search, whose
/// set-up costs more than such a string.
pub(crate) fn quote_or_escape(s: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut i = 0;
    while i + 8 <= s.len().min(32) {
        let w = u64::from_le_bytes(s[i..i + 8].try_into().expect("a word"));
        // A flag is exact at the lowest zero byte (a borrow only flags bytes above it).
        let hit =
            zero_byte(w ^ (ONES * u64::from(b'"'))) | zero_byte(w ^ (ONES * u64::from(b'\\')));
        if hit != 0 {
            return Some(i + (hit.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    memchr::memchr2(b'"', b'\\', &s[i..]).map(|j| i + j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_strings_end_is_found_wherever_it_lies() {
        for len in 0..80 {
            for at in 0..=len {
                for (mark, other) in [(b'"', b'\\'), (b'\\', b'"')] {
                    // Bytes that differ from the marks by one bit, and high bytes, where a
                    // word-at-a-time search could be fooled.
                    let mut s: Vec<u8> =
                        (0..len).map(|i| [b'#', 0xa2, b']', 0xdc][i % 4]).collect();
                    if at < len {
                        s[at] = mark;
                        if at + 1 < len {
                            s[at + 1] = other;
                        }
                    }
                    let want = memchr::memchr2(b'"', b'\\', &s);
                    assert_eq!(quote_or_escape(&s), want, "len {len} at {at}");
                }
            }
        }
    }

    #[test]
    fn a_scalars_bytes_and_its_ends() {
        for b in 0..=255u8 {
            let want = if b.is_ascii_alphanumeric() || b"-+.".contains(&b) {
                IN_SCALAR
            } else if b",]} \n\r\t".contains(&b) {
                ENDS_SCALAR
            } else {
                NOT_SCALAR
            };
            assert_eq!(SCALAR_CLASS[usize::from(b)], want, "byte {b}");
        }
    }
}
