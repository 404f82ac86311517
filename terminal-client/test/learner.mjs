// The learner's whole path and the operator's view in headless Chromium (Debian's, via
// playwright-core) against a running rnr with the starter exercises:
//  1. learner A opens /exercises/hello-lama, presses Check on the fresh machine and sees the
//     author's messages; types the solution into the terminal, presses Check, sees every
//     check green; the page survives a reload with the same machine;
//  2. learner B, through an /embed/ link in an LMS page on another origin (one of
//     [ui] embed_origins, served here), gets a machine of their own, cannot reach A's
//     machine or results, and the parent hears `rnr:passed`; a page of an origin not in
//     embed_origins cannot frame the embed page;
//  3. the operator signs in with an API key, sees both machines and watches A's terminal.
// Every page runs under rnr's Content-Security-Policy: any violation it reports fails.
// Usage: node test/learner.mjs BASE_URL API_KEY SCREENSHOT_DIR LMS_PORT OTHER_PORT
// Prints one JSON line of what it saw; exits non-zero with a reason on the first failure.
import { chromium } from 'playwright-core';
import { watchCsp } from './csp.mjs';
import { mkdirSync } from 'node:fs';
import http from 'node:http';

const [base, apiKey, shots, lmsPort, otherPort] = process.argv.slice(2);
if (!base || !apiKey || !shots || !lmsPort || !otherPort) {
  console.error('usage: node test/learner.mjs BASE_URL API_KEY SCREENSHOT_DIR LMS_PORT OTHER_PORT');
  process.exit(2);
}

