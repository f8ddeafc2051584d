// Certificates: find by serial or device, revoke (CertificateAdmin), server certificates, and
// intermediate rotation with what it changes.

import {call, get, can, query, seg} from './api.js';
import {h, fill, table, when, badge, message, field, select, confirmDialog, secretPanel} from './dom.js';
import {certTable} from './devices.js';

export const REASONS = [
  ['unspecified', 'unspecified'],
  ['key_compromise', 'key compromise (the key is never certified again)'],
  ['ca_compromise', 'CA compromise (the key is never certified again)'],
  ['affiliation_changed', 'affiliation changed'],
  ['superseded', 'superseded'],
  ['cessation_of_operation', 'cessation of operation'],
  ['certificate_hold', 'certificate hold'],
  ['privilege_withdrawn', 'privilege withdrawn'],
];

/** A "Revoke…" button for one certificate: asks for a reason in a dialog, then revokes. */
export function revokeButton(cert, reload, notice) {
  return h('button', {type: 'button', class: 'danger', 'data-test': 'revoke', onclick: async () => {
    const ok = await confirmDialog({
      title: 'Revoke this certificate?',
      body: [h('p', {}, 'Serial ', h('span', {class: 'mono'}, cert.serial), cert.device_id ? [' of ', h('span', {class: 'mono'}, cert.device_id)] : null, '.'),
        'Revocation is permanent. OCSP answers "revoked" at once and the next CRL lists it within seconds.'],
      extra: [field('Reason', select('reason', REASONS, 'unspecified'))],
      confirmLabel: 'Revoke'});
    if (!ok) return;
    try {
      await call(`/v1/certificates/${seg(cert.serial)}/revoke`, {method: 'POST', body: {reason: ok.reason}});
      if (notice) fill(notice, message(`Certificate ${cert.serial} revoked (${ok.reason}).`, 'notice'));
      await reload();
    } catch (e) {
      if (notice) fill(notice, message(e.message));
    }
  }}, 'Revoke…');
}

export function render(view) {
  const notice = h('div', {'aria-live': 'polite'});
  const term = h('input', {type: 'search', name: 'term', placeholder: 'serial (hex) or device id', spellcheck: 'false', autocapitalize: 'none'});
  const by = select('by', [['serial', 'Serial'], ['device', 'Device id']], 'serial');
  const results = h('div', {class: 'results'});
  const form = h('form', {class: 'filters', role: 'search'}, field('Search by', by), field('Value', term), h('button', {type: 'submit', class: 'primary'}, 'Find'));
  const search = async () => {
    if (!term.value.trim()) return fill(results);
    try {
      let items;
      if (by.value === 'serial') items = [await get(`/v1/certificates/${seg(term.value.trim().replace(/:/g, ''))}`)];
      else items = (await get(`/v1/certificates${query({device_id: term.value.trim(), limit: 100})}`)).items;
      fill(results, certTable(items, search, notice));
    } catch (e) {
      fill(results, message(e.status === 404 ? 'No such certificate.' : e.message));
    }
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); search(); });
  const servers = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
  fill(view,
    h('div', {class: 'page-head'}, h('h1', {}, 'Certificates')),
    notice,
    h('section', {class: 'panel'}, h('h2', {}, 'Find a certificate'), form, results),
    can('CertificateAdmin') ? [
      h('section', {class: 'panel'}, h('h2', {}, 'Server certificates'), servers, issueServerForm(() => loadServers(servers, notice))),
      rotationPanel(notice),
    ] : h('p', {class: 'muted'}, 'Server certificates and intermediate rotation need CertificateAdmin.'));
  if (can('CertificateAdmin')) loadServers(servers, notice);
}

async function loadServers(el, notice) {
  try {
    const page = await get('/v1/certificates?kind=server&limit=100');
    fill(el, certTable(page.items, () => loadServers(el, notice), notice));
  } catch (e) {
    fill(el, message(e.message));
  }
}

function issueServerForm(reload) {
  const csr = h('textarea', {name: 'csr', rows: 5, required: true, placeholder: '-----BEGIN CERTIFICATE REQUEST-----', spellcheck: 'false'});
  const dns = h('input', {name: 'dns', placeholder: 'mqtt.example.com, broker.example.com', spellcheck: 'false'});
  const ips = h('input', {name: 'ips', placeholder: '10.0.0.5', spellcheck: 'false'});
  const days = h('input', {name: 'days', type: 'number', min: 1, value: '365'});
  const out = h('div', {'aria-live': 'polite'});
  const list = (s) => s.split(/[\s,]+/).filter(Boolean);
  const form = h('form', {class: 'subpanel'},
    h('h3', {}, 'Issue a server certificate (serverAuth, for a broker)'),
    field('CSR (PEM)', csr), field('DNS names', dns), field('IP addresses', ips), field('Validity (days)', days),
    h('button', {type: 'submit', class: 'primary'}, 'Issue'), out);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const body = {csr: csr.value, dns_names: list(dns.value), ip_addresses: list(ips.value), validity_days: Number(days.value)};
      const {body: issued} = await call('/v1/ca/server-certificates', {method: 'POST', body});
      fill(out, secretPanel({title: `Issued ${issued.serial}`, text: issued.certificate_chain || issued.certificate, filename: `server-${issued.serial}.pem`,
        note: 'The certificate chain (not secret). The key stays with whoever made the CSR.'}));
      await reload();
    } catch (err) {
      fill(out, message(err.message));
    }
  });
  return form;
}

function rotationPanel(notice) {
  const issuers = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
  const load = async () => {
    try {
      const items = (await get('/v1/ca/issuers')).items;
      fill(issuers, table([
        {label: 'Subject', cell: (i) => h('span', {}, i.subject, i.current ? [' ', badge('current', 'enabled')] : null, i.root ? [' ', badge('root', 'muted')] : null)},
        {label: 'Valid until', cell: (i) => when(i.not_after)},
        {label: 'CRL number', cell: (i) => (i.crl_number ?? '—').toString()},
        {label: 'Next CRL', cell: (i) => when(i.crl_next_update)},
      ], items));
    } catch (e) {
      fill(issuers, message(e.message));
    }
  };
  const rotate = h('button', {type: 'button', class: 'danger', 'data-test': 'rotate-intermediate', onclick: async () => {
    const ok = await confirmDialog({title: 'Rotate the intermediate CA?', body: [
      'A new intermediate key and certificate are made, signed by the root. Every certificate issued from now on chains to the new intermediate.',
      'The old intermediate stays in the chain, in crls.pem and answers OCSP while its certificates live: issued certificates keep verifying.',
      'Clients that trust the root need nothing. Clients that pin the intermediate need the new chain (GET /v1/ca/chain).',
      'The root CA key must be present in the data dir (root-ca.key) or the token; otherwise the server answers 409 and nothing changes.'],
      confirmLabel: 'Rotate the intermediate'});
    if (!ok) return;
    try {
      const {body} = await call('/v1/ca/intermediate/rotate', {method: 'POST', body: {}});
      fill(notice, message(`New intermediate ${body.issuer_id} is active.`, 'notice'));
      load();
    } catch (e) {
      fill(notice, message(e.message));
    }
  }}, 'Rotate intermediate…');
  load();
  return h('section', {class: 'panel'}, h('h2', {}, 'CA hierarchy'), issuers,
    h('p', {class: 'muted'}, 'Rotation is for a planned key change or a suspected intermediate compromise. It does not revoke anything.'),
    h('div', {class: 'actions'}, rotate));
}
