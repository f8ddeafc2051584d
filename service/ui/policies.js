// Policies (machine credentials) and operators (people): permissions, scopes, key rotation,
// passwords. PolicyAdmin only.

import {call, get, query, seg, exists} from './api.js';
import {h, fill, table, when, message, field, select, confirmDialog, secretPanel} from './dom.js';

export const PERMISSIONS = ['RegistryRead', 'RegistryReadWrite', 'ServiceConnect', 'DeviceConnect', 'EnrollmentRead',
  'EnrollmentWrite', 'Enroll', 'BundleCreate', 'CertificateAdmin', 'AuditRead', 'PolicyAdmin'];

export function render(view) {
  const notice = h('div', {'aria-live': 'polite'});
  const policies = h('div', {});
  const operators = h('div', {});
  const policyEditor = h('div', {});
  const operatorEditor = h('div', {});
  const loadPolicies = () => paged(policies, '/v1/policies', (reload) => [
    {label: 'Name', cell: (p) => h('span', {class: 'mono'}, p.name)},
    {label: 'Permissions', cell: (p) => (p.permissions || []).join(', ')},
    {label: 'Scope', cell: (p) => scopeText(p.scope)},
    {label: 'Updated', cell: (p) => when(p.updated_at)},
    {label: '', cell: (p) => h('div', {class: 'actions'},
      h('button', {type: 'button', onclick: () => policyForm(policyEditor, p, reload, notice)}, 'Edit'),
      rotateMenu(p, notice),
      h('button', {type: 'button', class: 'danger', onclick: () => remove('policy', `/v1/policies/${seg(p.name)}`, p.name,
        'Every token signed with its keys stops working at once.', reload, notice)}, 'Delete…'))},
  ]);
  const loadOperators = () => paged(operators, '/v1/operators', (reload) => [
    {label: 'Name', cell: (o) => h('span', {class: 'mono'}, o.name)},
    {label: 'Permissions', cell: (o) => (o.permissions || []).join(', ')},
    {label: 'Updated', cell: (o) => when(o.updated_at)},
    {label: '', cell: (o) => h('div', {class: 'actions'},
      h('button', {type: 'button', onclick: () => operatorForm(operatorEditor, o, reload, notice)}, 'Edit'),
      h('button', {type: 'button', class: 'danger', onclick: () => remove('operator', `/v1/operators/${seg(o.name)}`, o.name,
        'The operator\'s sessions end at once.', reload, notice)}, 'Delete…'))},
  ]);
  fill(view,
    h('div', {class: 'page-head'}, h('h1', {}, 'Policies & operators')),
    notice,
    h('section', {class: 'panel'},
      h('div', {class: 'panel-head'}, h('h2', {}, 'Policies'),
        h('button', {type: 'button', class: 'primary', onclick: () => policyForm(policyEditor, null, loadPolicies, notice)}, 'New policy')),
      policyEditor, policies),
    h('section', {class: 'panel'},
      h('div', {class: 'panel-head'}, h('h2', {}, 'Operators'),
        h('button', {type: 'button', class: 'primary', onclick: () => operatorForm(operatorEditor, null, loadOperators, notice)}, 'New operator')),
      operatorEditor, operators));
  loadPolicies();
  loadOperators();
}

function scopeText(scope) {
  if (!scope) return 'unscoped';
  const parts = [];
  if (scope.device_id_prefix !== undefined) parts.push(`ids "${scope.device_id_prefix}…"`);
  if (scope.enrollment_group_ids) parts.push(`groups ${scope.enrollment_group_ids.join(', ') || '(none)'}`);
  return parts.join(' and ');
}

function paged(el, path, columns) {
  const cursors = [null];
  let page = 0;
  const load = async () => {
    try {
      const body = await get(`${path}${query({limit: 100, cursor: cursors[page]})}`);
      cursors[page + 1] = body.next_cursor || undefined;
      fill(el, table(columns(load), body.items),
        body.next_cursor || page ? h('div', {class: 'pager'},
          h('button', {type: 'button', disabled: page === 0, onclick: () => { page -= 1; load(); }}, '← Previous'),
          h('button', {type: 'button', disabled: !body.next_cursor, onclick: () => { page += 1; load(); }}, 'Next →')) : null);
    } catch (e) {
      fill(el, message(e.message));
    }
  };
  load();
  return load;
}

function permissionBoxes(selected) {
  const set = new Set(selected || []);
  const boxes = PERMISSIONS.map((p) => h('label', {class: 'check'}, h('input', {type: 'checkbox', name: 'perm', value: p, checked: set.has(p)}), ` ${p}`));
  return {el: h('fieldset', {class: 'perms'}, h('legend', {}, 'Permissions'), boxes),
    values: () => boxes.map((l) => l.firstChild).filter((c) => c.checked).map((c) => c.value)};
}

