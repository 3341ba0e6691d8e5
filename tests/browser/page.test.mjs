// runstream's web page in a real browser (headless Chromium through playwright-core),
// driving the real server: no mocks. Run with `scripts/browser-test.sh`, or
// `RUNSTREAM_BIN=target/debug/runstream node tests/browser/page.test.mjs`.
//
// Prints `ok N - name` / `not ok N - name` per case and, last, `P passed, F failed`.
// Every wait is bounded, and the servers and the browser are always stopped.

import { chromium } from 'playwright-core';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
const BIN = path.resolve(ROOT, process.env.RUNSTREAM_BIN || 'target/debug/runstream');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = path.join(ROOT, 'target', 'browser', 'run-view.png');
const METRICS_SCREENSHOT = path.join(ROOT, 'target', 'browser', 'metrics.png');
// The example train module (examples/modules.json) needs python3.
const HAS_PYTHON = spawnSync('python3', ['-V']).status === 0;
const WAIT = 20_000; // the longest any single wait may take
const WATCHDOG = 300_000; // the whole file

// ---------------------------------------------------------------- fixture

// Scripts get their parameters as positional arguments ($1, $2): the server substitutes
// `{name}` into whole argv elements, never through a shell.
const LINES_SCRIPT = 'i=1; while [ "$i" -le "$1" ]; do echo "$2 $i of $1"; i=$((i+1)); sleep 0.3; done';
const PROGRESS_SCRIPT = String.raw`echo starting
i=0
while [ "$i" -lt 100 ]; do printf '\r%d%%' "$i"; i=$((i+5)); sleep 0.05; done
printf '\r100%%\r'
sleep 0.3
printf '\n'
echo done`;
const SLEEPER_SCRIPT = 'echo sleeping; sleep 100';
const SLOW_SCRIPT = 'i=1; while [ "$i" -le 30 ]; do echo "tick $i"; i=$((i+1)); sleep 0.2; done';
// Colour codes, markup that would run if it were HTML, a right-to-left override and a
// 30 000-character line.
const HOSTILE_SCRIPT = String.raw`printf '\033[31mred\033[0m text\n'
echo '<img src=x onerror="window.__pwned=1">'
printf 'a\342\200\256b\n'
head -c 30000 /dev/zero | tr '\000' A; echo`;

// A metric every 0.25 s for 10 s: a chart that grows while the run runs.
const LIVE_METRICS_SCRIPT = 'i=1; while [ "$i" -le 40 ]; do echo "step=$i loss=0.$((100 - i))"; i=$((i+1)); sleep 0.25; done';

const BIG_METRICS_SCRIPT = 'while [ ! -e "$1" ]; do sleep 0.05; done; seq 1 100000 | sed "s/.*/step=& loss=0.&/"';

function modulesFixture(cwd) {
  // The example train module as shipped (its metric_patterns included), run from its folder.
  const train = JSON.parse(fs.readFileSync(path.join(ROOT, 'examples', 'modules.json'), 'utf8')).modules.train;
  const base = { program: 'sh', cwd, timeout_seconds: 120, grace_seconds: 2, gpu_memory_mb: 0 };
  return {
    modules: {
      lines: {
        ...base,
        name: 'Print lines',
        description: 'Prints COUNT lines, 0.3 s apart.',
        args: ['-c', LINES_SCRIPT, 'sh', '{count}', '{word}'],
        parameters: {
          count: { type: 'integer', default: 5, min: 1, max: 50, description: 'how many lines' },
          word: { type: 'string', default: 'line', pattern: '[a-z]+', description: 'first word of each line' },
        },
      },
      progress: {
        ...base,
        name: 'Progress bar',
        description: 'A \\r progress bar from 0% to 100%.',
        args: ['-c', PROGRESS_SCRIPT],
        parameters: {},
      },
      sleeper: {
        ...base,
        name: 'Sleeper',
        description: 'Sleeps 100 s (to be cancelled).',
        args: ['-c', SLEEPER_SCRIPT],
        parameters: {},
      },
      hostile: {
        ...base,
        name: 'Hostile output',
        description: 'ANSI colours, HTML, a very long line.',
        args: ['-c', HOSTILE_SCRIPT],
        parameters: {},
      },
      train: { ...train, cwd: path.join(ROOT, 'examples', 'modules') },
      live_metrics: {
        ...base,
        name: 'Live metrics',
        description: 'step=N loss=X every 0.25 s, 40 times.',
        args: ['-c', LIVE_METRICS_SCRIPT],
        parameters: {},
      },
      big_metrics: {
        ...base,
        name: '100 000 metric lines',
        description: 'Waits for a gate file, then prints step=N loss=0.N 100 000 times.',
        args: ['-c', BIG_METRICS_SCRIPT, 'sh', path.join(cwd, 'big-gate')],
        parameters: {},
      },
      slow: {
        ...base,
        name: 'Slow ticks',
        description: '30 lines, 0.2 s apart.',
        args: ['-c', SLOW_SCRIPT],
        parameters: {},
      },
    },
  };
}

