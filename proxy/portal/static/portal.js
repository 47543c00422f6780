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

// The what-if answer while the restrictions are edited: the form's fields go to
// /portal/keys/{key_id}/what-if (the session's CSRF token in a header), whose answer is
// the same panel "Check what would change" shows; then "Save" is offered. The panel is
// HTML the server escaped, parsed by DOMParser (which runs no script) and put in place.
const restrictions = document.getElementById("restrictions-form");
if (restrictions) {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  let timer = 0;
  let asked = 0;
  const ask = async () => {
    const mine = ++asked;
    const answer = await fetch(restrictions.dataset.whatIf, {
      method: "POST",
      body: new URLSearchParams(new FormData(restrictions)),
      headers: { "X-CSRF-Token": csrf },
      credentials: "same-origin",
    });
    const html = await answer.text();
    if (mine !== asked) {
      return; // a later edit's answer is on its way
    }
    const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("what-if");
    const shown = document.getElementById("what-if");
    if (fresh && shown) {
      shown.replaceWith(fresh);
    } else if (fresh) {
      restrictions.before(fresh);
    }
    restrictions.querySelector('button[value="save"]').hidden = !answer.ok;
  };
  restrictions.addEventListener("input", () => {
    window.clearTimeout(timer);
    timer = window.setTimeout(ask, 400);
  });
}
