// The API keys page: copy the new key, and ask before revoking one. Plain script, no build step;
// without it the key can still be selected by hand and revoking still works (without the question).
(function () {
  "use strict";

  function selectedCopy(input) {
    // For pages the Clipboard API may not use: the browser copies the selection.
    input.focus();
    input.select();
    return document.execCommand("copy");
  }

  async function copy(button) {
    const input = document.querySelector(button.dataset.copy);
    const status = button.parentElement.querySelector(".copy-status");
    let copied = false;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(input.value);
        copied = true;
      } else {
        copied = selectedCopy(input);
      }
    } catch (error) {
      copied = selectedCopy(input);
    }
    button.textContent = copied ? "Copied" : "Copy";
    status.textContent = copied ? "Copied to the clipboard." : "Select the key and copy it by hand.";
    if (copied) {
      setTimeout(function () { button.textContent = "Copy"; }, 2000);
    }
  }

  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () { copy(button); });
  });
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
      }
    });
  });
})();
