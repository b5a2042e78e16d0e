//! Which frame of a stack names a leak: the first frame in the program's own code.
//!
//! Runtimes and libraries wrap every wait. A goroutine blocked in `mu.Lock()` is parked in
//! `sync.(*Mutex).Lock` and `runtime.semacquire`; a tokio task waiting for a permit is in
//! `batch_semaphore::Acquire::poll`. Naming such a frame names nobody's code, and merges every
//! blocker in the process into one site. So each frame is placed by *where it lives*:
//!
//! - [`Origin::Runtime`]: scheduling, synchronisation, timers and allocation. For Go, files under
//!   GOROOT's `src/runtime`, `src/sync`, `src/internal`, `src/time`, `src/reflect`, `src/iter`
//!   and `src/os/signal`; for Rust, tokio, std/core/alloc, futures, parking_lot, hyper, h2, the
//!   allocator and system libraries. Never a site.
//! - [`Origin::Library`]: the rest of Go's standard library, Go modules from the module cache or
//!   `vendor/`, and Rust crates from a registry. A site only when the stack has no program code;
//!   then its root-most library frame (the goroutine's entry, as `net/http.(*persistConn).readLoop`)
//!   tells one kind of goroutine from another where the leaf (`net.(*netFD).Read`) would not.
//! - [`Origin::Program`]: everything else. The leaf-most program frame is the site.
//!
//! A stack with no program or library frame at all (the goroutine structs of a task leak under
//! `runtime.newproc1`, GC metadata) is *runtime-only*: it is reported as
//! [`RUNTIME_GOROUTINES`] / [`RUNTIME_TASKS`], never as a user site.
//!
//! Pure: frames in, a choice out.

use leakfinder_pprof::conventions::CREATED_BY;

/// The site of Go stacks that hold only runtime frames.
pub const RUNTIME_GOROUTINES: &str = "runtime structures of leaked goroutines";
/// The site of Rust stacks that hold only runtime frames.
pub const RUNTIME_TASKS: &str = "runtime structures of leaked tasks";

/// Where a frame's code lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// The program's own code.
    Program,
    /// A `created by` frame naming a spawner in the program's own code.
    Spawner,
    /// A library: Go's standard library beyond its runtime, a Go module or a Rust crate.
    Library,
    /// Scheduling, synchronisation, timers, allocation.
    Runtime,
}

/// The language of a profile's stacks, and what is needed to place its frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Language {
    /// Go. `goroot_src` is GOROOT's `src/` as the profile's paths spell it (`/usr/local/go/src/`,
    /// or empty for a binary built with `-trimpath`), when a runtime frame shows it.
    Go {
        /// GOROOT's `src/` prefix.
        goroot_src: Option<String>,
    },
    /// Rust (or anything that is not Go).
    Rust,
}

impl Language {
    /// Reads the language from a profile's functions (`name`, `file`): Go when any function is
    /// in package `runtime`.
    pub fn detect<'a>(functions: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut go = false;
        for (name, file) in functions {
            if !name.starts_with("runtime.") {
                continue;
            }
            go = true;
            if let Some(index) = file.find("/src/runtime/") {
                return Language::Go {
                    goroot_src: Some(file[..index + "/src/".len()].to_owned()),
                };
            }
            if file.starts_with("runtime/") {
                return Language::Go {
                    goroot_src: Some(String::new()),
                };
            }
        }
        if go {
            Language::Go { goroot_src: None }
        } else {
            Language::Rust
        }
    }

    /// Whether this is Go.
    pub fn is_go(&self) -> bool {
        matches!(self, Language::Go { .. })
    }

    /// The site name of runtime-only stacks.
    pub fn runtime_site(&self) -> &'static str {
        if self.is_go() {
            RUNTIME_GOROUTINES
        } else {
            RUNTIME_TASKS
        }
    }

    /// Where a frame's code lives.
    pub fn origin(&self, function: &str, file: &str) -> Origin {
        match self {
            Language::Go { goroot_src } => go_origin(goroot_src.as_deref(), function, file),
            Language::Rust => rust_origin(function, file),
        }
    }
}

/// The top-level packages of Go's standard library.
const GO_STD: &[&str] = &[
    "archive",
    "bufio",
    "bytes",
    "cmp",
    "compress",
    "container",
    "context",
    "crypto",
    "database",
    "debug",
    "embed",
    "encoding",
    "errors",
    "expvar",
    "flag",
    "fmt",
    "go",
    "hash",
    "html",
    "image",
    "index",
    "internal",
    "io",
    "iter",
    "log",
    "maps",
    "math",
    "mime",
    "net",
    "os",
    "path",
    "plugin",
    "reflect",
    "regexp",
    "runtime",
    "slices",
    "sort",
    "strconv",
    "strings",
    "structs",
    "sync",
    "syscall",
    "testing",
    "text",
    "time",
    "unicode",
    "unique",
    "unsafe",
    "vendor",
    "weak",
];

