// Disparo's own script, loaded with defer from base.html (the Content-Security-Policy
// allows no inline script). Everything here is a nicety: the pages work without it.
(function () {
  "use strict";

  // On a narrow screen a wide table scrolls sideways in its own box (app.css). Such a
  // box must take the keyboard's focus, or it cannot be scrolled without a mouse: the
  // tables that scroll now get tabindex="0", and lose it when they fit again.
  function focusScrollingTables() {
    document.querySelectorAll("main table").forEach(function (table) {
      var scrolls = table.scrollWidth > table.clientWidth + 1;
      if (scrolls && !table.hasAttribute("tabindex")) {
        table.setAttribute("tabindex", "0");
        table.dataset.scrolls = "";
      } else if (!scrolls && table.dataset.scrolls !== undefined) {
        table.removeAttribute("tabindex");
        delete table.dataset.scrolls;
      }
    });
  }

  var pending = false;
  function soon() {
    if (pending) return;
    pending = true;
    window.requestAnimationFrame(function () {
      pending = false;
      focusScrollingTables();
    });
  }

  focusScrollingTables();
  window.addEventListener("resize", soon);
  document.addEventListener("htmx:afterSettle", soon); // tables that htmx swapped in
})();