// ---------------------------------------------------------------- plumbing

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'runstream-browser-'));
const servers = [];
const proxies = [];
let browser = null;
let cleaningUp = null;

function note(text) {
  for (const line of String(text).split('\n')) console.log(`# ${line}`);
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Starts `runstream serve` and resolves with { base, proc, log } once it prints its address. */
async function startServer(name, extraArgs = []) {
  const dir = path.join(tmpRoot, name);
  fs.mkdirSync(path.join(dir, 'data'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'work'), { recursive: true });
  const modulesFile = path.join(dir, 'modules.json');
  fs.writeFileSync(modulesFile, JSON.stringify(modulesFixture(path.join(dir, 'work')), null, 2));
  if (!fs.existsSync(BIN)) throw new Error(`server binary not found: ${BIN} (set RUNSTREAM_BIN)`);
  const args = ['serve', '--bind', '127.0.0.1:0', '--modules', modulesFile, '--data-dir', path.join(dir, 'data'), ...extraArgs];
  const proc = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' } });
  const server = { name, dir, proc, log: [], base: null, exited: false };
  servers.push(server);
  const keep = (line) => {
    server.log.push(line);
    if (server.log.length > 200) server.log.shift();
  };
  proc.on('exit', (code, signal) => {
    server.exited = true;
    keep(`[exited: code ${code}, signal ${signal}]`);
  });
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => d.split('\n').filter(Boolean).forEach((l) => keep(`stderr: ${l}`)));
  proc.stdout.setEncoding('utf8');
  const base = await withTimeout(
    new Promise((resolve, reject) => {
      let buf = '';
      proc.stdout.on('data', (d) => {
        buf += d;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          keep(`stdout: ${line}`);
          const m = /listening on (http:\/\/[^\s/]+:(\d+))/.exec(line);
          if (m) resolve(`${m[1]}/`);
        }
      });
      proc.on('exit', (code, signal) => reject(new Error(`server exited before listening (code ${code}, signal ${signal})`)));
      proc.on('error', reject);
    }),
    WAIT,
    'the server to print "listening on http://127.0.0.1:PORT"',
  );
  server.base = base;
  return server;
}

async function stopServer(server) {
  if (server.exited) return;
  server.proc.kill('SIGTERM');
  const deadline = Date.now() + 8000;
  while (!server.exited && Date.now() < deadline) await sleep(50);
  if (!server.exited) {
    note(`${server.name}: still running 8 s after SIGTERM, sending SIGKILL`);
    server.proc.kill('SIGKILL');
    const d2 = Date.now() + 3000;
    while (!server.exited && Date.now() < d2) await sleep(50);
  }
}

/** A TCP proxy that can cut every connection through it at once. */
function startProxy(targetPort) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    const done = () => {
      sockets.delete(client);
      sockets.delete(upstream);
      client.destroy();
      upstream.destroy();
    };
    for (const s of [client, upstream]) {
      s.on('error', done);
      s.on('close', done);
    }
  });
  const proxy = {
    server,
    sockets,
    cuts: 0,
    cutAll() {
      proxy.cuts += sockets.size;
      for (const s of [...sockets]) s.destroy();
    },
    close() {
      for (const s of [...sockets]) s.destroy();
      server.close();
    },
  };
  proxies.push(proxy);
  return new Promise((resolve, reject) => {
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      proxy.base = `http://127.0.0.1:${server.address().port}/`;
      resolve(proxy);
    });
  });
}

async function api(base, method, p, { token, body } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await withTimeout(
    fetch(new URL(p, base), { method, headers, body: body === undefined ? undefined : JSON.stringify(body) }),
    WAIT,
    `${method} ${p}`,
  );
  const text = await resp.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: resp.status, json, text };
}

/** What the page shows, for failure messages. */
async function pageState(page) {
  try {
    return await page.evaluate(() => {
      const q = (s) => document.querySelector(s);
      const lines = [...document.querySelectorAll('#log .line')];
      return {
        url: location.href,
        run: q('#run-view') && q('#run-view').dataset.runId,
        status: q('#run-status') && q('#run-status').dataset.status,
        conn: q('#conn-state') && q('#conn-state').textContent,
        lines: lines.length,
        last: lines.slice(-5).map((l) => `${l.dataset.seq}/${l.dataset.stream}/${l.dataset.end}: ${l.querySelector('.msg').textContent}`),
        authError: q('#auth-error') && !q('#auth-error').classList.contains('hidden') ? q('#auth-error').textContent : null,
        formErrors: [...document.querySelectorAll('.form-error:not(.hidden)')].map((e) => e.textContent),
      };
    });
  } catch (e) {
    return { error: String(e) };
  }
}

