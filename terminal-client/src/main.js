// The browser terminal: xterm.js speaking docs/terminal-protocol.md. Binary frames carry
// terminal bytes; text frames carry JSON control messages. It reconnects by itself, shows
// its connection state, and pauses the server when xterm.js falls behind on rendering.
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import '@xterm/xterm/css/xterm.css';
import './style.css';

const id = document.body.dataset.terminal;
const mode = document.body.dataset.mode;
const stateEl = document.getElementById('state');
const roleEl = document.getElementById('role');
const infoEl = document.getElementById('info');
const params = new URLSearchParams(location.search);
let token = params.get('token') || '';

// Close codes after which reconnecting cannot help (see the protocol doc).
const FINAL = new Set([1002, 1007, 1009, 4001, 4002, 4003, 4004, 4008, 4010, 4029]);
// Flow control watermarks: bytes handed to xterm.js but not yet rendered.
const HIGH = 2 << 20;
const LOW = 256 << 10;

const term = new Terminal({ cursorBlink: true, scrollback: 5000, fontSize: 14 });
const fit = new FitAddon();
term.loadAddon(fit);
term.open(document.getElementById('term'));
fit.fit();

const rnr = {
  term, state: 'connecting', role: null, pid: null, received: 0, closeCode: null,
  closeReason: '', connects: 0,
  text() {
    const b = term.buffer.active;
    const lines = [];
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
    return lines.join('\n');
  },
};
window.rnr = rnr;

function setState(s, detail) {
  rnr.state = s;
  stateEl.dataset.state = s;
  stateEl.textContent = detail ? `${s}: ${detail}` : s;
}

function runReplay() {
  setState('replaying');
  fetch(`/terminals/${id}/recording?token=${encodeURIComponent(token)}`)
    .then((r) => { if (!r.ok) throw new Error(`HTTP ${r.status}`); return r.text(); })
    .then(async (text) => {
      const lines = text.split('\n').filter((l) => l.trim());
      const header = JSON.parse(lines.shift());
      term.resize(header.width || 80, header.height || 24);
      const speed = Number(params.get('speed') || 4);
      let last = 0;
      for (const l of lines) {
        const [t, kind, data] = JSON.parse(l);
        const wait = Math.min((t - last) / speed, 1) * 1000;
        last = t;
        if (wait > 1) await new Promise((res) => setTimeout(res, wait));
        if (kind === 'o') term.write(data);
        else if (kind === 'r') { const [c, r] = data.split('x').map(Number); term.resize(c, r); }
      }
      setState('replayed');
    })
    .catch((e) => setState('closed', `recording: ${e.message}`));
}

let ws = null;
let backoff = 250;
let pending = 0;
let paused = false;
const enc = new TextEncoder();

function sendControl(msg) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
}

function connect() {
  setState(rnr.connects ? 'reconnecting' : 'connecting');
  const u = new URL(`/ws/terminals/${id}`, location.href);
  u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  u.searchParams.set('token', token);
  u.searchParams.set('rows', term.rows);
  u.searchParams.set('cols', term.cols);
  const sock = new WebSocket(u);
  ws = sock;
  sock.binaryType = 'arraybuffer';
  pending = 0;
  paused = false;
  sock.onmessage = (ev) => {
    if (typeof ev.data === 'string') {
      const m = JSON.parse(ev.data);
      if (m.t === 'hello') {
        rnr.connects += 1;
        rnr.role = m.role;
        rnr.pid = m.pid;
        token = m.token;
        // A reload then uses the freshest token.
        const url = new URL(location.href);
        url.searchParams.set('token', token);
        history.replaceState(null, '', url);
        roleEl.textContent = m.role === 'viewer' ? 'viewer (read-only)' : 'owner';
        infoEl.textContent = `${m.terminal} on ${m.machine}`;
        term.options.disableStdin = m.role !== 'owner';
        backoff = 250;
        setState('connected');
      }
      return;
    }
    const data = new Uint8Array(ev.data);
    rnr.received += data.length;
    pending += data.length;
    term.write(data, () => {
      pending -= data.length;
      if (paused && pending < LOW) { paused = false; sendControl({ t: 'resume' }); }
    });
    if (!paused && pending > HIGH) { paused = true; sendControl({ t: 'pause' }); }
  };
  sock.onclose = (ev) => {
    if (ws !== sock) return;
    rnr.closeCode = ev.code;
    rnr.closeReason = ev.reason;
    if (FINAL.has(ev.code)) {
      setState('closed', ev.reason || `code ${ev.code}`);
      return;
    }
    setState('reconnecting', ev.reason || `code ${ev.code}`);
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 5000);
  };
}

term.onData((d) => {
  if (rnr.role === 'owner' && ws && ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d));
});
term.onBinary((d) => {
  if (rnr.role !== 'owner' || !ws || ws.readyState !== WebSocket.OPEN) return;
  const b = new Uint8Array(d.length);
  for (let i = 0; i < d.length; i++) b[i] = d.charCodeAt(i) & 255;
  ws.send(b);
});
term.onResize(({ rows, cols }) => {
  if (rnr.role === 'owner') sendControl({ t: 'resize', rows, cols });
});
window.addEventListener('resize', () => fit.fit());
// Ctrl+Shift+C / Ctrl+Shift+V copy and paste; plain Ctrl+C stays an interrupt.
term.attachCustomKeyEventHandler((e) => {
  if (e.type !== 'keydown' || !e.ctrlKey || !e.shiftKey) return true;
  if (e.code === 'KeyC') {
    const sel = term.getSelection();
    if (sel && navigator.clipboard) navigator.clipboard.writeText(sel);
    return false;
  }
  if (e.code === 'KeyV') {
    if (navigator.clipboard) navigator.clipboard.readText().then((t) => term.paste(t));
    return false;
  }
  return true;
});

if (mode === 'replay') runReplay(); else connect();
term.focus();
