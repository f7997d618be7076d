// Applies the chosen light/dark theme before the page paints (no flash). The choice is a
// display preference kept in localStorage; nothing else is stored in the browser.
(function () {
  var theme = localStorage.getItem("gw-theme");
  if (theme === "dark" || theme === "light") document.documentElement.dataset.theme = theme;
})();
