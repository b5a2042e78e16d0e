//! The process's one SIGPROF handler: it unwinds the interrupted thread and writes the stack into
//! a ring of fixed slots that the CPU sampler thread drains ([`super::cpu`]).
//!
//! Why our own and not pprof-rs's: pprof-rs sets its unwinder up inside the signal handler (where
//! an allocation interrupted by the first signal deadlocks, so it had to be warmed up at start-up,
//! reading the whole binary), and keeps a 21 MB sample table allocated for the life of the process.
//! Here everything the handler touches is made on the sampler thread before the timer starts:
//! - the unwinder ([`Unwinder`]) is built once, on the first [`Session::start`], over read-only
//!   mappings of each loaded object's unwind sections: nothing is copied, and only the pages an
//!   unwind touches become resident;
//! - a [`Session`] owns the ring and the unwinder's cache while sampling, and frees them when
//!   sampling stops.
//!
//! The handler allocates nothing, takes no lock and calls only async-signal-safe system calls
//! (`write`/`read` on a pipe to validate stack reads, `prctl` for the thread's name), so it is
//! safe wherever the signal lands. One session exists at a time, and nothing else in this process
//! installs SIGPROF.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::ffi::{CStr, c_int, c_void};
use std::ops::{Deref, Range};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use framehop::{
    CacheNative, FrameAddress, MustNotAllocateDuringUnwind, Unwinder as _, UnwinderNative,
};
use memmap2::Mmap;
use object::{Object, ObjectSection};

/// The deepest stack kept; deeper stacks keep their leaf-most frames.
pub const MAX_DEPTH: usize = 128;
/// Slots in the ring: at 99 Hz on every core and a drain every 50 ms, a handful are in use.
const SLOTS: usize = 256;

/// One sampled stack, as the handler wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSample {
    /// The interrupted instruction, then return addresses, leaf first.
    pub addresses: Vec<u64>,
    /// The interrupted thread's name.
    pub thread: String,
}

/// Why sampling could not start.
#[derive(Debug, thiserror::Error)]
pub enum SigprofError {
    /// Another session is running: there is one SIGPROF handler per process.
    #[error("another CPU sampling session is running")]
    Busy,
    /// No loaded object had unwind information (this target is not supported, or the binary was
    /// built without it).
    #[error("no unwind information was found in this process")]
    NoUnwindInfo,
    /// A system call failed.
    #[error("{0}: {1}")]
    System(&'static str, std::io::Error),
}

/// A sampling session: while alive, the interval timer raises SIGPROF every `1 / frequency` of
/// CPU time and the handler fills this session's ring.
pub struct Session {
    shared: *mut Shared,
}

// SAFETY: `Shared` is only reached through atomics and the `busy` flag (see its fields); the raw
// pointer is owned by the session and freed once no handler can see it.
unsafe impl Send for Session {}

/// What the handler reads while a session runs.
struct Shared {
    unwinder: &'static Unwinder,
    /// Held by the one handler unwinding; a signal landing meanwhile (on another thread) drops
    /// its sample rather than wait.
    busy: AtomicBool,
    /// Only touched while `busy` is held.
    cache: UnsafeCell<CacheNative<MustNotAllocateDuringUnwind>>,
    /// A pipe whose `write` validates a stack address before it is read (`EFAULT` if unmapped).
    /// Only touched while `busy` is held.
    probe: (OwnedFd, OwnedFd),
    slots: Box<[Slot]>,
    next: AtomicUsize,
    dropped: AtomicU64,
}

const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const FULL: u8 = 2;

struct Slot {
    state: AtomicU8,
    data: UnsafeCell<SlotData>,
}

struct SlotData {
    depth: usize,
    thread: [u8; 16],
    addresses: [u64; MAX_DEPTH],
}

/// The session the handler writes to; null while none runs.
static ACTIVE: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());
/// Handlers currently running: a session is freed only once none can still see it.
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);
/// Whether a session exists (there is one at a time).
static OWNED: AtomicBool = AtomicBool::new(false);
/// CPU time spent sampling in the handler, every thread together, in nanoseconds.
static HANDLER_NANOS: AtomicU64 = AtomicU64::new(0);
/// The handler, installed once and left in place (it ignores signals while no session runs).
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// CPU time the handler has spent sampling since the process started, every thread together.
pub fn handler_cpu_time() -> Duration {
    Duration::from_nanos(HANDLER_NANOS.load(Ordering::Relaxed))
}

