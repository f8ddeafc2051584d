"""Headless Debian Chromium for the console's browser suite and scripts/bench-ui.

Never a downloaded browser: /usr/bin/chromium through /usr/bin/chromedriver (Debian's
`chromium` and `chromium-driver`). The browser trusts exactly the server's public key and
reaches nothing but 127.0.0.1: every other host name resolves to nothing, no proxy, background
services off.
"""
import base64
import hashlib
import socket
import ssl
from urllib.parse import urlparse

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def spki_sha256(url, ca):
    """The server's public key pin, for --ignore-certificate-errors-spki-list (Chromium
    trusts exactly this key; the chain itself is verified here against the given chain)."""
    u = urlparse(url)
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname=u.hostname) as tls:
            der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


CSP_PROBE = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push({directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample});
});
"""


def start_browser(base, ca, profile, downloads):
    """Headless Debian Chromium through Debian's chromedriver, with a CSP-violation probe in
    every document and downloads into `downloads`."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in [
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        f"--user-data-dir={profile}", "--window-size=1280,800", "--lang=en-US",
        f"--ignore-certificate-errors-spki-list={spki_sha256(base, ca)}",
        # Loopback only: nothing else resolves, no proxy, no background services.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--no-proxy-server",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
        "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--no-pings",
        "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,"
        "CertificateTransparencyComponentUpdater,PasswordLeakDetection",
        "--password-store=basic",
    ]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.add_experimental_option("prefs", {
        "download.default_directory": downloads, "download.prompt_for_download": False,
        "credentials_enable_service": False, "profile.password_manager_enabled": False,
    })
    drv = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
    drv.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_PROBE})
    drv.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
    viewport(drv, 1280, 800)
    return drv


def viewport(drv, width, height):
    """Sets the page's viewport exactly (the window size would include the browser's frame)."""
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
