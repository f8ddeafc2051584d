// Bundles: create for a device (the token shown once, with a copyable redeem command), list
// with status, cancel a pending one.

import {call, get, query, seg} from './api.js';
import {h, fill, table, when, badge, message, field, select, confirmDialog, secretPanel} from './dom.js';

export function render(view, params) {
  const device = params[0] === 'new' ? params[1] || '' : '';
  const notice = h('div', {'aria-live': 'polite'});
  const results = h('div', {class: 'results'});
  const pager = h('div', {class: 'pager'});
  const filterDevice = h('input', {type: 'search', name: 'device_id', placeholder: 'device id', spellcheck: 'false', autocapitalize: 'none'});
  const filterStatus = select('status', [['', 'any status'], ['pending', 'pending'], ['redeemed', 'redeemed'], ['expired', 'expired'], ['cancelled', 'cancelled']], '');
  const filters = h('form', {class: 'filters', role: 'search'}, field('Device id', filterDevice), field('Status', filterStatus), h('button', {type: 'submit'}, 'Filter'));
  let cursors = [null];
  let page = 0;
  const load = async () => {
    try {
      const body = await get(`/v1/bundles${query({limit: 50, cursor: cursors[page], device_id: filterDevice.value, status: filterStatus.value})}`);
      cursors[page + 1] = body.next_cursor || undefined;
      fill(results, table([
        {label: 'Bundle', cell: (b) => h('span', {class: 'mono small any', 'data-test': 'bundle-id'}, b.id)},
        {label: 'Device', cell: (b) => h('a', {href: `#/devices/${encodeURIComponent(b.device_id)}`, class: 'mono'}, b.device_id)},
        {label: 'Credential', cell: (b) => `${b.credential} / ${b.format}`},
        {label: 'Status', cell: (b) => h('span', {'data-test': 'bundle-status'}, badge(b.status, b.status === 'pending' ? 'enabled' : 'muted'))},
        {label: 'Expires', cell: (b) => when(b.expires_at)},
        {label: 'Redeemed', cell: (b) => (b.redeemed_at ? h('span', {}, when(b.redeemed_at), b.redeemed_from ? ` from ${b.redeemed_from}` : '') : '—')},
        {label: '', cell: (b) => (b.status === 'pending' ? cancelButton(b, load, notice) : '')},
      ], body.items, 'No bundles.'));
      fill(pager,
        h('button', {type: 'button', disabled: page === 0, onclick: () => { page -= 1; load(); }}, '← Previous'),
        h('span', {class: 'muted'}, `Page ${page + 1}`),
        h('button', {type: 'button', disabled: !body.next_cursor, onclick: () => { page += 1; load(); }}, 'Next →'));
    } catch (e) {
      fill(results, message(e.message));
    }
  };
  filters.addEventListener('submit', (e) => { e.preventDefault(); cursors = [null]; page = 0; load(); });
  fill(view,
    h('div', {class: 'page-head'}, h('h1', {}, 'Bundles')),
    notice,
    createForm(device, load),
    h('section', {class: 'panel'}, h('h2', {}, 'Bundles'), filters, results, pager));
  load();
}

function cancelButton(b, reload, notice) {
  return h('button', {type: 'button', class: 'danger', 'data-test': 'cancel-bundle', onclick: async () => {
    const ok = await confirmDialog({title: 'Cancel this bundle?',
      body: [h('p', {}, 'Bundle ', h('span', {class: 'mono'}, b.id), ' for ', h('span', {class: 'mono'}, b.device_id), '.'),
        'Its payload is erased; redeeming it answers 410 from now on.'],
      confirmLabel: 'Cancel the bundle'});
    if (!ok) return;
    try {
      await call(`/v1/bundles/${seg(b.id)}`, {method: 'DELETE'});
      fill(notice, message(`Bundle ${b.id} cancelled.`, 'notice'));
      await reload();
    } catch (e) {
      fill(notice, message(e.message));
    }
  }}, 'Cancel…');
}

function createForm(device, reload) {
  const id = h('input', {name: 'device_id', required: true, value: device, spellcheck: 'false', autocapitalize: 'none'});
  const credential = select('credential', [['x509', 'x509: new key + certificate'], ['sas', 'sas: the device SAS keys'], ['both', 'both']], 'x509');
  const format = select('format', [['json', 'json'], ['pem-tar', 'pem-tar'], ['pkcs12', 'pkcs12 (password = the token)']], 'json');
  const ttl = h('input', {name: 'ttl', type: 'number', min: 1, max: 2592000, value: '86400'});
  const out = h('div', {'aria-live': 'polite'});
  const form = h('form', {class: 'panel', 'aria-label': 'New bundle'},
    h('h2', {}, 'New bundle'),
    h('p', {class: 'muted'}, 'A bundle hands one device\'s credentials to whoever installs it, once.'),
    h('div', {class: 'row'}, field('Device id', id), field('Credential', credential), field('Format', format), field('Lifetime (seconds)', ttl)),
    h('button', {type: 'submit', class: 'primary', 'data-test': 'create-bundle'}, 'Create bundle'), out);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const {body: b} = await call('/v1/bundles', {method: 'POST', body: {device_id: id.value, credential: credential.value, format: format.value, ttl_secs: Number(ttl.value)}});
      const ext = {json: 'json', 'pem-tar': 'tar', pkcs12: 'p12'}[format.value];
      const command = `curl -sS --cacert ca-chain.pem -X POST -H 'Authorization: Bundle ${b.token}' \\\n  '${location.origin}/v1/bundles/${encodeURIComponent(b.id)}/redeem' -o '${id.value.replace(/[^A-Za-z0-9._-]/g, '_')}.${ext}'`;
      fill(out, secretPanel({
        title: `Bundle ${b.id}, redeemable once until ${new Date(b.expires_at).toLocaleString()}`,
        text: command,
        filename: `bundle-${b.id}.sh`,
        note: 'Shown once: provisiond keeps only a digest of the token. Hand this command (or the id and token) to the deployer now.',
        extra: h('p', {class: 'small'}, 'Token: ', h('code', {class: 'mono', 'data-test': 'bundle-token'}, b.token)),
      }));
      await reload();
    } catch (err) {
      fill(out, message(err.message));
    }
  });
  return form;
}
