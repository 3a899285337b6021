//! Headless Chromium on the `http` plugin: what a browser needs from a static server.

use host_tests::{assert_contains, Host, TempDir};

use crate::http_tools::{bmp, chromium_dom, root_config, wav};

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
