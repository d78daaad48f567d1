//! Buffers for bytes on their way into TLS, placed so that copying them is
//! fast.
//!
//! Design bias: *a copy the CPU does 15× slower is a copy we arrange not to
//! make*. rustls encrypts in place: it first copies each record's plaintext
//! into a fresh buffer, 5 bytes past its start (after the record header),
//! and glibc copies anything of 4 KiB or more with `rep movsb`. On AMD
//! EPYC (measured on this project's 2-core CI machines, glibc 2.36) `rep
//! movsb` runs at about 2 GB/s instead of 30 when the destination is 1 to 31
//! bytes past the source modulo 4 KiB ("4K aliasing"); see
//! docs/performance.md. The allocator hands out large buffers on 4 KiB
//! boundaries, so a plaintext chunk that starts on one (a read buffer, a
//! chunk queued for a tunnel) lands exactly 5 bytes behind its copy: every
//! record of a bulk transfer took the slow path, and that one copy was 12%
//! of both sidecars' CPU.
//!
//! So the large buffers whose bytes rustls copies start [`LEAD`] bytes past
//! the allocation: the distance to rustls's copy is then 4 KiB − 59, where
//! `rep movsb` runs at full speed. On CPUs without the penalty this costs 64
//! bytes per buffer and nothing else.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes left unused at the front of a buffer (see the module doc).
pub const LEAD: usize = 64;

/// `data` copied into a new buffer that starts [`LEAD`] bytes into its
/// allocation.
pub(crate) fn led_copy(data: &[u8]) -> Bytes {
    let mut room = led_room(data.len());
    room.put_slice(data);
    room.freeze()
}

/// An empty buffer with room for `len` bytes that start [`LEAD`] bytes into
/// its allocation: read into it, then split what was read off as [`Bytes`]
/// to be handed on without a copy (the rest of the room stays behind for
/// the next read).
pub(crate) fn led_room(len: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(LEAD + len);
    buf.put_bytes(0, LEAD);
    buf.advance(LEAD);
    buf
}

/// A read buffer of `len` usable bytes that start [`LEAD`] bytes into the
/// allocation: read into and write out of [`ReadBuffer::bytes`].
pub(crate) struct ReadBuffer {
    buf: Vec<u8>,
}

impl ReadBuffer {
    pub fn new(len: usize) -> ReadBuffer {
        ReadBuffer {
            buf: vec![0; LEAD + len],
        }
    }

    /// The usable bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        &mut self.buf[LEAD..]
    }

    pub fn len(&self) -> usize {
        self.buf.len() - LEAD
    }

    /// Grows (or shrinks) the usable part to `len` bytes.
    pub fn resize(&mut self, len: usize) {
        self.buf.resize(LEAD + len, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How far into its allocation `bytes` starts.
    fn lead_of(bytes: &[u8], allocation_start: usize) -> usize {
        bytes.as_ptr() as usize - allocation_start
    }

    #[test]
    fn a_copy_holds_the_data() {
        let data: Vec<u8> = (0..=255).cycle().take(70_000).collect();
        assert_eq!(&led_copy(&data)[..], &data[..]);
        assert!(led_copy(&[]).is_empty());
    }

    #[test]
    fn a_room_starts_lead_bytes_in_and_keeps_its_rest_for_the_next_read() {
        let mut room = led_room(8192);
        let start = room.as_ptr() as usize - LEAD;
        assert!(room.is_empty());
        assert!(room.capacity() >= 8192);
        room.put_slice(b"first");
        let first = room.split().freeze();
        assert_eq!(&first[..], b"first");
        assert_eq!(lead_of(&first, start), LEAD);
        room.put_slice(b"second");
        let second = room.split().freeze();
        assert_eq!(
            lead_of(&second, start),
            LEAD + 5,
            "the same allocation, no copy"
        );
        assert!(room.capacity() >= 8192 - 11);
    }

    #[test]
    fn a_read_buffer_reads_into_its_usable_part_and_grows() {
        let mut buffer = ReadBuffer::new(4096);
        assert_eq!(buffer.len(), 4096);
        buffer.bytes()[..3].copy_from_slice(b"abc");
        assert_eq!(
            buffer.bytes().as_ptr() as usize - buffer.buf.as_ptr() as usize,
            LEAD
        );
        buffer.resize(8192);
        assert_eq!(buffer.len(), 8192);
        assert_eq!(&buffer.bytes()[..3], b"abc");
        assert_eq!(buffer.bytes().len(), 8192);
    }
}