/// Standard-library directories that are runtime machinery: waits, locks, timers, scheduling.
const GO_RUNTIME: &[&str] = &[
    "runtime/",
    "sync/",
    "internal/",
    "time/",
    "reflect/",
    "iter/",
    "os/signal/",
    "vendor/",
];

/// A Go file's path under GOROOT's `src/` (`sync/mutex.go`) when it is in the standard library.
fn go_std_path(goroot_src: Option<&str>, function: &str, file: &str) -> Option<String> {
    let is_std = |path: &str| GO_STD.contains(&path.split('/').next().unwrap_or(path));
    if file.is_empty() {
        // No file: the function's package path (`net/http.(*conn).serve` is in `net/http`).
        let last = function.rfind('/').map_or(0, |slash| slash + 1);
        let end = function[last..]
            .find('.')
            .map_or(function.len(), |dot| last + dot);
        let package = &function[..end];
        return (package != "main" && is_std(package)).then(|| format!("{package}/"));
    }
    if let Some(prefix) = goroot_src.filter(|prefix| !prefix.is_empty()) {
        return file.strip_prefix(prefix).map(str::to_owned);
    }
    // Built with -trimpath, or GOROOT unknown: std paths are `sync/mutex.go`, a module's start
    // with its path (`example.com/app/main.go`).
    (!file.starts_with('/') && file.contains('/') && is_std(file)).then(|| file.to_owned())
}

fn go_origin(goroot_src: Option<&str>, function: &str, file: &str) -> Origin {
    if let Some(path) = go_std_path(goroot_src, function, file) {
        return if GO_RUNTIME.iter().any(|dir| path.starts_with(dir))
            || function.starts_with("runtime.")
        {
            Origin::Runtime
        } else {
            Origin::Library
        };
    }
    // Functions of the runtime linked into other packages keep runtime files, handled above;
    // a runtime function seen without GOROOT known is still the runtime.
    if function.starts_with("runtime.") || function.starts_with("internal/") {
        return Origin::Runtime;
    }
    let module_cache = file.contains("/pkg/mod/")
        || file.contains("/vendor/")
        || file.split('/').any(|part| part.contains("@v"));
    if module_cache {
        Origin::Library
    } else {
        Origin::Program
    }
}

/// Rust crates that are runtime machinery.
const RUST_RUNTIME: &[&str] = &[
    "tokio",
    "tokio_util",
    "tokio_stream",
    "std",
    "core",
    "alloc",
    "futures",
    "futures_util",
    "futures_core",
    "futures_channel",
    "futures_executor",
    "parking_lot",
    "parking_lot_core",
    "lock_api",
    "hyper",
    "hyper_util",
    "h2",
    "hashbrown",
    "tikv_jemallocator",
    "tikv_jemalloc_sys",
    "tikv_jemalloc_ctl",
    "backtrace",
    "pin_project_lite",
    "panic_unwind",
];

/// The crate a Rust function is in: the first path segment, past any `<` of a trait impl.
fn rust_crate(function: &str) -> &str {
    let name = function.trim_start_matches('<');
    name.split("::").next().unwrap_or(name)
}

/// The crate a dependency's source file is in (`tokio-1.54.1/src/...`, or a path through a
/// cargo registry), or `None` for the program's own files.
fn rust_file_crate(file: &str) -> Option<&str> {
    let path = leakfinder_pprof::conventions::registry_package_path(file).unwrap_or(file);
    let first = path.split('/').next()?;
    let (name, version) = first.rsplit_once('-')?;
    let semver = version.split('.').count() >= 3
        && version.starts_with(|c: char| c.is_ascii_digit())
        && !name.is_empty();
    semver.then_some(name)
}

