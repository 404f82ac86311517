//! The session daemon's model of what its terminal shows, fed lazily so that bulk output
//! (`cat` of a large file, `yes`) does not cost a full terminal emulation per byte.
//!
//! Output is forwarded to the gateway before it reaches this model and only kept here in a
//! bounded batch. A batch is emulated when it grows past [`BATCH`], when the daemon is idle,
//! or before the screen is read (snapshot, resize). Emulating costs ~12 ns per byte, which
//! alone capped a terminal at ~80 MB/s of one core; most of a bulk batch is plain lines
//! that scroll off the screen before it ends, and those are skipped (see [`Model::settle`]).
//! The screen that results is the one full emulation gives; the tests compare both.

use std::num::NonZeroU16;

/// Output held before it is emulated.
pub const BATCH: usize = 128 * 1024;
/// Plain prefixes shorter than this are emulated anyway: not worth a probe.
const MIN_SKIP: usize = 4096;
/// Screens larger than this are never probed (the probe clones the screen).
const MAX_PROBE_CELLS: usize = 64 * 1024;

/// Bytes that only print ASCII or move the cursor down/left: no state but the cursor and
/// the cells changes when they are emulated from the ground state. (Written without
/// branches so that scans over whole blocks vectorize.)
fn plain(b: u8) -> bool {
    (b.wrapping_sub(0x20) < 0x5f) | (b == b'\r') | (b == b'\n')
}

/// Where the trailing run of plain bytes starts: just past the last byte that is not plain,
/// or 0. Bulk output is mostly plain, so blocks are tested whole first; a byte-by-byte
/// scan of every batch cost the daemon more than the emulation it saves.
fn plain_run_start(b: &[u8]) -> usize {
    const BLOCK: usize = 64;
    let mut end = b.len();
    while end >= BLOCK {
        let mixed = b[end - BLOCK..end]
            .iter()
            .fold(false, |acc, &x| acc | !plain(x));
        if mixed {
            break;
        }
        end -= BLOCK;
    }
    b[..end]
        .iter()
        .rposition(|&x| !plain(x))
        .map_or(0, |i| i + 1)
}

pub struct Model {
    parser: vt100::Parser,
    pending: Vec<u8>,
    /// Bytes actually run through the emulator (the rest was skipped).
    emulated: u64,
    /// The escape sequence left open by the bytes emulated so far.
    open: Open,
}

/// Where the emulator's parser stands between bytes, as far as skipping cares: a plain
/// byte prints only in `Ground`, and changes nothing on screen inside a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    Ground,
    /// After ESC (and any intermediates).
    Esc,
    /// Inside a control sequence (ESC [).
    Csi,
    /// Inside an OSC, DCS, SOS, PM or APC string: only BEL or ST (ESC \\) end it.
    Str,
}

impl Open {
    fn step(self, b: u8) -> Open {
        match (self, b) {
            (_, 0x1b) => Open::Esc,
            // CAN and SUB abort any sequence.
            (_, 0x18 | 0x1a) => Open::Ground,
            (Open::Ground, _) => Open::Ground,
            (Open::Esc, b'[') => Open::Csi,
            (Open::Esc, b']' | b'P' | b'X' | b'^' | b'_') => Open::Str,
            (Open::Esc, 0x30..=0x7e) => Open::Ground,
            (Open::Csi, 0x40..=0x7e) => Open::Ground,
            (Open::Str, 0x07) => Open::Ground,
            (state, _) => state,
        }
    }

    /// The state after `bytes`: only what follows their last ESC matters.
    fn after(self, bytes: &[u8]) -> Open {
        let (mut state, rest) = match memchr::memrchr(0x1b, bytes) {
            Some(e) => (Open::Esc, &bytes[e + 1..]),
            None => (self, bytes),
        };
        for &b in rest {
            if state == Open::Ground {
                break;
            }
            state = state.step(b);
        }
        state
    }
}

