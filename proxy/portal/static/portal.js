// The customer page's only script (proxy/portal): progressive, the page works without it.
"use strict";

// Ask before a change that cannot be undone (a form with data-confirm: revoking a key).
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