fn rust_origin(function: &str, file: &str) -> Origin {
    if let Some(spawner) = function.strip_prefix(CREATED_BY) {
        let library = rust_file_crate(file).is_some()
            || file.starts_with("/rustc/")
            || RUST_RUNTIME.contains(&rust_crate(spawner));
        return if library {
            Origin::Library
        } else {
            Origin::Spawner
        };
    }
    let crate_name = rust_crate(function);
    let file_crate = rust_file_crate(file);
    // System libraries (`libc.so.6+0x891f4`, from `/lib/x86_64-linux-gnu/libc.so.6`): the
    // thread start-up below every stack.
    let shared_library = file.ends_with(".so")
        || file.contains(".so.")
        || function.contains(".so+0x")
        || function.contains(".so.");
    let runtime = shared_library
        || RUST_RUNTIME.contains(&crate_name)
        || leakfinder_pprof::conventions::is_allocator(function, file)
        || file_crate.is_some_and(|name| RUST_RUNTIME.contains(&name.replace('-', "_").as_str()));
    if runtime {
        Origin::Runtime
    } else if file_crate.is_some() || file.contains("/.cargo/git/") {
        Origin::Library
    } else if file.is_empty() && function.starts_with("0x") {
        // An address nothing could name: below any named frame.
        Origin::Library
    } else {
        Origin::Program
    }
}

/// A stack (leaf first, `(function, file)`) with every frame placed, once.
pub struct Placed<'a> {
    frames: &'a [(&'a str, &'a str)],
    origins: Vec<Origin>,
}

impl<'a> Placed<'a> {
    /// Places each frame of `frames`.
    pub fn new(language: &Language, frames: &'a [(&'a str, &'a str)]) -> Self {
        let origins = frames
            .iter()
            .map(|(function, file)| language.origin(function, file))
            .collect();
        Self { frames, origins }
    }

    fn first(&self, wanted: Origin) -> Option<usize> {
        self.origins.iter().position(|&origin| origin == wanted)
    }

    /// Which frame is the stack's site: the leaf-most program frame; else a `created by` frame
    /// naming the program; else the root-most library frame (the goroutine's or task's entry);
    /// `None` when every frame is runtime.
    pub fn site(&self) -> Option<usize> {
        self.first(Origin::Program)
            .or_else(|| self.first(Origin::Spawner))
            .or_else(|| {
                // The entry: a named frame, not a spawner and not a bare address.
                (0..self.frames.len()).rev().find(|&index| {
                    let function = self.frames[index].0;
                    self.origins[index] == Origin::Library
                        && !function.starts_with(CREATED_BY)
                        && !function.starts_with("0x")
                })
            })
            .or_else(|| self.first(Origin::Library))
    }

    /// The manifestation the stack belongs to, so a leak split over sibling sites can be added
    /// up: the task's spawner when the stack ends in a `created by` frame of the program, else
    /// the root-most program function without its closure suffixes (siblings
    /// `main.fanout.func1` and `main.fanout.func2` both belong to `main.fanout`). Empty when
    /// the stack has no program code.
    pub fn family(&self) -> String {
        if self.origins.last() == Some(&Origin::Spawner) {
            return enclosing_function(self.frames[self.frames.len() - 1].0).to_owned();
        }
        (0..self.frames.len())
            .rev()
            .find(|&index| self.origins[index] == Origin::Program)
            .map(|index| enclosing_function(self.frames[index].0).to_owned())
            .unwrap_or_default()
    }
}

