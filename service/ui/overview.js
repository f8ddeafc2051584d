// Overview: device counts, enrollment groups, the CA hierarchy with CRL state, the audit
// chain, and registrations per minute from /metrics. Each card asks only what the session may
// read and says which permission a hidden card needs.

import {get, can, ApiError} from './api.js';
import {h, fill, table, when, badge, message} from './dom.js';

// Samples of the successful-registrations counter, kept while the tab lives (not secret).
const samples = [];
const REFRESH_MS = 10000;

export function render(view) {
  const cards = h('div', {class: 'cards'});
  const refresh = h('button', {type: 'button', onclick: () => load(cards)}, 'Refresh');
  fill(view, h('div', {class: 'page-head'}, h('h1', {}, 'Overview'), refresh), cards);
  load(cards);
  const timer = setInterval(() => {
    if (!view.isConnected) clearInterval(timer);
    else loadRate(cards.querySelector('[data-card=rate] .card-body'));
  }, REFRESH_MS);
}

function card(name, title, needs) {
  const body = h('div', {class: 'card-body'}, h('p', {class: 'muted'}, 'Loading…'));
  const el = h('section', {class: `card card-${name}`, 'data-card': name, 'aria-label': title}, h('h2', {}, title), body);
  if (needs && !needs.some(can)) fill(body, h('p', {class: 'muted'}, `Needs ${needs.join(' or ')}.`));
  return [el, needs && !needs.some(can) ? null : body];
}

async function guarded(body, fn) {
  if (!body) return;
  try {
    await fn();
  } catch (e) {
    if (e instanceof ApiError) fill(body, message(e.message));
    else throw e;
  }
}

function load(cards) {
  const [devices, devicesBody] = card('devices', 'Devices', ['RegistryRead']);
  const [groups, groupsBody] = card('groups', 'Enrollment groups', ['EnrollmentRead']);
  const [rate, rateBody] = card('rate', 'Registrations per minute');
  const [ca, caBody] = card('ca', 'CA hierarchy and CRLs', ['CertificateAdmin', 'RegistryRead']);
  const [chain, chainBody] = card('audit', 'Audit chain', ['AuditRead']);
  fill(cards, devices, groups, rate, chain, ca);

  guarded(devicesBody, async () => {
    const c = await get('/v1/devices/counts');
    fill(devicesBody,
      h('dl', {class: 'stats'},
        h('div', {}, h('dt', {}, 'Enabled'), h('dd', {'data-test': 'count-enabled'}, String(c.enabled))),
        h('div', {}, h('dt', {}, 'Disabled'), h('dd', {'data-test': 'count-disabled'}, String(c.disabled))),
        h('div', {}, h('dt', {}, 'Total'), h('dd', {}, String(c.enabled + c.disabled)))));
  });
  guarded(groupsBody, async () => {
    const page = await get('/v1/enrollment-groups?limit=1000');
    const n = page.items.length;
    fill(groupsBody,
      h('dl', {class: 'stats'}, h('div', {}, h('dt', {}, 'Groups'), h('dd', {'data-test': 'count-groups'}, page.next_cursor ? `${n}+` : String(n)))),
      h('ul', {class: 'plain'}, page.items.slice(0, 8).map((g) =>
        h('li', {}, h('a', {href: `#/enrollment/groups/${encodeURIComponent(g.enrollment_group_id)}`}, g.enrollment_group_id), ' ',
          badge(g.provisioning_status || 'enabled')))));
  });
  loadRate(rateBody);
  loadCa(caBody);
  guarded(chainBody, async () => {
    const [v, cp] = await Promise.all([get('/v1/audit/verify'), get('/v1/audit/checkpoint')]);
    fill(chainBody,
      h('p', {'data-test': 'audit-status'}, v.ok ? badge('intact', 'enabled') : badge('BROKEN', 'disabled'), ' ',
        v.ok ? `${v.checked} rows verified.` : `First bad row: ${v.first_bad_seq}.`),
      h('p', {}, 'Latest checkpoint: row ', String(cp.seq), ' at ', when(cp.at)),
      h('p', {class: 'mono small', title: 'hash of that row'}, cp.hash));
  });
}

// CRLs are signed on demand: when a relying party fetches one and the cached CRL is stale (half
// its lifetime gone, or a revocation since). "Fetch CRLs now" does what a broker would do.
function loadCa(body) {
  guarded(body, async () => {
    const issuers = (await get('/v1/ca/issuers')).items;
    const fetchNow = h('button', {type: 'button', 'data-test': 'fetch-crls', onclick: async () => {
      fetchNow.disabled = true;
      try {
        await get('/v1/ca/crls.pem', {auth: false, text: true});
        loadCa(body);
      } catch (e) {
        fill(body, message(e.message));
      }
    }}, 'Fetch CRLs now');
    fill(body, table([
      {label: 'Subject', cell: (i) => h('span', {}, i.subject, i.current ? [' ', badge('current', 'enabled')] : null, i.root ? [' ', badge('root', 'muted')] : null)},
      {label: 'Expires', cell: (i) => expiry(i.not_after)},
      {label: 'CRL number', cell: (i) => (i.crl_number === null || i.crl_number === undefined ? '—' : h('span', {'data-test': `crl-${i.issuer_id}`, 'data-current': i.current ? 'yes' : 'no'}, String(i.crl_number)))},
      {label: 'CRL next update', cell: (i) => when(i.crl_next_update)},
    ], issuers),
    h('div', {class: 'actions'}, fetchNow,
      h('span', {class: 'muted small'}, 'A CRL is signed when a relying party fetches it after a revocation (or at half its lifetime); the numbers are those of the last CRL signed.')));
  });
}

function expiry(iso) {
  const days = Math.floor((new Date(iso).getTime() - Date.now()) / 86400000);
  return h('span', {}, when(iso), ' ', badge(days < 0 ? 'expired' : `${days} d`, days < 30 ? 'disabled' : 'muted'));
}

async function loadRate(body) {
  if (!body) return;
  let text;
  try {
    text = await get('/metrics', {auth: false, text: true});
  } catch (e) {
    fill(body, h('p', {class: 'muted'}, `/metrics is not readable here (${e.message}).`));
    return;
  }
  let ok = 0;
  let failed = 0;
  for (const line of String(text).split('\n')) {
    const m = /^provisiond_registrations_total\{([^}]*)\}\s+([0-9.e+]+)/.exec(line);
    if (!m) continue;
    if (/outcome="success"/.test(m[1])) ok += Number(m[2]);
    else failed += Number(m[2]);
  }
  const now = Date.now();
  samples.push({t: now, ok});
  while (samples.length > 2 && now - samples[1].t > 60000) samples.shift();
  const first = samples[0];
  const minutes = (now - first.t) / 60000;
  const rate = minutes > 0 ? (ok - first.ok) / minutes : null;
  fill(body,
    h('dl', {class: 'stats'},
      h('div', {}, h('dt', {}, 'Per minute'), h('dd', {'data-test': 'rate'}, rate === null ? '…' : rate.toFixed(1))),
      h('div', {}, h('dt', {}, 'Succeeded'), h('dd', {}, String(ok))),
      h('div', {}, h('dt', {}, 'Refused'), h('dd', {}, String(failed)))),
    h('p', {class: 'muted small'}, rate === null
      ? 'Counting since this page opened; refreshes every 10 s.'
      : `Over the last ${Math.round(minutes * 60)} s (counters since the server started).`));
}
