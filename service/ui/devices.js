// Devices: prefix search, status filter, cursor paging; a device's detail with owner, tags,
// certificates, keys (RegistryReadWrite only, masked until revealed) and its write actions.

import {call, get, can, query, seg} from './api.js';
import {h, fill, table, when, badge, message, field, select, confirmDialog, maskedKey, parseObject} from './dom.js';
import {revokeButton} from './certificates.js';

const PAGE = 50;
// The last list filters, so that "back to devices" returns to the same search (memory only).
let lastFilter = {prefix: '', status: ''};

export function render(view, params, ctx) {
  if (params.length) return detail(view, params[0], ctx);
  return list(view, ctx);
}

function list(view, ctx) {
  const prefix = h('input', {type: 'search', name: 'prefix', value: lastFilter.prefix, placeholder: 'id prefix', maxlength: 128, spellcheck: 'false', autocapitalize: 'none'});
  const status = select('status', [['', 'any status'], ['enabled', 'enabled'], ['disabled', 'disabled']], lastFilter.status);
  const results = h('div', {class: 'results', 'aria-live': 'polite'});
  const pager = h('div', {class: 'pager'});
  const form = h('form', {class: 'filters', role: 'search'},
    field('Device id starts with', prefix), field('Status', status), h('button', {type: 'submit', class: 'primary'}, 'Search'));
  // Cursor stack: cursors[i] is the cursor of page i (page 0: none).
  let cursors = [null];
  let page = 0;
  const load = async () => {
    const started = performance.now();
    performance.mark('console:devices:request');
    fill(pager);
    try {
      const body = await get(`/v1/devices${query({limit: PAGE, prefix: prefix.value, status: status.value, cursor: cursors[page]})}`);
      cursors[page + 1] = body.next_cursor || undefined;
      fill(results, table([
        {label: 'Device id', cell: (d) => h('a', {href: `#/devices/${encodeURIComponent(d.device_id)}`, class: 'mono'}, d.device_id)},
        {label: 'Status', cell: (d) => badge(d.status)},
        {label: 'Owner', cell: (d) => ownerText(d.owner)},
        {label: 'Auth', cell: (d) => d.authentication?.type || '—'},
        {label: 'Updated', cell: (d) => when(d.updated_at)},
      ], body.items, 'No device matches.'));
      const prev = h('button', {type: 'button', disabled: page === 0, onclick: () => { page -= 1; load(); }}, '← Previous');
      const next = h('button', {type: 'button', disabled: !body.next_cursor, 'data-test': 'next-page', onclick: () => { page += 1; load(); }}, 'Next →');
      fill(pager, prev, h('span', {class: 'muted', 'data-test': 'page-number'}, `Page ${page + 1}`), next);
      performance.measure('console:devices:page', {start: started, end: performance.now()});
      results.dataset.loadedPage = String(page + 1);
    } catch (e) {
      fill(results, message(e.message));
    }
  };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    lastFilter = {prefix: prefix.value, status: status.value};
    cursors = [null];
    page = 0;
    load();
  });
  fill(view,
    h('div', {class: 'page-head'}, h('h1', {}, 'Devices'),
      can('RegistryReadWrite') ? h('button', {type: 'button', class: 'primary', 'data-test': 'new-device', onclick: () => createForm(view, ctx)}, 'New device') : null),
    h('div', {class: 'create-slot'}),
    form, results, pager);
  load();
}

export function ownerText(o) {
  if (!o) return '—';
  if (o.kind === 'admin') return 'admin';
  const label = o.kind === 'enrollment_group' ? 'group' : 'enrollment';
  return `${label} ${o.id ?? ''}`.trim();
}

