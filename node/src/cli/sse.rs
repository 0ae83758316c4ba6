//! A Server-Sent Events parser (the WHATWG `text/event-stream` format), pure and incremental.
//!
//! Bytes are fed in chunks exactly as they arrive from the network, split anywhere (inside a
//! line, between `\r` and `\n`, inside a multi-byte character); complete events come out.
//! It does no I/O, so `logs -f`'s reconnecting driver and the tests share it.

/// Most bytes one event (or one line) may hold before the stream is declared broken: a server
/// that never ends its lines must not make the client grow without bound.
pub const EVENT_BYTES_MAX: usize = 16 << 20;

/// One dispatched event.
///
/// A block with an `id:` but no `data:` dispatches no event in a browser, yet it moves the
/// stream's last event id (the WHATWG rules); it comes out here with an empty `event`, so that
/// a client can resume after it (the server sends such blocks for records a filter hid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `message` when the server sent none; empty for an `id:`-only block.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field of this event, if it carried one.
    pub id: Option<String>,
}

/// What went wrong in a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line or an event grew beyond [`EVENT_BYTES_MAX`].
    #[error("server-sent event larger than {EVENT_BYTES_MAX} bytes")]
    EventTooLarge,
}

/// The incremental parser: feed it bytes, take events.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the line being received (no terminator yet).
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` starting the next chunk belongs to it.
    after_cr: bool,
    /// Fields of the event being assembled.
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    /// Bytes held in `data` (bounded by [`EVENT_BYTES_MAX`]).
    event_bytes: usize,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk and returns the events it completes, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        let mut rest = chunk;
        // An empty chunk says nothing about whether `\n` follows a pending `\r`.
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let Some(stripped) = rest.strip_prefix(b"\n") {
                rest = stripped;
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&rest[..end]);
            if self.line.len() > EVENT_BYTES_MAX {
                return Err(SseError::EventTooLarge);
            }
            let terminator = rest[end];
            rest = &rest[end + 1..];
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            let line = std::mem::take(&mut self.line);
            if let Some(event) = self.process_line(&line)? {
                events.push(event);
            }
        }
        self.line.extend_from_slice(rest);
        if self.line.len() > EVENT_BYTES_MAX {
            return Err(SseError::EventTooLarge);
        }
        Ok(events)
    }

    /// Interprets one complete line; an empty line dispatches the event being assembled.
    fn process_line(&mut self, line: &[u8]) -> Result<Option<SseEvent>, SseError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None); // A comment: the server's keep-alive.
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"event" => self.event = Some(value.into_owned()),
            b"data" => {
                self.event_bytes += value.len() + 1;
                if self.event_bytes > EVENT_BYTES_MAX {
                    return Err(SseError::EventTooLarge);
                }
                match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(&value);
                    }
                    None => self.data = Some(value.into_owned()),
                }
            }
            // The standard ignores ids containing NUL.
            b"id" if !value.contains('\0') => self.id = Some(value.into_owned()),
            _ => {} // `retry:` and unknown fields: the driver has its own backoff.
        }
        Ok(None)
    }

    /// Ends the event being assembled; a block without data is only passed on when it moves
    /// the last event id.
    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        let id = self.id.take();
        self.event_bytes = 0;
        let Some(data) = self.data.take() else {
            return id.map(|id| SseEvent {
                event: String::new(),
                data: String::new(),
                id: Some(id),
            });
        };
        Some(SseEvent {
            event: event
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "message".to_string()),
            data,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(name: &str, data: &str, id: Option<&str>) -> SseEvent {
        SseEvent {
            event: name.to_string(),
            data: data.to_string(),
            id: id.map(str::to_string),
        }
    }

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(parser.feed(chunk).expect("valid stream"));
        }
        events
    }

    const STREAM: &str = ": keep-alive\n\
        event: dropped\ndata: {\"bytes\":5}\n\n\
        event: log\r\nid: 17\r\ndata: {\"offset\":5,\"data\":\"h\u{e9}llo\\n\"}\r\n\r\n\
        event: exit\rdata:{\"code\":0}\rdata: second line\r\r\
        data: plain\n\n\
        event: no-data\n\n\
        event: no-data\nid: 99\n\n\
        : comment at the end\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            event("dropped", "{\"bytes\":5}", None),
            event(
                "log",
                "{\"offset\":5,\"data\":\"h\u{e9}llo\\n\"}",
                Some("17"),
            ),
            event("exit", "{\"code\":0}\nsecond line", None),
            event("message", "plain", None),
            event("", "", Some("99")),
        ]
    }

    #[test]
    fn parses_events_with_every_line_ending_and_skips_comments() {
        assert_eq!(parse_all(&[STREAM.as_bytes()]), expected());
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_ending() {
        let events = parse_all(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(events, vec![event("message", "a\nb", None)]);
    }

    /// Regression: an empty chunk between `\r` and `\n` made the `\n` an empty line, which
    /// split one event in two (found by `generated_events_survive_any_line_endings_and_cuts`).
    #[test]
    fn an_empty_chunk_between_cr_and_lf_does_not_split_an_event() {
        let events = parse_all(&[b"data: a\r", b"", b"\ndata: b\r\n\r\n"]);
        assert_eq!(events, vec![event("message", "a\nb", None)]);
    }

    #[test]
    fn an_unterminated_event_is_not_dispatched() {
        assert_eq!(parse_all(&[b"event: log\nid: 3\ndata: x\n"]), vec![]);
    }

    #[test]
    fn a_line_without_end_beyond_the_limit_is_an_error() {
        let mut parser = SseParser::new();
        let chunk = vec![b'x'; 1 << 20];
        let mut result = Ok(Vec::new());
        for _ in 0..=(EVENT_BYTES_MAX >> 20) {
            result = parser.feed(&chunk);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::EventTooLarge));
    }

    proptest! {
        /// Chunk boundaries anywhere (even inside `\r\n` or a UTF-8 character) give the same
        /// events as the whole stream at once.
        #[test]
        fn chunk_boundaries_anywhere_give_the_same_events(cuts in proptest::collection::vec(0usize..200, 0..12)) {
            let bytes = STREAM.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts {
                chunks.push(&bytes[start..cut]);
                start = cut;
            }
            chunks.push(&bytes[start..]);
            prop_assert_eq!(parse_all(&chunks), expected());
        }

        /// Model-based: any events (names, multi-line data, ids, including non-ASCII text),
        /// written with any of the three line endings and cut anywhere, come back exactly.
        #[test]
        fn generated_events_survive_any_line_endings_and_cuts(
            events in proptest::collection::vec(
                ("[a-z]{1,8}", proptest::collection::vec("[ -~é€]{0,12}", 1..4), proptest::option::of("[0-9]{1,6}")),
                0..8,
            ),
            ending_idx in 0usize..3,
            cuts in proptest::collection::vec(any::<usize>(), 0..10),
        ) {
            let ending = ["\n", "\r\n", "\r"][ending_idx];
            let mut stream = String::from(":hello");
            stream.push_str(ending);
            let mut expected = Vec::new();
            for (name, lines, id) in &events {
                stream.push_str(&format!("event: {name}{ending}"));
                if let Some(id) = id {
                    stream.push_str(&format!("id: {id}{ending}"));
                }
                for line in lines {
                    stream.push_str(&format!("data: {line}{ending}"));
                }
                stream.push_str(ending);
                expected.push(SseEvent { event: name.clone(), data: lines.join("\n"), id: id.clone() });
            }
            let bytes = stream.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for cut in cuts {
                chunks.push(&bytes[start..cut]);
                start = cut;
            }
            chunks.push(&bytes[start..]);
            prop_assert_eq!(parse_all(&chunks), expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut parser = SseParser::new();
            for chunk in &chunks {
                let _ = parser.feed(chunk);
            }
        }
    }
}
