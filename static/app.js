// Disparo's own script (the Content-Security-Policy allows no inline script): loaded with
// defer from base.html, after htmx.

// A polled section marked data-stale-note keeps its figures when a poll fails (a network
// error, or an error status) and shows its hidden .stale-note ("Figures may be out of date
// — retrying…"); htmx keeps polling (every 2s goes on after an error), and the next answer
// replaces the section, note hidden again. Its error page is not put in the flash area
// every two seconds meanwhile.
(function () {
  "use strict";

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
})();
