// Token tooltips: hover or focus a token of a strip to see its activation and text. A firing
// token carries its activation in data-act (and tabindex, so keyboards reach it); a bare span
// is a token that did not fire (activation 0). data-abl: the ablation effect on log p(next token).
(function () {
  "use strict";
  const tip = document.getElementById("tooltip");
  if (!tip) return;
  const TOKEN = ".toks > span";

  function show(token) {
    const rect = token.getBoundingClientRect();
    tip.textContent = "activation " + (token.dataset.act || "0") + "\ntoken " + token.textContent +
      (token.dataset.abl ? "\nremoving it: log p(next) " + token.dataset.abl + " nats" : "");
    tip.hidden = false;
    tip.style.left = window.scrollX + rect.left + "px";
    tip.style.top = window.scrollY + rect.bottom + 4 + "px";
  }
  function hide() { tip.hidden = true; }

  for (const type of ["mouseover", "focusin"]) {
    document.addEventListener(type, function (event) {
      const token = event.target.closest && event.target.closest(TOKEN);
      if (token) show(token);
    });
  }
  for (const type of ["mouseout", "focusout"]) {
    document.addEventListener(type, function (event) {
      if (event.target.closest && event.target.closest(TOKEN)) hide();
    });
  }
  document.addEventListener("keydown", function (event) { if (event.key === "Escape") hide(); });
})();
