// The book's plotly figures in the theme's dark mode.
//
// mmlib.figures draws every figure with plotly's light "plotly_white" template, which is right for the light page
// and for a notebook. The theme keeps its colour mode on <html data-theme="light|dark"> and changes it when the
// reader presses the mode button, so this script restyles each figure's background, text and grid lines to match,
// and puts the light ones back when the mode returns to light. It only changes colours, never the data.
(function () {
  "use strict";
  const DARK = {
    background: "rgba(0,0,0,0)",  // the page's own dark background shows through
    text: "#ced6dd",              // the theme's dark-mode text colour
    grid: "#3b4148",
    line: "#6c757d",
  };
  const AXIS = /^[xy]axis\d*$/;

  function isDark() {
    return document.documentElement.dataset.theme === "dark";
  }

  function colours(div, dark) {
    const layout = div._fullLayout || {};
    const update = {};
    if (!div._mmlibLight) {  // the figure's own (light) colours, kept to restore them
      const light = {paper_bgcolor: layout.paper_bgcolor, plot_bgcolor: layout.plot_bgcolor,
                     "font.color": layout.font && layout.font.color};
      for (const key of Object.keys(layout)) {
        if (AXIS.test(key) && layout[key]) {
          light[key + ".gridcolor"] = layout[key].gridcolor;
          light[key + ".zerolinecolor"] = layout[key].zerolinecolor;
          light[key + ".linecolor"] = layout[key].linecolor;
        }
      }
      div._mmlibLight = light;
    }
    if (!dark) {
      return Object.assign(update, div._mmlibLight);
    }
    for (const key of Object.keys(div._mmlibLight)) {
      if (key === "paper_bgcolor" || key === "plot_bgcolor") update[key] = DARK.background;
      else if (key === "font.color") update[key] = DARK.text;
      else if (key.endsWith(".linecolor")) update[key] = DARK.line;
      else update[key] = DARK.grid;
    }
    return update;
  }

  function restyle() {
    if (!window.Plotly) return;
    const dark = isDark();
    for (const div of document.querySelectorAll(".plotly-graph-div")) {
      if (!div._fullLayout || div._mmlibDark === dark) continue;
      div._mmlibDark = dark;
      window.Plotly.relayout(div, colours(div, dark));
    }
  }

  new MutationObserver(restyle).observe(document.documentElement, {attributes: true, attributeFilter: ["data-theme"]});
  window.addEventListener("load", restyle);
  document.addEventListener("DOMContentLoaded", restyle);
})();