/** Waits (bounded) until `fn(arg)` is truthy in the page. */
async function waitIn(page, what, fn, arg, timeout = WAIT) {
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout, polling: 50 });
    return await handle.jsonValue();
  } catch (e) {
    throw new Error(`timed out after ${timeout} ms waiting for ${what}; page: ${JSON.stringify(await pageState(page))}`);
  }
}

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.pageErrors = [];
  page.on('pageerror', (e) => page.pageErrors.push(String(e)));
  return page;
}

/** Fills a module's form, starts it, and returns the new run's id once the page opened it. */
async function startFromForm(page, moduleId, values = {}) {
  const form = `form[data-module="${moduleId}"]`;
  await page.waitForSelector(form, { timeout: WAIT });
  const before = await page.evaluate(() => (document.querySelector('#run-view') || {}).dataset?.runId || '');
  for (const [name, value] of Object.entries(values)) {
    await page.fill(`${form} [name="${name}"]`, String(value));
  }
  await page.click(`${form} button[type="submit"]`);
  const got = await waitIn(
    page,
    `the page to open the new ${moduleId} run`,
    ({ form, before }) => {
      const id = document.querySelector('#run-view')?.dataset.runId;
      if (id && id !== before) return { id };
      const err = document.querySelector(`${form} .form-error:not(.hidden)`);
      if (err && err.textContent) return { error: err.textContent };
      return null;
    },
    { form, before },
  );
  if (got.error) throw new Error(`starting ${moduleId} failed: ${got.error}`);
  return got.id;
}

const lineTexts = (page, stream) =>
  page.$$eval(`#log .line${stream ? `[data-stream="${stream}"]` : ''}`, (ls) => ls.map((l) => l.querySelector('.msg').textContent));

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

function procState(pid) {
  // /proc/PID/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces and parentheses.
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state: rest[0], pgrp: Number(rest[2]) };
  } catch {
    return null;
  }
}

/** Live (non-zombie) processes whose process group is `pgid`. */
function liveGroupMembers(pgid) {
  const out = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const s = procState(name);
    if (s && s.pgrp === pgid && s.state !== 'Z' && s.state !== 'X') out.push(`${name} (${s.state})`);
  }
  return out;
}

// ---------------------------------------------------------------- cases

const results = [];
const ctx = {};

async function runCase(name, fn) {
  const n = results.length + 1;
  let error = null;
  try {
    await fn();
  } catch (e) {
    error = e;
  }
  results.push({ name, ok: !error });
  console.log(`${error ? 'not ok' : 'ok'} ${n} - ${name}`);
  if (error) {
    note(error && error.stack ? error.stack : String(error));
  }
}

async function caseLiveOutput() {
  const { server } = ctx;
  const page = (ctx.mainPage = await newPage());
  await page.goto(server.base);
  await page.waitForSelector('form[data-module="lines"] label[for]', { timeout: WAIT });
  // Every field has a label.
  const unlabelled = await page.$$eval('#modules input, #modules select', (els) =>
    els.filter((e) => !e.id || !document.querySelector(`label[for="${e.id}"]`)).map((e) => e.name || e.outerHTML),
  );
  assert(unlabelled.length === 0, `fields without a <label for>: ${unlabelled.join(', ')}`);
  // Defaults are pre-filled from the catalogue.
  assert((await page.inputValue('form[data-module="lines"] [name="count"]')) === '5', 'count default not pre-filled');
  assert((await page.inputValue('form[data-module="lines"] [name="word"]')) === 'line', 'word default not pre-filled');

  const id = await startFromForm(page, 'lines', { count: 8, word: 'row' });
  ctx.linesRunId = id;
  // The first line shows up while the run is still running: output is live.
  const first = await waitIn(page, 'the first line while the run is running', () => {
    const lines = [...document.querySelectorAll('#log .line[data-stream="stdout"] .msg')];
    const status = document.querySelector('#run-status').dataset.status;
    if (lines.length >= 1 && status === 'running') return { n: lines.length, text: lines[0].textContent, status };
    return null;
  });
  assert(first.text === 'row 1 of 8', `first line is ${JSON.stringify(first.text)}`);
  assert(first.n < 8, `all ${first.n} lines were there at once: not live`);
  await waitIn(page, 'the run to finish', () => document.querySelector('#conn-state').dataset.state === 'finished');
  await waitIn(page, 'status completed', () => document.querySelector('#run-status').dataset.status === 'completed');
  const lines = await lineTexts(page, 'stdout');
  const want = Array.from({ length: 8 }, (_, i) => `row ${i + 1} of 8`);
  assert(JSON.stringify(lines) === JSON.stringify(want), `stdout lines ${JSON.stringify(lines)}`);
  const ends = await page.$$eval('#log .line[data-stream="stdout"]', (ls) => ls.map((l) => l.dataset.end));
  assert(ends.every((e) => e === 'lf'), `ends ${ends}`);
  assert(await page.isDisabled('#cancel'), 'cancel button still enabled after the run finished');
  // The runs table catches up (polled every 2 s).
  await waitIn(page, 'the runs table row to say completed', (id) => {
    const tr = document.querySelector(`#runs tbody tr[data-run-id="${id}"]`);
    return tr && tr.dataset.status === 'completed';
  }, id);
  // The download link serves the full log.
  const href = await page.getAttribute('#download', 'href');
  const dl = await api(server.base, 'GET', href);
  assert(dl.status === 200, `download: HTTP ${dl.status}`);
  assert(dl.text.includes('row 8 of 8'), `download lacks the last line: ${dl.text.slice(0, 300)}`);
  assert(page.pageErrors.length === 0, `page errors: ${page.pageErrors.join('; ')}`);
}

