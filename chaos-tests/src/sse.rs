//! A minimal Server-Sent Events parser (the subset the log follow uses: `event:`, `id:`,
//! `data:` and comment lines), fed with arbitrary chunks of bytes. Bounded: a line longer than
//! `line_bytes_max` is an error, never an unbounded buffer.

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (`message` if absent).
    pub event: String,
    /// The `id:` field, if the event had one.
    pub id: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Why the stream cannot be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line exceeded the bound.
    #[error("an SSE line exceeds {0} bytes")]
    LineTooLong(usize),
}

/// The parser's state between chunks.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    line_bytes_max: usize,
    current: SseEvent,
    has_fields: bool,
    /// Whether the current event has a `data:` line yet (the next one is joined with `\n`).
    has_data: bool,
}

impl SseParser {
    /// A parser refusing lines longer than `line_bytes_max`.
    pub fn new(line_bytes_max: usize) -> Self {
        Self {
            line: Vec::new(),
            line_bytes_max,
            current: SseEvent::default(),
            has_fields: false,
            has_data: false,
        }
    }

    /// Feeds a chunk; returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        for &byte in chunk {
            if byte == b'\n' {
                let line = std::mem::take(&mut self.line);
                let line = String::from_utf8_lossy(&line);
                let line = line.strip_suffix('\r').unwrap_or(&line);
                if let Some(event) = self.line(line) {
                    events.push(event);
                }
            } else {
                if self.line.len() >= self.line_bytes_max {
                    return Err(SseError::LineTooLong(self.line_bytes_max));
                }
                self.line.push(byte);
            }
        }
        Ok(events)
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if !self.has_fields {
                return None;
            }
            self.has_fields = false;
            self.has_data = false;
            let mut event = std::mem::take(&mut self.current);
            if event.event.is_empty() {
                event.event = "message".into();
            }
            return Some(event);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.current.event = value.to_string(),
            "id" => self.current.id = Some(value.to_string()),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => return None,
        }
        self.has_fields = true;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STREAM: &str = "event: dropped\ndata: {\"bytes\": 5}\n\n: keepalive\n\nevent: log\nid: 12\ndata: {\"offset\":5,\"len\":7}\n\n: skip\nid: 20\n\n";

    fn events() -> Vec<SseEvent> {
        vec![
            SseEvent {
                event: "dropped".into(),
                id: None,
                data: "{\"bytes\": 5}".into(),
            },
            SseEvent {
                event: "log".into(),
                id: Some("12".into()),
                data: "{\"offset\":5,\"len\":7}".into(),
            },
            SseEvent {
                event: "message".into(),
                id: Some("20".into()),
                data: String::new(),
            },
        ]
    }

    #[test]
    fn parses_named_events_ids_comments_and_id_only_events() {
        let mut parser = SseParser::new(1024);
        assert_eq!(parser.feed(STREAM.as_bytes()).unwrap(), events());
    }

    #[test]
    fn overlong_line_is_refused() {
        let mut parser = SseParser::new(8);
        assert_eq!(
            parser.feed(b"data: 0123456789\n"),
            Err(SseError::LineTooLong(8))
        );
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(cuts in proptest::collection::vec(0usize..STREAM.len(), 0..10)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let bytes = STREAM.as_bytes();
            let mut parser = SseParser::new(1024);
            let mut got = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain(std::iter::once(bytes.len())) {
                got.extend(parser.feed(&bytes[start..cut]).unwrap());
                start = cut;
            }
            prop_assert_eq!(got, events());
        }
    }
}
