//! The one allocation that holds every weight of a model: anonymous memory,
//! advised for huge pages on Linux, filled once while loading (`weights.rs`)
//! and then shared, read-only, by the tensors that point into it (`tensor.rs`).

/// One zero-initialized, page-aligned block of memory shared by all tensors.
pub struct Arena {
    ptr: *mut u8,
    len: usize,
    #[cfg(not(target_os = "linux"))]
    _vec: Vec<u8>,
}

// SAFETY: the arena is written only while loading, by its single owner, and
// read-only once shared.
unsafe impl Send for Arena {}
unsafe impl Sync for Arena {}

impl Arena {
    /// `len` zeroed bytes (at least one), or a message if the memory is not there.
    #[cfg(target_os = "linux")]
    pub(crate) fn new(len: usize) -> Result<Arena, String> {
        let len = len.max(1);
        // SAFETY: an anonymous private mapping; the kernel zero-fills it.
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
        if ptr == libc::MAP_FAILED {
            return Err(format!("cannot allocate {len} bytes for the weights"));
        }
        // Advice only: huge pages where the system allows them, before any page is touched.
        unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) };
        Ok(Arena {
            ptr: ptr as *mut u8,
            len,
        })
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn new(len: usize) -> Result<Arena, String> {
        let mut vec = vec![0u8; len.max(1)];
        Ok(Arena {
            ptr: vec.as_mut_ptr(),
            len: vec.len(),
            _vec: vec,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes `start..start+len`, for filling while the arena has one owner.
    pub(crate) fn slice_mut(&mut self, start: usize, len: usize) -> &mut [u8] {
        assert!(start + len <= self.len, "outside the arena");
        // SAFETY: inside the allocation, and `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }

    pub(crate) fn ptr_at(&self, start: usize) -> *const u8 {
        debug_assert!(start <= self.len);
        // SAFETY: inside the allocation.
        unsafe { self.ptr.add(start) }
    }
}

#[cfg(target_os = "linux")]
impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}
