//! `transport=gif`, the forever GIF: the response decoded frame by frame with the `gif` crate's
//! decoder — a valid header and screen, the loop extension, one new frame per published
//! message whose pixels show the text, transparent heartbeat frames, resume and the channel's
//! last lines, the closing frame and trailer on shutdown — and bad parameters refused with 400.

mod common;

use std::io::Cursor;
use std::time::Duration;

use common::{Open, TestServer, within};

/// Font pixels of background around the text, and one character cell (glyph and gap): the
/// layout the README documents, with `scale=1`.
const MARGIN: usize = 2;
const CELL_WIDTH: usize = 6;
const CELL_HEIGHT: usize = 9;

/// One decoded frame: where it is, its palette indices, its transparent index and delay.
#[derive(Debug, Clone)]
struct Frame {
    left: u16,
    top: u16,
    width: u16,
    height: u16,
    transparent: Option<u8>,
    delay: u16,
    pixels: Vec<u8>,
}

/// What a GIF so far decodes to.
struct Decoded {
    width: u16,
    height: u16,
    palette: Vec<u8>,
    repeat: gif::Repeat,
    frames: Vec<Frame>,
    /// The data ended with the trailer.
    complete: bool,
}

/// Decodes `bytes` (a GIF still arriving: no trailer yet, perhaps half a frame) as far as
/// whole frames go; `None` until the opening (header, screen, palette) has arrived.
fn try_decode(bytes: &[u8]) -> Option<Decoded> {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    let mut decoder = options.read_info(Cursor::new(bytes)).ok()?;
    let mut frames = Vec::new();
    let mut complete = false;
    loop {
        match decoder.read_next_frame() {
            Ok(Some(f)) => frames.push(Frame {
                left: f.left,
                top: f.top,
                width: f.width,
                height: f.height,
                transparent: f.transparent,
                delay: f.delay,
                pixels: f.buffer.to_vec(),
            }),
            Ok(None) => {
                complete = true;
                break;
            }
            // The end of what has arrived so far.
            Err(_) => break,
        }
    }
    Some(Decoded {
        width: decoder.width(),
        height: decoder.height(),
        palette: decoder.global_palette().unwrap_or_default().to_vec(),
        repeat: decoder.repeat(),
        frames,
        complete,
    })
}

/// [`try_decode`] of a GIF whose opening has arrived.
fn decode(bytes: &[u8]) -> Decoded {
    try_decode(bytes).expect("a GIF header, logical screen and palette")
}

/// Reads on until the GIF has `n` whole-screen frames (heartbeats aside); returns them all.
async fn screens(open: &mut Open, n: usize) -> Decoded {
    loop {
        let decoded = try_decode(&open.buf);
        let have = decoded.as_ref().map_or(0, |d| whole(d).len());
        if let Some(decoded) = decoded.filter(|_| have >= n) {
            return decoded;
        }
        let more = open.try_fill().await.expect("the GIF goes on");
        assert!(more, "the GIF ended with {have} frames");
    }
}

/// The frames that cover the whole screen (not heartbeats).
fn whole(d: &Decoded) -> Vec<&Frame> {
    d.frames
        .iter()
        .filter(|f| (f.width, f.height) == (d.width, d.height))
        .collect()
}

/// The pixels of text line `line` (0 at the top) of a `scale=1` frame, row by row.
fn line_pixels(frame: &Frame, line: usize) -> Vec<u8> {
    let width = usize::from(frame.width);
    let top = MARGIN + line * CELL_HEIGHT;
    frame.pixels[top * width..(top + CELL_HEIGHT) * width].to_vec()
}

/// How many pixels of `frame` are text (palette index 1).
fn ink(pixels: &[u8]) -> usize {
    pixels.iter().filter(|p| **p == 1).count()
}

