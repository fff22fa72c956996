// Otter dashboard: the services section arrives rendered by the server, as server-sent events from /events;
// this swaps each one in. Without JavaScript the page still works, it just does not move until reloaded.
"use strict";
(function () {
  var target = document.getElementById("services");
  if (!target || !window.EventSource) {
    return;
  }
  var source = new EventSource(target.getAttribute("data-events"));
  source.addEventListener("services", function (event) {
    // Keep open the replica lists the reader opened.
    var open = Array.prototype.map.call(target.querySelectorAll("article.service details[open]"), function (d) {
      return d.parentElement.getAttribute("data-service");
    });
    target.innerHTML = event.data;
    open.forEach(function (name) {
      var article = target.querySelector('article.service[data-service="' + CSS.escape(name) + '"] details');
      if (article) {
        article.open = true;
      }
    });
    document.body.classList.remove("offline");
    target.setAttribute("data-updates", String(Number(target.getAttribute("data-updates") || "0") + 1));
  });
  source.onerror = function () {
    document.body.classList.add("offline"); // EventSource reconnects by itself
  };
})();