function createForm(view, ctx) {
  const slot = view.querySelector('.create-slot');
  const id = h('input', {name: 'device_id', required: true, maxlength: 128, spellcheck: 'false', autocapitalize: 'none'});
  const tags = h('textarea', {name: 'tags', rows: 3, placeholder: '{"site": "berlin"}', spellcheck: 'false'});
  const status = h('div');
  const form = h('form', {class: 'panel', 'aria-label': 'New device'},
    h('h2', {}, 'New device'), status,
    field('Device id', id, 'Letters, digits and - . % _ * ? ! ( ) , : = @ $ \' (IoT Hub rules), up to 128.'),
    field('Tags (JSON object)', tags),
    h('p', {class: 'muted small'}, 'SAS keys are generated; the device page shows them to operators with RegistryReadWrite.'),
    h('div', {class: 'actions'},
      h('button', {type: 'button', onclick: () => fill(slot)}, 'Cancel'),
      h('button', {type: 'submit', class: 'primary'}, 'Create')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const body = {tags: parseObject(tags.value, 'Tags')};
      await call(`/v1/devices/${seg(id.value)}`, {method: 'PUT', body, headers: {'If-None-Match': '*'}});
      ctx.go('devices', id.value);
    } catch (err) {
      fill(status, message(err.status === 412 ? 'A device with this id exists already.' : err.message));
    }
  });
  fill(slot, form);
  id.focus();
}

async function detail(view, id, ctx) {
  fill(view, h('p', {class: 'muted'}, 'Loading…'));
  let d;
  try {
    d = await get(`/v1/devices/${seg(id)}`);
  } catch (e) {
    fill(view, h('p', {}, h('a', {href: '#/devices'}, '← Devices')), message(e.message));
    return;
  }
  const notice = h('div', {'aria-live': 'polite'});
  const rw = can('RegistryReadWrite');
  const certs = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
  fill(view,
    h('p', {}, h('a', {href: '#/devices'}, '← Devices')),
    h('div', {class: 'page-head'}, h('h1', {class: 'mono', 'data-test': 'device-id'}, d.device_id), badge(d.status)),
    notice,
    h('section', {class: 'panel'},
      h('h2', {}, 'Device'),
      h('dl', {class: 'props'},
        prop('Status', h('span', {}, badge(d.status), d.status_reason ? [' ', h('span', {'data-test': 'status-reason'}, d.status_reason)] : null)),
        prop('Owner', h('span', {'data-test': 'owner'}, ownerText(d.owner))),
        prop('Authentication', d.authentication?.type || '—'),
        prop('Parent', d.parent_id || '—'),
        prop('Created', when(d.created_at)),
        prop('Updated', when(d.updated_at)),
        prop('ETag', h('span', {class: 'mono small'}, d.etag || '—'))),
      h('h3', {}, 'Tags'),
      h('pre', {class: 'json', 'data-test': 'tags'}, JSON.stringify(d.tags || {}, null, 2))),
    keysPanel(d, rw, () => detail(view, id, ctx), notice),
    h('section', {class: 'panel'}, h('h2', {}, 'Certificates'), certs),
    rw || can('BundleCreate') ? actionsPanel(d, ctx, () => detail(view, id, ctx), notice) : null);
  loadCerts(certs, d.device_id, () => loadCerts(certs, d.device_id, null, notice), notice);
}

function prop(label, value) {
  return h('div', {}, h('dt', {}, label), h('dd', {}, value));
}

function keysPanel(d, rw, reload, notice) {
  const sk = d.authentication?.symmetric_key;
  if (!rw || !sk) {
    if (d.authentication?.type !== 'sas') return null;
    return h('section', {class: 'panel'}, h('h2', {}, 'Keys'),
      h('p', {class: 'muted', 'data-test': 'keys-hidden'}, 'Device keys are shown only to operators with RegistryReadWrite.'));
  }
  const rotate = (which, text) => h('button', {type: 'button', 'data-test': `rotate-${which}`, onclick: async () => {
    const ok = await confirmDialog({title: `Rotate ${which === 'swap' ? '(swap keys)' : `the ${which} key`}?`,
      body: [text, 'Tokens signed with a replaced key stop working at once.'], confirmLabel: 'Rotate'});
    if (!ok) return;
    try {
      await call(`/v1/devices/${seg(d.device_id)}/keys/rotate`, {method: 'POST', body: {key: which}});
      await reload();
    } catch (e) {
      fill(notice, message(e.message));
    }
  }}, which === 'swap' ? 'Swap primary/secondary' : `Rotate ${which}`);
  return h('section', {class: 'panel'}, h('h2', {}, 'Keys'),
    maskedKey('Primary', sk.primary_key, 'key-primary'), maskedKey('Secondary', sk.secondary_key, 'key-secondary'),
    h('div', {class: 'actions'},
      rotate('primary', 'A new primary key is generated.'),
      rotate('secondary', 'A new secondary key is generated.'),
      rotate('swap', 'The primary and secondary keys trade places.')));
}

