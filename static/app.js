// Disparo's own script, loaded with defer from base.html, after htmx (the
// Content-Security-Policy allows no inline script). The pages work without it.
(function () {
  "use strict";

  // A polled section marked data-stale-note keeps its figures when a poll fails (a network
  // error, or an error status) and shows its hidden .stale-note ("Figures may be out of date
  // — retrying…"); htmx keeps polling (every 2s goes on after an error), and the next answer
  // replaces the section, note hidden again. Its error page is not put in the flash area
  // every two seconds meanwhile.

  function polledSection(event) {
    var elt = event.detail && event.detail.elt;
    return elt && elt.closest ? elt.closest("[data-stale-note]") : null;
  }

  function showStale(event) {
    var section = polledSection(event);
    var note = section && section.querySelector(".stale-note");
    if (note) {
      note.hidden = false;
      section.setAttribute("aria-busy", "true");
    }
  }

  document.addEventListener("htmx:sendError", showStale);
  document.addEventListener("htmx:responseError", showStale);
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.isError && polledSection(event)) {
      event.detail.shouldSwap = false;
      showStale(event);
    }
  });

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
