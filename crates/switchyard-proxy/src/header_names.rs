//! Header names as this worker last read them. A peer sends the same names in every head
//! (a client's `host`, `content-type`, `x-request-id`; a provider's `date`, `server`, its
//! rate-limit headers), and `HeaderName::from_bytes` validates and lowercases each one
//! again, about 150 instructions a name. Here a name sent as before is one compare of its
//! bytes and a clone.

use std::cell::RefCell;

use http::header::{HeaderName, InvalidHeaderName};

/// Slots of the per-thread cache, direct-mapped: a real head has 5–25 names, and a name
/// that collides is only read the slow way.
const SLOTS: usize = 64;
/// Longest name kept (`x-ratelimit-remaining-requests` is 30 bytes).
const NAME_MAX: usize = 32;

struct Slot {
    len: u8,
    sent: [u8; NAME_MAX],
    name: HeaderName,
}

thread_local! {
    static SEEN: RefCell<[Option<Slot>; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
}

/// The header name sent as `sent`, as [`HeaderName::from_bytes`] reads it.
pub(crate) fn read(sent: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    let len = sent.len();
    if len == 0 || len > NAME_MAX {
        return HeaderName::from_bytes(sent);
    }
    let mix = (len as u32)
        ^ u32::from(sent[0]) << 6
        ^ u32::from(sent[len - 1]) << 1
        ^ u32::from(sent[len / 2]) << 11;
    let at = (mix.wrapping_mul(0x9e37_79b1) >> 26) as usize;
    SEEN.with_borrow_mut(|seen| {
        if let Some(slot) = &seen[at] {
            if &slot.sent[..usize::from(slot.len)] == sent {
                return Ok(slot.name.clone());
            }
        }
        let name = HeaderName::from_bytes(sent)?;
        let mut slot = Slot {
            len: len as u8,
            sent: [0; NAME_MAX],
            name: name.clone(),
        };
        slot.sent[..len].copy_from_slice(sent);
        seen[at] = Some(slot);
        Ok(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_reads_as_from_bytes_reads_it_first_time_and_after() {
        let mut names: Vec<Vec<u8>> = [
            "host",
            "Host",
            "HOST",
            "content-type",
            "Content-Length",
            "x-request-id",
            "X-Request-Id",
            "x-ratelimit-remaining-requests",
            "x-a-name-longer-than-thirty-two-bytes-is-read-each-time",
            "a",
            "",
            "bad name",
            "bad:name",
            "\u{e9}t\u{e9}",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        // Enough names that slots are shared and replaced.
        names.extend((0..300).map(|i| format!("x-custom-{i}").into_bytes()));
        for round in 0..3 {
            for sent in &names {
                let want = HeaderName::from_bytes(sent).ok();
                assert_eq!(read(sent).ok(), want, "round {round}: {sent:?}");
            }
        }
    }
}
