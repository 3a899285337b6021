//! Headless Chromium on the `http` plugin: what a browser needs from a static server, over
//! HTTP/1.1 and over HTTP/2 with TLS (a page of many images on one h2 connection).

use host_tests::{assert_contains, Host, TempDir};

use crate::http_tools::{bmp, chromium_dom, chromium_dom_with, root_config, wav};

/// A page whose script reports, into the DOM, whether its images loaded and where its audio
/// element ended up after seeking to 3 s.
const PAGE: &str = r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>gallery</title></head><body>
<img id="svg" src="pic.svg"><img id="bmp" src="img/pic.bmp">
<audio id="a" src="tone.wav" preload="auto"></audio>
<p id="images">pending</p><p id="audio">pending</p>
<script>
const imgs = [...document.images];
function report() {
  if (imgs.every(i => i.complete)) {
    document.getElementById('images').textContent =
      'images:' + imgs.map(i => i.id + '=' + i.naturalWidth + 'x' + i.naturalHeight).join(',');
  }
}
imgs.forEach(i => { i.addEventListener('load', report); i.addEventListener('error', report); });
report();
const a = document.getElementById('a');
a.addEventListener('loadedmetadata', () => { a.currentTime = 3; });
a.addEventListener('seeked', () => {
  const s = a.seekable;
  document.getElementById('audio').textContent =
    'seeked:' + a.currentTime + ' seekable:' + (s.length ? s.start(0) + '-' + s.end(0) : 'none') +
    ' duration:' + a.duration;
});
a.addEventListener('error', () => { document.getElementById('audio').textContent = 'audio-error'; });
</script></body></html>
"#;

// A directory URL without its slash: the redirect makes the page's relative URLs resolve, so
// both images load; the 20 s WAV (over the streaming threshold) is seekable through ranges.
#[test]
fn chromium_loads_a_directory_page_and_seeks_audio() {
    let dir = TempDir::new();
    dir.write("www/gallery/index.html", PAGE);
    dir.write(
        "www/gallery/pic.svg",
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="7" height="5"><rect width="7" height="5" fill="red"/></svg>"#,
    );
    dir.write("www/gallery/img/pic.bmp", bmp(3, 2));
    dir.write("www/gallery/tone.wav", wav(20));
    let config = root_config(&dir.join("www"), "");
    let host = Host::start("http", &["--plugin-config", &config]);
    let dom = chromium_dom(&format!("http://127.0.0.1:{}/gallery", host.port()));
    assert_contains!(dom, "images:svg=7x5,bmp=3x2", "{}", host.log_text());
    assert_contains!(dom, "seeked:3 seekable:0-20 duration:20", "{}", host.log_text());
}

/// A page of 60 images (a few large enough to be streamed over several windows) whose script
/// reports, once everything loaded, how many images decoded and the protocols the page and its
/// images came over (`nextHopProtocol` of the Resource Timing entries).
fn gallery_page(images: usize) -> String {
    let imgs: String = (0..images).map(|i| format!("<img src=\"img/{i}.bmp\">")).collect();
    format!(
        r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>many</title></head><body>{imgs}
<p id="report">pending</p>
<script>
window.addEventListener('load', () => {{
  const ok = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  const nav = performance.getEntriesByType('navigation')[0].nextHopProtocol;
  const res = [...new Set(performance.getEntriesByType('resource').map(e => e.nextHopProtocol))].join('+');
  document.getElementById('report').textContent = 'loaded:' + ok + ' page:' + nav + ' images:' + res;
}});
</script></body></html>
"#
    )
}

// Chromium loads a page of 60 images over HTTPS with HTTP/2: ALPN agrees `h2`, every image
// decodes, and the page and every image came over h2 (one connection, many streams).
#[test]
fn chromium_loads_many_images_over_h2() {
    let dir = TempDir::new();
    let n = 60;
    dir.write("www/index.html", gallery_page(n));
    for i in 0..n {
        // Every tenth is 300×300 (270 KB: streamed over several windows), the others small.
        let side = if i % 10 == 0 { 300 } else { 4 + i as u32 };
        dir.write(format!("www/img/{i}.bmp"), bmp(side, side));
    }
    let (cert, key) = crate::http2::make_cert(&dir);
    let config = root_config(&dir.join("www"), "");
    let host = Host::start(
        "http",
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--plugin-config", &config],
    );
    let dom = chromium_dom_with(&format!("https://127.0.0.1:{}/", host.port()), &["--ignore-certificate-errors"]);
    assert_contains!(dom, &format!("loaded:{n} page:h2 images:h2<"), "{}", host.log_text());
}
