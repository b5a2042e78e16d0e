//! Go's goroutine dump (`/debug/pprof/goroutine?debug=2`, the text of `runtime.Stack(buf, true)`),
//! read as a task snapshot: every goroutine's id, what it waits for, how long it has waited (Go
//! prints the wait from one minute up), its frames and its `created by` frame.
//!
//! The protobuf goroutine profile has counts per stack only; the dump's ids tell which
//! goroutines at a site are the same ones as a profile ago, so a site's survival (how many of
//! the goroutines ever seen there are still there) can be measured: a leak keeps them all, a
//! steady stream of short-lived goroutines replaces them.
//!
//! The input is untrusted (any URL a user scans): it is parsed line by line, bounded by
//! [`MAX_GOROUTINES`] and [`MAX_FRAMES`], and never panics (fuzzed: `fuzz/`).

use std::collections::BTreeMap;

use crate::frames::Language;
use crate::profile::{
    ProfileKind, Retained, Site, Snapshot, is_blocked_wait, place, stack_strings,
};

/// The most goroutines read from one dump; the rest are ignored.
pub const MAX_GOROUTINES: usize = 1_000_000;
/// The most frames kept per goroutine (Go prints at most 100, then elides).
pub const MAX_FRAMES: usize = 200;

/// One goroutine of a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goroutine {
    /// Its id.
    pub id: u64,
    /// What it waits for (`chan send`, `select`, `sync.Mutex.Lock`, `running`...).
    pub state: String,
    /// How long it has waited, in whole minutes (Go prints it from one minute up; 0 below).
    pub wait_minutes: u64,
    /// Its frames, leaf first: `(function, file, line)`, ending with a `created by` frame when
    /// the dump names its creator.
    pub frames: Vec<(String, String, i64)>,
}

/// Parses a dump. Lines that are not part of a goroutine entry are skipped; a malformed entry
/// keeps what could be read of it.
pub fn parse(text: &str) -> Vec<Goroutine> {
    let mut goroutines: Vec<Goroutine> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(goroutine) = header(line) {
            if goroutines.len() >= MAX_GOROUTINES {
                break;
            }
            goroutines.push(goroutine);
            continue;
        }
        let Some(current) = goroutines.last_mut() else {
            continue;
        };
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('\t') || line.starts_with("...") {
            continue;
        }
        // A frame: the function (with its arguments), then its file and line on the next line.
        let function = match line.strip_prefix("created by ") {
            Some(creator) => {
                let creator = creator.split(" in goroutine ").next().unwrap_or(creator);
                format!("{}{creator}", leakfinder_pprof::conventions::CREATED_BY)
            }
            None => function_name(line).to_owned(),
        };
        let (file, number) = lines
            .next_if(|next| next.starts_with('\t'))
            .map_or((String::new(), 0), file_line);
        if current.frames.len() < MAX_FRAMES {
            current.frames.push((function, file, number));
        }
    }
    goroutines
}

/// `goroutine 7 [chan send, 5 minutes]:` (also with `gp=... m=...` before the bracket, or
/// `, locked to thread` inside it).
fn header(line: &str) -> Option<Goroutine> {
    let rest = line.strip_prefix("goroutine ")?;
    let (id, rest) = rest.split_once(' ')?;
    let id = id.parse().ok()?;
    let open = rest.find('[')?;
    let close = rest.rfind("]:")?;
    let inside = rest.get(open + 1..close)?;
    let mut parts = inside.split(", ");
    let state = parts.next().unwrap_or("").to_owned();
    let wait_minutes = parts
        .filter_map(|part| part.strip_suffix(" minutes"))
        .find_map(|minutes| minutes.parse().ok())
        .unwrap_or(0);
    Some(Goroutine {
        id,
        state,
        wait_minutes,
        frames: Vec::new(),
    })
}

/// `main.(*T).m(0xc000010000, 0x1)` or `main.f(...)` to `main.(*T).m` / `main.f`: the name
/// before the argument list that ends the line.
fn function_name(line: &str) -> &str {
    if !line.ends_with(')') {
        return line;
    }
    let mut depth = 0usize;
    for (index, c) in line.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return &line[..index];
                }
            }
            _ => {}
        }
    }
    line
}

/// `\t/app/main.go:20 +0x2c` to `("/app/main.go", 20)`.
fn file_line(line: &str) -> (String, i64) {
    let location = line.trim().split(' ').next().unwrap_or("");
    match location.rsplit_once(':') {
        Some((file, number)) => (file.to_owned(), number.parse().unwrap_or(0)),
        None => (location.to_owned(), 0),
    }
}

