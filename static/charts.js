// Draw every chart of the page: each .plot[data-chart] names a JSON data block holding a Plotly
// figure spec ({data, layout}) written by the server. Nothing here is page-specific.
(function () {
  "use strict";
  function draw() {
    if (typeof Plotly === "undefined") return;
    for (const el of document.querySelectorAll(".plot[data-chart]")) {
      const source = document.getElementById(el.dataset.chart);
      if (!source) continue;
      const spec = JSON.parse(source.textContent);
      Plotly.newPlot(el, spec.data, spec.layout, { displayModeBar: false, responsive: true });
      // A map's points open their page: spec.link holds the URL with {index} for the point's index.
      if (spec.link) {
        el.on("plotly_click", function (event) {
          const point = event.points && event.points[0];
          if (point && Number.isInteger(point.customdata)) {
            window.location.href = spec.link.replace("{index}", String(point.customdata));
          } else if (point && typeof point.customdata === "string" && point.customdata.startsWith("/")) {
            // A family tree's nodes live in several runs: each carries its own path.
            window.location.href = point.customdata;
          }
        });
      }
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
