// The learner's exercise page: opens (or reopens) the learner's machine and terminal,
// runs checks, shows live results, time left, extend and reset, and every state a learner
// can meet (starting, out of capacity, expired, connection lost). In an LMS iframe it
// posts {type: "rnr:passed"} to the parent once every check passes (docs/embedding.md).
// Its learner token (for this one exercise) expires: the page gets a fresh one while open.
// No inline script or style anywhere: the pages run under a strict Content-Security-Policy.
(() => {
  const data = document.body.dataset;
  const exercise = data.exercise;
  let learner = data.learner;
  const embed = data.embed === '1';
  const $ = (id) => document.getElementById(id);
  const statusEl = $('status'), timerEl = $('timer'), overlay = $('overlay'), frame = $('term');
  const tasks = $('tasks'), summary = $('summary');
  let session = null, events = null, polling = null, passedPosted = false, countdown = null;
  let refreshTimer = null;
  const esc = (t) => String(t).replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const rnr = { state: 'starting', session: null, lastRun: null };
  window.rnrPage = rnr;

  function setState(state, text, overlayHtml) {
    rnr.state = state;
    statusEl.dataset.state = state;
    statusEl.textContent = text;
    if (overlayHtml) { overlay.innerHTML = overlayHtml; overlay.hidden = false; } else overlay.hidden = true;
    const live = state === 'ready' || state === 'reconnecting';
    $('check').disabled = !live;
    $('extend').disabled = !live;
    $('reset').disabled = !(live || state === 'expired');
  }

  async function api(method, path) {
    const r = await fetch(path, { method, headers: { 'X-Rnr-Learner': learner } });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      const e = new Error((body.error && body.error.message) || r.statusText);
      e.code = body.error && body.error.code;
      e.status = r.status;
      e.retry = Number(r.headers.get('retry-after') || 0);
      throw e;
    }
    return body;
  }

  // A check's results: its own, or one per test for a pytest check (`check/test`).
  function resultsFor(name, results) {
    return results.filter((r) => r.name === name || r.name.startsWith(`${name}/`));
  }
  function combined(rs) {
    if (!rs.length) return 'pending';
    for (const s of ['errored', 'failed', 'skipped']) if (rs.some((r) => r.status === s)) return s;
    return 'passed';
  }

  function renderTasks(run) {
    const results = (run && run.results) || [];
    tasks.innerHTML = '';
    for (const c of session.checks) {
      const rs = resultsFor(c.name, results);
      const li = document.createElement('li');
      li.className = combined(rs);
      li.dataset.check = c.name;
      li.append(document.createTextNode(c.name));
      const shown = new Set();
      for (const r of rs) {
        if (r.status === 'passed') continue;
        const text = r.message || (r.status === 'skipped' ? 'Skipped: a task it needs is not done yet.' : r.detail);
        if (text && !shown.has(text)) {
          shown.add(text);
          const m = document.createElement('span'); m.className = 'msg'; m.textContent = text; li.append(m);
        }
        if (r.hint && !shown.has(r.hint)) {
          shown.add(r.hint);
          const h = document.createElement('span'); h.className = 'hint'; h.textContent = `Hint: ${r.hint}`; li.append(h);
        }
      }
      tasks.append(li);
    }
    if (!run || run.state !== 'done') { summary.textContent = run && run.state === 'errored' ? `The check could not run: ${run.error}` : ''; summary.className = 'summary'; return; }
    const all = run.failed === 0 && run.errored === 0 && run.skipped === 0 && run.passed > 0;
    summary.textContent = all ? 'All checks passed. Well done!' : `${run.passed} of ${run.results.length} passed`;
    summary.className = all ? 'summary all' : 'summary';
    if (all && embed && !passedPosted && window.parent !== window) {
      passedPosted = true;
      window.parent.postMessage({ type: 'rnr:passed', exercise, machine: session.machine.id, score: run.score }, '*');
    }
  }

  function showRun(run) {
    rnr.lastRun = run;
    if (!session || run.machine_id !== session.machine.id) return;
    renderTasks(run);
    if (run.state === 'done' || run.state === 'errored') $('check').disabled = !(rnr.state === 'ready' || rnr.state === 'reconnecting');
  }

  function subscribe() {
    if (events) events.close();
    const url = `/learn/api/machines/${session.machine.id}/events?learner=${encodeURIComponent(learner)}`;
    events = new EventSource(url);
    events.addEventListener('results', (e) => showRun(JSON.parse(e.data)));
    events.onopen = () => { if (rnr.state === 'reconnecting') setState('ready', 'Ready'); };
    events.onerror = () => {
      if (rnr.state === 'ready') setState('reconnecting', 'Connection lost — reconnecting…');
    };
  }

  // A fresh token once two thirds of this one's life are gone; the event stream follows.
  function scheduleRefresh(expiresAt) {
    clearTimeout(refreshTimer);
    const left = expiresAt - Math.floor(Date.now() / 1000);
    refreshTimer = setTimeout(async () => {
      try {
        const t = await api('POST', '/learn/api/token');
        learner = t.token;
        if (session) subscribe();
        scheduleRefresh(t.expires_at);
      } catch (e) { refused(e, 'Your session could not be renewed'); }
    }, Math.max(5, Math.floor(left * 2 / 3)) * 1000);
  }

  // Refusals a learner can act on, in words (the API's message names the limit).
  function refused(e, what) {
    if (e.code === 'capacity_exceeded' || e.code === 'quota_exceeded') return limited(e);
    let text = `${what}: ${esc(e.message)}`;
    if (e.code === 'token_expired' || e.status === 401) text = 'Your session has ended. Reload the page to continue.';
    else if (e.code === 'anonymous_disabled') text = `Open this exercise from your course's link. ${esc(e.message)}`;
    setState('error', 'Error', text);
  }

  function apply(s) {
    session = s;
    rnr.session = s;
    scheduleRefresh(s.token_expires_at);
    passedPosted = false;
    if (frame.dataset.src !== s.terminal.page_url) { frame.dataset.src = s.terminal.page_url; frame.src = s.terminal.page_url; }
    renderTasks(s.last_run);
    setState('ready', 'Ready');
    subscribe();
    tick();
  }

  function tick() {
    if (!session) return;
    const left = session.machine.expires_at - Math.floor(Date.now() / 1000);
    if (left <= 0) {
      timerEl.textContent = '';
      if (rnr.state !== 'expired') {
        if (events) events.close();
        setState('expired', 'Expired', 'Your machine has expired. <button type="button" id="again">Start a new one</button>');
        $('again').onclick = reset;
      }
      return;
    }
    const m = Math.floor(left / 60), s = left % 60;
    timerEl.textContent = `${m}:${String(s).padStart(2, '0')} left`;
    timerEl.classList.toggle('warn', left <= 120);
    timerEl.title = left <= 120 ? 'Your machine is about to expire: press "+ time" to keep it' : '';
  }

  // Out of capacity, or a quota reached: say which, and try again when it may have room.
  function limited(e) {
    let wait = Math.max(e.retry || 10, 1);
    clearInterval(countdown);
    const why = e.code === 'quota_exceeded'
      ? `No machine for now — ${esc(e.message)}.`
      : 'All machines are busy — out of capacity.';
    const show = () => setState('capacity', e.code === 'quota_exceeded' ? 'Limit reached' : 'Out of capacity',
      `${why} Trying again in ${wait} s…`);
    show();
    countdown = setInterval(() => { wait -= 1; if (wait <= 0) { clearInterval(countdown); start(); } else show(); }, 1000);
  }

  async function start() {
    setState('starting', 'Starting your machine…', 'Starting your machine…');
    try { apply(await api('POST', `/learn/api/exercises/${encodeURIComponent(exercise)}/session`)); }
    catch (e) { refused(e, 'Could not start a machine'); }
  }

  async function reset() {
    if (session && rnr.state !== 'expired' && !confirm('Start over on a fresh machine? Your work on this one is lost.')) return;
    setState('starting', 'Starting a fresh machine…', 'Starting a fresh machine…');
    frame.dataset.src = '';
    try {
      apply(session ? await api('POST', `/learn/api/machines/${session.machine.id}/reset`)
        : await api('POST', `/learn/api/exercises/${encodeURIComponent(exercise)}/session`));
    } catch (e) {
      if (e.status === 404) { session = null; start(); }
      else refused(e, 'Could not reset');
    }
  }

  $('check').onclick = async () => {
    $('check').disabled = true;
    summary.className = 'summary';
    summary.textContent = 'Checking…';
    try {
      const { id } = await api('POST', `/learn/api/machines/${session.machine.id}/checks`);
      clearInterval(polling);
      const started = Date.now();
      polling = setInterval(async () => {
        try {
          const run = await api('GET', `/learn/api/checks/${id}`);
          if (run.state === 'done' || run.state === 'errored' || Date.now() - started > 120000) {
            clearInterval(polling); showRun(run); $('check').disabled = false;
          }
        } catch (e) { clearInterval(polling); summary.textContent = e.message; $('check').disabled = false; }
      }, 250);
    } catch (e) { summary.textContent = e.message; $('check').disabled = false; }
  };
  $('extend').onclick = async () => {
    try { session.machine = await api('POST', `/learn/api/machines/${session.machine.id}/extend`); tick(); }
    catch (e) { timerEl.textContent = e.message; }
  };
  $('reset').onclick = reset;
  setInterval(tick, 1000);
  start();
})();
