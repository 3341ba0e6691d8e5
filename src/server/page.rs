//! The web page: its files (markup, style, one script per concern), embedded in the binary
//! and served under `/` and `/page/{name}`. Nothing is fetched from the network at run time.

/// `(name, content type, body)` of every file the page is made of.
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", HTML, include_str!("page/index.html")),
    ("style.css", CSS, include_str!("page/style.css")),
    ("api.js", JS, include_str!("page/api.js")),
    ("modules.js", JS, include_str!("page/modules.js")),
    ("runs.js", JS, include_str!("page/runs.js")),
    ("run-view.js", JS, include_str!("page/run-view.js")),
    ("stream.js", JS, include_str!("page/stream.js")),
    ("log-view.js", JS, include_str!("page/log-view.js")),
    ("charts.js", JS, include_str!("page/charts.js")),
    ("main.js", JS, include_str!("page/main.js")),
    // uPlot, vendored from its npm package (see page/vendor/README.md).
    (
        "uPlot.iife.min.js",
        JS,
        include_str!("page/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        CSS,
        include_str!("page/vendor/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        TEXT,
        include_str!("page/vendor/uPlot.LICENSE"),
    ),
];

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The page's markup (what `GET /` answers).
pub fn index() -> (&'static str, &'static [u8]) {
    file("index.html").expect("index.html is one of the page's files")
}

/// One of the page's files by name: its content type and bytes.
pub fn file(name: &str) -> Option<(&'static str, &'static [u8])> {
    FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, kind, body)| (*kind, body.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_markup_names_is_served() {
        let (_, html) = index();
        let html = std::str::from_utf8(html).unwrap();
        let named: Vec<&str> = html
            .split("\"page/")
            .skip(1)
            .map(|rest| &rest[..rest.find('"').unwrap()])
            .collect();
        assert!(named.len() >= 10, "{named:?}");
        for name in named {
            assert!(file(name).is_some(), "{name} is not served");
        }
        assert!(file("../Cargo.toml").is_none());
    }
}
