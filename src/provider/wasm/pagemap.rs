//! Which pages of a linear memory were written since its instance started,
//! from the kernel's page table (`/proc/self/pagemap`).
//!
//! A memory starts as a copy-on-write mapping of its module's image (and
//! anonymous zeros past it). A page the guest only read is still the
//! image's page (a file or shared page) or the zero page; a page it wrote
//! is a private anonymous page of this process, or was swapped out. Each
//! pagemap entry says which: bit 63 present, bit 62 swapped, bit 61 a file
//! or shared page. Flags are readable without privileges (only the frame
//! numbers are hidden).

use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

/// The 4 KiB page the snapshots count in.
const PAGE: usize = 4096;

const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const FILE_OR_SHARED: u64 = 1 << 61;

/// Entries read per `pread` (512 KiB of entries, 1 GiB of memory with
/// 4 KiB pages).
const BATCH: usize = 64 * 1024;

fn pagemap() -> Option<&'static std::fs::File> {
    static FILE: OnceLock<Option<std::fs::File>> = OnceLock::new();
    FILE.get_or_init(|| std::fs::File::open("/proc/self/pagemap").ok())
        .as_ref()
}

fn host_page() -> usize {
    static SIZE: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *SIZE.get_or_init(|| usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(PAGE))
}

/// Appends to `out` the index of every 4 KiB page of `data` that may differ
/// from what a fresh instance holds there. Where the page table cannot be
/// read, that is every page: the caller then copies the whole memory, as
/// correct as ever, only slower.
pub fn written_pages(data: &[u8], out: &mut Vec<u32>) {
    let all = |out: &mut Vec<u32>| out.extend(0..(data.len() / PAGE) as u32);
    let host = host_page();
    let base = data.as_ptr() as usize;
    let Some(file) = pagemap() else { return all(out) };
    if host < PAGE || !host.is_multiple_of(PAGE) || !base.is_multiple_of(host) || !data.len().is_multiple_of(host) {
        return all(out);
    }
    let per_host = host / PAGE;
    let first = base / host;
    let count = data.len() / host;
    let mut entries = vec![0u8; BATCH.min(count.max(1)) * 8];
    let mut done = 0;
    while done < count {
        let n = BATCH.min(count - done);
        let buf = &mut entries[..n * 8];
        if file.read_exact_at(buf, ((first + done) * 8) as u64).is_err() {
            out.clear();
            return all(out);
        }
        for (i, entry) in buf.chunks_exact(8).enumerate() {
            let bits = u64::from_le_bytes(entry.try_into().expect("8 bytes"));
            let written = (bits & PRESENT != 0 && bits & FILE_OR_SHARED == 0) || bits & SWAPPED != 0;
            if written {
                let page = ((done + i) * per_host) as u32;
                out.extend(page..page + per_host as u32);
            }
        }
        done += n;
    }
}

/// Buffers at least this large get transparent huge pages.
const HUGE_MIN: usize = 4 << 20;
const HUGE: usize = 2 << 20;

/// Reserves room for `additional` more bytes in `buf`, asking the kernel to
/// back a large new allocation with huge pages (where transparent huge
/// pages are on for `madvise`): a 50 MB snapshot then costs 25 page faults,
/// not 12,800. Advice only; nothing depends on it being taken.
pub fn reserve_huge(buf: &mut Vec<u8>, additional: usize) {
    let before = buf.capacity();
    buf.reserve(additional);
    if buf.capacity() != before && buf.capacity() >= HUGE_MIN {
        let start = (buf.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (buf.as_ptr() as usize + buf.capacity()) / HUGE * HUGE;
        if end > start {
            // SAFETY: advice on memory this Vec owns; it changes no contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
}

/// Faults `data` in for writing in one call (`MADV_POPULATE_WRITE`, Linux
/// 5.14), instead of one fault per page as a copy into it would take.
/// Advice only: on older kernels the copy faults as before.
pub fn populate_for_write(data: &mut [u8]) {
    let host = host_page();
    let start = (data.as_mut_ptr() as usize).next_multiple_of(host);
    let end = (data.as_mut_ptr() as usize + data.len()) / host * host;
    if end > start {
        // SAFETY: the range lies inside `data`, writable memory we hold
        // mutably; populating changes no contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_POPULATE_WRITE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pages_written_in_a_private_file_mapping_are_reported() {
        use std::os::fd::AsRawFd;
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &vec![7u8; 64 * PAGE]).unwrap();
        let len = 128 * PAGE;
        // The file's 64 pages, then 64 anonymous ones, as a wasm memory with
        // an image is laid out.
        // SAFETY: a fresh private mapping of a file we own, unmapped below.
        let ptr = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let q = libc::mmap(
                p,
                64 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            );
            assert_eq!(q, p);
            p.cast::<u8>()
        };
        // SAFETY: the mapping is `len` bytes, readable and writable.
        let data = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        let mut sum = 0u64;
        for page in [0, 5, 70] {
            sum += u64::from(data[page * PAGE]); // read only
        }
        for page in [3, 4, 63, 64, 100] {
            data[page * PAGE + 1] = 1;
        }
        let mut pages = vec![];
        written_pages(data, &mut pages);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(ptr.cast(), len) };
        assert_eq!(sum, 14);
        // Page 70 was read in the anonymous part: the zero page, which is
        // reported (copying it is harmless); the file's read pages are not.
        let expected: Vec<u32> = if host_page() == PAGE {
            vec![3, 4, 63, 64, 70, 100]
        } else {
            pages.clone()
        };
        assert_eq!(pages, expected);
    }
}
