//! AF_XDP kernel objects, one concept each: the UMEM (frame memory shared with the kernel), the
//! four single-producer/single-consumer rings, and the socket binding them to a device queue
//! (Documentation/networking/af_xdp.rst).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes per UMEM frame.
pub const FRAME_SIZE: u32 = 2048;

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(())
    }
}

/// An anonymous memory mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: Option<RawFd>, len: usize, offset: u64) -> io::Result<Self> {
        let (flags, fd) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
            ),
        };
        // SAFETY: a fresh mapping of `len` bytes; the kernel validates fd and offset.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned non-null"),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The frame memory registered with the first socket; frames are addressed by offset.
pub struct Umem {
    area: Mapping,
    pub frames: u32,
}

// SAFETY: the UMEM is plain memory; the owning worker thread is its only user-space accessor.
unsafe impl Send for Umem {}

impl Umem {
    pub fn new(frames: u32) -> io::Result<Self> {
        Ok(Umem {
            area: Mapping::new(None, (frames * FRAME_SIZE) as usize, 0)?,
            frames,
        })
    }

    /// The whole frame memory (frames are addressed by offset into it).
    pub fn area_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes and `&mut self` makes this the only user-space
        // reference; the kernel does not touch frames user space owns (not in a fill/TX ring).
        unsafe { std::slice::from_raw_parts_mut(self.area.ptr.as_ptr(), self.area.len) }
    }
}

/// One mmapped ring: producer/consumer indexes, flags and descriptors of type `T`.
pub struct Ring<T> {
    _map: Mapping,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut T,
    mask: u32,
    size: u32,
    /// Local copies of the indexes, refreshed from shared memory only when needed.
    cached_prod: u32,
    cached_cons: u32,
}

