// Enrollment groups and individual enrollments: lists, create/edit, one-time tokens (shown
// once, copy, download), the devices a group registered, delete.

import {call, get, can, query, seg, exists} from './api.js';
import {h, fill, table, when, badge, message, field, select, confirmDialog, secretPanel, maskedKey, parseObject} from './dom.js';
import {ownerText} from './devices.js';

const KEY_TYPES = ['p256', 'p384', 'ed25519', 'rsa2048', 'rsa3072', 'rsa4096'];
const KIND = {
  groups: {api: '/v1/enrollment-groups', idMember: 'enrollment_group_id', label: 'enrollment group', individual: false},
  enrollments: {api: '/v1/enrollments', idMember: 'registration_id', label: 'individual enrollment', individual: true},
};

export function render(view, params, ctx) {
  const [kind, id] = params;
  if (KIND[kind] && id === undefined) return editor(view, KIND[kind], null, ctx);
  if (KIND[kind]) return detail(view, KIND[kind], id, ctx);
  return lists(view, ctx);
}

function lists(view, ctx) {
  const groups = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
  const enrollments = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
  const w = can('EnrollmentWrite');
  fill(view,
    h('div', {class: 'page-head'}, h('h1', {}, 'Enrollment')),
    h('section', {class: 'panel'},
      h('div', {class: 'panel-head'}, h('h2', {}, 'Enrollment groups'),
        w ? h('button', {type: 'button', class: 'primary', 'data-test': 'new-group', onclick: () => ctx.go('enrollment', 'groups')}, 'New group') : null),
      groups),
    h('section', {class: 'panel'},
      h('div', {class: 'panel-head'}, h('h2', {}, 'Individual enrollments'),
        w ? h('button', {type: 'button', class: 'primary', onclick: () => ctx.go('enrollment', 'enrollments')}, 'New enrollment') : null),
      enrollments));
  pagedList(groups, KIND.groups, 'groups');
  pagedList(enrollments, KIND.enrollments, 'enrollments');
}

function pagedList(el, kind, path) {
  const cursors = [null];
  let page = 0;
  const load = async () => {
    try {
      const body = await get(`${kind.api}${query({limit: 50, cursor: cursors[page]})}`);
      cursors[page + 1] = body.next_cursor || undefined;
      fill(el,
        table([
          {label: 'Id', cell: (g) => h('a', {href: `#/enrollment/${path}/${encodeURIComponent(g[kind.idMember])}`, class: 'mono'}, g[kind.idMember])},
          {label: 'Attestation', cell: (g) => g.attestation?.type || '—'},
          {label: 'Credential', cell: (g) => g.credential},
          {label: 'Status', cell: (g) => badge(g.provisioning_status)},
          {label: 'Reprovisioning', cell: (g) => g.reprovisioning},
          {label: 'Updated', cell: (g) => when(g.updated_at)},
        ], body.items, `No ${kind.label}s yet.`),
        body.next_cursor || page ? h('div', {class: 'pager'},
          h('button', {type: 'button', disabled: page === 0, onclick: () => { page -= 1; load(); }}, '← Previous'),
          h('span', {class: 'muted'}, `Page ${page + 1}`),
          h('button', {type: 'button', disabled: !body.next_cursor, onclick: () => { page += 1; load(); }}, 'Next →')) : null);
    } catch (e) {
      fill(el, message(e.message));
    }
  };
  load();
}

