// Typeset the math of every page with the vendored KaTeX (docs/javascripts/katex, v0.19.1),
// so the site renders offline.
//
// Chapters: pymdownx.arithmatex (generic mode) wraps each formula in an element of class
// "arithmatex" holding \( ... \) (inline) or \[ ... \] (display); we typeset those elements.
// Notebook pages (mkdocs-jupyter): markdown cells keep $ ... $ and $$ ... $$, so we let
// KaTeX's auto-render scan the notebook body for them.
function typesetArithmatex(root) {
  for (const element of root.querySelectorAll(".arithmatex")) {
    const source = element.textContent.trim();
    const delimited = source.startsWith("\\(") || source.startsWith("\\[");
    // Block environments (\begin{align} ...) come without delimiters: display math.
    const display = !source.startsWith("\\(");
    const tex = delimited ? source.slice(2, -2) : source;
    katex.render(tex, element, { displayMode: display, throwOnError: false });
  }
}

function typesetNotebooks(root) {
  for (const notebook of root.querySelectorAll(".jupyter-wrapper")) {
    renderMathInElement(notebook, {
      delimiters: [
        { left: "$$", right: "$$", display: true },
        { left: "$", right: "$", display: false },
        { left: "\\[", right: "\\]", display: true },
        { left: "\\(", right: "\\)", display: false },
      ],
      ignoredClasses: ["highlight", "jp-OutputArea"],
      throwOnError: false,
    });
  }
}

// Material's instant navigation replaces the page body without a reload; document$ emits
// after every page change.
document$.subscribe(({ body }) => {
  typesetArithmatex(body);
  typesetNotebooks(body);
});
