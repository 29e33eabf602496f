//! `transport=gif`: the forever GIF of "Chat Using Dynamic Animated Images" — live text in an
//! `<img>`, with no script and no plugin. The response is one animated GIF that never ends
//! while the subscription lives: the header, the logical screen, a two-colour global palette
//! and the NETSCAPE2.0 loop extension once, then a frame of the channel's last lines each time
//! messages arrive (messages already queued together make one frame). A browser shows each
//! frame as it arrives and waits at the last one for more.
//!
//! Idle, a GIF costs nothing but its [`Screen`] (the parameters and the lines shown): no timer
//! and no frame between messages, except the heartbeat — a 1×1 frame whose one pixel is
//! transparent, shared by every GIF, so that proxies see bytes and keep the response open. The
//! end of a stream (shutdown, lag, a disconnect) draws a last frame saying so and writes the
//! GIF trailer, so what the browser has is a complete image.
//!
//! Frames are encoded by the `gif` crate (its LZW); the glyphs are `font`'s.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use gif::{DisposalMethod, Encoder, Frame, Repeat};
use halley_proto::Message;

use super::font::{self, GLYPH_HEIGHT, GLYPH_WIDTH};
use crate::error::ApiError;
use crate::query::Query;

/// Narrowest image (`width`, in pixels): a few characters at the largest scale.
pub const GIF_MIN_WIDTH: u16 = 64;

/// Widest image (`width`, in pixels). Every frame is the whole image, rendered and compressed
/// anew: the bound keeps a frame's work and bytes (with [`GIF_MAX_LINES`] and
/// [`GIF_MAX_SCALE`], at most about 1.2 million pixels) small. A wider request is refused.
pub const GIF_MAX_WIDTH: u16 = 1024;

/// `width` when not given.
pub const GIF_DEFAULT_WIDTH: u16 = 480;

/// Most lines one GIF shows (`lines`): each is kept, as text, for as long as the connection is
/// open, so it is paid by every idle GIF subscriber. More is refused.
pub const GIF_MAX_LINES: u8 = 32;

/// `lines` when not given.
pub const GIF_DEFAULT_LINES: u8 = 8;

/// Largest pixel size of the font (`scale`: each font pixel drawn as a square this wide).
pub const GIF_MAX_SCALE: u8 = 4;

/// `scale` when not given: the 5×8 font doubled reads well on today's screens.
pub const GIF_DEFAULT_SCALE: u8 = 2;

/// Longest name of the `field` parameter (a top-level string field of JSON object data to
/// show instead of the whole object).
pub const GIF_MAX_FIELD: usize = 64;

/// Text colour when `fg` is not given (black).
const DEFAULT_FG: [u8; 3] = [0x00, 0x00, 0x00];

/// Background when `bg` is not given (white).
const DEFAULT_BG: [u8; 3] = [0xff, 0xff, 0xff];

/// Font pixels from one character's left edge to the next one's: the glyph and a gap.
const CELL_WIDTH: usize = GLYPH_WIDTH + 1;

/// Font pixels from one line's top to the next one's: the glyph and a gap.
const CELL_HEIGHT: usize = GLYPH_HEIGHT + 1;

/// Font pixels of background around the text. The heartbeat's pixel, (0, 0), is in it.
const MARGIN: usize = 2;

/// Palette index of the background; the text is index 1.
const BG: u8 = 0;
const FG: u8 = 1;

/// The delay of the last frame of a stream that ended, in hundredths of a second (the most a
/// GIF can say, about 11 minutes): with the loop extension, a complete GIF would start over,
/// replaying its history; this holds the closing frame instead.
const FINAL_DELAY: u16 = u16::MAX;