async function caseHostileOutput() {
  const { server } = ctx;
  const page = ctx.mainPage || (await newPage());
  if (!ctx.mainPage) await page.goto(server.base);
  await startFromForm(page, 'hostile');
  await waitIn(page, 'the hostile run to finish', () => document.querySelector('#conn-state').dataset.state === 'finished');
  const stdout = await lineTexts(page, 'stdout');
  assert(stdout[0] === 'red text', `colour codes are not text: ${JSON.stringify(stdout[0])}`);
  assert(stdout[1] === '<img src=x onerror="window.__pwned=1">', `markup shown as text: ${JSON.stringify(stdout[1])}`);
  assert(!(await page.evaluate(() => window.__pwned)), 'the markup ran');
  assert(stdout[2] === 'a<U+202E>b', `a right-to-left override is shown by name: ${JSON.stringify(stdout[2])}`);
  assert(stdout[3].startsWith('A'.repeat(10000) + ' … (20000 more characters'), `long line shown as ${stdout[3].length} chars: ${stdout[3].slice(-80)}`);
}

async function caseProgress() {
  const { server } = ctx;
  const page = ctx.mainPage || (await newPage());
  if (!ctx.mainPage) await page.goto(server.base);
  // Count, every few ms, how many stdout lines hold a percentage: a \r bar must be one line.
  await page.evaluate(() => {
    window.__maxPercentLines = 0;
    clearInterval(window.__percentTimer);
    window.__percentTimer = setInterval(() => {
      const n = [...document.querySelectorAll('#log .line[data-stream="stdout"] .msg')].filter((m) => m.textContent.includes('%')).length;
      window.__maxPercentLines = Math.max(window.__maxPercentLines, n);
    }, 5);
  });
  const id = await startFromForm(page, 'progress');
  await waitIn(page, 'the progress run to finish', () => document.querySelector('#conn-state').dataset.state === 'finished');
  const stdout = await lineTexts(page, 'stdout');
  const percentLines = stdout.filter((t) => t.includes('%'));
  assert(percentLines.length === 1, `expected one progress line, got ${percentLines.length}: ${JSON.stringify(stdout.slice(0, 10))}`);
  assert(percentLines[0].trim().endsWith('100%'), `progress line ends ${JSON.stringify(percentLines[0])}`);
  assert(JSON.stringify(stdout) === JSON.stringify(['starting', '100%', 'done']), `stdout lines ${JSON.stringify(stdout)}`);
  const maxSeen = await page.evaluate(() => window.__maxPercentLines);
  assert(maxSeen === 1, `at some point ${maxSeen} progress lines were shown`);
  const bar = await page.$eval('#progress', (p) => ({ role: p.getAttribute('role'), now: p.getAttribute('aria-valuenow') }));
  assert(bar.role === 'progressbar', `#progress role ${bar.role}`);
  assert(Number(bar.now) === 100, `progressbar aria-valuenow ${bar.now}`);
  const run = await api(server.base, 'GET', `/api/runs/${id}`);
  assert(run.status === 200 && run.json.status === 'completed', `run ${run.status} ${run.text.slice(0, 200)}`);
  assert(run.json.progress_percent === 100, `the server's progress_percent is ${run.json.progress_percent}`);
}