function policyForm(slot, existing, reload, notice) {
  const p = existing || {};
  const name = h('input', {name: 'name', required: true, value: p.name || '', disabled: !!existing, spellcheck: 'false', autocapitalize: 'none'});
  const perms = permissionBoxes(p.permissions);
  const kind = select('scope', [['none', 'unscoped'], ['prefix', 'device id prefix'], ['groups', 'enrollment groups'], ['both', 'both']],
    !p.scope ? 'none' : p.scope.device_id_prefix !== undefined && p.scope.enrollment_group_ids ? 'both' : p.scope.device_id_prefix !== undefined ? 'prefix' : 'groups');
  const prefix = h('input', {name: 'prefix', value: p.scope?.device_id_prefix || '', spellcheck: 'false'});
  const groups = h('input', {name: 'groups', value: (p.scope?.enrollment_group_ids || []).join(', '), placeholder: 'line-a, line-b', spellcheck: 'false'});
  const prefixField = field('Device id prefix', prefix);
  const groupsField = field('Enrollment group ids', groups);
  const sync = () => { prefixField.hidden = !['prefix', 'both'].includes(kind.value); groupsField.hidden = !['groups', 'both'].includes(kind.value); };
  kind.addEventListener('change', sync);
  sync();
  const out = h('div', {'aria-live': 'polite'});
  const form = h('form', {class: 'subpanel'}, h('h3', {}, existing ? `Edit policy ${p.name}` : 'New policy'), out,
    field('Name', name), perms.el, field('Scope', kind), prefixField, groupsField,
    h('p', {class: 'muted small'}, 'A scoped policy sees only its objects (others answer 404) and cannot hold PolicyAdmin.'),
    h('div', {class: 'actions'}, h('button', {type: 'button', onclick: () => fill(slot)}, 'Cancel'), h('button', {type: 'submit', class: 'primary'}, existing ? 'Save' : 'Create')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    let scope = null;
    if (kind.value !== 'none') {
      scope = {};
      if (['prefix', 'both'].includes(kind.value)) scope.device_id_prefix = prefix.value;
      if (['groups', 'both'].includes(kind.value)) scope.enrollment_group_ids = groups.value.split(/[\s,]+/).filter(Boolean);
    }
    try {
      if (!existing && await exists(`/v1/policies/${seg(name.value)}`)) {
        fill(out, message(`A policy ${name.value} exists already: edit it in the list.`));
        return;
      }
      const headers = existing ? {} : {'If-None-Match': '*'};
      const {body} = await call(`/v1/policies/${seg(existing ? p.name : name.value)}`, {method: 'PUT', body: {permissions: perms.values(), scope}, headers});
      if (existing) {
        fill(slot);
        fill(notice, message(`Policy ${body.name} saved; its keys are unchanged.`, 'notice'));
      } else {
        fill(slot, secretPanel({title: `Keys of policy ${body.name}`, text: `primary_key=${body.primary_key}\nsecondary_key=${body.secondary_key}`,
          filename: `policy-${body.name}.keys`, note: 'Shown here once. Anyone with a key signs tokens with these permissions.'}));
      }
      reload();
    } catch (err) {
      fill(out, message(err.message));
    }
  });
  fill(slot, form);
  (existing ? form.querySelector('input[type=checkbox]') : name).focus();
}

function rotateMenu(p, notice) {
  return h('button', {type: 'button', onclick: async () => {
    const ok = await confirmDialog({title: `Rotate a key of policy ${p.name}?`,
      body: ['Tokens signed with a replaced key stop working at once. The new keys are shown once.'],
      extra: [field('Key', select('key', [['secondary', 'secondary'], ['primary', 'primary'], ['swap', 'swap primary and secondary']], 'secondary'))],
      confirmLabel: 'Rotate'});
    if (!ok) return;
    try {
      const {body} = await call(`/v1/policies/${seg(p.name)}/keys/rotate`, {method: 'POST', body: {key: ok.key}});
      fill(notice, secretPanel({title: `New keys of policy ${p.name}`, text: `primary_key=${body.primary_key}\nsecondary_key=${body.secondary_key}`,
        filename: `policy-${p.name}.keys`}));
    } catch (e) {
      fill(notice, message(e.message));
    }
  }}, 'Rotate key…');
}

function operatorForm(slot, existing, reload, notice) {
  const o = existing || {};
  const name = h('input', {name: 'name', required: true, value: o.name || '', disabled: !!existing, autocomplete: 'off', spellcheck: 'false', autocapitalize: 'none'});
  const pass = h('input', {name: 'password', type: 'password', required: true, minlength: 8, autocomplete: 'new-password'});
  const perms = permissionBoxes(o.permissions);
  const out = h('div', {'aria-live': 'polite'});
  const form = h('form', {class: 'subpanel'}, h('h3', {}, existing ? `Edit operator ${o.name}` : 'New operator'), out,
    field('Name', name), field(existing ? 'New password (required: the API replaces both)' : 'Password', pass, 'At least 8 characters.'), perms.el,
    h('p', {class: 'muted small'}, 'Saving ends the operator\'s current sessions.'),
    h('div', {class: 'actions'}, h('button', {type: 'button', onclick: () => fill(slot)}, 'Cancel'), h('button', {type: 'submit', class: 'primary'}, existing ? 'Save' : 'Create')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      if (!existing && await exists(`/v1/operators/${seg(name.value)}`)) {
        fill(out, message(`An operator ${name.value} exists already: edit it in the list.`));
        return;
      }
      await call(`/v1/operators/${seg(existing ? o.name : name.value)}`, {method: 'PUT', body: {password: pass.value, permissions: perms.values()},
        headers: existing ? {} : {'If-None-Match': '*'}});
      pass.value = '';
      fill(slot);
      fill(notice, message(`Operator ${existing ? o.name : name.value} saved.`, 'notice'));
      reload();
    } catch (err) {
      fill(out, message(err.status === 412 ? 'An operator with this name exists already.' : err.message));
    }
  });
  fill(slot, form);
  (existing ? pass : name).focus();
}

async function remove(what, path, name, consequence, reload, notice) {
  const ok = await confirmDialog({title: `Delete ${what} ${name}?`, body: [consequence, 'This cannot be undone.'], confirmLabel: 'Delete'});
  if (!ok) return;
  try {
    await call(path, {method: 'DELETE'});
    fill(notice, message(`${what[0].toUpperCase()}${what.slice(1)} ${name} deleted.`, 'notice'));
    reload();
  } catch (e) {
    fill(notice, message(e.message));
  }
}