/// What a GIF subscriber is shown and how: the parameters of its request and its last lines.
/// Boxed in [`super::Wire::Gif`], so other transports pay nothing for it.
#[derive(Debug, Clone)]
pub struct Screen {
    width: u16,
    height: u16,
    scale: u8,
    capacity: u8,
    /// Characters that fit on a line.
    columns: u16,
    /// Background then text colour, as RGB.
    palette: [u8; 6],
    field: Option<Box<str>>,
    /// The lines shown, oldest (top) first, each already cut to `columns` characters and
    /// ended by a line break (lines hold no control character): one allocation for them all,
    /// exactly their size, rather than one per line and a queue.
    lines: Box<str>,
    /// Lines came since the last frame.
    dirty: bool,
}

impl Screen {
    /// The screen a `/sub?transport=gif` request asks for: `width` (pixels), `lines`, `scale`,
    /// `fg` and `bg` (`rrggbb`, `#` allowed) and `field`, each checked against its bound.
    pub fn from_query(query: &Query) -> Result<Screen, ApiError> {
        let width = number(
            query,
            "width",
            GIF_MIN_WIDTH.into(),
            GIF_MAX_WIDTH.into(),
            GIF_DEFAULT_WIDTH.into(),
        )?;
        let capacity = number(
            query,
            "lines",
            1,
            GIF_MAX_LINES.into(),
            GIF_DEFAULT_LINES.into(),
        )?;
        let scale = number(
            query,
            "scale",
            1,
            GIF_MAX_SCALE.into(),
            GIF_DEFAULT_SCALE.into(),
        )?;
        let fg = colour(query, "fg", DEFAULT_FG)?;
        let bg = colour(query, "bg", DEFAULT_BG)?;
        let field = match query.get("field") {
            None => None,
            Some(f) if !f.is_empty() && f.len() <= GIF_MAX_FIELD => Some(f.into()),
            Some(_) => {
                return Err(ApiError::BadRequest(format!(
                    "field must be 1 to {GIF_MAX_FIELD} bytes: the name of a top-level string field"
                )));
            }
        };
        // In range by the checks above: the largest height is (4 + 32 × 9) × 4 = 1168.
        let height = (2 * MARGIN + capacity * CELL_HEIGHT) * scale;
        let columns = (width / scale - 2 * MARGIN) / CELL_WIDTH;
        let mut palette = [0; 6];
        palette[..3].copy_from_slice(&bg);
        palette[3..].copy_from_slice(&fg);
        Ok(Screen {
            width: width as u16,
            height: height as u16,
            scale: scale as u8,
            capacity: capacity as u8,
            columns: columns as u16,
            palette,
            field,
            lines: Box::default(),
            dirty: false,
        })
    }

    /// How many lines this screen shows.
    pub fn capacity(&self) -> usize {
        self.capacity.into()
    }

    /// Shows `m` as the newest line (the oldest scrolls off when the screen is full).
    pub fn push(&mut self, m: &Message) {
        let text = self.text_of(m);
        self.push_line(&text);
    }

    /// Shows `m` in the first frame, as if it had come before the stream opened.
    pub fn seed(&mut self, m: &Message) {
        self.push(m);
        self.dirty = false;
    }

    fn push_line(&mut self, text: &str) {
        // Control characters (line breaks, tabs) would draw as boxes: spaces read better.
        let line: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(self.columns.into())
            .collect();
        let mut kept = &*self.lines;
        if self.lines().count() == self.capacity() {
            kept = kept.split_once('\n').map_or("", |(_, rest)| rest);
        }
        let mut lines = String::with_capacity(kept.len() + line.len() + 1);
        lines.push_str(kept);
        lines.push_str(&line);
        lines.push('\n');
        self.lines = lines.into_boxed_str();
        self.dirty = true;
    }

