// The YAML editor of tideflow serve's web UI: CodeMirror 6 with line numbers, YAML
// highlighting, undo, search, and the server's validation issues shown on their lines.
// build.sh bundles this file and what it imports into static/vendor/editor.js, which
// defines one global, `TideflowEditor`, for app.js (no build step there).
import { EditorState, StateEffect, StateField, RangeSet } from "@codemirror/state";
import {
  EditorView, Decoration, keymap, lineNumbers, highlightActiveLine, highlightActiveLineGutter,
  drawSelection, highlightSpecialChars,
} from "@codemirror/view";
import { defaultKeymap, history, historyKeymap, indentWithTab } from "@codemirror/commands";
import {
  syntaxHighlighting, defaultHighlightStyle, indentOnInput, bracketMatching, indentUnit,
} from "@codemirror/language";
import { yaml } from "@codemirror/lang-yaml";
import { lintGutter, setDiagnostics } from "@codemirror/lint";
import { search, searchKeymap, highlightSelectionMatches } from "@codemirror/search";

// The nonce of this page's Content-Security-Policy, read from this script's own tag:
// CodeMirror puts its styles into a <style> element, which the policy allows only with it.
const nonce = (document.currentScript && document.currentScript.nonce) || "";

// Lines with a validation issue: a line decoration, moved along as the text is edited.
const setErrorLines = StateEffect.define();
const errorLine = Decoration.line({ class: "tf-error-line" });
const errorLines = StateField.define({
  create: () => Decoration.none,
  update(lines, tr) {
    lines = lines.map(tr.changes);
    for (const effect of tr.effects) if (effect.is(setErrorLines)) lines = effect.value;
    return lines;
  },
  provide: (field) => EditorView.decorations.from(field),
});

const theme = EditorView.theme({
  "&": { border: "1px solid #d8dde6", borderRadius: "5px", fontSize: "13px", background: "#fff" },
  "&.cm-focused": { outline: "2px solid #1f6feb55" },
  ".cm-scroller": { fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace", minHeight: "360px", maxHeight: "70vh" },
  ".cm-content": { minHeight: "360px" },
  ".cm-gutters": { background: "#f6f8fb", color: "#6b7280", borderRight: "1px solid #d8dde6" },
  ".cm-line.tf-error-line": { background: "#fee2e2" },
  ".cm-activeLine.tf-error-line": { background: "#fcd0d0" },
});

/** Where line `n` (1-based, clamped to the text) starts and ends. */
function lineAt(doc, n) {
  return doc.line(Math.min(Math.max(1, n || 1), doc.lines));
}

/**
 * An editor in `parent` holding `doc`; `onChange(text)` after every edit. `label` names the
 * editor for screen readers.
 */
function create(parent, { doc = "", onChange = null, label = "Pipeline YAML" } = {}) {
  const view = new EditorView({
    parent,
    state: EditorState.create({
      doc,
      extensions: [
        EditorView.cspNonce.of(nonce),
        lineNumbers(), highlightActiveLineGutter(), highlightSpecialChars(), history(),
        drawSelection(), indentOnInput(), bracketMatching(), highlightActiveLine(),
        highlightSelectionMatches(), search({ top: true }),
        syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
        yaml(), indentUnit.of("  "), EditorState.tabSize.of(2),
        lintGutter(), errorLines, theme,
        keymap.of([...defaultKeymap, ...historyKeymap, ...searchKeymap, indentWithTab]),
        EditorView.contentAttributes.of({ "aria-label": label, spellcheck: "false" }),
        EditorView.updateListener.of((update) => {
          if (update.docChanged && onChange) onChange(update.state.doc.toString());
        }),
      ],
    }),
  });
  return {
    view,
    /** The text. */
    getText: () => view.state.doc.toString(),
    /** Replace the whole text. */
    setText(text) {
      view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
    },
    /**
     * Show the server's validation issues (`{line, path, message}`): each cited line is
     * highlighted, marked in the gutter and carries its message; [] clears them.
     */
    showIssues(issues) {
      const doc = view.state.doc;
      const cited = issues.filter((i) => Number.isInteger(i.line) && i.line >= 1);
      const diagnostics = cited.map((issue) => {
        const line = lineAt(doc, issue.line);
        return {
          from: line.from, to: line.to, severity: "error", source: "tideflow",
          message: (issue.path ? issue.path + ": " : "") + issue.message,
        };
      });
      const starts = [...new Set(cited.map((i) => lineAt(doc, i.line).from))].sort((a, b) => a - b);
      const lines = RangeSet.of(starts.map((from) => errorLine.range(from)));
      view.dispatch(setDiagnostics(view.state, diagnostics), { effects: setErrorLines.of(lines) });
    },
    /** Put the cursor on line `n`, select it and scroll it into view. */
    goToLine(n) {
      const line = lineAt(view.state.doc, n);
      view.dispatch({ selection: { anchor: line.from, head: line.to }, scrollIntoView: true });
      view.focus();
    },
    focus: () => view.focus(),
  };
}

window.TideflowEditor = { create };
