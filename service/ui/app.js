// The console shell: login, navigation, routing by location hash, logout and session expiry.

import * as api from './api.js';
import {h, fill, field, message} from './dom.js';
import * as overview from './overview.js';
import * as devices from './devices.js';
import * as enrollment from './enrollment.js';
import * as bundles from './bundles.js';
import * as certificates from './certificates.js';
import * as policies from './policies.js';
import * as audit from './audit.js';

// Sections: hash, label, module, and the permissions any one of which shows it.
const SECTIONS = [
  {path: 'overview', label: 'Overview', page: overview, needs: []},
  {path: 'devices', label: 'Devices', page: devices, needs: ['RegistryRead']},
  {path: 'enrollment', label: 'Enrollment', page: enrollment, needs: ['EnrollmentRead']},
  {path: 'bundles', label: 'Bundles', page: bundles, needs: ['BundleCreate']},
  {path: 'certificates', label: 'Certificates', page: certificates, needs: ['RegistryRead', 'CertificateAdmin']},
  {path: 'policies', label: 'Policies & operators', page: policies, needs: ['PolicyAdmin']},
  {path: 'audit', label: 'Audit', page: audit, needs: ['AuditRead']},
];

const main = document.getElementById('main');
const top = document.getElementById('top');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
let expiryTimer = null;

function visible(section) {
  return section.needs.length === 0 || section.needs.some((p) => api.can(p));
}

/** Navigates to a hash route, e.g. go('devices', 'dev-1'). */
function go(...parts) {
  const hash = `#/${parts.map(encodeURIComponent).join('/')}`;
  if (location.hash === hash) route();
  else location.hash = hash;
}

const ctx = {go, can: api.can};

function route() {
  if (!api.current()) return;
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  const section = SECTIONS.find((s) => s.path === parts[0] && visible(s)) || SECTIONS[0];
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.path === section.path) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  for (const d of document.querySelectorAll('dialog')) d.remove();
  const view = h('div', {class: 'view', 'data-page': section.path});
  fill(main, view);
  section.page.render(view, parts.slice(1), ctx);
  document.title = `${section.label} · provisiond console`;
  main.focus({preventScroll: true});
}

function showLogin(note, kind = 'notice') {
  clearTimeout(expiryTimer);
  for (const d of document.querySelectorAll('dialog')) d.remove();
  top.hidden = true;
  nav.replaceChildren();
  who.textContent = '';
  const user = h('input', {name: 'username', autocomplete: 'username', required: true, autocapitalize: 'none', spellcheck: 'false'});
  const pass = h('input', {name: 'password', type: 'password', autocomplete: 'current-password', required: true});
  const status = h('div', {'aria-live': 'polite'}, note ? message(note, kind) : null);
  const submit = h('button', {type: 'submit', class: 'primary'}, 'Sign in');
  const form = h('form', {class: 'login', id: 'login'},
    h('h1', {}, 'provisiond console'),
    h('p', {class: 'muted'}, 'Sign in as an operator. The session lives in this tab only: a reload asks again.'),
    status,
    field('User name', user),
    field('Password', pass),
    submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    submit.disabled = true;
    fill(status, message('Signing in…', 'notice'));
    try {
      await api.login(user.value, pass.value);
      pass.value = '';
      started();
    } catch (err) {
      fill(status, message(err.message));
      pass.value = '';
      pass.focus();
    } finally {
      submit.disabled = false;
    }
  });
  fill(main, form);
  user.focus();
}

function started() {
  const me = api.current();
  fill(nav, SECTIONS.filter(visible).map((s) => h('a', {href: `#/${s.path}`, 'data-path': s.path}, s.label)));
  fill(who, h('span', {title: me.permissions.join(', ')}, me.name));
  top.hidden = false;
  // The server ends the session at its expiry; say so before the next click fails.
  const left = new Date(me.expiresAt).getTime() - Date.now();
  clearTimeout(expiryTimer);
  if (left > 0) expiryTimer = setTimeout(() => expired('Your session expired.'), Math.min(left, 2 ** 31 - 1));
  route();
}

function expired(detail) {
  api.logout();
  showLogin(`${detail || 'Your session has ended.'} Sign in again.`, 'error');
}

api.whenExpired(() => expired('The server ended your session (expired, or your operator account changed).'));
document.getElementById('logout').addEventListener('click', () => {
  api.logout();
  history.replaceState(null, '', location.pathname);
  showLogin('Signed out. The session token is gone from this tab.');
});
window.addEventListener('hashchange', route);
showLogin();