/// A function's name without its closure suffixes: Go's `.func2.3` and `.gowrap1`, Rust's
/// `::{{closure}}`.
pub fn enclosing_function(function: &str) -> &str {
    let mut name = function.strip_prefix(CREATED_BY).unwrap_or(function);
    loop {
        let trimmed = name.trim_end_matches("::{{closure}}");
        let trimmed = match trimmed.rsplit_once('.') {
            Some((head, tail))
                if tail.chars().all(|c| c.is_ascii_digit())
                    || tail.strip_prefix("func").is_some_and(is_digits)
                    || tail.strip_prefix("gowrap").is_some_and(is_digits) =>
            {
                head
            }
            _ => trimmed,
        };
        if trimmed == name {
            return name;
        }
        name = trimmed;
    }
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOROOT: &str = "/usr/local/go/src/";

    fn go() -> Language {
        Language::Go {
            goroot_src: Some(GOROOT.into()),
        }
    }

    fn std(path: &str) -> String {
        format!("{GOROOT}{path}")
    }

    #[test]
    fn the_language_and_goroot_are_read_from_runtime_frames() {
        let functions = [
            ("main.main", "/app/main.go"),
            ("runtime.gopark", "/usr/local/go/src/runtime/proc.go"),
        ];
        assert_eq!(Language::detect(functions), go());
        let trimmed = [("runtime.gopark", "runtime/proc.go")];
        assert_eq!(
            Language::detect(trimmed),
            Language::Go {
                goroot_src: Some(String::new())
            }
        );
        let rust = [("tokio::runtime::park", "tokio-1.54.1/src/park.rs")];
        assert_eq!(Language::detect(rust), Language::Rust);
    }

    #[test]
    fn a_goroutine_blocked_in_sync_is_sited_at_its_caller() {
        let mutex = std("sync/mutex.go");
        let sema = std("runtime/sema.go");
        let internal = std("internal/sync/mutex.go");
        let proc = std("runtime/proc.go");
        let waitgroup = std("sync/waitgroup.go");
        let cond_file = std("sync/cond.go");
        let stack = [
            ("runtime.gopark", proc.as_str()),
            ("internal/sync.runtime_SemacquireMutex", sema.as_str()),
            ("internal/sync.(*Mutex).lockSlow", internal.as_str()),
            ("sync.(*Mutex).Lock", mutex.as_str()),
            ("main.(*store).refresh", "/app/store.go"),
            ("main.(*store).get", "/app/store.go"),
            ("runtime.goexit", proc.as_str()),
        ];
        assert_eq!(Placed::new(&go(), &stack).site(), Some(4));
        // `sync.runtime_SemacquireWaitGroup` lives in runtime/sema.go: placed by its file.
        let wait = [
            ("sync.runtime_SemacquireWaitGroup", sema.as_str()),
            ("sync.(*WaitGroup).Wait", waitgroup.as_str()),
            ("main.collect", "/app/main.go"),
        ];
        assert_eq!(Placed::new(&go(), &wait).site(), Some(2));
        let cond = [
            ("sync.runtime_notifyListWait", sema.as_str()),
            ("sync.(*Cond).Wait", cond_file.as_str()),
            ("main.consume", "/app/main.go"),
        ];
        assert_eq!(Placed::new(&go(), &cond).site(), Some(2));
    }

    #[test]
    fn trimmed_paths_modules_and_vendored_code_are_placed() {
        let trimmed = Language::Go {
            goroot_src: Some(String::new()),
        };
        assert_eq!(
            trimmed.origin("sync.(*RWMutex).RLock", "sync/rwmutex.go"),
            Origin::Runtime
        );
        assert_eq!(
            trimmed.origin("io.(*pipe).write", "io/pipe.go"),
            Origin::Library
        );
        assert_eq!(
            trimmed.origin("main.handle", "example.com/app/main.go"),
            Origin::Program
        );
        let module = "/root/go/pkg/mod/google.golang.org/grpc@v1.70.0/clientconn.go";
        assert_eq!(
            go().origin("grpc.(*ClientConn).Close", module),
            Origin::Library
        );
        assert_eq!(
            go().origin("time.Sleep", &std("runtime/time.go")),
            Origin::Runtime
        );
        assert_eq!(
            go().origin("time.(*Timer).Stop", &std("time/sleep.go")),
            Origin::Runtime
        );
        assert_eq!(
            go().origin(
                "net/http.(*persistConn).readLoop",
                &std("net/http/transport.go")
            ),
            Origin::Library
        );
        // No GOROOT seen: a function without a file is placed by its package.
        let unknown = Language::Go { goroot_src: None };
        assert_eq!(unknown.origin("sync.(*Mutex).Lock", ""), Origin::Runtime);
        assert_eq!(
            unknown.origin("net/http.(*conn).serve", ""),
            Origin::Library
        );
        assert_eq!(unknown.origin("main.main", ""), Origin::Program);
        // A frame without a file, GOROOT known: placed by its package too.
        assert_eq!(go().origin("sync.(*Mutex).Lock", ""), Origin::Runtime);
        assert_eq!(go().origin("main.(*srv).run", ""), Origin::Program);
    }

    #[test]
    fn a_stack_without_program_code_is_sited_at_its_entry() {
        let stack = [
            ("internal/poll.runtime_pollWait", std("runtime/netpoll.go")),
            ("net.(*netFD).Read", std("net/fd_posix.go")),
            ("net.(*conn).Read", std("net/net.go")),
            (
                "net/http.(*persistConn).readLoop",
                std("net/http/transport.go"),
            ),
            ("runtime.goexit", std("runtime/asm_amd64.s")),
        ];
        let stack: Vec<(&str, &str)> = stack.iter().map(|(f, p)| (*f, p.as_str())).collect();
        assert_eq!(Placed::new(&go(), &stack).site(), Some(3));
    }

    #[test]
    fn runtime_only_stacks_have_no_site() {
        let stack = [
            ("runtime.mallocgc", std("runtime/malloc.go")),
            ("runtime.malg", std("runtime/proc.go")),
            ("runtime.newproc1", std("runtime/proc.go")),
            ("runtime.systemstack", std("runtime/asm_amd64.s")),
        ];
        let stack: Vec<(&str, &str)> = stack.iter().map(|(f, p)| (*f, p.as_str())).collect();
        assert_eq!(Placed::new(&go(), &stack).site(), None);
        assert_eq!(go().runtime_site(), RUNTIME_GOROUTINES);
    }

    #[test]
    fn rust_runtime_crates_are_not_sites_and_the_spawner_is_the_fallback() {
        let rust = Language::Rust;
        let stack = [
            (
                "<tokio::sync::batch_semaphore::Acquire as core::future::future::Future>::poll",
                "tokio-1.54.1/src/sync/batch_semaphore.rs",
            ),
            (
                "parking_lot::raw_mutex::RawMutex::lock_slow",
                "parking_lot-0.12.5/src/raw_mutex.rs",
            ),
            (
                "core::future::poll_fn",
                "/rustc/abc/library/core/src/future/poll_fn.rs",
            ),
            (
                "poem::server::serve::{{closure}}",
                "poem-3.1.12/src/server.rs",
            ),
            ("app::jobs::run::{{closure}}", "src/jobs.rs"),
            ("created by app::jobs::start", "src/jobs.rs"),
        ];
        assert_eq!(Placed::new(&rust, &stack).site(), Some(4));
        assert_eq!(
            Placed::new(&rust, &stack[..4]).site(),
            Some(3),
            "a library frame"
        );
        let unnamed_root = [stack[0], stack[3], ("0x7f3a2b", "")];
        assert_eq!(
            Placed::new(&rust, &unnamed_root).site(),
            Some(1),
            "named, not an address"
        );
        let only_spawner = [stack[0], stack[5]];
        assert_eq!(Placed::new(&rust, &only_spawner).site(), Some(1));
        assert_eq!(Placed::new(&rust, &stack[..3]).site(), None);
        assert_eq!(rust.origin("__rust_alloc", ""), Origin::Runtime);
        assert_eq!(
            rust.origin("libc.so.6+0x891f4", "/lib/x86_64-linux-gnu/libc.so.6"),
            Origin::Runtime
        );
        assert_eq!(
            rust.origin(
                "hyper::proto::h1::dispatch::Dispatcher::poll",
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/hyper-1.8.1/src/x.rs"
            ),
            Origin::Runtime
        );
    }

    #[test]
    fn closures_belong_to_their_enclosing_function() {
        assert_eq!(enclosing_function("main.fanout.func2.1"), "main.fanout");
        assert_eq!(
            enclosing_function("main.(*srv).run.gowrap1"),
            "main.(*srv).run"
        );
        assert_eq!(
            enclosing_function("app::jobs::run::{{closure}}::{{closure}}"),
            "app::jobs::run"
        );
        assert_eq!(
            enclosing_function("created by app::jobs::start"),
            "app::jobs::start"
        );
        assert_eq!(enclosing_function("main.v2"), "main.v2");
    }

    #[test]
    fn siblings_of_one_manifestation_share_a_family_and_unrelated_stacks_do_not() {
        let proc = std("runtime/proc.go");
        let chan = std("runtime/chan.go");
        let send = [
            ("runtime.chansend1", chan.as_str()),
            ("main.fanout.func1", "/app/main.go"),
            ("runtime.goexit", proc.as_str()),
        ];
        let recv = [
            ("runtime.chanrecv1", chan.as_str()),
            ("main.fanout.func2", "/app/main.go"),
            ("runtime.goexit", proc.as_str()),
        ];
        let other = [
            ("runtime.chanrecv1", chan.as_str()),
            ("main.poller", "/app/main.go"),
            ("runtime.goexit", proc.as_str()),
        ];
        assert_eq!(Placed::new(&go(), &send).family(), "main.fanout");
        assert_eq!(
            Placed::new(&go(), &send).family(),
            Placed::new(&go(), &recv).family()
        );
        assert_ne!(
            Placed::new(&go(), &send).family(),
            Placed::new(&go(), &other).family()
        );
        let rust = [
            (
                "tokio::sync::notify::Notified::poll",
                "tokio-1.54.1/src/sync/notify.rs",
            ),
            ("app::a::{{closure}}", "src/a.rs"),
            ("created by app::start", "src/a.rs"),
        ];
        assert_eq!(Placed::new(&Language::Rust, &rust).family(), "app::start");
    }
}
