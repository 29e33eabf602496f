//! Binary bodies (`Payload::binary`): their JSON form, what counts as binary, and decoding.

use halley_proto::{Channel, Message, MessageId, Payload, is_binary_type};

#[test]
fn binary_types_are_images_sound_video_and_octet_streams() {
    for t in [
        "image/png",
        "image/svg+xml",
        "audio/ogg",
        "video/mp4",
        "application/octet-stream",
    ] {
        assert!(is_binary_type(t), "{t}");
    }
    for t in [
        "text/html",
        "application/json",
        "application/xml",
        "image/",
        "image",
        "",
        "image/p ng",
    ] {
        assert!(!is_binary_type(t), "{t}");
    }
    assert!(!is_binary_type(&format!("image/{}", "x".repeat(100))));
}

#[test]
fn a_binary_body_is_json_that_decodes_to_its_bytes() {
    let bytes = b"\x89PNG\r\n\x1a\n\0\xff";
    let payload = Payload::binary("image/png", bytes);
    assert_eq!(
        payload.json(),
        r#"{"$binary":"iVBORw0KGgoA/w==","type":"image/png"}"#
    );
    // Valid, storable JSON (what the broker and history keep).
    assert_eq!(
        Payload::from_json(payload.json().as_bytes()).unwrap(),
        payload
    );
    let message = Message::new(
        Channel::parse("/cam").unwrap(),
        MessageId::new(1, 1),
        payload,
    );
    let binary = message.binary().expect("binary");
    assert_eq!(&*binary.content_type, "image/png");
    assert_eq!(&binary.bytes[..], bytes);
}

#[test]
fn other_data_is_not_binary() {
    for json in [
        r#"{"$binary":"PHNjcmlwdD4=","type":"text/html"}"#,
        r#"{"$binary":"not base64!","type":"image/png"}"#,
        r#"{"type":"image/png","$binary":"AA=="}"#,
        r#""image""#,
        r#"{"a":1}"#,
    ] {
        let message = Message::new(
            Channel::parse("/cam").unwrap(),
            MessageId::new(1, 1),
            Payload::from_json(json.as_bytes()).unwrap(),
        );
        assert!(message.binary().is_none(), "{json}");
    }
}