async function caseCancel() {
  const { server } = ctx;
  const page = ctx.mainPage || (await newPage());
  if (!ctx.mainPage) await page.goto(server.base);
  const id = await startFromForm(page, 'sleeper');
  await waitIn(page, 'the sleeper to print and run', () => {
    const running = document.querySelector('#run-status').dataset.status === 'running';
    return running && [...document.querySelectorAll('#log .line .msg')].some((m) => m.textContent === 'sleeping');
  });
  await waitIn(page, 'the cancel button to be enabled', () => !document.querySelector('#cancel').disabled);
  const before = await api(server.base, 'GET', `/api/runs/${id}`);
  const pid = before.json && before.json.pid;
  assert(Number.isInteger(pid) && pid > 0, `run has no pid: ${before.text.slice(0, 200)}`);
  await page.click('#cancel');
  await waitIn(page, 'the page to show cancelled', () => document.querySelector('#run-status').dataset.status === 'cancelled');
  await waitIn(page, 'the connection to say finished', () => document.querySelector('#conn-state').dataset.state === 'finished');
  assert(await page.isDisabled('#cancel'), 'cancel button enabled after the run was cancelled');
  const after = await api(server.base, 'GET', `/api/runs/${id}`);
  assert(after.json && after.json.status === 'cancelled', `API says ${after.text.slice(0, 200)}`);
  assert(after.json.cancelling === false, `still cancelling: ${after.text.slice(0, 200)}`);
  const st = procState(pid);
  assert(st === null || st.state === 'Z' || st.state === 'X', `pid ${pid} still alive, state ${st && st.state}`);
  // Its process group too (the `sleep 100` grandchild); give init a moment to reap it.
  let members = liveGroupMembers(pid);
  for (let i = 0; i < 40 && members.length; i++) {
    await sleep(50);
    members = liveGroupMembers(pid);
  }
  assert(members.length === 0, `process group ${pid} still has live members: ${members.join(', ')}`);
  // Cancelling again is refused: the run is over.
  const again = await api(server.base, 'POST', `/api/runs/${id}/cancel`);
  assert(again.status === 400 && again.json && again.json.error_code === 'INVALID_STATE', `second cancel: ${again.status} ${again.text.slice(0, 200)}`);
}

async function caseResume() {
  const { server } = ctx;
  const port = Number(new URL(server.base).port);
  const proxy = await startProxy(port);
  const page = await newPage();
  try {
    await page.goto(proxy.base);
    await page.evaluate(() => {
      const el = document.querySelector('#conn-state');
      window.__connStates = [el.dataset.state];
      new MutationObserver(() => {
        const s = el.dataset.state;
        if (window.__connStates[window.__connStates.length - 1] !== s) window.__connStates.push(s);
      }).observe(el, { attributes: true, attributeFilter: ['data-state'] });
    });
    const id = await startFromForm(page, 'slow');
    await waitIn(page, 'five lines through the proxy', () => document.querySelectorAll('#log .line[data-stream="stdout"]').length >= 5);
    const statusBefore = await page.$eval('#run-status', (e) => e.dataset.status);
    assert(statusBefore === 'running', `the run was ${statusBefore} before the cut: too late to test a resume`);
    proxy.cutAll();
    await waitIn(page, 'the page to show reconnecting', () => window.__connStates.includes('reconnecting'));
    const conn = await page.$eval('#conn-state', (e) => e.textContent);
    note(`after the cut the page says: ${conn}`);
    await waitIn(page, 'the page to come back live', () => {
      const s = window.__connStates;
      const i = s.indexOf('reconnecting');
      return i >= 0 && s.slice(i + 1).some((x) => x === 'live' || x === 'finished');
    });
    await waitIn(page, 'the run to finish after the resume', () => document.querySelector('#conn-state').dataset.state === 'finished', undefined, 30_000);
    const states = await page.evaluate(() => window.__connStates);
    note(`connection states: ${states.join(' -> ')}`);
    const pageSeqs = await page.$$eval('#log .line[data-seq]', (ls) => ls.map((l) => Number(l.dataset.seq)));
    const logs = await api(server.base, 'GET', `/api/runs/${id}/logs?tail=100000`);
    assert(logs.status === 200 && Array.isArray(logs.json?.logs), `logs: ${logs.status} ${logs.text.slice(0, 200)}`);
    const serverSeqs = logs.json.logs.map((e) => e.seq);
    assert(
      JSON.stringify(pageSeqs) === JSON.stringify(serverSeqs),
      `page seqs ${JSON.stringify(pageSeqs)} != server seqs ${JSON.stringify(serverSeqs)}`,
    );
    // The server resumed after Last-Event-ID instead of replaying (the page would hide
    // duplicates, so count them).
    const dupes = await page.evaluate(() => window.runstream.current().dupes);
    assert(dupes === 0, `the server re-sent ${dupes} log events the page had already shown (Last-Event-ID ignored?)`);
    const ticks = (await lineTexts(page, 'stdout')).filter((t) => t.startsWith('tick '));
    const want = Array.from({ length: 30 }, (_, i) => `tick ${i + 1}`);
    assert(JSON.stringify(ticks) === JSON.stringify(want), `ticks ${JSON.stringify(ticks)}`);
    assert(page.pageErrors.length === 0, `page errors: ${page.pageErrors.join('; ')}`);
  } finally {
    await page.context().close().catch(() => {});
    proxy.close();
  }
}