    /// The lines shown, oldest first.
    fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.split_terminator('\n')
    }

    /// What a line shows of `m`: the `field` of object data when it is a string there, else
    /// the text (a string as it is, anything else as compact JSON).
    fn text_of<'m>(&self, m: &'m Message) -> Cow<'m, str> {
        let json = m.data.json();
        if let Some(field) = &self.field
            && json.starts_with('{')
            && let Ok(mut object) =
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json)
            && let Some(serde_json::Value::String(text)) = object.remove(&**field)
        {
            return Cow::Owned(text);
        }
        Cow::Borrowed(m.text())
    }

    /// The GIF's opening: header, logical screen, palette, the loop extension, and a first
    /// frame with the lines the screen starts with (none, or the channel's last ones).
    pub fn preamble(&self, out: &mut BytesMut) {
        self.encode(true, 0, out);
    }

    /// A frame of the lines as they are now, if they changed since the last one.
    pub fn flush(&mut self, out: &mut BytesMut) {
        if self.dirty {
            self.dirty = false;
            self.encode(false, 0, out);
        }
    }

    /// The end of the GIF: a last frame with `notice` as its newest line, held for as long as
    /// a GIF can say, and the trailer.
    pub fn end(&mut self, notice: &str, out: &mut BytesMut) {
        self.push_line(&format!("* {notice}"));
        self.dirty = false;
        self.encode(false, FINAL_DELAY, out);
        out.put_u8(TRAILER);
    }

    /// The lines drawn: one palette index per pixel, row by row.
    pub fn render(&self) -> Vec<u8> {
        let (width, scale) = (usize::from(self.width), usize::from(self.scale));
        let mut pixels = vec![BG; width * usize::from(self.height)];
        for (row, line) in self.lines().enumerate() {
            let top = (MARGIN + row * CELL_HEIGHT) * scale;
            for (column, c) in line.chars().enumerate() {
                let left = (MARGIN + column * CELL_WIDTH) * scale;
                for (y, bits) in font::glyph(c).iter().enumerate() {
                    for x in (0..GLYPH_WIDTH).filter(|x| bits & (0b10000 >> x) != 0) {
                        for dy in 0..scale {
                            let start = (top + y * scale + dy) * width + left + x * scale;
                            pixels[start..start + scale].fill(FG);
                        }
                    }
                }
            }
        }
        pixels
    }

    /// One frame of the whole screen (with the GIF's opening when `opening`): from
    /// [`FRAMES`] when another GIF just showed the same, else drawn and encoded by the `gif`
    /// crate into a buffer of its own and copied out without its header or trailer.
    fn encode(&self, opening: bool, delay: u16, out: &mut BytesMut) {
        let key = self.key(opening, delay);
        if let Some(bytes) = FRAMES.get(&key) {
            out.put_slice(&bytes);
            return;
        }
        let frame = Frame {
            delay,
            dispose: DisposalMethod::Keep,
            width: self.width,
            height: self.height,
            buffer: self.render().into(),
            ..Frame::default()
        };
        let mut bytes = BytesMut::new();
        match encode_into(
            self.width,
            self.height,
            &self.palette,
            opening,
            &frame,
            &mut bytes,
        ) {
            Ok(()) => {
                out.put_slice(&bytes);
                FRAMES.put(key, bytes.freeze());
            }
            Err(e) => tracing::error!("gif: could not encode a frame: {e}"),
        }
    }

    /// Everything a frame's bytes depend on: the opening or not, the delay, the size, the
    /// scale, the palette and the lines.
    fn key(&self, opening: bool, delay: u16) -> Vec<u8> {
        let mut key = Vec::with_capacity(16 + self.lines.len());
        key.push(u8::from(opening));
        key.extend_from_slice(&delay.to_le_bytes());
        key.extend_from_slice(&self.width.to_le_bytes());
        key.extend_from_slice(&self.height.to_le_bytes());
        key.push(self.scale);
        key.extend_from_slice(&self.palette);
        key.extend_from_slice(self.lines.as_bytes());
        key
    }
}

/// Most frames kept in [`FRAMES`]. A message to a channel with many GIF subscribers is the
/// same frame for all whose parameters and lines match; 64 covers several busy channels at a
/// few parameter sets each. At the bound the oldest frame is forgotten (it is encoded again if
/// asked for). At most 64 × 45 KiB at the largest parameters, 64 × 4 KiB at the defaults.
const FRAME_CACHE: usize = 64;

/// The frames encoded last, shared by every GIF: under fan-out, one encode per message instead
/// of one per subscriber.
static FRAMES: FrameCache = FrameCache(Mutex::new(VecDeque::new()));