/// Whether a sampling session is running now (the timer is armed and SIGPROF is sampled).
pub fn running() -> bool {
    OWNED.load(Ordering::Acquire)
}

impl Session {
    /// Builds the unwinder if this is the first session, installs the handler, allocates the
    /// ring and starts the timer.
    pub fn start(frequency_hz: u32) -> Result<Self, SigprofError> {
        if OWNED.swap(true, Ordering::AcqRel) {
            return Err(SigprofError::Busy);
        }
        let started = Self::begin(frequency_hz);
        if started.is_err() {
            OWNED.store(false, Ordering::Release);
        }
        started
    }

    fn begin(frequency_hz: u32) -> Result<Self, SigprofError> {
        let unwinder = Unwinder::get().ok_or(SigprofError::NoUnwindInfo)?;
        INSTALLED
            .get_or_init(install_handler)
            .clone()
            .map_err(|error| SigprofError::System("sigaction", std::io::Error::other(error)))?;
        let probe = pipe()?;
        let slots = (0..SLOTS)
            .map(|_| Slot {
                state: AtomicU8::new(EMPTY),
                data: UnsafeCell::new(SlotData {
                    depth: 0,
                    thread: [0; 16],
                    addresses: [0; MAX_DEPTH],
                }),
            })
            .collect();
        let shared = Box::into_raw(Box::new(Shared {
            unwinder,
            busy: AtomicBool::new(false),
            cache: UnsafeCell::new(CacheNative::new_in()),
            probe,
            slots,
            next: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }));
        ACTIVE.store(shared, Ordering::SeqCst);
        let session = Self { shared };
        set_timer(Duration::from_secs(1) / frequency_hz.max(1))?;
        Ok(session)
    }

    /// Takes every sample written since the last drain.
    pub fn drain(&self, into: &mut Vec<RawSample>) {
        // SAFETY: `shared` stays valid until `drop`; the slots are only read under `FULL`.
        let shared = unsafe { &*self.shared };
        for slot in &shared.slots {
            if slot.state.load(Ordering::Acquire) != FULL {
                continue;
            }
            // SAFETY: `FULL` means the handler finished writing and will not touch the slot
            // until it is `EMPTY` again.
            let data = unsafe { &*slot.data.get() };
            let name = data.thread.split(|&byte| byte == 0).next().unwrap_or(&[]);
            into.push(RawSample {
                addresses: data.addresses[..data.depth].to_vec(),
                thread: String::from_utf8_lossy(name).into_owned(),
            });
            slot.state.store(EMPTY, Ordering::Release);
        }
    }