async function caseScreenshot() {
  const { server } = ctx;
  assert(ctx.linesRunId, 'no run from case 1 to show');
  const page = ctx.mainPage || (await newPage());
  // Open a finished run by its address (#run=ID): the page replays its log.
  await page.goto(`${server.base}#run=${encodeURIComponent(ctx.linesRunId)}`);
  await page.reload();
  await waitIn(page, 'the finished run to be replayed', () =>
    document.querySelector('#conn-state').dataset.state === 'finished' &&
    document.querySelectorAll('#log .line[data-stream="stdout"]').length === 8);
  const tsShown = () => page.$eval('#log .line .ts', (e) => getComputedStyle(e).display !== 'none' && /\d\d:\d\d:\d\d/.test(e.textContent));
  if (await page.isChecked('#show-ts')) await page.uncheck('#show-ts');
  assert(!(await tsShown()), 'timestamps shown while "show timestamps" is off');
  await page.check('#show-ts');
  assert(await tsShown(), 'timestamps hidden while "show timestamps" is on');
  fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  const size = fs.statSync(SCREENSHOT).size;
  assert(size > 10_000, `screenshot is only ${size} bytes`);
  note(`screenshot: ${path.relative(ROOT, SCREENSHOT)} (${size} bytes)`);
}

async function caseToken() {
  const server = await startServer('token', ['--token', 'secret']);
  const bare = await api(server.base, 'GET', '/api/modules');
  assert(bare.status === 401 && bare.json?.error_code === 'UNAUTHORIZED', `/api/modules without a token: ${bare.status} ${bare.text.slice(0, 200)}`);
  const page = await newPage();
  try {
    await page.goto(server.base);
    const msg = await waitIn(page, 'the token message', () => {
      const e = document.querySelector('#auth-error');
      return e && !e.classList.contains('hidden') && e.textContent;
    });
    assert(/token/i.test(msg), `auth message: ${msg}`);
    assert((await page.$$('form[data-module]')).length === 0, 'modules listed without a token');

    await page.goto(`${server.base}?token=secret`);
    await page.waitForSelector('form[data-module="lines"]', { timeout: WAIT });
    assert(await page.isHidden('#auth-error'), 'token message still shown with ?token=secret');
    const id = await startFromForm(page, 'lines', { count: 2 });
    await waitIn(page, 'the run (streamed with ?token) to finish', () =>
      document.querySelector('#conn-state').dataset.state === 'finished' &&
      document.querySelectorAll('#log .line[data-stream="stdout"]').length === 2);
    assert(JSON.stringify(await lineTexts(page, 'stdout')) === JSON.stringify(['line 1 of 2', 'line 2 of 2']), 'wrong lines');
    const href = await page.getAttribute('#download', 'href');
    assert(href.includes('token=secret'), `download link without the token: ${href}`);
    const dl = await api(server.base, 'GET', href);
    assert(dl.status === 200 && dl.text.includes('line 2 of 2'), `download: ${dl.status} ${dl.text.slice(0, 200)}`);
    const run = await api(server.base, 'GET', `/api/runs/${id}`, { token: 'secret' });
    assert(run.json?.status === 'completed', `run: ${run.text.slice(0, 200)}`);
  } finally {
    await page.context().close().catch(() => {});
  }
}

// ---------------------------------------------------------------- metric charts

/** Starts a module through the API and returns its run id. */
async function startByApi(moduleId, parameters) {
  const r = await api(ctx.server.base, 'POST', `/api/modules/${moduleId}/run`, { body: { parameters } });
  assert(r.status === 202, `starting ${moduleId}: ${r.status} ${r.text.slice(0, 300)}`);
  return r.json.run_id;
}

const chartOf = (page, name) => page.evaluate((n) => window.runstream.charts()[n] || null, name);

async function caseMetricsChart() {
  if (!HAS_PYTHON) return console.log('SKIPPED the train chart: no python3');
  const { server } = ctx;
  const id = (ctx.trainRunId = await startByApi('train', { epochs: 5, steps: 2, lr: 0.001 }));
  const page = (ctx.metricsPage = await newPage());
  await page.goto(`${server.base}#run=${encodeURIComponent(id)}`);
  await waitIn(page, 'the train run to finish', () => document.querySelector('#conn-state').dataset.state === 'finished');
  const printed = (await lineTexts(page, 'stdout'))
    .map((t) => /^epoch \d+\/5 loss ([-\d.]+)$/.exec(t))
    .filter(Boolean)
    .map((m) => Number(m[1]));
  assert(printed.length === 5, `printed losses: ${JSON.stringify(printed)}`);
  await waitIn(page, 'a loss chart with 5 points', () => (window.runstream.charts().loss || {}).points === 5);
  const loss = await chartOf(page, 'loss');
  assert(JSON.stringify(loss.y) === JSON.stringify(printed), `chart ${JSON.stringify(loss.y)} != printed ${JSON.stringify(printed)}`);
  assert(JSON.stringify(loss.x) === '[1,2,3,4,5]', `x is the epoch: ${JSON.stringify(loss.x)}`);
  // Found by its accessible name, drawn on a canvas, its last value beside it.
  const chart = page.locator('[aria-label="loss chart"]');
  assert((await chart.count()) === 1, 'no element labelled "loss chart"');
  assert((await chart.locator('canvas').count()) === 1, 'the loss chart has no canvas');
  const last = await page.locator('figure.chart[data-metric="loss"] .last').textContent();
  assert(last === `last ${printed[4]}`, `last value shown: ${last}, printed ${printed[4]}`);
  assert(page.pageErrors.length === 0, `page errors: ${page.pageErrors.join('; ')}`);
}