async function detail(view, kind, id, ctx) {
  fill(view, h('p', {class: 'muted'}, 'Loading…'));
  let g;
  try {
    g = await get(`${kind.api}/${seg(id)}`);
  } catch (e) {
    fill(view, h('p', {}, h('a', {href: '#/enrollment'}, '← Enrollment')), message(e.message));
    return;
  }
  const notice = h('div', {'aria-live': 'polite'});
  const w = can('EnrollmentWrite');
  const path = kind.individual ? 'enrollments' : 'groups';
  const registrations = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
  const del = w ? h('button', {type: 'button', class: 'danger', onclick: async () => {
    const ok = await confirmDialog({title: `Delete ${kind.label} ${id}?`,
      body: [kind.individual
        ? 'The device it registered stays; it can no longer re-provision through this enrollment.'
        : 'Devices it registered stay; new registrations and unused tokens of this group stop working at once.'],
      confirmLabel: 'Delete'});
    if (!ok) return;
    try {
      await call(`${kind.api}/${seg(id)}`, {method: 'DELETE'});
      ctx.go('enrollment');
    } catch (e) {
      fill(notice, message(e.message));
    }
  }}, 'Delete…') : null;
  fill(view,
    h('p', {}, h('a', {href: '#/enrollment'}, '← Enrollment')),
    h('div', {class: 'page-head'}, h('h1', {class: 'mono', 'data-test': 'group-id'}, id), badge(g.provisioning_status),
      w ? h('button', {type: 'button', 'data-test': 'edit', onclick: () => editor(view, kind, g, ctx)}, 'Edit') : null, del),
    notice,
    h('section', {class: 'panel'}, h('h2', {}, `The ${kind.label}`),
      h('dl', {class: 'props'},
        prop('Attestation', g.attestation?.type),
        prop('Credential', g.credential),
        prop('Certificate validity', `${g.certificate_validity_days} days`),
        prop('Key types', (g.allowed_key_types || []).join(', ') || 'all'),
        prop('Id pattern', g.registration_id_pattern ? h('code', {}, g.registration_id_pattern) : '—'),
        prop('Reprovisioning', g.reprovisioning),
        prop('Updated', when(g.updated_at))),
      h('h3', {}, 'Initial tags'),
      h('pre', {class: 'json'}, JSON.stringify(g.initial_tags || {}, null, 2)),
      groupKeys(g)),
    !kind.individual && w ? tokensPanel(id) : null,
    h('section', {class: 'panel'}, h('h2', {}, kind.individual ? 'Registered device' : 'Registrations (devices of this group)'), registrations));
  if (!can('RegistryRead')) {
    fill(registrations, h('p', {class: 'muted'}, 'Listing devices needs RegistryRead.'));
    return;
  }
  if (kind.individual) {
    try {
      const d = await get(`/v1/devices/${seg(id)}`);
      fill(registrations, deviceTable([d]));
    } catch (e) {
      fill(registrations, e.status === 404 ? h('p', {class: 'muted'}, 'Not registered yet.') : message(e.message));
    }
  } else {
    groupDevices(registrations, id);
  }
}

function deviceTable(items) {
  return table([
    {label: 'Device id', cell: (d) => h('a', {href: `#/devices/${encodeURIComponent(d.device_id)}`, class: 'mono', 'data-test': 'registered-device'}, d.device_id)},
    {label: 'Status', cell: (d) => badge(d.status)},
    {label: 'Owner', cell: (d) => ownerText(d.owner)},
    {label: 'Registered', cell: (d) => when(d.created_at)},
  ], items, 'No device registered through it yet.');
}

async function groupDevices(el, id) {
  const cursors = [null];
  let page = 0;
  const load = async () => {
    try {
      const body = await get(`/v1/devices${query({enrollment_group_id: id, limit: 50, cursor: cursors[page]})}`);
      cursors[page + 1] = body.next_cursor || undefined;
      fill(el, deviceTable(body.items),
        h('div', {class: 'pager'},
          h('button', {type: 'button', 'data-test': 'refresh-registrations', onclick: load}, 'Refresh'),
          h('button', {type: 'button', disabled: page === 0, onclick: () => { page -= 1; load(); }}, '← Previous'),
          h('span', {class: 'muted'}, `Page ${page + 1}`),
          h('button', {type: 'button', disabled: !body.next_cursor, onclick: () => { page += 1; load(); }}, 'Next →')));
    } catch (e) {
      fill(el, message(e.message));
    }
  };
  load();
}

