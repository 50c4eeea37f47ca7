//! XML as EC2 writes it, with quick-xml (which escapes every text it writes): a small
//! writer of elements and leaves, the [`ToXml`] trait the answer shapes implement, and the
//! answer document `<{Action}Response xmlns=...><requestId>..</requestId>...`.

use quick_xml::escape::partial_escape;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

/// EC2's namespace for API version 2016-11-15.
pub const NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// An XML document being written.
pub struct Xml {
    w: quick_xml::Writer<Vec<u8>>,
}

/// Something that writes itself as the content of an element.
pub trait ToXml {
    /// Writes the content (its child elements) into `x`.
    fn to_xml(&self, x: &mut Xml);
}

impl Default for Xml {
    fn default() -> Self {
        Xml::new()
    }
}

impl Xml {
    /// A document with its declaration written.
    pub fn new() -> Xml {
        let mut x = Xml {
            w: quick_xml::Writer::new(Vec::with_capacity(1024)),
        };
        x.event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
        x
    }

    /// Writes an event. The writer's sink is a `Vec`, which cannot fail.
    fn event(&mut self, e: Event<'_>) {
        let _ = self.w.write_event(e);
    }

    /// Opens element `name`.
    pub fn open(&mut self, name: &str) {
        self.event(Event::Start(BytesStart::new(name)));
    }

    /// Opens element `name` with the attribute `xmlns` = `ns`.
    pub fn open_ns(&mut self, name: &str, ns: &str) {
        self.event(Event::Start(
            BytesStart::new(name).with_attributes([("xmlns", ns)]),
        ));
    }

    /// Closes element `name`.
    pub fn close(&mut self, name: &str) {
        self.event(Event::End(BytesEnd::new(name)));
    }

    /// `<name>text</name>`, the text escaped (`<`, `>`, `&`: all that text content
    /// needs); characters XML 1.0 cannot carry at all
    /// (most control characters, which a console or a log line may hold) become U+FFFD.
    pub fn leaf(&mut self, name: &str, text: &str) {
        self.open(name);
        if text.chars().all(xml_char) {
            self.event(Event::Text(BytesText::from_escaped(partial_escape(text))));
        } else {
            let clean: String = text
                .chars()
                .map(|c| if xml_char(c) { c } else { '\u{fffd}' })
                .collect();
            self.event(Event::Text(BytesText::from_escaped(partial_escape(&clean))));
        }
        self.close(name);
    }

    /// A leaf, if there is a value.
    pub fn leaf_opt(&mut self, name: &str, text: Option<&str>) {
        if let Some(t) = text {
            self.leaf(name, t);
        }
    }

    /// A number leaf.
    pub fn num(&mut self, name: &str, n: impl std::fmt::Display) {
        self.leaf(name, &n.to_string());
    }

    /// A boolean leaf (`true` / `false`).
    pub fn bool(&mut self, name: &str, b: bool) {
        self.leaf(name, if b { "true" } else { "false" });
    }

    /// `<name>...</name>` with `value`'s content.
    pub fn element(&mut self, name: &str, value: &impl ToXml) {
        self.open(name);
        value.to_xml(self);
        self.close(name);
    }

    /// `<name><item>..</item>...</name>`: EC2's lists.
    pub fn list<T: ToXml>(&mut self, name: &str, items: &[T]) {
        self.open(name);
        for item in items {
            self.element("item", item);
        }
        self.close(name);
    }

    /// A list of plain strings, each `<item>text</item>`.
    pub fn strings(&mut self, name: &str, items: &[&str]) {
        self.open(name);
        for item in items {
            self.leaf("item", item);
        }
        self.close(name);
    }

    /// The document's bytes.
    pub fn finish(self) -> Vec<u8> {
        self.w.into_inner()
    }
}

/// Whether XML 1.0 can carry `c` (escaped or not).
fn xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{fffd}' | '\u{10000}'..)
}

/// An action's answer: `<{action}Response xmlns=...><requestId>..</requestId>` and `body`.
pub fn answer(action: &str, request_id: &str, body: &impl ToXml) -> Vec<u8> {
    let root = format!("{action}Response");
    let mut x = Xml::new();
    x.open_ns(&root, NAMESPACE);
    x.leaf("requestId", request_id);
    body.to_xml(&mut x);
    x.close(&root);
    x.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Two;
    impl ToXml for Two {
        fn to_xml(&self, x: &mut Xml) {
            x.leaf("a", "<b> & \"c\"");
            x.leaf("ctl", "x\u{1}y");
            x.strings("set", &["1", "2"]);
        }
    }

    #[test]
    fn text_is_escaped_and_lists_are_items() {
        let out = String::from_utf8(answer("TestAction", "req-1", &Two)).unwrap();
        assert_eq!(
            out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><TestActionResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>req-1</requestId><a>&lt;b&gt; &amp; \"c\"</a><ctl>x\u{fffd}y</ctl>\
             <set><item>1</item><item>2</item></set></TestActionResponse>"
        );
    }
}