struct FrameCache(Mutex<VecDeque<(Vec<u8>, Bytes)>>);

impl FrameCache {
    fn get(&self, key: &[u8]) -> Option<Bytes> {
        let frames = self.0.lock().unwrap_or_else(|e| e.into_inner());
        frames
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, bytes)| bytes.clone())
    }

    fn put(&self, key: Vec<u8>, bytes: Bytes) {
        let mut frames = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Two GIFs may have encoded the same frame at once: keep one.
        if frames.iter().any(|(k, _)| *k == key) {
            return;
        }
        if frames.len() == FRAME_CACHE {
            frames.pop_front();
        }
        frames.push_back((key, bytes));
    }
}

/// The GIF trailer, written only when a stream ends.
const TRAILER: u8 = 0x3b;

/// `frame` encoded, after the GIF's opening (header, screen, palette, loop extension) when
/// `opening`. The encoder writes into a buffer of its own; its header (unless wanted) and the
/// trailer it writes when dropped are left out.
fn encode_into(
    width: u16,
    height: u16,
    palette: &[u8],
    opening: bool,
    frame: &Frame<'_>,
    out: &mut BytesMut,
) -> Result<(), gif::EncodingError> {
    let mut encoder = Encoder::new(Vec::new(), width, height, palette)?;
    let skip = if opening {
        encoder.set_repeat(Repeat::Infinite)?;
        0
    } else {
        encoder.get_ref().len()
    };
    encoder.write_frame(frame)?;
    let bytes = std::mem::take(encoder.get_mut());
    out.put_slice(&bytes[skip..]);
    Ok(())
}

/// The heartbeat: a 1×1 frame at (0, 0) whose pixel is transparent, so that it changes
/// nothing. The same bytes for every GIF (they depend on no parameter).
pub fn heartbeat() -> Bytes {
    static FRAME: OnceLock<Bytes> = OnceLock::new();
    FRAME
        .get_or_init(|| {
            let frame = Frame {
                width: 1,
                height: 1,
                transparent: Some(BG),
                buffer: vec![BG].into(),
                ..Frame::default()
            };
            let mut out = BytesMut::new();
            if let Err(e) = encode_into(1, 1, &[0; 6], false, &frame, &mut out) {
                tracing::error!("gif: could not encode the heartbeat: {e}");
            }
            out.freeze()
        })
        .clone()
}

/// An integer parameter from `min` to `max`, `default` when absent.
fn number(
    query: &Query,
    name: &str,
    min: usize,
    max: usize,
    default: usize,
) -> Result<usize, ApiError> {
    match query.get(name) {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("{name} must be an integer from {min} to {max}"))
            }),
    }
}

