// Token tooltips: hover or focus a shaded token to see its activation (title is the fallback).
(function () {
  "use strict";
  const tip = document.getElementById("tooltip");
  if (!tip) return;

  function show(token) {
    const rect = token.getBoundingClientRect();
    tip.textContent = "activation " + token.dataset.act + "\ntoken " + token.textContent;
    tip.hidden = false;
    tip.style.left = window.scrollX + rect.left + "px";
    tip.style.top = window.scrollY + rect.bottom + 4 + "px";
  }
  function hide() { tip.hidden = true; }

  for (const type of ["mouseover", "focusin"]) {
    document.addEventListener(type, function (event) {
      const token = event.target.closest && event.target.closest(".t[data-act]");
      if (token) show(token);
    });
  }
  for (const type of ["mouseout", "focusout"]) {
    document.addEventListener(type, function (event) {
      if (event.target.closest && event.target.closest(".t[data-act]")) hide();
    });
  }
  document.addEventListener("keydown", function (event) { if (event.key === "Escape") hide(); });
})();
