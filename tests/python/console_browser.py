#!/usr/bin/env python3
"""The admin console in Debian's headless Chromium, driven by Selenium (never a downloaded
browser): started by tests/api/console.rs against a real `provisiond serve`.

Environment: CONSOLE_URL (https://127.0.0.1:port), CONSOLE_CA (the chain file),
CONSOLE_OWNER_TOKEN (owner policy SAS token, for arranging and checking through the API),
CONSOLE_PASSWORD (of the operators `admin` and `reader`), CONSOLE_SCREENSHOTS (folder).

Waits are explicit (WebDriverWait on a condition), never sleeps. Chromium reaches nothing but
127.0.0.1: every other host name resolves to nothing and background services are off.
"""
import json
import os
import shutil
import tempfile

import requests
from console_chromium import start_browser, viewport
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from selenium.common.exceptions import (
    ElementClickInterceptedException, NoSuchElementException, StaleElementReferenceException, WebDriverException)
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

BASE = os.environ["CONSOLE_URL"].rstrip("/")
CA = os.environ["CONSOLE_CA"]
OWNER = os.environ["CONSOLE_OWNER_TOKEN"]
PASSWORD = os.environ["CONSOLE_PASSWORD"]
SHOTS = os.environ["CONSOLE_SCREENSHOTS"]
WAIT = 45  # seconds: generous for a loaded 2-core machine; waits end as soon as they can

# Attacker-controlled text: tags may hold anything; ids only IoT Hub's characters, which still
# include quotes, parentheses and '='.
XSS_TAG = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
XSS_ID = "x'(onerror=alert(1))"


def log(msg):
    print(f"[console] {msg}", flush=True)


def api(method, path, token=OWNER, **kw):
    # REQUESTS_CA_BUNDLE would override Session.verify: pass verify per request.
    headers = kw.pop("headers", {})
    if token:
        headers["Authorization"] = token
    return requests.request(method, BASE + path, headers=headers, verify=CA, timeout=30, **kw)


class Console:
    def __init__(self, drv):
        self.d = drv
        self.wait = WebDriverWait(drv, WAIT, poll_frequency=0.1, ignored_exceptions=(
            StaleElementReferenceException, NoSuchElementException, ElementClickInterceptedException))
        self.csp = []
        self.console_errors = []

    def css(self, sel):
        return self.wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, sel)), f"visible: {sel}")

    def _click(self, by, what, label):
        """Finds and clicks in one waited step: a list that re-renders between the find and
        the click (stale element) is simply found again."""
        def attempt(d):
            el = d.find_element(by, what)
            if not (el.is_displayed() and el.is_enabled()):
                return False
            el.click()
            return el
        return self.wait.until(attempt, f"clickable: {label}")

    def click(self, sel):
        return self._click(By.CSS_SELECTOR, sel, sel)

    def click_text(self, tag, text):
        xp = f"//{tag}[normalize-space(.)={json.dumps(text, ensure_ascii=False)}]"
        return self._click(By.XPATH, xp, f"{tag} {text!r}")

    def click_link(self, text):
        return self._click(By.LINK_TEXT, text, f"link {text!r}")

    def text_in(self, sel, text):
        self.wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, sel), text), f"{text!r} in {sel}")

    def absent(self, sel):
        return len(self.d.find_elements(By.CSS_SELECTOR, sel)) == 0

    def nav(self, label):
        self.click_text("a", label)
        self.css(f".view[data-page]")

    def page(self, name):
        self.wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f".view[data-page={name}]"), f"page {name}")

    def confirm(self, fill=None):
        self.css("dialog[open]")
        if fill:
            for sel, value in fill.items():
                el = self.css(f"dialog[open] {sel}")
                if el.tag_name == "select":
                    Select(el).select_by_value(value)
                else:
                    el.clear()
                    el.send_keys(value)
        self.click("dialog[open] [data-test=confirm]")
        self.wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "dialog[open]"), "dialog closed")

    def shot(self, name, show=None):
        # Wait until nothing says "Loading…" so the picture shows the page, not its skeleton;
        # `show`: an element to scroll into the middle of the picture.
        self.wait.until(lambda d: "Loading…" not in d.find_element(By.TAG_NAME, "body").text, "loaded")
        if show:
            self.d.execute_script("arguments[0].scrollIntoView({block: 'center'})", self.css(show))
        path = os.path.join(SHOTS, f"{name}.png")
        self.d.save_screenshot(path)
        log(f"screenshot {path}")

    def collect(self):
        """CSP violations seen by the page's listener, and the browser's console errors."""
        got = self.d.execute_script("return window.__csp || []")
        self.csp.extend(got)
        for entry in self.d.get_log("browser"):
            msg = entry.get("message", "")
            if "Content Security Policy" in msg or "Content-Security-Policy" in msg:
                self.csp.append({"console": msg})
            elif entry.get("level") == "SEVERE" and "Failed to load resource" not in msg:
                self.console_errors.append(msg)

    def login(self, user, password, expect_ok=True):
        self.css("#login")
        u = self.css("#login input[name=username]")
        u.clear()
        u.send_keys(user)
        p = self.css("#login input[name=password]")
        p.clear()
        p.send_keys(password + Keys.ENTER)  # keyboard: Enter submits
        if expect_ok:  # the page the location's hash names (the overview by default)
            self.css(".view[data-page]")