async function caseLiveChart() {
  const { server } = ctx;
  const page = await newPage();
  try {
    const metricFetches = [];
    page.on('request', (r) => { if (/\/metrics(\?|$)/.test(new URL(r.url()).pathname + new URL(r.url()).search)) metricFetches.push(r.url()); });
    const id = await startByApi('live_metrics', {});
    await page.goto(`${server.base}#run=${encodeURIComponent(id)}`);
    const first = await waitIn(page, 'the first points of the live chart', () => {
      const c = window.runstream.charts().loss;
      return c && c.points >= 2 && c.points;
    });
    const later = await waitIn(page, 'the chart to grow while the run is running', (n) => {
      const c = window.runstream.charts().loss;
      const running = document.querySelector('#run-status').dataset.status === 'running';
      return c && running && c.points >= n + 3 && c.points;
    }, first);
    const loss = await chartOf(page, 'loss');
    assert(loss.x.every((x, i) => x === i + 1), `x is the step: ${JSON.stringify(loss.x)}`);
    assert(loss.y[0] === 0.99, `first loss ${loss.y[0]}`);
    // Live means pushed: the series were fetched once, when the run was opened.
    assert(metricFetches.length === 1, `the page fetched metrics ${metricFetches.length} times while live (polling?): ${metricFetches.join(' ')}`);
    note(`live chart grew from ${first} to ${later} points`);
    await api(server.base, 'POST', `/api/runs/${id}/cancel`);
  } finally {
    await page.context().close().catch(() => {});
  }
}

async function caseCompare() {
  if (!HAS_PYTHON) return console.log('SKIPPED comparing train runs: no python3');
  assert(ctx.trainRunId, 'no train run from the chart case');
  const { server } = ctx;
  const page = ctx.metricsPage;
  const id = await startByApi('train', { epochs: 5, steps: 2, lr: 0.0005 });
  await page.goto(`${server.base}#run=${encodeURIComponent(id)}`);
  await waitIn(page, 'the second train run to finish', () => document.querySelector('#conn-state').dataset.state === 'finished');
  const box = `#compare input[data-run-id="${ctx.trainRunId}"]`;
  await page.waitForSelector(box, { timeout: WAIT });
  const choice = await page.locator('#compare').textContent();
  assert(choice.includes('lr=0.001'), `the compare choice does not name the differing parameter: ${choice}`);
  await page.check(box);
  await waitIn(page, 'two curves on the loss chart', () => (window.runstream.charts().loss || {}).curves === 2);
  const legend = await page.locator('figure.chart[data-metric="loss"] .u-legend').textContent();
  assert(legend.includes('lr=0.0005') && legend.includes('lr=0.001'), `legend: ${legend}`);
  assert(!legend.includes('epochs='), `the legend names parameters that do not differ: ${legend}`);
  // The screenshot is checked, not only taken: decoded in the page, it must show a chart.
  fs.mkdirSync(path.dirname(METRICS_SCREENSHOT), { recursive: true });
  const png = await page.locator('#metrics').screenshot({ path: METRICS_SCREENSHOT });
  const look = await page.evaluate(async (b64) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.width;
    c.height = img.height;
    const g = c.getContext('2d');
    g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data;
    const counts = new Map();
    for (let i = 0; i < d.length; i += 4) {
      const k = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
      counts.set(k, (counts.get(k) || 0) + 1);
    }
    const top = Math.max(...counts.values());
    // Pixels of the two curves' colours (#0b5cad, #c2410c), give or take anti-aliasing.
    const near = (r, g2, b) => { let n = 0; for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - r) + Math.abs(d[i + 1] - g2) + Math.abs(d[i + 2] - b) < 40) n++; return n; };
    return { width: c.width, height: c.height, colours: counts.size, notBackground: 1 - top / (d.length / 4), blue: near(11, 92, 173), orange: near(194, 65, 12) };
  }, png.toString('base64'));
  assert(look.width > 200 && look.height > 100, `screenshot ${look.width}x${look.height}`);
  assert(look.colours > 20 && look.notBackground > 0.03, `the screenshot looks blank: ${JSON.stringify(look)}`);
  assert(look.blue > 50 && look.orange > 50, `the two curves are not drawn: ${JSON.stringify(look)}`);
  note(`metrics screenshot: ${path.relative(ROOT, METRICS_SCREENSHOT)} ${JSON.stringify(look)}`);
  assert(page.pageErrors.length === 0, `page errors: ${page.pageErrors.join('; ')}`);
  await page.context().close().catch(() => {});
}

