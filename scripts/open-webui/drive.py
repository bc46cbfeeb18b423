"""Drive Open WebUI in headless Chromium: pick a model, send one chat, wait for the
streamed answer to finish, screenshot.  python drive.py URL MODEL PROMPT OUT.png [TIMEOUT_S]"""
import asyncio, os, sys, time
from playwright.async_api import async_playwright

URL, MODEL, PROMPT, OUT = sys.argv[1:5]
TIMEOUT = float(sys.argv[5]) if len(sys.argv) > 5 else 300

def say(*a):
    print("[drive]", *a, flush=True)

async def main():
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        pg = await b.new_page(viewport={"width": 1280, "height": 900})
        pg.on("pageerror", lambda e: say("page error:", str(e)[:300]))
        await pg.goto(URL, wait_until="domcontentloaded")
        await pg.wait_for_selector("#chat-input", timeout=60000)
        # First visit shows a "What's New" changelog modal.
        try:
            await pg.get_by_role("button", name="Okay, Let's Go!").click(timeout=5000)
            say("dismissed the changelog")
        except Exception:
            pass
        # A system prompt, as a user sets it under Settings > General > System Prompt.
        system = os.environ.get("SYSTEM_PROMPT", "")
        if system:
            st = await pg.evaluate("""async (system) => {
                const h = {'Content-Type': 'application/json', Authorization: 'Bearer ' + localStorage.token};
                const cur = await (await fetch('/api/v1/users/user/settings', {headers: h})).json();
                const ui = Object.assign({}, (cur && cur.ui) || {}, {system});
                const r = await fetch('/api/v1/users/user/settings/update', {method: 'POST', headers: h, body: JSON.stringify({ui})});
                return r.status;
            }""", system)
            say("user system prompt set:", repr(system), "status", st)
            await pg.reload(wait_until="domcontentloaded")
            await pg.wait_for_selector("#chat-input", timeout=60000)
            try:
                await pg.get_by_role("button", name="Okay, Let's Go!").click(timeout=3000)
            except Exception:
                pass
        # Pick the model.
        rc = 0
        try:
            await pg.click("#model-selector-model-button", timeout=15000)
            await pg.fill("#model-search-input", MODEL)
            opt = pg.locator(f'button[role="option"][aria-label="Select {MODEL} model"]')
            await opt.first.click(timeout=15000)
            say("picked", MODEL)
        except Exception as e:
            say("could not pick the model:", str(e).splitlines()[0])
            await pg.keyboard.press("Escape")
            await pg.screenshot(path=OUT)
            say("no chat sent; screenshot:", OUT)
            await b.close()
            return 2
        sel = await pg.locator("#model-selector-model-button").get_attribute("aria-label")
        say("model selector says:", sel)
        await pg.click("#chat-input")
        await pg.keyboard.type(PROMPT)
        await pg.keyboard.press("Enter")
        t0 = time.time()
        say("sent:", PROMPT)
        # The answer is done when its toolbar (Regenerate, Copy, ...) shows under it,
        # also when it ended in an error. Title, tags and follow-up suggestions are
        # generated after that, while the Stop button still shows.
        done = pg.locator('button[aria-label="Regenerate"]').last
        try:
            await done.wait_for(state="visible", timeout=TIMEOUT * 1000)
            say(f"answer finished after {time.time() - t0:.1f}s")
        except Exception:
            say(f"answer still not finished after {TIMEOUT}s")
            rc = rc or 3
        answer = ""
        msgs = pg.locator(".chat-assistant")
        if await msgs.count():
            answer = (await msgs.last.inner_text()).strip()
        print(answer[:2000], flush=True)
        await pg.screenshot(path=OUT)
        # Let the background requests (title, tags, follow-ups) finish, so they are in
        # the request log, then take the screenshot again (now with the chat's title).
        try:
            await pg.locator('button[aria-label="Stop"]').first.wait_for(state="hidden", timeout=TIMEOUT * 1000)
            say(f"background tasks finished after {time.time() - t0:.1f}s")
        except Exception:
            say(f"background tasks still running after {TIMEOUT}s")
        await pg.wait_for_timeout(1000)
        await pg.screenshot(path=OUT)
        open(OUT[:-4] + ".html", "w").write(await pg.content())
        say("screenshot:", OUT)
        await b.close()
        if not answer:
            rc = rc or 4
        return rc

sys.exit(asyncio.run(main()))
