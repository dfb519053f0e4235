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
/// Set on a write-protected entry; a protected page that was never
/// populated is a marker that also reads as "swapped".
const UFFD_WP: u64 = 1 << 57;

/// Entries read per `pread` (512 KiB of entries, 1 GiB of memory with
/// 4 KiB pages).
const BATCH: usize = 64 * 1024;

fn pagemap() -> Option<&'static std::fs::File> {
    static FILE: OnceLock<Option<std::fs::File>> = OnceLock::new();
    FILE.get_or_init(|| std::fs::File::open("/proc/self/pagemap").ok())
        .as_ref()
}

/// Whether the host has any swap space on (`/proc/swaps` lists one).
fn host_swaps() -> bool {
    static SWAPS: OnceLock<bool> = OnceLock::new();
    *SWAPS.get_or_init(|| {
        std::fs::read_to_string("/proc/swaps").map_or(true, |text| text.lines().skip(1).any(|l| !l.trim().is_empty()))
    })
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
            // A tracked memory's untouched pages are markers that read as
            // swapped and protected; trackers are only made where nothing
            // swaps, so those are never pages that were written.
            let swapped = bits & SWAPPED != 0 && bits & UFFD_WP == 0;
            let written = (bits & PRESENT != 0 && bits & FILE_OR_SHARED == 0) || swapped;
            if written {
                let page = ((done + i) * per_host) as u32;
                out.extend(page..page + per_host as u32);
            }
        }
        done += n;
    }
}

/// Tracks which pages of a memory are written, with userfaultfd's
/// asynchronous write protection (Linux 6.7): every page starts protected,
/// a write to one un-protects it (the kernel resolves that fault itself, no
/// handler thread), and the `PAGEMAP_SCAN` ioctl lists the pages written
/// since the last scan and protects them again, in one call. A context's
/// rollback point is then kept up to date by copying only what each cell
/// wrote. Where the kernel does not offer it, nothing is tracked and the
/// caller copies every written page, as before.
pub struct WriteTracker {
    uffd: std::os::fd::OwnedFd,
    base: usize,
    len: usize,
}

// The kernel's interfaces (include/uapi/linux/userfaultfd.h, fs.h).
const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xC018_AA06;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// Regions one scan call returns at most; a scan that fills them goes on.
const SCAN_REGIONS: usize = 512;

impl WriteTracker {
    /// Starts tracking `data` (page-aligned): from now on, the pages written
    /// are listed by [`Self::take_written`]. None where it is not offered.
    pub fn new(data: &[u8]) -> Option<WriteTracker> {
        use std::os::fd::FromRawFd;
        let host = host_page();
        let base = data.as_ptr() as usize;
        if host != PAGE || !base.is_multiple_of(host) || !data.len().is_multiple_of(host) || data.is_empty() {
            return None;
        }
        pagemap()?;
        // A swapped-out page that was protected again after its write reads
        // like an untouched marker (`written_pages` skips both): on a host
        // that swaps, writes are not tracked this way.
        if host_swaps() {
            return None;
        }
        // SAFETY: userfaultfd takes flags only; the result is a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: a descriptor we just opened and own.
        let uffd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) };
        let mut tracker = WriteTracker { uffd, base, len: 0 };
        let mut api = [
            UFFD_API,
            UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
            0u64,
        ];
        if tracker.ioctl(UFFDIO_API, api.as_mut_ptr().cast()) != 0 {
            return None;
        }
        tracker.extend(data.len()).then_some(tracker)
    }

    fn ioctl(&self, request: libc::c_ulong, arg: *mut libc::c_void) -> libc::c_int {
        use std::os::fd::AsRawFd;
        // SAFETY: `arg` points at the structure `request` expects, alive
        // for the call.
        unsafe { libc::ioctl(self.uffd.as_raw_fd(), request, arg) }
    }

    /// The bytes tracked, from the start of the memory.
    pub fn tracked_len(&self) -> usize {
        self.len
    }

    /// Tracks the memory up to `len` bytes (it grew): the new part is
    /// registered and protected. Whether that worked.
    pub fn extend(&mut self, len: usize) -> bool {
        if len <= self.len {
            return true;
        }
        let (start, size) = ((self.base + self.len) as u64, (len - self.len) as u64);
        let mut register = [start, size, UFFDIO_REGISTER_MODE_WP, 0u64];
        if self.ioctl(UFFDIO_REGISTER, register.as_mut_ptr().cast()) != 0 {
            return false;
        }
        let mut protect = [start, size, UFFDIO_WRITEPROTECT_MODE_WP];
        if self.ioctl(UFFDIO_WRITEPROTECT, protect.as_mut_ptr().cast()) != 0 {
            return false;
        }
        self.len = len;
        true
    }

    /// Appends the 4 KiB pages written since the last call (or since
    /// tracking started) to `out`, and protects them again.
    pub fn take_written(&mut self, out: &mut Vec<u32>) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let file = pagemap().ok_or_else(|| std::io::Error::other("no pagemap"))?;
        let end = (self.base + self.len) as u64;
        let mut regions = vec![[0u64; 3]; SCAN_REGIONS];
        let mut start = self.base as u64;
        while start < end {
            let mut arg: [u64; 12] = [
                96,
                PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                start,
                end,
                0,
                regions.as_mut_ptr() as u64,
                SCAN_REGIONS as u64,
                0,
                0,
                PAGE_IS_WRITTEN,
                0,
                PAGE_IS_WRITTEN,
            ];
            // SAFETY: a pm_scan_arg (12 u64s) pointing at `regions`, which
            // holds SCAN_REGIONS page_region entries (3 u64s each).
            let found = unsafe { libc::ioctl(file.as_raw_fd(), PAGEMAP_SCAN, arg.as_mut_ptr()) };
            if found < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for region in &regions[..found as usize] {
                let first = ((region[0] - self.base as u64) / PAGE as u64) as u32;
                let last = ((region[1] - self.base as u64) / PAGE as u64) as u32;
                out.extend(first..last);
            }
            let walk_end = arg[4];
            if walk_end <= start {
                return Err(std::io::Error::other("the page scan made no progress"));
            }
            start = walk_end;
        }
        Ok(())
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
    fn a_write_tracker_lists_the_pages_written_since_its_last_scan() {
        let len = 64 * PAGE;
        // SAFETY: a fresh anonymous mapping, unmapped below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        // SAFETY: the mapping is `len` bytes, readable and writable.
        let data = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), len) };
        data[PAGE] = 1;
        let Some(mut tracker) = WriteTracker::new(&data[..32 * PAGE]) else {
            eprintln!("userfaultfd write protection is not offered here; nothing to test");
            // SAFETY: the mapping made above.
            unsafe { libc::munmap(ptr, len) };
            return;
        };
        let mut pages = vec![];
        tracker.take_written(&mut pages).unwrap();
        assert_eq!(pages, Vec::<u32>::new());
        let _ = std::hint::black_box(data[5 * PAGE]);
        for page in [2, 3, 20] {
            data[page * PAGE + 7] = 9;
        }
        tracker.take_written(&mut pages).unwrap();
        assert_eq!(pages, vec![2, 3, 20]);
        pages.clear();
        data[3 * PAGE] = 4;
        assert!(tracker.extend(64 * PAGE));
        data[40 * PAGE] = 4;
        tracker.take_written(&mut pages).unwrap();
        assert_eq!(pages, vec![3, 40]);
        pages.clear();
        tracker.take_written(&mut pages).unwrap();
        assert_eq!(pages, Vec::<u32>::new());
        drop(tracker);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(ptr, len) };
    }

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