/// The goroutines of a dump as a task snapshot: per site, how many goroutines, their ids,
/// how many are blocked, and their waits as ages (Go's minutes, so only waits of a minute or
/// more say anything). `language` is the target's, read from a profile that has its runtime
/// frames (the dump hides them).
pub fn snapshot(goroutines: &[Goroutine], language: &Language) -> Snapshot {
    let mut sites: BTreeMap<Site, Retained> = BTreeMap::new();
    for goroutine in goroutines {
        if goroutine.frames.is_empty() {
            continue;
        }
        let frames: Vec<(&str, &str, i64)> = goroutine
            .frames
            .iter()
            .map(|(function, file, line)| (function.as_str(), file.as_str(), *line))
            .collect();
        let (site, family) = place(language, &frames);
        let retained = sites.entry(site).or_insert_with(Retained::empty);
        if retained.value == 0.0 {
            retained.stack = stack_strings(&frames);
            retained.family = family;
        }
        retained.value += 1.0;
        retained.ids.push(goroutine.id);
        if is_blocked_wait(&goroutine.state) {
            retained.blocked += 1.0;
        }
        if goroutine.wait_minutes > 0 {
            retained
                .ages
                .push((goroutine.wait_minutes as f64 * 60.0, 1.0));
        }
    }
    Snapshot {
        kind: ProfileKind::Tasks,
        go: language.is_go(),
        sites,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "goroutine 1 [running]:
main.main()
\t/app/main.go:50 +0x1d
\ngoroutine 7 [chan send, 5 minutes]:
main.leak.func1()
\t/app/main.go:20 +0x2c
created by main.leak in goroutine 1
\t/app/main.go:18 +0x1f

goroutine 9 gp=0xc000102a80 m=nil [sync.Mutex.Lock, 12 minutes, locked to thread]:
sync.(*Mutex).Lock(...)
\t/usr/local/go/src/sync/mutex.go:46
main.(*cache).refresh(0xc000010000, {0x4d2a10, 0x3})
\t/app/cache.go:30 +0x65
...additional frames elided...
created by main.start
\t/app/main.go:12 +0x2b
";

    #[test]
    fn a_dump_is_read_goroutine_by_goroutine() {
        let goroutines = parse(DUMP);
        assert_eq!(goroutines.len(), 3);
        assert_eq!(goroutines[0].state, "running");
        let leak = &goroutines[1];
        assert_eq!(
            (leak.id, leak.state.as_str(), leak.wait_minutes),
            (7, "chan send", 5)
        );
        assert_eq!(
            leak.frames,
            [
                ("main.leak.func1".into(), "/app/main.go".into(), 20),
                ("created by main.leak".into(), "/app/main.go".into(), 18),
            ]
        );
        let locked = &goroutines[2];
        assert_eq!((locked.id, locked.wait_minutes), (9, 12));
        assert_eq!(locked.state, "sync.Mutex.Lock");
        assert_eq!(locked.frames[1].0, "main.(*cache).refresh");
        assert_eq!(
            locked.frames[0],
            (
                "sync.(*Mutex).Lock".into(),
                "/usr/local/go/src/sync/mutex.go".into(),
                46
            )
        );
        assert_eq!(locked.frames.len(), 3);
    }

    #[test]
    fn goroutines_are_counted_per_site_with_their_ids_and_waits() {
        let language = Language::Go {
            goroot_src: Some("/usr/local/go/src/".into()),
        };
        let snapshot = snapshot(&parse(DUMP), &language);
        let leak = snapshot
            .sites
            .iter()
            .find(|(site, _)| site.function == "main.leak.func1")
            .map(|(_, retained)| retained)
            .unwrap();
        assert_eq!((leak.value, leak.blocked), (1.0, 1.0));
        assert_eq!(leak.ids, [7]);
        assert_eq!(leak.ages, [(300.0, 1.0)]);
        let refresh = snapshot
            .sites
            .keys()
            .find(|site| site.function == "main.(*cache).refresh")
            .unwrap();
        assert_eq!(refresh.line, 30);
        let main = snapshot
            .sites
            .iter()
            .find(|(site, _)| site.function == "main.main")
            .unwrap();
        assert_eq!(main.1.blocked, 0.0, "running is not blocked");
    }

    #[test]
    fn garbage_is_skipped_not_fatal() {
        for text in [
            "",
            "goroutine",
            "goroutine x [a]:",
            "goroutine 1 [",
            "\tfile.go:1\nmain.f()\n",
            "goroutine 1 [a]:\nmain.f(\n\t:\n",
            "goroutine 1 [a, b minutes]:\n((((\n\tx:y +z\n",
        ] {
            let parsed = parse(text);
            let _ = snapshot(&parsed, &Language::Rust);
        }
        assert_eq!(function_name("main.f(...)"), "main.f");
        assert_eq!(function_name("main.(*T).m(0x1, {0x2, 0x3})"), "main.(*T).m");
        assert_eq!(function_name(")("), ")(");
        let _ = function_name("f())");
    }
}
