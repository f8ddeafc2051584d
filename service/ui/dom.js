// DOM helpers. Every piece of data reaches the page through textContent or a property, never
// as HTML: device ids, tags and audit targets are written by whoever can register a device.

/** Creates an element: h('button', {class: 'x', onclick: fn}, 'text', child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) {
      // Handlers are listeners, never attributes (no inline code under the CSP).
      if (typeof v === 'function') el.addEventListener(k.slice(2), v);
    } else if (k === 'class') {
      el.className = v;
    } else if (k === 'text') {
      el.textContent = v;
    } else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'hidden') {
      el[k] = v;
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A date-time as the operator's locale shows it, with the ISO text in the title. */
export function when(iso) {
  if (!iso) return h('span', {class: 'muted'}, '—');
  const d = new Date(iso);
  return h('time', {datetime: iso, title: iso}, isNaN(d) ? iso : d.toLocaleString());
}

/** A table: columns [{label, cell(row) -> node|string}], rows; `empty` when none. */
export function table(columns, rows, empty = 'Nothing here yet.') {
  if (!rows.length) return h('p', {class: 'muted empty'}, empty);
  return h('div', {class: 'table-wrap'},
    h('table', {},
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', {scope: 'col'}, c.label)))),
      h('tbody', {}, rows.map((r) => h('tr', {}, columns.map((c) => h('td', {'data-label': c.label}, c.cell(r))))))));
}

/** A labelled form field. `input` is the control element. */
export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
  input.id = id;
  return h('div', {class: 'field'}, h('label', {for: id}, label), input, hint ? h('small', {class: 'muted'}, hint) : null);
}

/** A <select> with options [[value, label], ...]. */
export function select(name, options, value) {
  return h('select', {name},
    options.map(([v, l]) => h('option', {value: v, selected: v === value ? true : null}, l ?? v)));
}

/** A status badge. */
export function badge(text, kind = text) {
  return h('span', {class: `badge badge-${kind}`}, text);
}

/** A message area: error or notice, announced to screen readers. */
export function message(text, kind = 'error') {
  return h('div', {class: `msg msg-${kind}`, role: kind === 'error' ? 'alert' : 'status'}, text);
}

/** Writes `text` to the clipboard; falls back to selecting it in a field. */
export async function copy(text, fallbackField) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    if (fallbackField) {
      fallbackField.focus();
      fallbackField.select();
    }
    return false;
  }
}

/** Offers `text` as a file download (nothing is stored by the browser beyond the download). */
export function download(filename, text, type = 'text/plain') {
  const url = URL.createObjectURL(new Blob([text], {type}));
  const a = h('a', {href: url, download: filename, hidden: true});
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/**
 * A modal dialog asking to confirm a destructive action. `extra` are form controls shown in
 * the dialog (a reason, a choice); resolves to FormData-like values or null when cancelled.
 */
export function confirmDialog({title, body, confirmLabel = 'Confirm', extra = [], danger = true}) {
  return new Promise((resolve) => {
    const form = h('form', {method: 'dialog', class: 'dialog-form'});
    const ok = h('button', {type: 'submit', value: 'ok', class: danger ? 'danger' : 'primary', 'data-test': 'confirm'}, confirmLabel);
    const cancel = h('button', {type: 'button', 'data-test': 'cancel'}, 'Cancel');
    const dlg = h('dialog', {class: 'dialog', 'aria-labelledby': 'dlg-title'},
      form);
    fill(form,
      h('h2', {id: 'dlg-title'}, title),
      (Array.isArray(body) ? body : [body]).map((p) => (p instanceof Node ? p : h('p', {}, p))),
      extra,
      h('div', {class: 'actions'}, cancel, ok));
    let answered = false;
    const finish = (value) => {
      if (answered) return;
      answered = true;
      dlg.close();
      dlg.remove();
      resolve(value);
    };
    cancel.addEventListener('click', () => finish(null));
    dlg.addEventListener('cancel', () => finish(null));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const values = {};
      for (const el of form.elements) if (el.name) values[el.name] = el.value;
      finish(values);
    });
    document.body.append(dlg);
    dlg.showModal();
    (extra.length ? form.querySelector('input, select, textarea') : cancel)?.focus();
  });
}

/**
 * A panel for a secret shown once (a token, new keys): readonly text, Copy, Download. The
 * text lives only in this DOM node; leaving the page or logging out drops it.
 */
export function secretPanel({title, text, filename, note, extra}) {
  const area = h('textarea', {readonly: true, rows: Math.min(8, text.split('\n').length + 1), class: 'secret', 'data-test': 'secret', spellcheck: 'false'});
  area.value = text;
  const status = h('span', {class: 'muted', role: 'status'});
  return h('section', {class: 'once', 'aria-label': title},
    h('h3', {}, title),
    h('p', {class: 'warn'}, note || 'Shown once: provisiond keeps no copy it can show again. Copy or download it now.'),
    area,
    extra || null,
    h('div', {class: 'actions'},
      h('button', {type: 'button', onclick: async () => { status.textContent = (await copy(text, area)) ? 'Copied.' : 'Selected: press Ctrl+C.'; }}, 'Copy'),
      filename ? h('button', {type: 'button', onclick: () => download(filename, text)}, 'Download') : null,
      status));
}

/** A key shown masked, with Reveal/Hide and Copy (for callers the API gave the key to). */
export function maskedKey(label, value, testId) {
  const mask = '••••••••••••••••';
  const shown = h('code', {class: 'key mono', 'data-test': testId}, mask);
  const reveal = h('button', {type: 'button', 'aria-pressed': 'false', onclick: () => {
    const on = reveal.getAttribute('aria-pressed') !== 'true';
    reveal.setAttribute('aria-pressed', String(on));
    shown.textContent = on ? value : mask;
    reveal.textContent = on ? 'Hide' : 'Reveal';
  }}, 'Reveal');
  const status = h('span', {class: 'muted', role: 'status'});
  const copyButton = h('button', {type: 'button', onclick: async () => {
    status.textContent = (await copy(value)) ? 'Copied.' : 'Copy failed: reveal and select it.';
  }}, 'Copy');
  return h('div', {class: 'key-row'}, h('span', {class: 'key-label'}, label), shown, reveal, copyButton, status);
}

/** Parses a JSON object typed by the operator; throws with a readable message. */
export function parseObject(text, what) {
  if (!text.trim()) return {};
  let v;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new Error(`${what}: not valid JSON (${e.message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${what}: must be a JSON object`);
  return v;
}
