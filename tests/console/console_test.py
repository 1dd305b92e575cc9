"""The web console in a real browser: Playwright (PyPI) driving Debian's Chromium, headless.

Run by tests/console.rs against a real cluster (a coordinator and two joined nodes, the
MiniLM embedding model deployed). Usage:
    console_test.py --gateway URL --key KEY --screenshots DIR --victim NAME --victim-pid PID --lease-ms MS --axe AXE_JS

Checks, on each viewport (desktop 1440x900, phone 390x844, wall 3840x2160): every page loads
with no console error and no failed request; a wrong key is refused and the right one logs
in; keyboard navigation reaches every control; axe-core reports no serious or critical
violation. On the desktop: the echo model is deployed and deleted from the Deployments page,
a chat answer streams into the page, a file uploaded to a knowledge base is found by search,
and the Cluster page shows a SIGKILLed node dead within its lease. Screenshots of each page
at each size go to --screenshots. Exits 1 with every failure listed.
"""

import argparse
import json
import os
import urllib.request
import signal
import sys
import tempfile
import time

import jsonschema
from playwright.sync_api import sync_playwright

PAGES = ["cluster", "deployments", "chat", "knowledge", "runs", "metrics", "audit", "wall"]
VIEWPORTS = {"desktop": (1440, 900), "phone": (390, 844), "wall": (3840, 2160)}
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


class Watch:
    """Console errors, failed requests and error answers of one page."""

    def __init__(self, page, allowed_statuses=()):
        self.errors = []
        self.allowed = set(allowed_statuses)
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)

    def _failed(self, r):
        # A stream the page itself aborted (leaving the chat page) is not a failure.
        if "ERR_ABORTED" in (r.failure or ""):
            return
        self.errors.append(f"request failed: {r.method} {r.url} {r.failure}")

    def _response(self, r):
        if r.status >= 400 and r.status not in self.allowed:
            self.errors.append(f"{r.status} for {r.request.method} {r.url}")

    def take(self):
        e, self.errors = self.errors, []
        return e


def login(page, gateway, key):
    page.goto(gateway + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()


def open_menu_if_collapsed(page):
    menu = page.get_by_role("button", name="Menu")
    if menu.is_visible():
        menu.click()


def keyboard_reaches_every_control(page):
    """Tabs through the page; every visible enabled control must take the focus once."""
    controls = page.evaluate(
        """() => [...document.querySelectorAll('a[href], button, input, select, textarea, summary, [tabindex]:not([tabindex="-1"])')]
            .filter(e => !e.disabled && e.offsetParent !== null && getComputedStyle(e).visibility !== 'hidden')
            .filter(e => !(e.classList.contains('sr-only') && e.type === 'file'))
            .length"""
    )
    page.evaluate("() => { window.__seen = new Set(); document.addEventListener('focusin', e => window.__seen.add(e.target), true); document.activeElement && document.activeElement.blur(); }")
    for _ in range(controls + 5):
        page.keyboard.press("Tab")
    seen = page.evaluate("() => window.__seen.size")
    return seen, controls


def axe(page, axe_js):
    # Evaluated through the DevTools protocol: the console's CSP (rightly) refuses inline scripts.
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(axe_js + "\n;undefined")
    result = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations.map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.length}))")
    return [v for v in result if v["impact"] in ("serious", "critical")]


