// Drives the terminal page in headless Chromium (Debian's, via playwright-core) against a
// running rnr: typing, resize, reload (also with vi open), viewers, copy/paste, a 100 MB
// cat and Ctrl-C, and replays a recording.
// Usage: node test/browser.mjs OWNER_PAGE_URL VIEWER_PAGE_URL [RECORDED_TERMINAL_PAGE_URL]
// Prints one JSON line of measurements; exits non-zero with a reason on the first failure.
import { chromium } from 'playwright-core';
import { watchCsp } from './csp.mjs';

const [ownerUrl, viewerUrl, recordedUrl] = process.argv.slice(2);
if (!ownerUrl || !viewerUrl) {
  console.error('usage: node test/browser.mjs OWNER_PAGE_URL VIEWER_PAGE_URL [RECORDED_PAGE_URL]');
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const results = {};
let step = 'start';
// Content-Security-Policy violations the pages report: any fails the run.
const { violations: csp } = watchCsp(browser);

async function connected(page) {
  await page.waitForFunction(() => window.rnr && window.rnr.state === 'connected', null, { timeout: 30000 });
}
async function screenHas(page, needle, timeout = 30000) {
  try {
    await page.waitForFunction((n) => window.rnr.text().includes(n), needle, { timeout, polling: 50 });
  } catch (e) {
    const text = await page.evaluate(() => window.rnr.text());
    throw new Error(`${step}: ${JSON.stringify(needle)} not on screen:\n${text.trimEnd().slice(-1500)}`);
  }
}
async function type(page, s) {
  await page.keyboard.type(s, { delay: 5 });
}
async function run(page, cmd) {
  await type(page, cmd);
  await page.keyboard.press('Enter');
}

try {
  const ctx = await browser.newContext({ viewport: { width: 1000, height: 600 } });
  await ctx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: new URL(ownerUrl).origin });
  const page = await ctx.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));

  step = 'open and echo';
  await page.goto(ownerUrl);
  await connected(page);
  await page.waitForTimeout(300);
  await run(page, 'echo hello-$((2+3))');
  await screenHas(page, 'hello-5');

  step = 'resize';
  const cols0 = await page.evaluate(() => window.rnr.term.cols);
  await page.setViewportSize({ width: 640, height: 480 });
  await page.waitForFunction((c) => window.rnr.term.cols !== c, cols0);
  const { rows, cols } = await page.evaluate(() => ({ rows: window.rnr.term.rows, cols: window.rnr.term.cols }));
  await page.waitForTimeout(200);
  await run(page, 'stty size');
  await screenHas(page, `${rows} ${cols}`);
  results.resize = { from_cols: cols0, to: `${rows}x${cols}` };

  step = 'reload keeps the shell';
  await run(page, 'echo shell-$$');
  const pid = await page.evaluate(() => window.rnr.pid);
  await screenHas(page, `shell-${pid}`);
  await page.reload();
  await connected(page);
  const pid2 = await page.evaluate(() => window.rnr.pid);
  if (pid2 !== pid) throw new Error(`${step}: shell pid ${pid} became ${pid2}`);
  await screenHas(page, `shell-${pid}`);
  await page.waitForTimeout(300);
  await run(page, 'echo again-$$');
  await screenHas(page, `again-${pid}`);
  const again = await page.evaluate(() => window.rnr.text().split('hello-5').length - 1);
  if (again > 1) throw new Error(`${step}: output duplicated after reload (${again} copies)`);

  step = 'reload with vi open';
  await run(page, 'vi /tmp/notes.txt');
  await page.waitForTimeout(500);
  await type(page, 'ivim-line-one');
  await page.keyboard.press('Escape');
  await screenHas(page, 'vim-line-one');
  await page.reload();
  await connected(page);
  await screenHas(page, 'vim-line-one');
  const tilde = await page.evaluate(() => window.rnr.text().split('\n').filter((l) => l.startsWith('~')).length);
  if (tilde < 3) throw new Error(`${step}: vi screen not restored (only ${tilde} ~ lines)`);
  await type(page, ':wq');
  await page.keyboard.press('Enter');
  await page.waitForTimeout(300);
  await run(page, 'echo back-$((1+1)); cat /tmp/notes.txt');
  await screenHas(page, 'back-2');
  results.reload = { pid, same_pid: true };

  step = 'copy and paste';
  await page.evaluate(() => navigator.clipboard.writeText('echo pasted-$((4+4))'));
  await page.keyboard.press('Control+Shift+V');
  await page.waitForTimeout(200);
  await page.keyboard.press('Enter');
  await screenHas(page, 'pasted-8');
  await page.evaluate(() => window.rnr.term.selectAll());
  await page.keyboard.press('Control+Shift+C');
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  if (!copied.includes('pasted-8')) throw new Error(`${step}: clipboard holds ${JSON.stringify(copied.slice(-200))}`);
  await page.evaluate(() => window.rnr.term.clearSelection());

  step = 'viewer';
  const vctx = await browser.newContext({ viewport: { width: 1000, height: 600 } });
  const viewer = await vctx.newPage();
  await viewer.goto(viewerUrl);
  await connected(viewer);
  const role = await viewer.evaluate(() => window.rnr.role);
  if (role !== 'viewer') throw new Error(`${step}: role ${role}`);
  await screenHas(viewer, 'pasted-8');
  await run(page, 'echo viewer-sees-$((3*3))');
  await screenHas(viewer, 'viewer-sees-9');
  await viewer.click('#term');
  await run(viewer, 'echo typed-by-viewer');
  await page.waitForTimeout(1000);
  await run(page, 'echo owner-after-$((2*2))');
  await screenHas(page, 'owner-after-4');
  await screenHas(viewer, 'owner-after-4');
  if (await page.evaluate(() => window.rnr.text().includes('typed-by-viewer'))) {
    throw new Error(`${step}: the viewer's keystrokes reached the shell`);
  }
  await vctx.close();

  step = '100 MB cat';
  await run(page, 'yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxy | head -c 100000000 > /tmp/big; echo made-$((1+1))');
  await screenHas(page, 'made-2', 120000);
  const before = await page.evaluate(() => window.rnr.received);
  const t0 = Date.now();
  await run(page, 'cat /tmp/big; echo catdone-$((2+2))');
  await screenHas(page, 'catdone-4', 240000);
  const secs = (Date.now() - t0) / 1000;
  const got = (await page.evaluate(() => window.rnr.received)) - before;
  if (got < 100000000) throw new Error(`${step}: received ${got} bytes`);
  results.cat_100mb = { seconds: secs, mb_per_s: +(got / secs / 1e6).toFixed(1) };

  step = 'Ctrl-C stops yes';
  await run(page, 'yes');
  const r0 = await page.evaluate(() => window.rnr.received);
  await page.waitForFunction((r) => window.rnr.received > r + 2000000, r0, { timeout: 30000 });
  const c0 = Date.now();
  await page.keyboard.press('Control+C');
  await page.waitForTimeout(50);
  await run(page, 'echo stopped-$((3+3))');
  await screenHas(page, 'stopped-6', 30000);
  results.ctrl_c_to_prompt_ms = Date.now() - c0;
  if (results.ctrl_c_to_prompt_ms > 3000) throw new Error(`${step}: took ${results.ctrl_c_to_prompt_ms} ms`);

  if (recordedUrl) {
    step = 'recording replayed in the browser';
    const rctx = await browser.newContext({ viewport: { width: 1000, height: 600 } });
    const rec = await rctx.newPage();
    await rec.goto(recordedUrl);
    await connected(rec);
    await rec.waitForTimeout(300);
    await run(rec, 'echo recorded-$((5*5))');
    await screenHas(rec, 'recorded-25');
    await rec.waitForTimeout(300);
    const replay = new URL(recordedUrl);
    replay.pathname += '/replay';
    replay.searchParams.set('token', new URL(rec.url()).searchParams.get('token'));
    replay.searchParams.set('speed', '50');
    const player = await rctx.newPage();
    await player.goto(replay.href);
    await player.waitForFunction(() => window.rnr && window.rnr.state === 'replayed', null, { timeout: 30000 });
    await screenHas(player, 'recorded-25');
    results.replay = 'ok';
    await rctx.close();
  }

  step = 'no page broke its Content-Security-Policy';
  if (csp.length) throw new Error(`${csp.length} CSP violations:\n${csp.join('\n')}`);
  results.csp_violations = 0;
  console.log(JSON.stringify(results));
  await browser.close();
} catch (e) {
  console.error(`FAILED at ${step}: ${e.stack || e}`);
  await browser.close();
  process.exit(1);
}
