// The operator's view: machines with owner, exercise, age, state, CPU and memory, refreshed
// every few seconds; watch a terminal read-only, read check history, delete.
(() => {
  const $ = (id) => document.getElementById(id);
  const body = document.querySelector('#machines tbody');
  const fmt = (s) => (s >= 3600 ? `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m` : s >= 60 ? `${Math.floor(s / 60)}m${s % 60}s` : `${s}s`);
  const cell = (text) => { const td = document.createElement('td'); td.textContent = text == null ? '–' : text; return td; };
  async function call(method, path) {
    const r = await fetch(path, { method });
    if (r.status === 401) { location.reload(); throw new Error('signed out'); }
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error?.message || r.statusText);
    return r.status === 204 ? null : r.json();
  }
  async function show(m) {
    $('detail').hidden = false;
    $('detail-title').textContent = `${m.id} — ${m.owner || 'no owner'}${m.exercise ? ` — ${m.exercise}` : ''}`;
    try { const w = await call('POST', `/operator/api/machines/${m.id}/watch`); $('watch').src = w.viewer_page_url; }
    catch (e) { $('watch').removeAttribute('src'); }
    const runs = await call('GET', `/operator/api/machines/${m.id}/checks`);
    const h = $('history'); h.innerHTML = '';
    for (const r of runs) {
      const li = document.createElement('li');
      li.textContent = `${r.created_at} ${r.trigger}: ${r.state}` + (r.results.length ? ` — ${r.passed}/${r.results.length} passed` : '') + (r.error ? ` (${r.error})` : '');
      h.append(li);
    }
    if (!runs.length) h.innerHTML = '<li>No checks yet.</li>';
  }
  async function refresh() {
    const o = await call('GET', '/operator/api/overview');
    $('capacity').textContent = `${o.active} of ${o.capacity} machines in use, ${o.free} free · ${o.open_terminals} terminals open`;
    body.innerHTML = '';
    for (const m of o.machines) {
      const tr = document.createElement('tr');
      tr.className = m.state;
      tr.dataset.machine = m.id;
      tr.append(cell(m.id), cell(m.owner), cell(m.exercise), cell(m.error ? `${m.state}: ${m.error}` : m.state),
        cell(fmt(m.age_seconds)), cell(fmt(m.expires_in_seconds)),
        cell(m.cpu_percent == null ? null : `${m.cpu_percent}%`),
        cell(m.memory_mib == null ? null : `${m.memory_mib} / ${m.memory_limit_mib} MiB`));
      const actions = document.createElement('td');
      const watch = document.createElement('button'); watch.textContent = 'Watch'; watch.className = 'watch';
      watch.onclick = () => show(m); watch.disabled = m.state !== 'running';
      const del = document.createElement('button'); del.textContent = 'Delete'; del.className = 'delete';
      del.onclick = async () => { if (confirm(`Delete ${m.id}?`)) { await call('POST', `/operator/api/machines/${m.id}/delete`); refresh(); } };
      actions.append(watch, del);
      tr.append(actions);
      body.append(tr);
    }
    if (!o.machines.length) body.innerHTML = '<tr><td colspan="9">No machines.</td></tr>';
  }
  window.rnrOperator = { refresh };
  refresh();
  setInterval(() => refresh().catch(() => {}), 3000);
})();