def make_csr(cn):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def crl_number(c):
    els = c.d.find_elements(By.CSS_SELECTOR, "[data-card=ca] [data-current=yes]")
    return int(els[0].text) if els else -1


def main():
    os.makedirs(SHOTS, exist_ok=True)
    for f in os.listdir(SHOTS):
        if f.endswith(".png"):
            os.remove(os.path.join(SHOTS, f))
    profile = tempfile.mkdtemp(prefix="console-profile-")
    downloads = tempfile.mkdtemp(prefix="console-downloads-")
    drv = start_browser(BASE, CA, profile, downloads)
    try:
        run(Console(drv), downloads)
    finally:
        try:
            drv.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)
            shutil.rmtree(downloads, ignore_errors=True)


def run(c, downloads):
    d = c.d
    # Arrange through the API: a device whose id and tags carry markup.
    r = api("PUT", f"/v1/devices/{requests.utils.quote(XSS_ID, safe='')}", json={"tags": {"note": XSS_TAG, XSS_TAG: "key"}})
    assert r.status_code == 201, r.text

    # --- login (a wrong password first: the problem detail is shown) ---
    d.get(BASE + "/ui/")
    c.css("#login")
    c.shot("01-login")
    c.login("admin", "wrong password", expect_ok=False)
    c.text_in("#login .msg-error", "invalid user name or password")
    c.login("admin", PASSWORD)
    log("logged in as admin")

    # --- overview ---
    c.css("[data-test=count-enabled]")
    c.css("[data-test=audit-status]")
    c.text_in("[data-test=audit-status]", "intact")
    c.click("[data-test=fetch-crls]")
    c.css("[data-card=ca] [data-current=yes]")
    c.shot("02-overview")
    crl_before = crl_number(c)
    log(f"CRL number before: {crl_before}")
    c.collect()

    # --- devices: create one, see the markup device rendered as text ---
    c.nav("Devices")
    c.page("devices")
    c.css("table")
    c.click("[data-test=new-device]")
    c.css("input[name=device_id]").send_keys("console-dev-1")
    c.css("textarea[name=tags]").send_keys('{"site": "berlin", "html": "<b>bold</b>"}')
    c.click_text("button", "Create")
    c.text_in("[data-test=device-id]", "console-dev-1")
    assert api("GET", "/v1/devices/console-dev-1").status_code == 200
    c.text_in("[data-test=tags]", "<b>bold</b>")
    assert c.absent(".view b"), "tag markup was parsed"
    log("device created")

    # reveal, then rotate the primary key; the page shows the new one
    before = api("GET", "/v1/devices/console-dev-1").json()["authentication"]["symmetric_key"]["primary_key"]
    c.click_text("button", "Reveal")
    c.text_in("[data-test=key-primary]", before)
    shown = c.css("[data-test=key-primary]")
    c.click("[data-test=rotate-primary]")
    c.css("dialog[open]")
    c.shot("03-confirm-rotate")
    c.confirm()
    c.wait.until(EC.staleness_of(shown), "the device page reloads after the rotation")

    def rotated(_):
        k = api("GET", "/v1/devices/console-dev-1").json()["authentication"]["symmetric_key"]["primary_key"]
        return k if k != before else None
    after = c.wait.until(rotated, "key rotated")
    c.click_text("button", "Reveal")
    c.text_in("[data-test=key-primary]", after)
    c.click_text("button", "Hide")
    c.shot("04-device-detail")
    log("primary key rotated")

    # the markup device: listed and shown as text, nothing executed
    c.nav("Devices")
    c.page("devices")
    prefix = c.css("input[name=prefix]")
    prefix.clear()
    prefix.send_keys("x'" + Keys.ENTER)
    c.wait.until(lambda _: [a.text for a in d.find_elements(By.CSS_SELECTOR, "tbody a")] == [XSS_ID], "only the match")
    c.shot("05-devices")
    c.click_link(XSS_ID)
    c.text_in("[data-test=device-id]", XSS_ID)
    c.text_in("[data-test=tags]", "onerror")
    assert d.execute_script("return window.__xss === undefined"), "markup executed"
    assert c.absent("img"), "an <img> from data reached the DOM"
    assert len(d.find_elements(By.TAG_NAME, "script")) == 1, "a <script> from data reached the DOM"
    # delete it, with the typed confirmation
    c.click("[data-test=delete]")
    c.confirm({"input[name=typed]": XSS_ID})
    c.page("devices")
    c.wait.until(lambda _: api("GET", f"/v1/devices/{requests.utils.quote(XSS_ID, safe='')}").status_code == 404)
    log("markup device shown as text and deleted")
    c.collect()

    # --- enrollment: a token group, mint a token, register through the API ---
    c.nav("Enrollment")
    c.page("enrollment")
    c.click("[data-test=new-group]")
    c.css("input[name=id]").send_keys("line-a")
    Select(c.css("select[name=attestation]")).select_by_value("token")
    pattern = c.css("input[name=pattern]")
    pattern.send_keys("^kit-[0-9]{4}$")
    c.click("[data-test=save]")
    c.text_in("[data-test=group-id]", "line-a")
    group = api("GET", "/v1/enrollment-groups/line-a").json()
    assert group["attestation"]["type"] == "token" and group["registration_id_pattern"] == "^kit-[0-9]{4}$", group
    c.click("[data-test=mint]")
    secret = c.css("[data-test=secret]")
    c.wait.until(lambda _: secret.get_attribute("value").count(".") == 2)
    token = secret.get_attribute("value").strip()
    c.shot("06-group-token", show="[data-test=secret]")
    log("token minted")

    r = api("POST", "/v1/registrations/kit-0001", token=f"Bearer {token}",
            json={"registration_id": "kit-0001", "csr": make_csr("kit-0001")})
    assert r.status_code == 201, r.text
    c.click("[data-test=refresh-registrations]")
    c.text_in("[data-test=registered-device]", "kit-0001")
    c.shot("07-enrollment-registrations", show="[data-test=registered-device]")
    log("registered device appears")

    # edit the group: the change is kept, the rest round-trips
    c.click("[data-test=edit]")
    Select(c.css("select[name=reprovisioning]")).select_by_value("keep")
    c.click("[data-test=save]")
    c.text_in(".props", "keep")
    assert api("GET", "/v1/enrollment-groups/line-a").json()["reprovisioning"] == "keep"

    # --- revoke kit-0001's certificate; the CRL number moves ---
    c.click_text("a", "kit-0001")
    c.text_in("[data-test=device-id]", "kit-0001")
    c.text_in("[data-test=owner]", "group line-a")
    serial = c.css("[data-test=serial]").text
    c.click("[data-test=revoke]")
    c.confirm({"select[name=reason]": "superseded"})
    c.text_in("[data-test=cert-status]", "revoked")
    log(f"certificate {serial} revoked")
    c.nav("Overview")
    c.page("overview")

    def crl_moved(_):
        c.click("[data-test=fetch-crls]")
        try:
            WebDriverWait(d, 5, poll_frequency=0.1).until(lambda _: crl_number(c) > crl_before)
            return True
        except Exception:
            return False
    WebDriverWait(d, WAIT, poll_frequency=0.5).until(crl_moved, "the CRL number moves after a revocation")
    log(f"CRL number after: {crl_number(c)}")
    c.collect()

    # --- certificates: find by serial ---
    c.nav("Certificates")
    c.page("certificates")
    term = c.css("input[name=term]")
    term.send_keys(serial + Keys.ENTER)
    c.text_in("[data-test=cert-status]", "revoked")
    c.shot("08-certificates")

    # --- bundles: create for console-dev-1 from its page, then cancel ---
    c.nav("Devices")
    c.page("devices")
    prefix = c.css("input[name=prefix]")  # the console kept the last search ("x'")
    assert prefix.get_attribute("value") == "x'"
    prefix.clear()
    prefix.send_keys("console-" + Keys.ENTER)
    c.click_link("console-dev-1")
    c.click_text("a", "Create bundle…")
    c.page("bundles")
    assert c.css("form[aria-label='New bundle'] input[name=device_id]").get_attribute("value") == "console-dev-1"
    Select(c.css("select[name=credential]")).select_by_value("sas")
    c.click("[data-test=create-bundle]")
    command = c.css("[data-test=secret]").get_attribute("value")
    btoken = c.css("[data-test=bundle-token]").text
    assert btoken in command and "/redeem" in command and "Authorization: Bundle" in command, command
    c.text_in("[data-test=bundle-status]", "pending")
    c.shot("09-bundles", show="[data-test=secret]")
    c.click("[data-test=cancel-bundle]")
    c.confirm()
    c.text_in("[data-test=bundle-status]", "cancelled")
    bundle_id = command.split("/v1/bundles/")[1].split("/redeem")[0]
    r = api("POST", f"/v1/bundles/{bundle_id}/redeem", token=f"Bundle {btoken}")
    assert r.status_code == 410, r.status_code
    log("bundle created and cancelled")
    c.collect()

    # --- disable with a reason (If-Match on the device's ETag), then enable again ---
    c.nav("Devices")
    c.page("devices")
    c.click_link("console-dev-1")
    c.click("[data-test=disable]")
    c.confirm({"input[name=reason]": "returned to vendor"})
    c.text_in("[data-test=status-reason]", "returned to vendor")
    got = api("GET", "/v1/devices/console-dev-1").json()
    assert got["status"] == "disabled" and got["status_reason"] == "returned to vendor", got
    c.click("[data-test=enable]")
    c.confirm()
    c.css("[data-test=disable]")
    assert api("GET", "/v1/devices/console-dev-1").json()["status"] == "enabled"
    log("disabled with a reason and enabled again")

    # --- policies and operators ---
    c.nav("Policies & operators")
    c.page("policies")
    c.wait.until(EC.presence_of_element_located((By.XPATH, "//td//span[normalize-space(.)='owner']")))
    c.wait.until(EC.presence_of_element_located((By.XPATH, "//td//span[normalize-space(.)='reader']")))
    c.shot("10-policies")

    # --- audit: filter, verify, checkpoint ---
    c.nav("Audit")
    c.page("audit")
    c.css("[data-test=audit-action]")
    action = c.css("input[name=action]")
    action.send_keys("bundle.cancel" + Keys.ENTER)
    c.wait.until(lambda _: [e.text for e in d.find_elements(By.CSS_SELECTOR, "[data-test=audit-action]")] == ["bundle.cancel"],
                 "exactly the bundle.cancel row")
    action.clear()
    action.send_keys(Keys.ENTER)
    c.click("[data-test=verify]")
    c.text_in(".msg-notice", "Chain intact")
    c.click("[data-test=checkpoint]")
    c.wait.until(lambda _: any(f.endswith(".json") for f in os.listdir(downloads)), "checkpoint downloaded")
    name = next(f for f in os.listdir(downloads) if f.endswith(".json"))
    path = os.path.join(downloads, name)
    c.wait.until(lambda _: os.path.getsize(path) > 0)
    cp = json.load(open(path))
    assert cp["seq"] > 0 and len(cp["hash"]) == 64 and cp["signature"].count(".") == 2, cp
    c.shot("11-audit")
    log("audit verified and checkpoint downloaded")

    # --- narrow window ---
    viewport(d, 400, 860)
    c.nav("Devices")
    c.page("devices")
    c.css("table")
    c.shot("12-devices-narrow")
    viewport(d, 1280, 800)
    c.collect()

    # --- logout: nothing of the session is left in the browser ---
    key_now = api("GET", "/v1/devices/console-dev-1").json()["authentication"]["symmetric_key"]["primary_key"]
    c.click("#logout")
    c.text_in("#login .msg", "Signed out")
    leftovers(c, key_now)
    d.refresh()
    c.css("#login")
    d.get(BASE + "/ui/#/devices")
    c.css("#login")
    assert c.absent(".view"), "a page rendered without a session"
    log("logged out: no storage, no cookie")
    c.collect()

    # --- session ended by the server (operator changed): back to login with a message ---
    c.login("admin", PASSWORD)
    r = api("PUT", "/v1/operators/admin", json={"password": PASSWORD, "permissions": [
        "RegistryReadWrite", "EnrollmentWrite", "Enroll", "BundleCreate", "CertificateAdmin", "AuditRead", "PolicyAdmin"]})
    assert r.ok, r.text
    c.click_text("a", "Overview")  # any page: its first API call answers 401
    c.text_in("#login .msg-error", "session")
    c.shot("13-session-ended")
    log("a 401 returns to the login form")
    c.collect()

    # --- a RegistryRead-only operator: no keys, no write buttons; the API refuses if forced ---
    c.login("reader", PASSWORD)
    labels = [a.text for a in d.find_elements(By.CSS_SELECTOR, "#nav a")]
    assert labels == ["Overview", "Devices", "Certificates"], labels
    c.nav("Devices")
    c.page("devices")
    c.css("table")
    assert c.absent("[data-test=new-device]")
    c.click_link("console-dev-1")
    c.css("[data-test=keys-hidden]")
    for sel in ["[data-test=rotate-primary]", "[data-test=disable]", "[data-test=delete]", "[data-test=revoke]",
                "[data-test=key-primary]"]:
        assert c.absent(sel), f"reader sees {sel}"
    body = d.find_element(By.TAG_NAME, "body").text
    assert key_now not in body
    c.shot("14-reader-device")
    c.nav("Certificates")
    c.page("certificates")
    assert c.absent("[data-test=rotate-intermediate]")
    rt = requests.post(BASE + "/v1/auth/login", json={"username": "reader", "password": PASSWORD}, verify=CA, timeout=30).json()
    assert rt["permissions"] == ["RegistryRead"], rt
    bearer = f"Bearer {rt['access_token']}"
    got = api("GET", "/v1/devices/console-dev-1", token=bearer).json()
    assert "symmetric_key" not in json.dumps(got), "the API gave a reader keys"
    for method, path, body in [
        ("POST", "/v1/devices/console-dev-1/keys/rotate", {"key": "primary"}),
        ("PUT", "/v1/devices/console-dev-1", {"status": "disabled"}),
        ("DELETE", "/v1/devices/console-dev-1", None),
        ("POST", f"/v1/certificates/{serial}/revoke", {"reason": "unspecified"}),
        ("POST", "/v1/bundles", {"device_id": "console-dev-1", "credential": "sas", "format": "json"}),
    ]:
        r = api(method, path, token=bearer, json=body) if body is not None else api(method, path, token=bearer)
        assert r.status_code == 403, f"{method} {path}: {r.status_code}"
    log("reader: no keys, no write buttons, API refuses writes")
    c.click("#logout")
    leftovers(c, key_now)
    c.collect()

    assert not c.csp, f"CSP violations: {c.csp}"
    assert not c.console_errors, f"console errors: {c.console_errors}"
    print("console browser suite: ok", flush=True)


def leftovers(c, key):
    """After logout: no storage, cookie, IndexedDB database or cache, and no key in the page."""
    d = c.d
    state = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        (async () => {
          const dbs = indexedDB.databases ? (await indexedDB.databases()).map((x) => x.name) : [];
          const cacheKeys = window.caches ? await caches.keys() : [];
          done({local: localStorage.length, session: sessionStorage.length, cookie: document.cookie,
                dbs, cacheKeys, text: document.body.innerText, dialogs: document.querySelectorAll('dialog').length});
        })().catch((e) => done({error: String(e)}));
    """)
    assert "error" not in state, state
    assert state["local"] == 0 and state["session"] == 0, state
    assert state["cookie"] == "" and d.get_cookies() == [], (state["cookie"], d.get_cookies())
    assert state["dbs"] == [] and state["cacheKeys"] == [], state
    assert key not in state["text"] and state["dialogs"] == 0, "page content survived logout"


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, WebDriverException) as e:
        print(f"console browser suite: FAILED: {type(e).__name__}: {e}", flush=True)
        raise