/// A colour parameter, `rrggbb` in hex (a leading `#` allowed), `default` when absent.
fn colour(query: &Query, name: &str, default: [u8; 3]) -> Result<[u8; 3], ApiError> {
    let Some(text) = query.get(name) else {
        return Ok(default);
    };
    let hex = text.strip_prefix('#').unwrap_or(text);
    let bad = || {
        ApiError::BadRequest(format!(
            "{name} must be a colour as six hex digits (rrggbb)"
        ))
    };
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut rgb = [0; 3];
    for (i, byte) in rgb.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(rgb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use halley_proto::{Channel, MessageId, Payload};

    fn screen(query: &str) -> Screen {
        Screen::from_query(&Query::parse(Some(query))).unwrap()
    }

    fn message(json: &str) -> Message {
        Message::new(
            Channel::parse("/chat").unwrap(),
            MessageId::new(1, 1),
            Payload::from_json(json.as_bytes()).unwrap(),
        )
    }

    #[test]
    fn lines_scroll_and_are_cut_to_the_width() {
        let mut s = screen("lines=2&width=64&scale=1");
        // 64 pixels: (64 - 4) / 6 = 10 characters.
        assert_eq!(s.columns, 10);
        for text in [
            r#""one""#,
            r#""two\nlines""#,
            r#""a very long line indeed""#,
        ] {
            s.push(&message(text));
        }
        assert_eq!(s.lines().collect::<Vec<_>>(), ["two lines", "a very lon"]);
        s.push(&message("\"\""));
        assert_eq!(s.lines().collect::<Vec<_>>(), ["a very lon", ""]);
        s.push(&message("\"x\""));
        assert_eq!(s.lines().collect::<Vec<_>>(), ["", "x"]);
    }

    #[test]
    fn a_field_is_shown_when_it_is_a_string_and_json_otherwise() {
        let mut s = screen("field=text");
        s.push(&message(r#"{"text":"hi","who":"ann"}"#));
        s.push(&message(r#"{"text":1}"#));
        s.push(&message("[1, 2]"));
        assert_eq!(
            s.lines().collect::<Vec<_>>(),
            ["hi", r#"{"text":1}"#, "[1,2]"]
        );
    }

    /// Not a check: what one frame costs to draw and encode (each message a new picture), and
    /// what it costs another GIF showing the same picture (the shared frame), for
    /// bench/README.md. Run with
    /// `cargo test --release -p halley-http --lib measure_frame_encode -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn measure_frame_encode() {
        for query in ["", "width=1024&lines=32&scale=4"] {
            let mut s = screen(query);
            let line = |i: usize| {
                format!(
                    "\"{i} ann: {}\"",
                    "the quick brown fox jumps over ".repeat(4)
                )
            };
            for i in 0..s.capacity() {
                s.push(&message(&line(i)));
            }
            let n = 200;
            let mut bytes = 0;
            let start = std::time::Instant::now();
            for i in 0..n {
                let mut out = BytesMut::new();
                s.push(&message(&line(1000 + i)));
                s.flush(&mut out);
                bytes = out.len();
            }
            let drawn = start.elapsed() / n as u32;
            let start = std::time::Instant::now();
            for _ in 0..n {
                let mut out = BytesMut::new();
                s.dirty = true;
                s.flush(&mut out);
            }
            let shared = start.elapsed() / n as u32;
            let start = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(s.render());
            }
            let render = start.elapsed() / n as u32;
            println!(
                "{}x{} px, {} lines of {} characters: {drawn:?} per frame drawn and encoded \
                 (drawing {render:?}), {shared:?} per frame shared, {bytes} bytes",
                s.width,
                s.height,
                s.capacity(),
                s.columns
            );
        }
    }

    /// What every idle GIF subscriber keeps, besides its lines' text (bench/README.md).
    #[test]
    fn a_screen_stays_small() {
        assert!(
            std::mem::size_of::<Screen>() <= 56,
            "{}",
            std::mem::size_of::<Screen>()
        );
    }

    #[test]
    fn the_frame_cache_is_bounded_and_keeps_the_newest() {
        let cache = FrameCache(Mutex::new(VecDeque::new()));
        for i in 0..=FRAME_CACHE {
            cache.put(i.to_le_bytes().to_vec(), Bytes::from(vec![i as u8]));
        }
        assert_eq!(cache.0.lock().unwrap().len(), FRAME_CACHE);
        assert_eq!(cache.get(&0usize.to_le_bytes()), None, "the oldest went");
        let newest = FRAME_CACHE.to_le_bytes();
        assert_eq!(
            cache.get(&newest).as_deref(),
            Some(&[FRAME_CACHE as u8][..])
        );
    }

    #[test]
    fn frames_encode_without_header_or_trailer() {
        let mut s = screen("");
        let mut out = BytesMut::new();
        s.preamble(&mut out);
        assert!(out.starts_with(b"GIF89a"));
        assert_ne!(out.last(), Some(&TRAILER));
        let mut frame = BytesMut::new();
        s.flush(&mut frame);
        assert!(frame.is_empty(), "nothing new, no frame");
        s.push(&message(r#""hello""#));
        s.flush(&mut frame);
        // A graphic control extension first: 0x21 0xF9.
        assert_eq!(&frame[..2], &[0x21, 0xf9]);
        assert_eq!(&heartbeat()[..2], &[0x21, 0xf9]);
    }
}