#[tokio::test]
async fn each_message_is_a_new_frame_showing_its_text() {
    let s = TestServer::start().await;
    let mut open = s
        .stream("/sub/gif/a?transport=gif&width=128&lines=2&scale=1&fg=ff0000&bg=%23000080")
        .await;
    assert_eq!(open.status, 200);
    assert_eq!(open.header("content-type"), Some("image/gif"));
    assert_eq!(open.header("cache-control"), Some("no-cache"));

    let first = screens(&mut open, 1).await;
    assert!(open.buf.starts_with(b"GIF89a"), "{:?}", &open.buf[..6]);
    // 128 wide; (2 + 2 × 9 + 2) × 1 = 22 tall.
    assert_eq!((first.width, first.height), (128, 22));
    // Background first, then text; the table is padded to two entries at least.
    assert_eq!(&first.palette[..6], &[0x00, 0x00, 0x80, 0xff, 0x00, 0x00]);
    assert_eq!(first.repeat, gif::Repeat::Infinite);
    let netscape = open.buf.windows(11).position(|w| w == b"NETSCAPE2.0");
    let image = open.buf.iter().position(|b| *b == 0x2c);
    assert!(
        netscape.is_some() && netscape < image,
        "the loop extension opens the GIF"
    );
    assert_eq!(
        ink(&whole(&first)[0].pixels),
        0,
        "a fresh channel: a blank first frame"
    );

    s.publish("/gif/a", "HI").await;
    let d = screens(&mut open, 2).await;
    assert_eq!(whole(&d).len(), 2, "one frame for one message");
    let hi = whole(&d)[1].clone();
    // The frame is all of the screen, kept (not disposed), and shows no more than its text.
    assert_eq!((hi.left, hi.top), (0, 0));
    assert_eq!(hi.transparent, None);
    // 'H' in the first cell at (2, 2): its seven rows as drawn by the font, then the gap.
    let h = [
        "#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#", ".....",
    ];
    for (y, row) in h.iter().enumerate() {
        let at = (MARGIN + y) * 128 + MARGIN;
        let got: String = hi.pixels[at..at + 5]
            .iter()
            .map(|p| if *p == 1 { '#' } else { '.' })
            .collect();
        assert_eq!(&got, row, "row {y} of the H");
    }
    assert!(ink(&line_pixels(&hi, 0)) > 0);
    assert_eq!(ink(&line_pixels(&hi, 1)), 0, "one message, one line");
    assert_eq!(
        ink(&hi.pixels),
        ink(&line_pixels(&hi, 0)),
        "nothing outside it"
    );

    s.publish("/gif/a", "there").await;
    let d = screens(&mut open, 3).await;
    assert_eq!(whole(&d).len(), 3);
    let two = whole(&d)[2].clone();
    assert_eq!(line_pixels(&two, 0), line_pixels(&hi, 0), "HI stays on top");
    let there = line_pixels(&two, 1);
    assert_ne!(ink(&there), 0);
    assert_ne!(
        ink(&there),
        ink(&line_pixels(&hi, 0)),
        "another text, other pixels"
    );

    // Full: the oldest line scrolls off, the others move up.
    s.publish("/gif/a", "HI").await;
    let d = screens(&mut open, 4).await;
    let scrolled = whole(&d)[3].clone();
    assert_eq!(line_pixels(&scrolled, 0), there);
    assert_eq!(line_pixels(&scrolled, 1), line_pixels(&hi, 0));
    assert!(!d.complete, "no trailer while the stream lives");
}