// An LMS's page: an iframe of the embed link (?src=) and an ear for rnr:passed.
function lms(port) {
  const server = http.createServer((req, res) => {
    const src = new URL(req.url, 'http://lms').searchParams.get('src') || '';
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(`<!doctype html><html><head><title>LMS</title></head><body style="margin:0">
<iframe id="lms" src="${src.replace(/"/g, '&quot;')}" style="width:1080px;height:720px;border:0"
  allow="clipboard-read; clipboard-write"></iframe>
<script>window.passed = null; window.addEventListener('message', (e) => {
  if (e.data && e.data.type === 'rnr:passed') window.passed = e.data; });</script></body></html>`);
  });
  return new Promise((ok) => server.listen(Number(port), '127.0.0.1', () => ok(server)));
}
const lmsServers = [await lms(lmsPort), await lms(otherPort)];
mkdirSync(shots, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const out = {};
let step = 'start';
// Content-Security-Policy violations the pages report: any fails the run.
const { violations: csp, rawContext } = watchCsp(browser);
const fail = (msg) => { throw new Error(`${step}: ${msg}`); };

async function api(method, path, body) {
  const r = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  const j = await r.json().catch(() => null);
  if (!r.ok) fail(`${method} ${path}: ${r.status} ${JSON.stringify(j)}`);
  return j;
}

async function ready(page) {
  await page.waitForFunction(() => window.rnrPage && window.rnrPage.state === 'ready', null, { timeout: 180000 });
}
async function termFrame(page) {
  for (let i = 0; i < 200; i++) {
    const f = page.frames().find((fr) => fr.url().includes('/terminals/'));
    if (f) {
      try {
        await f.waitForFunction(() => window.rnr && window.rnr.state === 'connected', null, { timeout: 30000 });
        return f;
      } catch (e) { /* the frame may have been replaced; look again */ }
    }
    await page.waitForTimeout(100);
  }
  fail('no connected terminal frame');
}
async function screenHas(frame, needle) {
  try {
    await frame.waitForFunction((n) => window.rnr.text().includes(n), needle, { timeout: 30000, polling: 50 });
  } catch (e) {
    fail(`${JSON.stringify(needle)} not on screen:\n${(await frame.evaluate(() => window.rnr.text())).trimEnd().slice(-1200)}`);
  }
}
async function typeLine(page, frame, line) {
  await frame.click('#term');
  await page.keyboard.type(line, { delay: 2 });
  await page.keyboard.press('Enter');
}
async function check(page) {
  const before = await page.evaluate(() => window.rnrPage.lastRun && window.rnrPage.lastRun.id);
  await page.click('#check');
  await page.waitForFunction((b) => {
    const r = window.rnrPage.lastRun;
    return r && r.id !== b && (r.state === 'done' || r.state === 'errored');
  }, before, { timeout: 120000 });
  return page.evaluate(() => ({
    run: window.rnrPage.lastRun,
    items: [...document.querySelectorAll('#tasks li')].map((li) => ({
      name: li.dataset.check, status: li.className, text: li.textContent })),
    summary: document.getElementById('summary').textContent,
  }));
}

try {
  // 1. Learner A.
  step = 'learner A opens the exercise';
  const a = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const pa = await a.newPage();
  pa.on('pageerror', (e) => console.error('page error:', e.message));
  const t0 = Date.now();
  await pa.goto(`${base}/exercises/hello-lama`);
  await ready(pa);
  let fa = await termFrame(pa);
  out.ready_ms = Date.now() - t0;
  await typeLine(pa, fa, 'echo ready-$((40+2))');
  await screenHas(fa, 'ready-42');
  const machineA = await pa.evaluate(() => window.rnrPage.session.machine.id);
  out.machine_a = machineA;

  step = 'failing path';
  const failing = await check(pa);
  const failed = failing.items.filter((i) => i.status === 'failed');
  if (failed.length === 0) fail(`nothing failed on a fresh machine: ${JSON.stringify(failing)}`);
  const shown = await pa.textContent('#tasks');
  // The seed's pytest file speaks through its own assertion messages; the TOML checks
  // through their authors' messages.
  for (const msg of ['Django is not installed', 'Project is not created', 'Service is not running',
    'Nothing listens on TCP port 8080.']) {
    if (!shown.includes(msg)) fail(`${JSON.stringify(msg)} not on the page: ${shown}`);
  }
  out.failing = failing.items.map((i) => `${i.name}:${i.status}`);
  await pa.screenshot({ path: `${shots}/learner-failing.png` });

  step = 'solve in the terminal';
  for (const line of [
    'ln -sf /usr/bin/python3 /usr/local/bin/python',
    'd=$(python3 -c "import site; print(site.getsitepackages()[0])"); mkdir -p $d && cp -r /opt/wheels/django $d/',
    'mkdir -p /home/quiz/llama && chown quiz: /home/quiz/llama && cd /home/quiz/llama',
    'nohup python -m django runserver 0.0.0.0:8080 --text "Hello, lama" >/dev/null 2>&1 &',
    'sleep 1; echo solved-$((6*7))',
  ]) await typeLine(pa, fa, line);
  await screenHas(fa, 'solved-42');

  step = 'tasks tick off live while the learner types';
  try {
    await pa.waitForFunction(() => {
      const li = [...document.querySelectorAll('#tasks li')];
      return li.length > 0 && li.every((l) => l.className === 'passed');
    }, null, { timeout: 60000 });
  } catch (e) {
    fail(`no live update: ${await pa.textContent('#tasks')}`);
  }
  out.live = 'every task ticked off without pressing Check';

  step = 'passing path';
  const passing = await check(pa);
  if (!passing.items.every((i) => i.status === 'passed')) fail(`not all green: ${JSON.stringify(passing)}`);
  if (!passing.summary.includes('All checks passed')) fail(`summary: ${passing.summary}`);
  out.passing = passing.items.map((i) => `${i.name}:${i.status}`);
  await pa.screenshot({ path: `${shots}/learner.png` });

  step = 'reload keeps the machine and the shell';
  // A fresh marker per call: the repainted screen after a reload still shows the old one.
  let mark = 0;
  const pid = async (f) => {
    mark += 1;
    await typeLine(pa, f, `echo pid-${mark}-$$-end`);
    const re = `pid-${mark}-(\\d+)-end`;
    await f.waitForFunction((r) => new RegExp(r).test(window.rnr.text()), re, { timeout: 30000, polling: 50 });
    return f.evaluate((r) => window.rnr.text().match(new RegExp(r))[1], re);
  };
  const pidBefore = await pid(fa);
  await pa.reload();
  await ready(pa);
  fa = await termFrame(pa);
  if (await pa.evaluate(() => window.rnrPage.session.machine.id) !== machineA) fail('a reload changed the machine');
  const pidAfter = await pid(fa);
  if (pidBefore !== pidAfter) fail(`shell changed: ${pidBefore} → ${pidAfter}`);
  await pa.setViewportSize({ width: 820, height: 1100 });
  await pa.waitForTimeout(300);
  await pa.screenshot({ path: `${shots}/learner-tablet.png` });

  // 2. Learner B through an embed link.
  step = 'learner B embedded';
  const link = await api('POST', '/api/v1/links', { learner: 'bob', exercise: 'hello-lama' });
  if (link.machine_id === machineA) fail('B was given A\'s machine');
  const b = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  const parent = await b.newPage();
  parent.on('pageerror', (e) => console.error('page error:', e.message));
  await parent.goto(`http://127.0.0.1:${lmsPort}/?src=${encodeURIComponent(link.embed_url)}`);
  let eb = null;
  for (let i = 0; i < 300 && !eb; i++) {
    eb = parent.frames().find((f) => f.url().includes('/embed/'));
    if (!eb) await parent.waitForTimeout(100);
  }
  if (!eb) fail('no embed frame');
  await eb.waitForFunction(() => window.rnrPage && window.rnrPage.state === 'ready', null, { timeout: 180000 });
  const sessionB = await eb.evaluate(() => window.rnrPage.session);
  if (sessionB.machine.id !== link.machine_id) fail(`embed shows ${sessionB.machine.id}, link made ${link.machine_id}`);
  const learnerB = await eb.evaluate(() => document.body.dataset.learner);
  for (const path of [`/learn/api/machines/${machineA}/checks`, `/learn/api/machines/${machineA}/reset`,
    `/learn/api/machines/${machineA}/extend`]) {
    const r = await fetch(base + path, { method: 'POST', headers: { 'x-rnr-learner': learnerB } });
    if (r.status !== 404) fail(`B reached ${path}: ${r.status}`);
  }
  const runA = passing.run.id;
  const r = await fetch(`${base}/learn/api/checks/${runA}`, { headers: { 'x-rnr-learner': learnerB } });
  if (r.status !== 404) fail(`B read A's results: ${r.status}`);
  const ev = await fetch(`${base}/learn/api/machines/${machineA}/events?learner=${encodeURIComponent(learnerB)}`);
  if (ev.status !== 404) fail(`B subscribed to A's results: ${ev.status}`);
  out.isolation = 'B gets 404 for A\'s machine, results and events';

  step = 'B passes and the LMS hears of it';
  const sol = 'ln -sf /usr/bin/python3 /usr/local/bin/python; d=$(python3 -c "import site; print(site.getsitepackages()[0])"); mkdir -p $d && cp -r /opt/wheels/django $d/; mkdir -p /home/quiz/llama; cd /home/quiz/llama; nohup python -m django runserver 0.0.0.0:8080 --text "Hello, lama" >/dev/null 2>&1 & sleep 1';
  await api('POST', `/api/v1/machines/${link.machine_id}/exec`, { argv: ['sh', '-c', sol], timeout_seconds: 30 });
  await eb.click('#check');
  await parent.waitForFunction(() => window.passed, null, { timeout: 120000 });
  out.post_message = await parent.evaluate(() => window.passed);
  if (out.post_message.machine !== link.machine_id) fail(`postMessage for ${out.post_message.machine}`);
  await parent.screenshot({ path: `${shots}/embed.png` });

  step = 'a site not in embed_origins cannot frame the embed page';
  const other = await rawContext({ viewport: { width: 1100, height: 760 } });
  const refusals = [];
  other.on('console', (m) => { if (/frame-ancestors/.test(m.text())) refusals.push(m.text()); });
  const op = await other.newPage();
  await op.goto(`http://127.0.0.1:${otherPort}/?src=${encodeURIComponent(link.embed_url)}`);
  await op.waitForTimeout(2000);
  const framed = op.frames().find((f) => f.url().includes('/embed/'));
  const loaded = framed ? await framed.evaluate(() => !!window.rnrPage).catch(() => false) : false;
  if (loaded) fail('a page of an origin not in embed_origins framed the embed page');
  if (!refusals.length) fail('Chromium reported no frame-ancestors refusal');
  out.framing = 'refused for an origin not in [ui] embed_origins';
  await other.close();

  // 3. The operator.
  step = 'operator signs in';
  const o = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const po = await o.newPage();
  await po.goto(`${base}/operator`);
  await po.fill('input[name=api_key]', 'rnr_wrong');
  await po.click('button[type=submit]');
  if (!(await po.textContent('body')).includes('not valid')) fail('a wrong key was not refused');
  await po.fill('input[name=api_key]', apiKey);
  await po.click('button[type=submit]');
  await po.waitForSelector(`tr[data-machine="${machineA}"]`, { timeout: 30000 });
  await po.waitForSelector(`tr[data-machine="${link.machine_id}"]`, { timeout: 30000 });
  const rowA = await po.textContent(`tr[data-machine="${machineA}"]`);
  if (!rowA.includes('hello-lama') || !rowA.includes('anon-') || !rowA.includes('MiB')) fail(`row: ${rowA}`);
  step = 'operator watches A read-only';
  await po.click(`tr[data-machine="${machineA}"] button.watch`);
  let wf = null;
  for (let i = 0; i < 200 && !wf; i++) {
    wf = po.frames().find((f) => f.url().includes('/terminals/'));
    if (!wf) await po.waitForTimeout(100);
  }
  if (!wf) fail('no watch frame');
  await wf.waitForFunction(() => window.rnr && window.rnr.state === 'connected', null, { timeout: 30000 });
  await screenHas(wf, 'solved-42');
  if (await wf.evaluate(() => window.rnr.role) !== 'viewer') fail('the operator view is not read-only');
  await po.waitForFunction(() => document.querySelectorAll('#history li').length > 0);
  await po.waitForTimeout(500);
  await po.screenshot({ path: `${shots}/operator.png` });
  out.operator = 'sees both machines, watches read-only, history shown';
  step = 'no page broke its Content-Security-Policy';
  if (csp.length) fail(`${csp.length} CSP violations:\n${csp.join('\n')}`);
  out.csp_violations = 0;
  console.log(JSON.stringify(out));
  await browser.close();
  lmsServers.forEach((s) => s.close());
} catch (e) {
  console.error(e.message || e);
  await browser.close();
  lmsServers.forEach((s) => s.close());
  process.exit(1);
}