impl Model {
    pub fn new(rows: NonZeroU16, cols: NonZeroU16) -> Self {
        Self {
            parser: vt100::Parser::new(rows, cols, 0),
            pending: Vec::new(),
            emulated: 0,
            open: Open::Ground,
        }
    }

    /// Takes output; emulates it when the batch is full.
    pub fn feed(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        if self.pending.len() >= BATCH {
            self.settle();
        }
    }

    pub fn size(&self) -> (NonZeroU16, NonZeroU16) {
        self.parser.screen().size()
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The screen with every byte fed so far applied.
    pub fn screen(&mut self) -> &vt100::Screen {
        self.settle();
        self.parser.screen()
    }

    pub fn set_size(&mut self, rows: NonZeroU16, cols: NonZeroU16) {
        self.settle();
        self.parser.screen_mut().set_size(rows, cols);
    }

    /// Emulates the batch, then lets go of its memory (called when the daemon is idle).
    pub fn settle_idle(&mut self) {
        self.settle();
        if self.pending.capacity() > 16 * 1024 {
            self.pending = Vec::new();
        }
    }

    /// Emulates the batch. Its trailing run of plain bytes (X then Y, cut just after a
    /// CR LF) is shortened when Y holds at least `rows` line feeds and so does X, and the
    /// screen scrolls as a whole: X leaves the cursor on the bottom row in column 0, and
    /// every row on screen then scrolls off during Y, so the final screen depends on Y (and
    /// the pen and modes, which plain bytes leave alone) only. X is replaced by `rows`
    /// CR LFs, which leave the cursor in the same place.
    ///
    /// The run must start in the parser's ground state, which [`Open`] follows: an escape
    /// or control sequence left open is emulated up to its final byte first. A string
    /// (OSC title, DCS, …) left open is no obstacle: no plain byte ends it, and nothing of
    /// X or Y reaches the screen either way. An open UTF-8 sequence ends at the first
    /// plain byte (printing U+FFFD on a row that scrolls off all the same).
    fn settle(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let tail_at = plain_run_start(&batch);
        self.emulate(&batch[..tail_at]);
        let tail = &batch[tail_at..];
        self.open = self.open.after(&batch[..tail_at]);
        // Whatever sequence is still open ends within the run's first bytes.
        let mut ground = 0;
        while matches!(self.open, Open::Esc | Open::Csi) && ground < tail.len() {
            self.open = self.open.step(tail[ground]);
            ground += 1;
        }
        self.emulate(&tail[..ground]);
        let run = &tail[ground..];
        let rows = usize::from(self.parser.screen().size().0.get());
        match skip_point(run, rows) {
            Some(cut) if cut >= MIN_SKIP && self.scrolls_as_a_whole() => {
                self.emulate(&b"\r\n".repeat(rows));
                self.emulate(&run[cut..]);
            }
            _ => self.emulate(run),
        }
        self.open = self.open.after(run);
        self.pending = batch;
        self.pending.clear();
    }

    fn emulate(&mut self, bytes: &[u8]) {
        self.emulated += bytes.len() as u64;
        self.parser.process(bytes);
    }

    /// Whether a line feed on the bottom row scrolls every row: false under a scroll
    /// region. Answered on a copy of the screen, as the region is not part of vt100's
    /// public state.
    fn scrolls_as_a_whole(&self) -> bool {
        let screen = self.parser.screen();
        let (rows, cols) = screen.size();
        if rows.get() < 3 || usize::from(rows.get()) * usize::from(cols.get()) > MAX_PROBE_CELLS {
            return false;
        }
        let mut probe = vt100::Parser::new(rows, cols, 0);
        *probe.screen_mut() = screen.clone();
        // Origin mode off, rows 0 and 1 blanked, a mark on row 0 and on the last row, then
        // a line feed there: with a whole-screen region the last row's mark moves up one
        // row and row 0 becomes the blank former row 1.
        let last = rows.get();
        probe.process(
            format!("\x1b[?6l\x1b[2;1H\x1b[2K\x1b[1;1H\x1b[2KT\x1b[{last};1H\x1b[2KB\n").as_bytes(),
        );
        let s = probe.screen();
        cell_is(s, 0, "") && cell_is(s, last - 2, "B") && cell_is(s, last - 1, "")
    }
}

fn cell_is(s: &vt100::Screen, row: u16, contents: &str) -> bool {
    s.cell(row, 0).is_some_and(|c| c.contents() == contents)
}

/// Where Y starts in a plain run: just after a CR LF, with at least `rows` line feeds
/// after it and at least `rows` up to and including it. The latest such point wins.
fn skip_point(tail: &[u8], rows: usize) -> Option<usize> {
    let total = memchr::memchr_iter(b'\n', tail).count();
    if total < 2 * rows {
        return None;
    }
    // `after`: line feeds after the one at `i`.
    for (after, i) in memchr::memrchr_iter(b'\n', tail).enumerate() {
        if i == 0 {
            break;
        }
        if after >= rows && tail[i - 1] == b'\r' {
            return (total - after >= rows).then_some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(v: u16) -> NonZeroU16 {
        NonZeroU16::new(v).unwrap()
    }

    /// Everything a repaint is built from, plus the cursor.
    fn state(s: &vt100::Screen) -> (String, (u16, u16), bool) {
        (
            s.state_formatted().escape_debug().to_string(),
            s.cursor_position(),
            s.alternate_screen(),
        )
    }

    /// Feeds `chunks` to the lazy model and to a plain vt100 parser; the screens must match.
    fn same(rows: u16, cols: u16, chunks: &[Vec<u8>]) -> bool {
        let mut model = Model::new(nz(rows), nz(cols));
        let mut full = vt100::Parser::new(nz(rows), nz(cols), 0);
        for c in chunks {
            model.feed(c);
            full.process(c);
        }
        let ok = state(model.screen()) == state(full.screen());
        if !ok {
            eprintln!(
                "model: {:?}\nfull:  {:?}",
                state(model.screen()),
                state(full.screen())
            );
        }
        ok
    }

    pub fn lines(n: usize, width: usize, eol: &str) -> Vec<u8> {
        (0..n)
            .map(|i| format!("{:0>width$}{eol}", i, width = width))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn block_scans_agree_with_byte_scans() {
        // Every position of one non-plain byte, near and across block edges, in runs of
        // every length up to a few blocks; and the same runs wholly plain.
        for len in 0..200 {
            let run = vec![b'x'; len];
            assert_eq!(plain_run_start(&run), 0);
            for at in 0..len {
                for odd in [0x1b, 0x07, b'\t', 0x7f, 0xc3, 0x00] {
                    let mut r = run.clone();
                    r[at] = odd;
                    assert_eq!(plain_run_start(&r), at + 1, "len {len}, at {at}, {odd:#x}");
                }
            }
        }
        let crlf = lines(100, 70, "\r\n");
        assert_eq!(plain_run_start(&crlf), 0);
        assert_eq!(Open::Ground.after(b"a\x1b[31"), Open::Csi);
        assert_eq!(Open::Ground.after(b"\x1b]0;t\x07plain"), Open::Ground);
    }

    #[test]
    fn bulk_lines_skip_and_match() {
        let big = lines(20_000, 70, "\r\n");
        assert!(skip_point(&big, 24).is_some());
        assert!(same(24, 80, std::slice::from_ref(&big)));
        assert!(same(
            24,
            80,
            &[b"\x1b[31mred ".to_vec(), big.clone(), b"tail".to_vec()]
        ));
        // Lines longer than the screen is wide (wraps).
        assert!(same(24, 80, &[lines(5_000, 130, "\r\n")]));
        // In the alternate screen, with a cursor left mid-screen.
        assert!(same(
            24,
            80,
            &[b"\x1b[?1049h\x1b[5;7Hx".to_vec(), big.clone()]
        ));
    }

    #[test]
    fn a_scroll_region_is_respected() {
        // A status line held outside the region, as full-screen programs do.
        let mut start = b"\x1b[24;1Hstatus line\x1b[1;23r\x1b[1;1H".to_vec();
        start.extend(lines(20_000, 40, "\r\n"));
        assert!(same(24, 80, &[start]));
        // Cursor below a region: the bottom row is overwritten again and again.
        let mut below = b"\x1b[1;10r\x1b[20;1H".to_vec();
        below.extend(lines(20_000, 40, "\r\n"));
        below.extend(b"short\r\n");
        assert!(same(24, 80, &[below]));
        // Region that starts below row 0, with origin mode.
        let mut origin = b"top row\x1b[3;24r\x1b[?6h".to_vec();
        origin.extend(lines(20_000, 40, "\r\n"));
        assert!(same(24, 80, &[origin]));
    }

    #[test]
    fn text_inside_an_unfinished_sequence_is_not_skipped() {
        // An OSC title left open swallows the lines; a CSI left open takes the first
        // letter as its final byte (here 'J': erase the screen).
        for open in [&b"\x1b]0;title "[..], &b"\x1b[2"[..], &b"\x1bP"[..]] {
            let mut chunks = vec![b"keep me\r\n".to_vec(), open.to_vec()];
            chunks.push(b"Jline\r\n".repeat(5_000));
            chunks.push(b"\x07end".to_vec());
            assert!(same(24, 80, &chunks), "after {open:?}");
        }
    }

    #[test]
    fn bare_line_feeds_keep_their_column() {
        // Without CR the column carries over from the skipped text: never cut there.
        let raw = b"abc\ndefgh\n".repeat(10_000);
        assert!(same(24, 80, &[raw]));
        assert!(same(
            24,
            80,
            &[b"xx\r\n".repeat(3_000), b"abc\n".repeat(3_000)]
        ));
    }

    #[test]
    fn random_mixes_match_full_emulation() {
        // Deterministic xorshift: the same cases every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let pieces: [&[u8]; 14] = [
            b"\x1b[1;12r",
            b"\x1b[r",
            b"\x1b[?6h",
            b"\x1b[?6l",
            b"\x1b[?1049h",
            b"\x1b[?1049l",
            b"\x1b[4h",
            b"\x1b[4l",
            b"\x1b[7m",
            b"\x1b[0m",
            b"\x1b[10;5H",
            b"\x1b]2;t",
            b"\x07",
            b"\xc3",
        ];
        for case in 0..200 {
            let (rows, cols) = (3 + next(30) as u16, 2 + next(100) as u16);
            let mut chunks = Vec::new();
            for _ in 0..(1 + next(6)) {
                let mut c = Vec::new();
                for _ in 0..next(4) {
                    c.extend_from_slice(pieces[next(pieces.len() as u64) as usize]);
                }
                let eol = if next(5) == 0 { "\n" } else { "\r\n" };
                c.extend(lines(next(1_500) as usize, next(120) as usize, eol));
                // Split anywhere, escape sequences included.
                let at = next(c.len() as u64 + 1) as usize;
                let rest = c.split_off(at);
                chunks.push(c);
                chunks.push(rest);
            }
            assert!(same(rows, cols, &chunks), "case {case}: {rows}x{cols}");
        }
    }

    #[test]
    fn bulk_output_is_mostly_skipped() {
        // The point of it all: of 10 MB of lines arriving in 32 KiB reads, only a screenful
        // per batch is emulated.
        let big = lines(140_000, 70, "\r\n");
        let mut model = Model::new(nz(24), nz(80));
        for c in big.chunks(32 * 1024) {
            model.feed(c);
        }
        let mut full = vt100::Parser::new(nz(24), nz(80), 0);
        full.process(&big);
        assert_eq!(state(model.screen()), state(full.screen()));
        assert!(
            model.emulated * 20 < big.len() as u64,
            "emulated {} of {} bytes",
            model.emulated,
            big.len()
        );
    }
}