async function caseHundredThousandPoints() {
  const { server } = ctx;
  const page = await newPage();
  try {
    const id = await startByApi('big_metrics', {});
    await page.goto(`${server.base}#run=${encodeURIComponent(id)}`);
    await waitIn(page, 'the stream to be live', () => document.querySelector('#conn-state').dataset.state === 'live');
    fs.writeFileSync(path.join(server.dir, 'work', 'big-gate'), '');
    await waitIn(page, 'the run to finish', () => document.querySelector('#conn-state').dataset.state === 'finished', undefined, 120_000);
    await waitIn(page, 'a chart of 100 000 points', () => (window.runstream.charts().loss || {}).points === 100000, undefined, 60_000);
    const loss = await page.evaluate(() => {
      const c = window.runstream.charts().loss;
      return { first: [c.x[0], c.y[0]], last: [c.x[c.x.length - 1], c.y[c.y.length - 1]], shown: document.querySelector('figure.chart[data-metric="loss"] .last').textContent };
    });
    assert(JSON.stringify(loss.first) === '[1,0.1]' && JSON.stringify(loss.last) === '[100000,0.1]', JSON.stringify(loss));
    assert(loss.shown === 'last 0.1', `last value shown: ${loss.shown}`);
    assert((await page.locator('[aria-label="loss chart"] canvas').count()) === 1, 'no canvas');
    assert(page.pageErrors.length === 0, `page errors: ${page.pageErrors.join('; ')}`);
  } finally {
    await page.context().close().catch(() => {});
  }
}

// ---------------------------------------------------------------- main

async function cleanup() {
  if (cleaningUp) return cleaningUp;
  cleaningUp = (async () => {
    for (const p of proxies) {
      try {
        p.close();
      } catch {
        /* gone */
      }
    }
    if (browser) await withTimeout(browser.close(), 10_000, 'closing the browser').catch((e) => note(String(e)));
    await Promise.all(servers.map((s) => stopServer(s).catch((e) => note(String(e)))));
  })();
  return cleaningUp;
}

async function main() {
  const watchdog = setTimeout(async () => {
    console.log(`not ok ${results.length + 1} - watchdog: the tests took longer than ${WATCHDOG / 1000} s`);
    await cleanup();
    console.log(`${results.filter((r) => r.ok).length} passed, ${results.filter((r) => !r.ok).length + 1} failed`);
    process.exit(1);
  }, WATCHDOG);
  watchdog.unref();
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, async () => {
      await cleanup();
      process.exit(130);
    });
  }

  const cases = [
    ['start a module from its form; output appears live, line by line', caseLiveOutput],
    ['a \\r progress bar is one updating line ending at 100%, progressbar at 100', caseProgress],
    ['cancel: the page shows cancelled, the process group is gone', caseCancel],
    ['colour codes stripped, markup shown as text, bidi controls named, a 30 000-character line capped', caseHostileOutput],
    ['SSE connection cut mid-run: reconnecting, resume, every line exactly once', caseResume],
    ['timestamps toggle; screenshot of the run view', caseScreenshot],
    ['--token: 401 message without ?token, works with it', caseToken],
    ['metrics: a 5-epoch train run charts 5 points equal to the printed losses', caseMetricsChart],
    ['metrics: a live run\'s chart grows while it runs, pushed, not polled', caseLiveChart],
    ['metrics: two runs compared draw two curves, legend by differing parameter; screenshot not blank', caseCompare],
    ['metrics: a run printing 100 000 values is charted with all 100 000 points', caseHundredThousandPoints],
  ];

  let setupError = null;
  try {
    ctx.server = await startServer('main');
    note(`server: ${ctx.server.base} (${path.relative(ROOT, BIN) || BIN})`);
    browser = await withTimeout(
      chromium.launch({
        executablePath: CHROMIUM,
        args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-sync'],
      }),
      60_000,
      'launching Chromium',
    );
  } catch (e) {
    setupError = e;
  }

  for (const [name, fn] of cases) {
    if (setupError) {
      await runCase(name, async () => {
        const e = new Error(`setup failed: ${setupError.message}`);
        e.stack = e.message;
        throw e;
      });
    } else {
      await runCase(name, fn);
    }
  }

  const failed = results.filter((r) => !r.ok).length;
  if (failed) {
    for (const s of servers) {
      note(`--- last output of server "${s.name}":`);
      note(s.log.slice(-40).join('\n'));
    }
  }
  await cleanup();
  if (!failed) fs.rmSync(tmpRoot, { recursive: true, force: true });
  else note(`kept ${tmpRoot} for a look`);
  clearTimeout(watchdog);
  console.log(`${results.length - failed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
}

main().catch(async (e) => {
  console.log(`not ok ${results.length + 1} - the test script itself failed`);
  note(e && e.stack ? e.stack : String(e));
  await cleanup();
  console.log(`${results.filter((r) => r.ok).length} passed, ${results.filter((r) => !r.ok).length + 1} failed`);
  process.exit(1);
});
