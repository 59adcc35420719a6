// The local-time toggle in the page header. The server writes every time in UTC, or in the zone a
// cookie names: pressing the toggle stores this browser's IANA zone there (or removes it) and
// reloads, so pictures, tables and live redraws all come from the server in one zone.
(function () {
  "use strict";
  var button = document.getElementById("time-toggle");
  if (!button || !window.Intl) return;
  var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  // The characters of IANA names, which a cookie carries as they are.
  if (!zone || !/^[A-Za-z0-9\/_+-]{1,64}$/.test(zone)) return;
  var name = button.getAttribute("data-cookie");
  var on = button.getAttribute("aria-pressed") === "true";
  var year = 365 * 24 * 3600;

  function store(value, maxAge) {
    var secure = window.location.protocol === "https:" ? "; Secure" : "";
    document.cookie = name + "=" + value + "; path=/; max-age=" + maxAge + "; SameSite=Lax" + secure;
  }

  // A browser that has moved to another zone since it chose local time: the next page follows it.
  if (on && button.getAttribute("data-zone") !== zone) store(zone, year);
  button.hidden = false;
  button.addEventListener("click", function () {
    if (on) store("", 0);
    else store(zone, year);
    window.location.reload();
  });
})();