#[tokio::test]
async fn json_data_shows_compact_or_its_field_and_long_lines_are_cut() {
    let s = TestServer::start().await;
    let mut plain = s.stream("/sub/gif/j?transport=gif&width=64&scale=1").await;
    let mut field = s
        .stream("/sub/gif/j?transport=gif&width=64&scale=1&field=text")
        .await;
    screens(&mut plain, 1).await;
    screens(&mut field, 1).await;
    s.publish_json("/gif/j", r#"{"text":"I","who":"ann"}"#)
        .await;
    let plain = whole(&screens(&mut plain, 2).await)[1].clone();
    let field = whole(&screens(&mut field, 2).await)[1].clone();
    // `I` alone: 11 pixels of the font. The object as compact JSON fills the 10 columns
    // that fit in 64 pixels, and nothing past them.
    assert_eq!(ink(&field.pixels), 11);
    assert!(ink(&plain.pixels) > 40);
    let right = MARGIN + 10 * CELL_WIDTH;
    for row in plain.pixels.chunks(64) {
        assert!(row[right..].iter().all(|p| *p == 0), "cut to the width");
    }
}

#[tokio::test]
async fn heartbeats_are_transparent_one_pixel_frames() {
    let s = TestServer::with(|http, _| http.heartbeat_interval = Duration::from_millis(50)).await;
    let mut open = s.stream("/sub/gif/h?transport=gif").await;
    let beat = within("a heartbeat frame", async {
        loop {
            let d = try_decode(&open.buf);
            if let Some(f) = d.iter().flat_map(|d| &d.frames).find(|f| f.width == 1) {
                return f.clone();
            }
            assert!(open.try_fill().await.unwrap());
        }
    })
    .await;
    assert_eq!((beat.left, beat.top, beat.height), (0, 0, 1));
    assert_eq!(beat.transparent, Some(beat.pixels[0]), "changes nothing");
}

#[tokio::test]
async fn a_new_gif_starts_with_the_channels_last_lines_and_last_id_resumes() {
    let s = TestServer::start().await;
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        ids.push(s.publish("/gif/r", text).await);
    }
    let line = |text: &str| {
        let s = &s;
        let text = text.to_owned();
        async move {
            // What `text` looks like alone on the top line of a fresh GIF.
            let channel = format!("/gif/alone-{text}");
            let mut open = s
                .stream(&format!("/sub{channel}?transport=gif&scale=1"))
                .await;
            screens(&mut open, 1).await;
            s.publish(&channel, &text).await;
            line_pixels(whole(&screens(&mut open, 2).await)[1], 0)
        }
    };
    let (two, three) = (line("two").await, line("three").await);

    // No last_id: the last two lines, the older in the first frame.
    let mut open = s.stream("/sub/gif/r?transport=gif&lines=2&scale=1").await;
    let d = screens(&mut open, 2).await;
    let frames = whole(&d);
    assert_eq!(line_pixels(frames[0], 0), two);
    assert_eq!(ink(&line_pixels(frames[0], 1)), 0);
    assert_eq!(line_pixels(frames[1], 0), two);
    assert_eq!(line_pixels(frames[1], 1), three);

    // last_id: what came after it, and nothing before.
    let mut open = s
        .stream(&format!(
            "/sub/gif/r?transport=gif&lines=2&scale=1&last_id={}",
            ids[1]
        ))
        .await;
    let d = screens(&mut open, 2).await;
    let frames = whole(&d);
    assert_eq!(ink(&frames[0].pixels), 0);
    assert_eq!(line_pixels(frames[1], 0), three);
    assert_eq!(ink(&line_pixels(frames[1], 1)), 0);
}

#[tokio::test]
async fn shutdown_ends_the_gif_with_a_closing_frame_and_the_trailer() {
    let s = TestServer::with(|http, _| http.hold_timeout = Duration::from_secs(30)).await;
    let mut open = s.stream("/sub/gif/s?transport=gif&scale=1").await;
    screens(&mut open, 1).await;
    s.shutdown.cancel();
    within("the end of the GIF", async {
        while open.try_fill().await.unwrap() {}
    })
    .await;
    assert_eq!(open.buf.last(), Some(&0x3b), "the trailer");
    let d = decode(&open.buf);
    assert!(d.complete);
    let frames = whole(&d);
    assert_eq!(frames.len(), 2);
    let last = frames[1];
    assert!(ink(&line_pixels(last, 0)) > 0, "a line says why it ended");
    assert_eq!(
        last.delay,
        u16::MAX,
        "and stays up rather than replaying the loop"
    );
}

#[tokio::test]
async fn bad_parameters_are_refused_with_400() {
    let s = TestServer::start().await;
    let long = "f".repeat(65);
    for query in [
        "width=63",
        "width=1025",
        "width=wide",
        "lines=0",
        "lines=33",
        "scale=0",
        "scale=5",
        "fg=red",
        "fg=12345",
        "bg=%2312345g",
        "field=",
        &format!("field={long}"),
    ] {
        let reply = s.get(&format!("/sub/gif/b?transport=gif&{query}")).await;
        reply.expect_error(400);
        let error = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = query.split('=').next().unwrap();
        assert!(error.contains(name), "{query}: {error}");
    }
    // The bounds themselves are fine, and HEAD says what a GET would be.
    let ok = s
        .stream("/sub/gif/b?transport=gif&width=1024&lines=32&scale=4&fg=%23ABCDEF&bg=000000")
        .await;
    assert_eq!(ok.status, 200);
    let head = s
        .send(
            s.request("HEAD", "/sub/gif/b?transport=gif")
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("image/gif"));
}
