// Audit trail: paged viewer (by sequence number) with filters, chain verification, signed
// checkpoint download.

import {get, query} from './api.js';
import {h, fill, table, when, badge, message, field, select, download} from './dom.js';

const PAGE = 50;

export function render(view) {
  const action = h('input', {name: 'action', maxlength: 128, placeholder: 'device.create', spellcheck: 'false', autocapitalize: 'none'});
  const target = h('input', {name: 'target_prefix', maxlength: 256, placeholder: 'target starts with', spellcheck: 'false', autocapitalize: 'none'});
  const outcome = select('outcome', [['', 'any outcome'], ['success', 'success'], ['failure', 'failure']], '');
  const results = h('div', {class: 'results', 'aria-live': 'polite'});
  const pager = h('div', {class: 'pager'});
  const chain = h('div', {'aria-live': 'polite'});
  const filters = h('form', {class: 'filters', role: 'search'},
    field('Action', action), field('Target prefix', target), field('Outcome', outcome), h('button', {type: 'submit', class: 'primary'}, 'Filter'));
  // afters[i] is the `after` of page i (rows with a greater seq).
  let afters = [0];
  let page = 0;
  const load = async () => {
    try {
      const body = await get(`/v1/audit${query({after: afters[page], limit: PAGE, action: action.value, target_prefix: target.value, outcome: outcome.value})}`);
      const items = body.items;
      if (items.length) afters[page + 1] = items[items.length - 1].seq;
      fill(results, table([
        {label: 'Seq', cell: (r) => String(r.seq)},
        {label: 'At', cell: (r) => when(r.at)},
        {label: 'Actor', cell: (r) => h('span', {class: 'mono any'}, r.actor)},
        {label: 'Action', cell: (r) => h('span', {'data-test': 'audit-action'}, r.action, r.count ? ` ×${r.count}` : '')},
        {label: 'Target', cell: (r) => h('span', {class: 'mono any', 'data-test': 'audit-target'}, r.target)},
        {label: 'Outcome', cell: (r) => badge(r.outcome, r.outcome === 'success' ? 'enabled' : 'disabled')},
        {label: 'Client', cell: (r) => r.client_addr || '—'},
      ], items, 'No rows match.'));
      fill(pager,
        h('button', {type: 'button', disabled: page === 0 && afters[0] === 0, onclick: earlier}, '← Earlier'),
        h('span', {class: 'muted'}, `Page ${page + 1}`),
        h('button', {type: 'button', disabled: items.length < PAGE, onclick: () => { page += 1; load(); }}, 'Later →'),
        h('button', {type: 'button', onclick: latest}, 'Latest'));
    } catch (e) {
      fill(results, message(e.message));
    }
  };
  const earlier = () => {
    if (page > 0) {
      page -= 1;
    } else {
      // Started past the first rows (Latest): step back by sequence numbers. With filters the
      // page may hold fewer rows; it never skips any.
      afters = [Math.max(0, afters[0] - PAGE)];
    }
    load();
  };
  // The newest rows: start one page before the checkpoint's (the last row's) sequence number.
  const latest = async () => {
    try {
      const cp = await get('/v1/audit/checkpoint');
      afters = [Math.max(0, cp.seq - PAGE)];
      page = 0;
      load();
    } catch (e) {
      fill(results, message(e.message));
    }
  };
  filters.addEventListener('submit', (e) => { e.preventDefault(); afters = [0]; page = 0; load(); });
  const verify = h('button', {type: 'button', 'data-test': 'verify', onclick: async () => {
    fill(chain, message('Verifying…', 'notice'));
    try {
      const v = await get('/v1/audit/verify');
      fill(chain, v.ok
        ? message(`Chain intact: ${v.checked} rows verified.`, 'notice')
        : message(`Chain BROKEN at row ${v.first_bad_seq} (${v.checked} rows checked).`));
      chain.dataset.result = v.ok ? 'ok' : 'broken';
    } catch (e) {
      fill(chain, message(e.message));
    }
  }}, 'Verify chain');
  const checkpoint = h('button', {type: 'button', 'data-test': 'checkpoint', onclick: async () => {
    try {
      const cp = await get('/v1/audit/checkpoint');
      download(`audit-checkpoint-${cp.seq}.json`, `${JSON.stringify(cp, null, 2)}\n`, 'application/json');
      fill(chain, message(`Checkpoint of row ${cp.seq} downloaded. Keep it outside provisiond: a later chain that lacks this hash at row ${cp.seq} was changed.`, 'notice'));
    } catch (e) {
      fill(chain, message(e.message));
    }
  }}, 'Download checkpoint');
  fill(view,
    h('div', {class: 'page-head'}, h('h1', {}, 'Audit trail'), verify, checkpoint),
    chain, filters, results, pager);
  latest();  // the newest rows first; Earlier pages back from there
}