    /// Signals whose sample was dropped (the ring was full, or another handler was unwinding).
    pub fn dropped(&self) -> u64 {
        // SAFETY: as in `drain`.
        unsafe { &*self.shared }.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = set_timer(Duration::ZERO);
        ACTIVE.store(std::ptr::null_mut(), Ordering::SeqCst);
        // A handler that entered before the store may still use the session; one that enters
        // after it sees null. Wait out the former.
        while IN_HANDLER.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        // SAFETY: no handler can reach `shared` any more, and it came from `Box::into_raw`.
        drop(unsafe { Box::from_raw(self.shared) });
        OWNED.store(false, Ordering::Release);
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SigprofError> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `pipe2` writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(SigprofError::System(
            "pipe2",
            std::io::Error::last_os_error(),
        ));
    }
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_timer(interval: Duration) -> Result<(), SigprofError> {
    let tick = libc::timeval {
        tv_sec: interval.as_secs() as libc::time_t,
        tv_usec: interval.subsec_micros() as libc::suseconds_t,
    };
    let timer = libc::itimerval {
        it_interval: tick,
        it_value: tick,
    };
    // SAFETY: `setitimer` reads one `itimerval`; the old value is not wanted.
    if unsafe { libc::setitimer(libc::ITIMER_PROF, &timer, std::ptr::null_mut()) } != 0 {
        return Err(SigprofError::System(
            "setitimer",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn install_handler() -> Result<(), String> {
    // SAFETY: all-zero is a valid `sigaction`; the fields used are then set.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigprof as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `sigemptyset` initialises the mask it is given; `sigaction` installs a handler
    // that only does async-signal-safe work (see `on_sigprof`).
    let code = unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGPROF, &action, std::ptr::null_mut())
    };
    if code != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(())
}

extern "C" fn on_sigprof(_signal: c_int, _info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: `__errno_location` returns this thread's errno; the system calls below may change
    // it, and the interrupted code must not see that.
    let errno = unsafe { *libc::__errno_location() };
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    let shared = ACTIVE.load(Ordering::SeqCst);
    if !shared.is_null() {
        // `clock_gettime` is async-signal-safe: what sampling costs is measured, not guessed.
        let started = crate::thread_cpu_time();
        // SAFETY: a non-null `ACTIVE` stays valid while `IN_HANDLER` counts this handler.
        unsafe { &*shared }.sample(context);
        let spent = crate::thread_cpu_time().saturating_sub(started);
        HANDLER_NANOS.fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
    }
    IN_HANDLER.fetch_sub(1, Ordering::SeqCst);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

impl Shared {
    /// Unwinds the interrupted thread into a free slot. Allocates nothing.
    fn sample(&self, context: *mut c_void) {
        if self.busy.swap(true, Ordering::Acquire) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[index];
        if slot
            .state
            .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            // SAFETY: `WRITING` gives this handler the slot; `busy` gives it the cache.
            let (data, cache) = unsafe { (&mut *slot.data.get(), &mut *self.cache.get()) };
            let mut pages = MappedPages::default();
            data.depth = match registers(context) {
                Some((pc, regs)) => {
                    self.unwinder
                        .unwind(pc, regs, cache, &mut data.addresses, &mut |address| {
                            self.read_stack(address, &mut pages)
                        })
                }
                None => 0,
            };
            data.thread = [0; 16];
            // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into the buffer.
            unsafe { libc::prctl(libc::PR_GET_NAME, data.thread.as_mut_ptr()) };
            slot.state.store(FULL, Ordering::Release);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.busy.store(false, Ordering::Release);
    }

    /// Reads one word of the interrupted stack, if it is mapped. The first read in a page goes
    /// through the pipe (the kernel copies the word, failing with `EFAULT` rather than faulting);
    /// later reads in a page already proven mapped are plain loads. The interrupted thread is
    /// the one running this handler, so its stack cannot be unmapped meanwhile.
    fn read_stack(&self, address: u64, pages: &mut MappedPages) -> Result<u64, ()> {
        let aligned = address & !0b111;
        if pages.contains(aligned) {
            // SAFETY: the word lies in a page this unwind has already read through the kernel,
            // 8-aligned, so it does not cross into the next page.
            return Ok(unsafe { std::ptr::read_volatile(aligned as *const u64) });
        }
        let (read, write) = (self.probe.0.as_raw_fd(), self.probe.1.as_raw_fd());
        // SAFETY: `write` only reads 8 bytes at `aligned`, which the kernel checks; `read` writes
        // 8 bytes into `value`.
        let value = unsafe {
            if libc::write(write, aligned as *const c_void, 8) != 8 {
                return Err(());
            }
            let mut value = 0u64;
            if libc::read(read, (&raw mut value).cast(), 8) != 8 {
                return Err(());
            }
            value
        };
        pages.insert(aligned);
        Ok(value)
    }
}

/// The stack pages one unwind has proven mapped (a few: a stack is read upwards from its
/// pointer). Lives on the handler's stack: no allocation.
#[derive(Default)]
struct MappedPages {
    pages: [u64; 8],
    len: usize,
}

impl MappedPages {
    const PAGE: u64 = 4096;

    fn contains(&self, address: u64) -> bool {
        let page = address / Self::PAGE;
        self.pages[..self.len].contains(&page)
    }

    fn insert(&mut self, address: u64) {
        let page = address / Self::PAGE;
        if self.len < self.pages.len() {
            self.pages[self.len] = page;
            self.len += 1;
        } else {
            self.pages[(page as usize) % self.pages.len()] = page;
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn registers(context: *mut c_void) -> Option<(u64, framehop::UnwindRegsNative)> {
    let context = context.cast::<libc::ucontext_t>();
    if context.is_null() {
        return None;
    }
    // SAFETY: the kernel passes the interrupted thread's `ucontext_t` to an SA_SIGINFO handler.
    let regs = unsafe { &(*context).uc_mcontext.gregs };
    let (ip, sp, bp) = (
        regs[libc::REG_RIP as usize] as u64,
        regs[libc::REG_RSP as usize] as u64,
        regs[libc::REG_RBP as usize] as u64,
    );
    Some((ip, framehop::UnwindRegsNative::new(ip, sp, bp)))
}

#[cfg(target_arch = "aarch64")]
fn registers(context: *mut c_void) -> Option<(u64, framehop::UnwindRegsNative)> {
    let context = context.cast::<libc::ucontext_t>();
    if context.is_null() {
        return None;
    }
    // SAFETY: the kernel passes the interrupted thread's `ucontext_t` to an SA_SIGINFO handler.
    let mcontext = unsafe { &(*context).uc_mcontext };
    let (pc, lr, sp, fp) = (
        mcontext.pc,
        mcontext.regs[30],
        mcontext.sp,
        mcontext.regs[29],
    );
    Some((pc, framehop::UnwindRegsNative::new(lr, sp, fp)))
}

/// Section data borrowed from a read-only mapping of its object file.
#[derive(Clone)]
struct Mapped {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl Deref for Mapped {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

/// The unwinder over every object loaded when it was built.
pub struct Unwinder {
    inner: UnwinderNative<Mapped, MustNotAllocateDuringUnwind>,
}

static UNWINDER: OnceLock<Option<Unwinder>> = OnceLock::new();

impl Unwinder {
    /// The process's unwinder, built on first use.
    fn get() -> Option<&'static Unwinder> {
        UNWINDER.get_or_init(Self::build).as_ref()
    }

    fn build() -> Option<Self> {
        let mut inner = UnwinderNative::new();
        let mut added = 0;
        for object in loaded_objects() {
            if let Some(module) = object.module() {
                inner.add_module(module);
                added += 1;
            }
        }
        (added > 0).then_some(Self { inner })
    }

    /// Unwinds from `pc` into `out`, returning how many addresses it wrote.
    fn unwind(
        &self,
        pc: u64,
        regs: framehop::UnwindRegsNative,
        cache: &mut CacheNative<MustNotAllocateDuringUnwind>,
        out: &mut [u64; MAX_DEPTH],
        read_stack: &mut impl FnMut(u64) -> Result<u64, ()>,
    ) -> usize {
        let mut frames = self.inner.iter_frames(pc, regs, cache, read_stack);
        let mut depth = 0;
        while depth < MAX_DEPTH {
            match frames.next() {
                Ok(Some(frame)) => {
                    out[depth] = match frame {
                        FrameAddress::InstructionPointer(address) => address,
                        FrameAddress::ReturnAddress(address) => address.get(),
                    };
                    depth += 1;
                }
                Ok(None) | Err(_) => break,
            }
        }
        depth
    }
}

/// An object the dynamic loader has mapped: its path, load bias and the addresses it spans.
struct LoadedObject {
    path: String,
    bias: u64,
    span: Range<u64>,
}

impl LoadedObject {
    fn module(&self) -> Option<framehop::Module<Mapped>> {
        let file = std::fs::File::open(&self.path).ok()?;
        // SAFETY: the mapping is read-only and private; an object file replaced on disk while
        // mapped could change under us, as it could under the dynamic loader itself.
        let map = Arc::new(unsafe { Mmap::map(&file) }.ok()?);
        let parsed = object::File::parse(&**map).ok()?;
        parsed.section_by_name(".eh_frame")?;
        let info = Sections {
            file: parsed,
            map: Arc::clone(&map),
        };
        Some(framehop::Module::new(
            self.path.clone(),
            self.span.clone(),
            self.bias,
            info,
        ))
    }
}

struct Sections<'data> {
    file: object::File<'data>,
    map: Arc<Mmap>,
}

impl framehop::ModuleSectionInfo<Mapped> for Sections<'_> {
    fn base_svma(&self) -> u64 {
        self.file.relative_address_base()
    }

    fn section_svma_range(&mut self, name: &[u8]) -> Option<Range<u64>> {
        let section = self.file.section_by_name_bytes(name)?;
        Some(section.address()..section.address() + section.size())
    }

    fn section_data(&mut self, name: &[u8]) -> Option<Mapped> {
        let (offset, size) = self.file.section_by_name_bytes(name)?.file_range()?;
        let (offset, size) = (usize::try_from(offset).ok()?, usize::try_from(size).ok()?);
        (offset.checked_add(size)? <= self.map.len()).then(|| Mapped {
            map: Arc::clone(&self.map),
            range: offset..offset + size,
        })
    }
}

/// Every object the dynamic loader has mapped, the executable first.
fn loaded_objects() -> Vec<LoadedObject> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        objects: *mut c_void,
    ) -> c_int {
        // SAFETY: `dl_iterate_phdr` passes a valid `dl_phdr_info` and our own `Vec`.
        let (info, objects) = unsafe { (&*info, &mut *objects.cast::<Vec<LoadedObject>>()) };
        let name = if info.dlpi_name.is_null() {
            ""
        } else {
            // SAFETY: a non-null `dlpi_name` is a NUL-terminated string owned by the loader.
            unsafe { CStr::from_ptr(info.dlpi_name) }
                .to_str()
                .unwrap_or("")
        };
        let path = if objects.is_empty() && name.is_empty() {
            "/proc/self/exe".to_owned()
        } else {
            name.to_owned()
        };
        let headers = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
        };
        let bias = info.dlpi_addr;
        let span = headers
            .iter()
            .filter(|header| header.p_type == libc::PT_LOAD)
            .map(|header| bias + header.p_vaddr..bias + header.p_vaddr + header.p_memsz)
            .reduce(|a, b| a.start.min(b.start)..a.end.max(b.end));
        if let Some(span) = span
            && path.starts_with('/')
        {
            objects.push(LoadedObject { path, bias, span });
        }
        0
    }
    let mut objects: Vec<LoadedObject> = Vec::new();
    // SAFETY: the callback only reads what the loader passes and pushes to `objects`.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut objects).cast()) };
    objects
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_is_found_first_and_has_unwind_information() {
        let objects = loaded_objects();
        assert_eq!(objects[0].path, "/proc/self/exe");
        let here = loaded_objects as *const () as u64;
        assert!(objects[0].span.contains(&here));
        assert!(objects[0].module().is_some());
        assert!(Unwinder::get().is_some());
    }

    #[inline(never)]
    fn spin_for_cpu(cpu: Duration) -> u64 {
        let started = crate::thread_cpu_time();
        let mut spin = 0u64;
        while crate::thread_cpu_time() - started < cpu {
            for i in 0..10_000u64 {
                spin = std::hint::black_box(spin.wrapping_mul(31).wrapping_add(i));
            }
        }
        spin
    }

    /// One session per process: the tests that start sessions take turns.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_session_samples_whole_stacks_and_only_one_runs_at_a_time() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let session = Session::start(1000).expect("sampling starts");
        assert!(matches!(Session::start(1000), Err(SigprofError::Busy)));
        spin_for_cpu(Duration::from_millis(200));
        let mut samples = Vec::new();
        session.drain(&mut samples);
        drop(session);
        assert!(samples.len() >= 5, "{} samples", samples.len());
        let exe = &loaded_objects()[0].span;
        let spinning = samples
            .iter()
            .filter(|sample| sample.addresses.len() > 3)
            .filter(|sample| sample.addresses.iter().all(|address| *address != 0))
            .filter(|sample| exe.contains(&sample.addresses[0]))
            .count();
        assert!(spinning * 2 >= samples.len(), "{samples:?}");
        let again = Session::start(1000).expect("a new session starts once the old one ended");
        drop(again);
    }

    /// Sessions started and stopped 200 times while two threads allocate and free without a
    /// pause: a handler that allocated, or a stop that freed a ring in use, would deadlock or
    /// crash here. Bounded: fails if it takes over 60 s.
    #[test]
    fn sessions_start_and_stop_beside_allocating_threads_without_deadlock() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let churn: Vec<_> = (0..2)
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut kept = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        kept.push(vec![0u8; 4096]);
                        if kept.len() > 64 {
                            kept.clear();
                        }
                    }
                })
            })
            .collect();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            for _ in 0..200 {
                let Ok(session) = Session::start(1000) else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                std::thread::sleep(Duration::from_millis(10));
                session.drain(&mut samples);
            }
            let _ = done.send(samples.len());
        });
        let sampled = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("200 sessions end within 60 s");
        stop.store(true, Ordering::Relaxed);
        for thread in churn {
            thread.join().unwrap();
        }
        assert!(sampled > 100, "{sampled} samples over 200 sessions");
    }
}