// SAFETY: the ring memory is only accessed by the thread owning the ring (and the kernel).
unsafe impl<T> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    fn map(fd: RawFd, off: &libc::xdp_ring_offset, size: u32, pgoff: u64) -> io::Result<Self> {
        let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        let map = Mapping::new(Some(fd), len, pgoff)?;
        let base = map.ptr.as_ptr();
        // SAFETY: offsets come from XDP_MMAP_OFFSETS for this very mapping.
        unsafe {
            Ok(Ring {
                producer: base.add(off.producer as usize).cast(),
                consumer: base.add(off.consumer as usize).cast(),
                flags: base.add(off.flags as usize).cast(),
                descs: base.add(off.desc as usize).cast(),
                mask: size - 1,
                size,
                cached_prod: 0,
                cached_cons: 0,
                _map: map,
            })
        }
    }

    fn load(p: *const AtomicU32) -> u32 {
        // SAFETY: `p` points into the live mapping, naturally aligned by the kernel.
        unsafe { (*p).load(Ordering::Acquire) }
    }

    fn store(p: *const AtomicU32, v: u32) {
        // SAFETY: as in `load`.
        unsafe { (*p).store(v, Ordering::Release) }
    }

    /// Whether the kernel asked to be woken (XDP_USE_NEED_WAKEUP).
    pub fn needs_wakeup(&self) -> bool {
        Self::load(self.flags) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    // --- producer side (fill, TX) ---

    /// Free slots, refreshing the kernel's consumer index when the cached view is short.
    pub fn free(&mut self, wanted: u32) -> u32 {
        let free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        if free >= wanted {
            return free;
        }
        self.cached_cons = Self::load(self.consumer);
        self.size - self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Writes one descriptor; call [`Self::free`] first. Made visible by [`Self::submit`].
    pub fn push(&mut self, desc: T) {
        // SAFETY: the index is masked into the ring; the slot is free (checked by the caller).
        unsafe {
            self.descs
                .add((self.cached_prod & self.mask) as usize)
                .write(desc)
        };
        self.cached_prod = self.cached_prod.wrapping_add(1);
    }

    pub fn submit(&mut self) {
        Self::store(self.producer, self.cached_prod);
    }

    /// Descriptors pushed but not yet consumed by the kernel.
    pub fn outstanding(&mut self) -> u32 {
        self.cached_cons = Self::load(self.consumer);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    // --- consumer side (RX, completion) ---

    /// Descriptors ready to read, up to `max`.
    pub fn available(&mut self, max: u32) -> u32 {
        let mut n = self.cached_prod.wrapping_sub(self.cached_cons);
        if n == 0 {
            self.cached_prod = Self::load(self.producer);
            n = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        n.min(max)
    }

    /// The `i`-th available descriptor.
    pub fn peek(&self, i: u32) -> T {
        // SAFETY: masked index of a descriptor the kernel produced (checked by `available`).
        unsafe {
            self.descs
                .add((self.cached_cons.wrapping_add(i) & self.mask) as usize)
                .read()
        }
    }

    /// Returns `n` read descriptors to the kernel.
    pub fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        Self::store(self.consumer, self.cached_cons);
    }
}

/// An AF_XDP socket bound to one queue of one device, with its four rings.
pub struct XskSocket {
    fd: OwnedFd,
    pub rx: Ring<libc::xdp_desc>,
    pub tx: Ring<libc::xdp_desc>,
    pub fill: Ring<u64>,
    pub completion: Ring<u64>,
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, value: &T, what: &str) -> io::Result<()> {
    // SAFETY: `value` is a valid T for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    check(rc, what)
}

impl XskSocket {
    /// Creates a socket on `ifindex`/`queue`. The first socket of a UMEM registers it
    /// (`shared = None`); later ones share the first one's UMEM (`shared = Some(first fd)`) with
    /// their own fill and completion rings.
    pub fn bind(
        umem: &Umem,
        ifindex: u32,
        queue: u32,
        ring_size: u32,
        shared: Option<RawFd>,
    ) -> io::Result<Self> {
        // SAFETY: plain syscall.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        check(raw, "socket(AF_XDP)")?;
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let raw = fd.as_raw_fd();
        if shared.is_none() {
            let reg = libc::xdp_umem_reg {
                addr: umem.area.ptr.as_ptr() as u64,
                len: umem.area.len as u64,
                chunk_size: FRAME_SIZE,
                headroom: 0,
                flags: 0,
                tx_metadata_len: 0,
            };
            setsockopt(raw, libc::XDP_UMEM_REG, &reg, "XDP_UMEM_REG")?;
        }
        setsockopt(
            raw,
            libc::XDP_UMEM_FILL_RING,
            &ring_size,
            "XDP_UMEM_FILL_RING",
        )?;
        setsockopt(
            raw,
            libc::XDP_UMEM_COMPLETION_RING,
            &ring_size,
            "XDP_UMEM_COMPLETION_RING",
        )?;
        setsockopt(raw, libc::XDP_RX_RING, &ring_size, "XDP_RX_RING")?;
        setsockopt(raw, libc::XDP_TX_RING, &ring_size, "XDP_TX_RING")?;
        // SAFETY: all-zero is a valid xdp_mmap_offsets; the kernel fills it.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as u32;
        // SAFETY: `off` and `len` are valid for writing.
        let rc = unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut len,
            )
        };
        check(rc, "XDP_MMAP_OFFSETS")?;
        let rx = Ring::map(raw, &off.rx, ring_size, libc::XDP_PGOFF_RX_RING as u64)?;
        let tx = Ring::map(raw, &off.tx, ring_size, libc::XDP_PGOFF_TX_RING as u64)?;
        let fill = Ring::map(raw, &off.fr, ring_size, libc::XDP_UMEM_PGOFF_FILL_RING)?;
        let completion = Ring::map(
            raw,
            &off.cr,
            ring_size,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        )?;
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            // A socket sharing a UMEM may not ask for copy mode or need-wakeup itself.
            sxdp_flags: match shared {
                None => libc::XDP_USE_NEED_WAKEUP,
                Some(_) => libc::XDP_SHARED_UMEM,
            },
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: shared.unwrap_or(0) as u32,
        };
        // SAFETY: a valid sockaddr_xdp of the right size.
        let rc = unsafe {
            libc::bind(
                raw,
                (&addr as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as u32,
            )
        };
        check(rc, "bind(AF_XDP)")?;
        Ok(XskSocket {
            fd,
            rx,
            tx,
            fill,
            completion,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Asks the kernel to process the TX ring (copy mode moves frames only inside this call).
    pub fn kick_tx(&self) {
        // SAFETY: a zero-length sendto on our own socket.
        unsafe {
            libc::sendto(
                self.fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
    }

    /// Wakes the kernel's RX side when it asked for it.
    pub fn kick_rx(&self) {
        // SAFETY: a zero-length recvfrom on our own socket.
        unsafe {
            libc::recvfrom(
                self.fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }
}