async function loadCerts(el, deviceId, _reload, notice) {
  try {
    const page = await get(`/v1/certificates${query({device_id: deviceId, limit: 100})}`);
    fill(el, certTable(page.items, () => loadCerts(el, deviceId, null, notice), notice));
  } catch (e) {
    fill(el, message(e.message));
  }
}

export function certTable(items, reload, notice) {
  return table([
    {label: 'Serial', cell: (c) => h('span', {class: 'mono small any', 'data-test': 'serial'}, c.serial)},
    {label: 'Status', cell: (c) => h('span', {'data-test': 'cert-status'}, badge(c.status, c.status === 'valid' ? 'enabled' : 'disabled'), c.revocation_reason ? ` ${c.revocation_reason}` : '')},
    {label: 'Device', cell: (c) => (c.device_id ? h('a', {href: `#/devices/${encodeURIComponent(c.device_id)}`, class: 'mono'}, c.device_id) : (c.kind || '—'))},
    {label: 'Valid from', cell: (c) => when(c.not_before)},
    {label: 'Valid until', cell: (c) => when(c.not_after)},
    {label: '', cell: (c) => (c.status === 'valid' && can('CertificateAdmin') ? revokeButton(c, reload, notice) : '')},
  ], items, 'No certificates.');
}

function actionsPanel(d, ctx, reload, notice) {
  const rw = can('RegistryReadWrite');
  const disable = d.status === 'enabled';
  const toggle = rw ? h('button', {type: 'button', 'data-test': disable ? 'disable' : 'enable', onclick: async () => {
    const reason = h('input', {name: 'reason', maxlength: 256, required: disable});
    const ok = await confirmDialog({
      title: disable ? `Disable ${d.device_id}?` : `Enable ${d.device_id}?`,
      body: disable
        ? ['A disabled device gets nothing: registrations are refused, bundles and tokens too.', 'Every certificate of the device is revoked now (privilege withdrawn); re-enabling does not un-revoke them.']
        : ['The device may register and receive credentials again. Revoked certificates stay revoked.'],
      extra: [field('Reason (kept with the device, shown to operators)', reason)],
      confirmLabel: disable ? 'Disable' : 'Enable', danger: disable});
    if (!ok) return;
    try {
      const body = {status: disable ? 'disabled' : 'enabled', status_reason: ok.reason || null, tags: d.tags || {}};
      if (d.parent_id) body.parent_id = d.parent_id;
      await call(`/v1/devices/${seg(d.device_id)}`, {method: 'PUT', body, headers: {'If-Match': `"${d.etag}"`}});
      await reload();
    } catch (e) {
      fill(notice, message(e.status === 412 ? 'The device changed meanwhile: reload and try again.' : e.message));
    }
  }}, disable ? 'Disable…' : 'Enable…') : null;
  const del = rw ? h('button', {type: 'button', class: 'danger', 'data-test': 'delete', onclick: async () => {
    const typed = h('input', {name: 'typed', autocomplete: 'off', spellcheck: 'false'});
    const ok = await confirmDialog({title: `Delete ${d.device_id}?`,
      body: ['The device record and its keys are deleted, its certificates revoked (cessation of operation) and its pending bundles cancelled. This cannot be undone.', 'Type the device id to confirm.'],
      extra: [field('Device id', typed)], confirmLabel: 'Delete'});
    if (!ok) return;
    if (ok.typed !== d.device_id) {
      fill(notice, message('The typed id did not match: nothing was deleted.'));
      return;
    }
    try {
      await call(`/v1/devices/${seg(d.device_id)}`, {method: 'DELETE', headers: {'If-Match': `"${d.etag}"`}});
      ctx.go('devices');
    } catch (e) {
      fill(notice, message(e.message));
    }
  }}, 'Delete…') : null;
  const bundle = can('BundleCreate') && d.status === 'enabled'
    ? h('a', {class: 'button', href: `#/bundles/new/${encodeURIComponent(d.device_id)}`}, 'Create bundle…') : null;
  return h('section', {class: 'panel'}, h('h2', {}, 'Actions'), h('div', {class: 'actions'}, toggle, bundle, del));
}