function prop(label, value) {
  return h('div', {}, h('dt', {}, label), h('dd', {}, value ?? '—'));
}

function groupKeys(g) {
  const sk = g.attestation?.symmetric_key;
  if (!sk) return null;
  return h('div', {}, h('h3', {}, 'Group keys'),
    h('p', {class: 'warn small'}, 'Every device key of this group derives from these keys: whoever holds one can register any id.'),
    maskedKey('Primary', sk.primary_key, 'group-key-primary'), maskedKey('Secondary', sk.secondary_key, 'group-key-secondary'));
}

function tokensPanel(id) {
  const count = h('input', {name: 'count', type: 'number', min: 1, max: 1000, value: '1'});
  const ids = h('textarea', {name: 'ids', rows: 3, placeholder: 'one registration id per line (optional: binds token i to id i)', spellcheck: 'false'});
  const ttl = h('input', {name: 'ttl', type: 'number', min: 1, max: 2592000, value: '86400'});
  const out = h('div', {'aria-live': 'polite'});
  const form = h('form', {class: 'panel', 'aria-label': 'One-time tokens'},
    h('h2', {}, 'One-time enrollment tokens'),
    h('p', {class: 'muted'}, 'Each token registers one device once (Authorization: Bearer on /v1/registrations/{id}, the DPS routes, or EST Basic).'),
    h('div', {class: 'row'}, field('Unbound tokens', count, 'ignored when ids are listed'), field('Lifetime (seconds)', ttl)),
    field('Bound to ids', ids),
    h('button', {type: 'submit', class: 'primary', 'data-test': 'mint'}, 'Mint tokens'), out);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const list = ids.value.split(/\s+/).filter(Boolean);
    const body = {ttl_secs: Number(ttl.value)};
    if (list.length) body.registration_ids = list;
    else body.count = Number(count.value);
    try {
      const {body: minted} = await call(`/v1/enrollment-groups/${seg(id)}/tokens`, {method: 'POST', body});
      fill(out, secretPanel({
        title: `${minted.tokens.length} token(s), valid until ${new Date(minted.expires_at).toLocaleString()}`,
        text: minted.tokens.join('\n'),
        filename: `${id}-tokens.txt`,
        note: 'Shown once: provisiond keeps only their digests. Copy or download them now; each works once.',
      }));
    } catch (err) {
      fill(out, message(err.message));
    }
  });
  return form;
}

