// Starts Redoc (static/vendor/redoc-2.5.4.standalone.js) on the API docs page
// (templates/api/docs.html): no inline script, as everywhere. The page's policy allows
// only styles carrying this request's nonce, which this script tag carries: Redoc puts
// it on each <style> it injects.
(function () {
  "use strict";
  var nonce = document.currentScript && document.currentScript.nonce;
  document.addEventListener("DOMContentLoaded", function () {
    var root = document.getElementById("api-reference");
    if (!root || !window.Redoc) {
      return;
    }
    window.Redoc.init(
      root.getAttribute("data-spec-url"),
      { nonce: nonce, hideDownloadButton: false, expandResponses: "200,201,202" },
      root
    );
  });
})();
