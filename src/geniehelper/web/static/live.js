// Live regions: an element with data-live="URL" is replaced by what URL serves, every data-every ms
// (default 2000), while the page is visible. A signed-out session goes back to the sign-in page; a
// server that does not answer shows the #stale banner until it answers again.
(function () {
  "use strict";
  function schedule(el) {
    setTimeout(function () { refresh(el); }, Number(el.dataset.every || 2000));
  }
  function refresh(el) {
    if (document.hidden) { schedule(el); return; }
    fetch(el.dataset.live, { headers: { "X-Live": "1" }, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) {
          location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
          return null;
        }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        el.innerHTML = html;
        el.dataset.refreshed = String(Date.now());
        document.body.classList.remove("stale");
        schedule(el);
      })
      .catch(function () { document.body.classList.add("stale"); schedule(el); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(schedule);
  });
})();