/** Create (existing = null) or edit form; GET → edit → PUT keeps every member it does not show. */
function editor(view, kind, existing, ctx) {
  const e = existing || {};
  const id = h('input', {name: 'id', required: true, maxlength: 128, value: e[kind.idMember] || '', disabled: !!existing, spellcheck: 'false', autocapitalize: 'none'});
  const attTypes = kind.individual ? [['symmetric_key', 'symmetric key'], ['x509_ca', 'X.509 CA']] : [['symmetric_key', 'symmetric key'], ['x509_ca', 'X.509 CA'], ['token', 'one-time token']];
  // A type this form cannot edit (aws_claim: CAs, template, parameters) is offered as it is and
  // sent back unchanged, so saving other members never drops it.
  const known = attTypes.map(([v]) => v);
  const original = e.attestation;
  const keepOriginal = !!original && !known.includes(original.type);
  if (keepOriginal) attTypes.push([original.type, `${original.type} (kept as it is; change it with the API)`]);
  const att = select('attestation', attTypes, e.attestation?.type || 'symmetric_key');
  const cas = h('textarea', {name: 'ca_certificates', rows: 4, placeholder: '-----BEGIN CERTIFICATE----- (one or more)', spellcheck: 'false'});
  cas.value = (e.attestation?.x509_ca?.ca_certificates || []).join('\n');
  const casField = field('Manufacturer CA certificates (PEM)', cas);
  const showCas = () => { casField.hidden = att.value !== 'x509_ca'; };
  att.addEventListener('change', showCas);
  showCas();
  const credential = select('credential', [['x509', 'x509 (certificate from a CSR)'], ['sas', 'sas (derived keys)'], ['both', 'both']], e.credential || 'x509');
  const status = select('provisioning_status', [['enabled', 'enabled'], ['disabled', 'disabled']], e.provisioning_status || 'enabled');
  const days = h('input', {name: 'days', type: 'number', min: 1, max: 3650, value: String(e.certificate_validity_days || 365)});
  const allowed = new Set(e.allowed_key_types || KEY_TYPES);
  const keyBoxes = KEY_TYPES.map((k) => h('label', {class: 'check'}, h('input', {type: 'checkbox', name: 'kt', value: k, checked: allowed.has(k)}), ` ${k}`));
  const pattern = h('input', {name: 'pattern', value: e.registration_id_pattern || '', placeholder: '^sn-[0-9]{8}$', spellcheck: 'false'});
  const tags = h('textarea', {name: 'initial_tags', rows: 3, spellcheck: 'false'});
  tags.value = JSON.stringify(e.initial_tags || {}, null, 2);
  const repro = select('reprovisioning', [['reissue', 'reissue: a new CSR gets a new certificate'], ['keep', 'keep: answer with the current certificate'], ['deny', 'deny: refuse re-provisioning']], e.reprovisioning || 'reissue');
  const out = h('div', {'aria-live': 'polite'});
  const form = h('form', {class: 'panel editor'},
    h('h2', {}, existing ? `Edit ${kind.label}` : `New ${kind.label}`), out,
    field(kind.individual ? 'Registration id' : 'Group id', id),
    h('div', {class: 'row'}, field('Attestation', att), field('Credential', credential), field('Provisioning', status)),
    casField,
    h('div', {class: 'row'}, field('Certificate validity (days)', days), field('Registration id pattern (regex)', pattern)),
    h('fieldset', {}, h('legend', {}, 'Allowed key types'), keyBoxes),
    field('Initial tags (JSON object)', tags),
    field('Reprovisioning', repro),
    h('div', {class: 'actions'},
      h('button', {type: 'button', onclick: () => (existing ? detail(view, kind, e[kind.idMember], ctx) : ctx.go('enrollment'))}, 'Cancel'),
      h('button', {type: 'submit', class: 'primary', 'data-test': 'save'}, existing ? 'Save' : 'Create')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const attestation = keepOriginal && att.value === original.type ? original : {type: att.value};
      if (att.value === 'x509_ca') {
        const pems = cas.value.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) || [];
        attestation.x509_ca = {ca_certificates: pems};
      }
      const body = {
        attestation,
        credential: credential.value,
        provisioning_status: status.value,
        certificate_validity_days: Number(days.value),
        allowed_key_types: keyBoxes.map((l) => l.firstChild).filter((c) => c.checked).map((c) => c.value),
        registration_id_pattern: pattern.value || null,
        initial_tags: parseObject(tags.value, 'Initial tags'),
        reprovisioning: repro.value,
      };
      const name = existing ? e[kind.idMember] : id.value;
      if (!existing && await exists(`${kind.api}/${seg(name)}`)) {
        fill(out, message(`A ${kind.label} ${name} exists already: open it to edit.`));
        return;
      }
      const headers = existing ? {'If-Match': `"${e.etag}"`} : {'If-None-Match': '*'};
      await call(`${kind.api}/${seg(name)}`, {method: 'PUT', body, headers});
      ctx.go('enrollment', kind.individual ? 'enrollments' : 'groups', name);
    } catch (err) {
      fill(out, message(err.status === 412 ? (existing ? 'It changed meanwhile: reload and edit again.' : 'That id exists already.') : err.message));
    }
  });
  fill(view, h('p', {}, h('a', {href: '#/enrollment'}, '← Enrollment')), form);
  (existing ? att : id).focus();
}