def answers_match_the_openapi_schemas(gw, key, spec_path):
    """The live answers of the routes the console reads match their OpenAPI response schemas
    (from which the console's TypeScript types are generated)."""
    spec = json.load(open(spec_path))
    routes = [
        ("/v1/cluster", "/v1/cluster"),
        ("/v1/nodes", "/v1/nodes"),
        ("/v1/deployments", "/v1/deployments"),
        ("/v1/deployments/all-minilm-l6-v2", "/v1/deployments/{name}"),
        ("/v1/models", "/v1/models"),
        ("/v1/knowledge-bases", "/v1/knowledge-bases"),
        ("/v1/runs", "/v1/runs"),
        ("/v1/console/metrics", "/v1/console/metrics"),
    ]
    for path, template in routes:
        req = urllib.request.Request(gw + path, headers={"Authorization": f"Bearer {key}"})
        body = json.load(urllib.request.urlopen(req, timeout=10))
        schema = spec["paths"][template]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        errors = [e.message for e in jsonschema.Draft202012Validator({**schema, "components": spec["components"]}).iter_errors(body)]
        check(not errors, f"GET {path} matches its OpenAPI schema {errors[:3]}")


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--gateway", required=True)
    a.add_argument("--key", required=True)
    a.add_argument("--screenshots", required=True)
    a.add_argument("--victim", required=True)
    a.add_argument("--victim-pid", type=int, required=True)
    a.add_argument("--lease-ms", type=int, required=True)
    a.add_argument("--axe", required=True)
    a.add_argument("--chromium", default="/usr/bin/chromium")
    a.add_argument("--openapi", required=True)
    args = a.parse_args()
    os.makedirs(args.screenshots, exist_ok=True)
    axe_js = open(args.axe).read()
    gw = args.gateway
    answers_match_the_openapi_schemas(gw, args.key, args.openapi)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        for size, (w, h) in VIEWPORTS.items():
            ctx = browser.new_context(viewport={"width": w, "height": h})
            page = ctx.new_page()
            # The wrong key's 401 is the one error answer expected.
            watch = Watch(page, allowed_statuses=(401,))
            page.goto(gw + "/")
            page.get_by_label("API key").fill("sk-not-a-key-of-this-cluster")
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("alert").wait_for(timeout=10_000)
            check("refused" in page.get_by_role("alert").inner_text().lower() or "key" in page.get_by_role("alert").inner_text().lower(),
                  f"{size}: a wrong key is refused with a message")
            watch.take()
            watch.allowed = set()
            page.get_by_label("API key").fill(args.key)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("heading", name="Cluster", exact=True).wait_for(timeout=10_000)
            check(True, f"{size}: the right key logs in")
            check("sk-" not in page.url, f"{size}: the key is not in the URL")
            for name in PAGES:
                page.goto(f"{gw}/#/{name}")
                page.wait_for_load_state("networkidle")
                page.wait_for_timeout(600)
                page.screenshot(path=os.path.join(args.screenshots, f"{size}-{name}.png"), full_page=True)
                errors = watch.take()
                check(not errors, f"{size}/{name}: loads with no console error or failed request {errors}")
                overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
                wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
                    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('.card table, .card pre'))
                    .slice(0, 3).map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : ''))""")
                check(overflow <= 0, f"{size}/{name}: nothing overflows the screen sideways ({overflow} px: {wide})")
                if size == "desktop":
                    seen, controls = keyboard_reaches_every_control(page)
                    check(seen >= controls, f"{size}/{name}: Tab reaches every control ({seen} of {controls})")
                    serious = axe(page, axe_js)
                    check(not serious, f"{size}/{name}: axe-core finds no serious violation {serious}")
            if size == "phone":
                page.goto(f"{gw}/#/cluster")
                page.get_by_role("heading", name="Cluster", exact=True).wait_for()
                nav_hidden = not page.get_by_role("link", name="Chat").is_visible()
                open_menu_if_collapsed(page)
                page.get_by_role("link", name="Chat").click()
                page.get_by_role("heading", name="Chat").wait_for()
                check(nav_hidden, "phone: navigation is collapsed behind the menu button")
                box = page.get_by_role("button", name="Send").bounding_box()
                check(box is not None and box["y"] > h * 0.6, f"phone: Send is within thumb reach ({box})")
            ctx.close()

        # The desktop flows (a screenshot of the page is kept if one of them gives up).
        ctx = browser.new_context(viewport={"width": 1440, "height": 900})
        page = ctx.new_page()
        try:
            desktop_flows(page, gw, args)
        except Exception:
            page.screenshot(path=os.path.join(args.screenshots, "failed-step.png"), full_page=True)
            raise
        ctx.close()
        browser.close()

    if failures:
        print(f"\n{len(failures)} check(s) failed:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("\nevery console check passed")


def desktop_flows(page, gw, args):
    watch = Watch(page)
    login(page, gw, args.key)
    page.get_by_role("heading", name="Cluster", exact=True).wait_for()

    page.goto(f"{gw}/#/deployments")
    page.get_by_label("Name").fill("echo")
    page.get_by_label("Source").fill("builtin://echo")
    page.get_by_role("button", name="Deploy").click()
    page.get_by_role("region", name="echo", exact=True).wait_for(timeout=30_000)
    page.get_by_role("region", name="echo", exact=True).get_by_text("1 / 1 ready").wait_for(timeout=60_000)
    check(True, "the echo model is deployed from the page and becomes ready")

    page.goto(f"{gw}/#/chat")
    page.get_by_label("Model or graph").select_option("echo")
    page.get_by_label("Message").fill("streams into the page")
    page.get_by_role("button", name="Send").click()
    page.get_by_test_id("chat-log").get_by_text("streams into the page").nth(1).wait_for(timeout=30_000)
    check(True, "a chat answer streams into the page")

    page.goto(f"{gw}/#/deployments")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("region", name="echo", exact=True).get_by_role("button", name="Delete").click()
    page.get_by_role("region", name="echo", exact=True).wait_for(state="detached", timeout=30_000)
    check(True, "the echo model is deleted from the page")

    page.goto(f"{gw}/#/knowledge")
    page.get_by_label("Name").fill("console-docs")
    page.get_by_role("button", name="Create").click()
    page.get_by_role("button", name="console-docs").wait_for(timeout=60_000)
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "otters.txt")
        with open(f, "w") as out:
            out.write("Sea otters hold hands while they sleep so that they do not drift apart.\n")
        page.locator("input[type=file]").set_input_files(f)
        page.get_by_text("indexed").wait_for(timeout=120_000)
    check(True, "a file is uploaded to a knowledge base with progress and indexed")
    page.get_by_label("Query").fill("why do otters hold hands")
    page.get_by_role("button", name="Search").click()
    page.get_by_test_id("hits").get_by_text("otters.txt").first.wait_for(timeout=30_000)
    check(page.locator("mark").count() > 0, "the search finds the file and highlights the query's words")
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Remove otters.txt").click()
    page.get_by_role("button", name="Remove otters.txt").wait_for(state="detached", timeout=30_000)
    check(True, "a document is removed from the knowledge base")
    errors = watch.take()
    check(not errors, f"the desktop flows ran with no console error or failed request {errors}")
    # With a knowledge base and a deployment history, the answers still match their schemas.
    answers_match_the_openapi_schemas(gw, args.key, args.openapi)

    page.goto(f"{gw}/#/runs")
    page.get_by_role("button", name="console-probe").first.click()
    page.locator(".dag .step").first.wait_for(timeout=10_000)
    levels = page.locator(".dag .dag-level").count()
    check(levels == 2, f"a run's steps are drawn by dependency level ({levels} levels for draft, then answer)")
    before = page.locator(".runs li").count()
    page.locator(".dag .step summary").last.click()
    page.get_by_role("button", name="Rerun from here").last.click()
    page.wait_for_function(f"() => document.querySelectorAll('.runs li').length > {before}", timeout=30_000)
    check(True, "a run is rerun from its last step")

    page.goto(f"{gw}/#/cluster")
    row = page.locator(f"tr[data-node='{args.victim}']")
    row.get_by_text("ready").wait_for(timeout=10_000)
    killed = time.monotonic()
    os.kill(args.victim_pid, signal.SIGKILL)
    limit = args.lease_ms / 1000 + 3
    row.get_by_text("dead").wait_for(timeout=limit * 1000)
    took = time.monotonic() - killed
    check(took <= limit, f"the cluster page shows the SIGKILLed node dead after {took:.1f} s (lease {args.lease_ms} ms)")
    page.screenshot(path=os.path.join(args.screenshots, "desktop-cluster-node-dead.png"), full_page=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        # Whatever page was open when a step gave up is in the last screenshot taken by
        # the failing step's context; say which check was under way.
        print(f"\nstopped after {len(failures)} failed check(s); the last step raised:", flush=True)
        raise
