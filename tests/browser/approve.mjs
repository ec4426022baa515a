// End-to-end test of the approval dashboard in headless Chromium.
//
// A Python SDK client (held_call.py) starts the real mcp-gate binary over stdio in front of the
// built-in demo file server and calls `delete_file`, which tests/browser/gate.toml holds for
// approval; the call waits (MCP_GATE_WAIT_SECS). Chromium then signs in to the dashboard with
// the approver token (read from the token file mcp-gate created, whose path the sign-in page
// names with the `mcp-gate approvals open` command), finds the request in the queue, opens it,
// checks the tool and arguments, approves it with notes, and the client must get the tool's real
// output within seconds. Then the client makes a second held call, and a phone-sized browser
// (390x844, touch) signs in through the one-time link `mcp-gate approvals open ID` prints, finds
// the call and both decision buttons above the fold, shows the queue, and approves; the link
// works only once. Last, the official TypeScript SDK client (`client.experimental.tasks.callToolStream`,
// 2025-11-25) makes the same held call through a second mcp-gate: it is given a gate task at once,
// the request page shows the channel `task`, Chromium approves it, and the stream yields the
// tool's real output. Every page must load without failed requests or console errors (styles,
// scripts, CSP). The pages reload themselves on events (live.js), so every read of a page after a
// change is retried.
//
// Run through scripts/browser.sh, or:
//   source scripts/peers.env && "$PEERS_NODE22" tests/browser/approve.mjs
// Environment: MCP_GATE_BIN (default target/debug/mcp-gate), CHROMIUM_BIN (/usr/bin/chromium),
// BROWSER_ARTIFACTS (artifacts/browser: screenshots, and mcp-gate's stderr in gate.log).
// Exit status: 0 when every check passes, 1 otherwise.

import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const HERE = import.meta.dirname;
const ROOT = path.resolve(HERE, '..', '..');
const env = process.env;
const GATE = path.resolve(env.MCP_GATE_BIN || path.join(ROOT, 'target', 'debug', 'mcp-gate'));
const PEERS = env.PEERS_ROOT || path.join(ROOT, '.peers');
const PYTHON = env.PEERS_PY || path.join(PEERS, 'venv', 'bin', 'python');
const NODE_MODULES = env.PEERS_NODE_MODULES || path.join(PEERS, 'node', 'node_modules');
const CHROMIUM = env.CHROMIUM_BIN || '/usr/bin/chromium';
const OUT = path.resolve(env.BROWSER_ARTIFACTS || path.join(ROOT, 'artifacts', 'browser'));
const GATE_LOG = path.join(OUT, 'gate.log');

const NOTES = 'Checked in the browser test';
const TOOL = 'delete_file';
const FILE = 'notes/todo.txt';
const OUTPUT = `deleted ${FILE}`;
const PHONE_FILE = 'notes/ideas.md'; // the second held call, approved on the phone
const PHONE = { width: 390, height: 844 };
const TOTAL_MS = 150_000; // the whole run
const STEP_MS = 15_000; // one browser action or wait
const RELEASE_MS = 10_000; // from the click on Approve to the client's result; from EOF to its exit

const { chromium } = createRequire(path.join(NODE_MODULES, path.sep))('playwright-core');
const sdk = async (file) =>
  import(pathToFileURL(path.join(NODE_MODULES, '@modelcontextprotocol', 'sdk', 'dist', 'esm', file)).href);
const TASK_LOG = path.join(OUT, 'task-gate.log');

const started = Date.now();
const log = (msg) => console.log(`[browser ${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);

class Failure extends Error {}
function check(ok, msg) {
  if (!ok) throw new Failure(msg);
}

// ---- state that cleanup() must release ----------------------------------------------------
let client; // the Python client's process; the SDK starts mcp-gate in a session of its own
const pageErrors = []; // failed requests and console errors, checked at each screenshot
let browser;
let page;
let dataDir;
let taskClient; // the TypeScript SDK client of the task-held call, and the mcp-gate it started
let taskGate; // that mcp-gate's process
let taskDir;

/** Every process below `pid`, from /proc (Linux). */
function descendants(pid) {
  const children = new Map();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat;
    try {
      stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // pid (comm) state ppid ...; comm may hold spaces and parentheses.
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (!children.has(ppid)) children.set(ppid, []);
    children.get(ppid).push(Number(entry));
  }
  const found = [];
  const walk = (p) => {
    for (const c of children.get(p) ?? []) {
      found.push(c);
      walk(c);
    }
  };
  walk(pid);
  return found;
}

async function cleanup() {
  if (browser) await browser.close().catch(() => {});
  if (client && client.exitCode === null && client.signalCode === null) {
    // The client, mcp-gate and the upstream, found before the kill orphans them.
    for (const pid of [client.pid, ...descendants(client.pid)]) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  if (taskGate && taskGate.exitCode === null && taskGate.signalCode === null) {
    for (const pid of [...descendants(taskGate.pid), taskGate.pid]) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  if (taskClient) await taskClient.close().catch(() => {});
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  if (taskDir) fs.rmSync(taskDir, { recursive: true, force: true });
}

let failing = false;
async function fail(msg) {
  if (failing) return; // a second report, e.g. main() failing while cleanup() closes the browser
  failing = true;
  console.error(`FAIL browser: ${msg}`);
  if (page) {
    const shot = path.join(OUT, 'failure.png');
    if (await page.screenshot({ path: shot, fullPage: true, timeout: 5_000 }).then(() => true, () => false)) {
      console.error(`  page ${page.url()}, screenshot ${shot}`);
    }
  }
  if (fs.existsSync(GATE_LOG)) {
    const tail = fs.readFileSync(GATE_LOG, 'utf8').trimEnd().split('\n').slice(-15);
    console.error(`  mcp-gate and client stderr (${GATE_LOG}), last lines:\n    ${tail.join('\n    ')}`);
  }
  await cleanup();
  process.exit(1);
}

const overall = setTimeout(() => fail(`timed out after ${TOTAL_MS / 1000} s`), TOTAL_MS);
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => fail(`interrupted (${signal})`));

/** Text of the whole page, whitespace collapsed. */
async function bodyText() {
  return (await page.locator('body').innerText()).replace(/\s+/g, ' ');
}

async function screenshot(name) {
  check(pageErrors.length === 0, `the page had errors: ${pageErrors.join('; ')}`);
  const file = path.join(OUT, name);
  await page.screenshot({ path: file, fullPage: true });
  log(`screenshot ${file}`);
  return file;
}

// ---- the client and mcp-gate --------------------------------------------------------------

/** Starts held_call.py; resolves with the approvals base URL once mcp-gate has printed it. */
function startClient() {
  fs.mkdirSync(OUT, { recursive: true });
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-gate-browser-'));
  const gateLog = fs.openSync(GATE_LOG, 'w'); // written synchronously: fail() may exit any time
  const clientEnv = { ...env };
  // No MCP_GATE_TOKEN: mcp-gate creates the token file in the data directory, as on a first run.
  delete clientEnv.MCP_GATE_TOKEN;
  client = spawn(PYTHON, [path.join(HERE, 'held_call.py'), GATE, path.join(HERE, 'gate.toml')], {
    cwd: ROOT,
    stdio: ['pipe', 'pipe', 'pipe'], // closing its stdin lets it stop
    env: {
      ...clientEnv,
      HELD_CALL_PATHS: `${FILE},${PHONE_FILE}`,
      MCP_GATE_DATA_DIR: dataDir,
      MCP_GATE_APPROVALS_LISTEN: '127.0.0.1:0',
      MCP_GATE_WAIT_SECS: '60',
      MCP_GATE_LOG: env.MCP_GATE_LOG || 'info',
    },
  });
  client.stdout.setEncoding('utf8');
  client.stderr.setEncoding('utf8');
  client.stdoutText = '';
  const waiting = []; // [lines, resolve]: resolved with the time the client printed that many results
  const printedAt = []; // when each result line arrived
  client.lines = () => client.stdoutText.split('\n').filter(Boolean);
  client.results = (n) =>
    new Promise((resolve) => (printedAt.length >= n ? resolve(printedAt[n - 1]) : waiting.push([n, resolve])));
  client.stdout.on('data', (s) => {
    client.stdoutText += s;
    while (printedAt.length < client.stdoutText.split('\n').length - 1) printedAt.push(Date.now());
    for (const [n, resolve] of waiting) if (printedAt.length >= n) resolve(printedAt[n - 1]);
  });
  client.exited = new Promise((resolve) => {
    client.on('exit', (code, signal) => resolve({ code, signal }));
  });
  return new Promise((resolve, reject) => {
    let stderr = '';
    client.stderr.on('data', (s) => {
      fs.writeSync(gateLog, s);
      stderr += s;
      const m = stderr.match(/^mcp-gate: approvals at (http:\/\/\S+?)\/?\n/m); // a whole line
      if (m) resolve(m[1]);
    });
    client.on('error', (e) => reject(new Failure(`cannot start ${PYTHON}: ${e.message}`)));
    client.exited.then(({ code, signal }) =>
      reject(new Failure(`the client exited (${code ?? signal}) before mcp-gate printed its approvals URL`)),
    );
    setTimeout(() => reject(new Failure('mcp-gate printed no approvals URL within 20 s')), 20_000).unref();
  });
}

/** The client is still waiting for its call: `done` results so far, no exit. */
function stillHeld(when, done = 0) {
  check(client.exitCode === null && client.signalCode === null, `the client exited ${when}`);
  check(client.lines().length === done, `the client had a result ${when}: ${client.stdoutText.trim()}`);
}

/** Runs `mcp-gate approvals ARGS` against the running proxy; resolves with its stdout. */
function approvalsCommand(base, args) {
  const cmdEnv = { ...env, MCP_GATE_DATA_DIR: dataDir, MCP_GATE_URL: base, MCP_GATE_NO_BROWSER: '1' };
  delete cmdEnv.MCP_GATE_TOKEN; // the token file, as a person at this machine would use it
  return new Promise((resolve, reject) => {
    execFile(GATE, ['approvals', ...args], { env: cmdEnv, timeout: STEP_MS }, (e, stdout, stderr) => {
      if (e) reject(new Failure(`mcp-gate approvals ${args.join(' ')}: ${e.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

/** Records failed requests and console errors of `p` in pageErrors. */
function watchPage(p) {
  p.setDefaultTimeout(STEP_MS);
  p.on('requestfailed', (r) => {
    // Leaving a page cancels what it still had open, such as the event stream.
    const why = r.failure()?.errorText;
    if (why !== 'net::ERR_ABORTED') pageErrors.push(`${r.url()}: ${why}`);
  });
  p.on('response', (r) => r.status() >= 400 && pageErrors.push(`${r.url()}: HTTP ${r.status()}`));
  p.on('console', (m) => {
    // No favicon is served; Chromium asks for one anyway.
    if (m.type() === 'error' && !m.location().url.endsWith('/favicon.ico')) pageErrors.push(m.text());
  });
}

/** The element's box lies within the first screen of a `height`-tall viewport, scrolled to the top. */
async function aboveTheFold(locator, what, height) {
  const box = await locator.boundingBox();
  check(box, `${what} is not shown`);
  check(box.y >= 0 && box.y + box.height <= height, `${what} is below the fold: ${JSON.stringify(box)}`);
}

/** Resolves with `promise`'s value, or with null after `ms`. */
function within(ms, promise) {
  return Promise.race([promise, new Promise((r) => setTimeout(() => r(null), ms).unref())]);
}

/**
 * Polls `probe` until it returns something truthy, reloading the page between tries when asked.
 * A try that throws (the page reloading itself under it) counts as not yet.
 */
async function poll(what, probe, { reload = false, ms = STEP_MS } = {}) {
  const deadline = Date.now() + ms;
  let last = 'nothing';
  for (;;) {
    try {
      const found = await probe();
      if (found) return found;
      last = String(found);
    } catch (e) {
      if (e instanceof Failure) throw e;
      last = e.message.split('\n')[0];
    }
    check(Date.now() < deadline, `${what}: not seen within ${ms / 1000} s (last: ${last})`);
    await new Promise((r) => setTimeout(r, 300));
    if (reload) await page.reload().catch(() => {});
  }
}

/** The request page's Status: the definition after the term "Status". */
async function statusText() {
  const dd = page.locator('dt', { hasText: /^\s*Status\s*$/ }).locator('xpath=following-sibling::dd[1]');
  return (await dd.innerText({ timeout: 2_000 })).trim().toLowerCase();
}

// ---- the scenario -------------------------------------------------------------------------

async function main() {
  for (const [what, file] of [
    ['mcp-gate binary', GATE],
    ['Python venv', PYTHON],
    ['Chromium', CHROMIUM],
  ]) {
    check(fs.existsSync(file), `no ${what} at ${file} (run scripts/install-peers.sh, cargo build)`);
  }

  const base = await startClient();
  log(`mcp-gate approvals at ${base}/`);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    handleSIGINT: false, // fail() closes it, and ends the other processes too
    handleSIGTERM: false,
    // Root needs --no-sandbox; the rest keep Chromium off the network it cannot reach here.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  watchPage(page);
  log(`Chromium ${browser.version()}`);

  // Signed out, the dashboard sends us to sign in; the page names the command that signs in
  // and the token file mcp-gate created.
  await page.goto(`${base}/`);
  check(new URL(page.url()).pathname === '/login', `signed out, / did not redirect to /login: ${page.url()}`);
  const tokenFile = path.join(dataDir, 'approver-token');
  const signIn = await bodyText();
  check(signIn.includes(`mcp-gate approvals open --url ${base}`), `the sign-in page names no command: ${signIn}`);
  check(signIn.includes(tokenFile), `the sign-in page does not say where the token is (${tokenFile}): ${signIn}`);
  const token = fs.readFileSync(tokenFile, 'utf8').trim();
  await page.locator('input[name="token"]').fill(token);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.waitForURL((u) => u.pathname === '/');
  log('signed in');

  // The held call shows up in the queue.
  const rows = page.locator('a[href^="/approvals/apr_"]');
  await poll('the held call in the queue', async () => (await rows.count()) > 0, { reload: true });
  const hrefs = await rows.evaluateAll((links) => links.map((a) => a.getAttribute('href')));
  const ids = [...new Set(hrefs.map((h) => h.match(/^\/approvals\/(apr_[0-9a-f]+)/)?.[1]))];
  check(ids.length === 1 && ids[0], `expected one request in the queue, links: ${hrefs.join(' ')}`);
  const id = ids[0];
  check((await bodyText()).includes(TOOL), `the queue does not name the tool ${TOOL}`);
  const queueShot = await screenshot('queue.png');
  stillHeld('before anyone approved');

  // The request's page: tool, arguments, pending.
  await rows.first().click();
  await page.waitForURL((u) => u.pathname === `/approvals/${id}`);
  const text = await bodyText();
  for (const want of [id, TOOL, FILE]) check(text.includes(want), `the request page does not show ${want}`);
  // The right-to-left override in the arguments is shown as a highlighted mark, never applied,
  // and the request carries a warning (both visible in detail.png).
  check(!text.includes('\u202e'), 'the request page shows a raw U+202E');
  const marks = await page.locator('pre.arguments .hidden-char').allInnerTexts();
  check(marks.includes('⟨U+202E⟩'), `the arguments do not mark U+202E: ${JSON.stringify(marks)}`);
  check(text.includes('/home/user/⟨U+202E⟩cod.tropeR'), 'the marked argument is not shown in reading order');
  check(/invisible or look-alike characters/.test(text), 'the request page does not warn about hidden characters');
  const before = await statusText();
  check(before === 'pending', `the request page says status ${before}, not pending`);

  // Approve it with notes (the Notes field of the form that holds the Approve button).
  const approve = page.getByRole('button', { name: 'Approve', exact: true });
  const approveForm = page.locator('form').filter({ has: approve });
  await approveForm.getByRole('textbox', { name: /^notes\b/i }).fill(NOTES);
  const detailShot = await screenshot('detail.png');
  stillHeld('before the approval');
  const clicked = Date.now();
  await approve.click();
  await approve.waitFor({ state: 'detached' });
  // The page after approving: the decision confirmed (the status message), the request approved
  // (or already executed), and the notes in its history.
  await poll('the approval on the request page', async () => {
    const notice = await page.getByRole('status').innerText({ timeout: 2_000 });
    const status = await statusText();
    const body = await bodyText();
    return /\bapproved\b/i.test(notice) && ['approved', 'executed'].includes(status) && body.includes(NOTES);
  });
  log(`approved ${id}`);

  // The waiting client gets the tool's real output.
  const resultAt = await within(RELEASE_MS, client.results(1));
  check(resultAt, `the client had no result ${RELEASE_MS / 1000} s after the approval`);
  let result;
  try {
    result = JSON.parse(client.lines()[0]);
  } catch {
    throw new Failure(`the client printed no JSON result: ${client.stdoutText.trim()}`);
  }
  check(!result.isError && result.content?.[0]?.text === OUTPUT, `unexpected result ${JSON.stringify(result)}`);
  log(`the client got ${JSON.stringify(OUTPUT)} ${((resultAt - clicked) / 1000).toFixed(1)} s after the click`);

  // mcp-gate records that the approved call ran.
  await poll('status executed on the request page', async () => (await statusText()) === 'executed', {
    reload: true,
  });
  log('the request page says executed');
  const approvedShot = await screenshot('approved.png');
  await context.close();

  const phoneShots = await onThePhone(base);
  const taskShots = await asATask();

  // The client stops (and mcp-gate with it) once its stdin closes, and agrees with the results.
  await browser.close();
  browser = undefined;
  client.stdin.end();
  const exit = await within(RELEASE_MS, client.exited);
  check(exit, `the client did not exit ${RELEASE_MS / 1000} s after its stdin closed`);
  check(exit.code === 0, `the client exited with ${exit.code ?? exit.signal}`);

  console.log(`screenshots:\n  ${[queueShot, detailShot, approvedShot, ...phoneShots, ...taskShots].join('\n  ')}`);
  const ms = Date.now() - started;
  console.log(`PASS browser: approved in Chromium, on a desktop and on a phone, and a TypeScript SDK task; every held call returned its real output (${ms} ms)`);
}

/** The second held call, on a phone-sized screen, signed in with `mcp-gate approvals open`. */
async function onThePhone(base) {
  // The second call is held once the first returned.
  const id = await poll('the second held call', async () => {
    const listed = JSON.parse(await approvalsCommand(base, ['list', '--json']));
    const found = listed.approvals.find((a) => a.arguments?.path === PHONE_FILE);
    return found?.id;
  });
  stillHeld('before the phone approved', 1);
  const printed = await approvalsCommand(base, ['open', id]);
  const link = printed.match(/(http:\/\/\S+\/login\/link\/[0-9a-f]+)/)?.[1];
  check(link && link.startsWith(base), `mcp-gate approvals open printed no sign-in link: ${printed}`);
  log(`mcp-gate approvals open ${id} printed a sign-in link`);

  const phone = await browser.newContext({ viewport: PHONE, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  page = await phone.newPage();
  watchPage(page);
  await page.goto(link);
  const confirm = page.getByRole('button', { name: /^Sign in as / });
  await confirm.waitFor();
  const signInShot = await screenshot('phone-signin.png');
  await confirm.tap();
  await page.waitForURL((u) => u.pathname === `/approvals/${id}`);
  log('signed in on the phone through the one-time link, at the request');

  // Above the fold: the call (server, tool, arguments) and both decision buttons.
  const approve = page.getByRole('button', { name: 'Approve', exact: true });
  const deny = page.getByRole('button', { name: 'Deny', exact: true });
  const call = page.locator('dl.call');
  await aboveTheFold(call.locator('dd').filter({ hasText: /^\s*files\s*$/ }), 'the server', PHONE.height);
  await aboveTheFold(call.locator('dd').filter({ hasText: TOOL }), 'the tool', PHONE.height);
  await aboveTheFold(page.locator('pre.arguments'), 'the arguments', PHONE.height);
  check((await page.locator('pre.arguments').innerText()).includes(PHONE_FILE), 'the arguments do not show the file');
  await aboveTheFold(approve, 'the Approve button', PHONE.height);
  await aboveTheFold(deny, 'the Deny button', PHONE.height);
  const wide = await page.evaluate(() => document.documentElement.scrollWidth);
  check(wide <= PHONE.width, `the request page scrolls sideways on a phone (${wide} px wide)`);
  const detailShot = await screenshot('phone-detail.png');
  // The first screen as the phone shows it, without scrolling.
  const foldShot = path.join(OUT, 'phone-fold.png');
  await page.screenshot({ path: foldShot });

  // The queue on the phone: the request, readable without sideways scrolling.
  await page.goto(`${base}/`);
  const row = page.locator(`a[href="/approvals/${id}"]`);
  await row.waitFor();
  const queueWide = await page.evaluate(() => document.documentElement.scrollWidth);
  check(queueWide <= PHONE.width, `the queue scrolls sideways on a phone (${queueWide} px wide)`);
  const queueShot = await screenshot('phone-queue.png');
  await row.tap();
  await page.waitForURL((u) => u.pathname === `/approvals/${id}`);

  const tapped = Date.now();
  await approve.tap();
  await approve.waitFor({ state: 'detached' });
  await poll('the approval on the phone', async () => /\bapproved\b/i.test(await page.getByRole('status').innerText({ timeout: 2_000 })));
  const resultAt = await within(RELEASE_MS, client.results(2));
  check(resultAt, `the client had no second result ${RELEASE_MS / 1000} s after the approval on the phone`);
  const second = JSON.parse(client.lines()[1]);
  check(!second.isError && second.content?.[0]?.text === `deleted ${PHONE_FILE}`, `unexpected result ${JSON.stringify(second)}`);
  log(`approved on the phone; the client got its output ${((resultAt - tapped) / 1000).toFixed(1)} s after the tap`);
  const approvedShot = await screenshot('phone-approved.png');

  // The link worked once: a second use (from its own page's origin) is refused.
  const again = await fetch(link, { method: 'POST', headers: { Origin: base }, redirect: 'manual' });
  check(again.status === 410, `a used sign-in link answered ${again.status}, not 410`);
  await phone.close();
  return [signInShot, detailShot, foldShot, queueShot, approvedShot];
}

/**
 * A held call made as a task by the TypeScript SDK client, through a second mcp-gate over stdio
 * (its own data directory and dashboard), approved in a desktop browser.
 */
async function asATask() {
  const { Client } = await sdk('client/index.js');
  const { StdioClientTransport } = await sdk('client/stdio.js');
  taskDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-gate-browser-task-'));
  const taskEnv = { ...env, MCP_GATE_DATA_DIR: taskDir, MCP_GATE_APPROVALS_LISTEN: '127.0.0.1:0' };
  taskEnv.MCP_GATE_LOG = env.MCP_GATE_LOG || 'info';
  delete taskEnv.MCP_GATE_TOKEN;
  delete taskEnv.MCP_GATE_WAIT_SECS;
  const transport = new StdioClientTransport({
    command: GATE,
    args: ['--config', path.join(HERE, 'gate.toml'), '--name', 'files', '--', GATE, 'demo-server'],
    env: taskEnv,
    stderr: 'pipe',
  });
  const gateLog = fs.openSync(TASK_LOG, 'w');
  let stderr = '';
  const printed = new Promise((resolve) => {
    transport.stderr.on('data', (s) => {
      fs.writeSync(gateLog, s);
      stderr += s;
      const m = stderr.match(/^mcp-gate: approvals at (http:\/\/\S+?)\/?\n/m);
      if (m) resolve(m[1]);
    });
  });
  taskClient = new Client({ name: 'browser-task', version: '1.0.0' }, { capabilities: {} });
  await taskClient.connect(transport);
  taskGate = transport._process;
  const base = await within(STEP_MS, printed);
  check(base, `the task client's mcp-gate printed no approvals URL (${TASK_LOG})`);
  log(`TypeScript SDK client connected; its mcp-gate's approvals at ${base}/`);

  // The SDK makes a task of the call only when the tool is listed as taking tasks.
  const { tools } = await taskClient.listTools();
  const listed = tools.find((t) => t.name === TOOL);
  check(listed?.execution?.taskSupport === 'optional', `${TOOL} is not listed as taking tasks: ${JSON.stringify(listed)}`);

  let created;
  const seen = [];
  const streamed = (async () => {
    for await (const message of taskClient.experimental.tasks.callToolStream({ name: TOOL, arguments: { path: FILE } })) {
      seen.push(message);
      if (message.type === 'taskCreated') created?.(message.task);
    }
  })();
  const task = await within(STEP_MS, new Promise((resolve) => (created = resolve)));
  check(task, `the stream yielded no task: ${JSON.stringify(seen)}`);
  check(task.status === 'working' && task.taskId.startsWith('mcpg-'), `unexpected task ${JSON.stringify(task)}`);
  const url = task.statusMessage?.match(/(http:\/\/\S+\/approvals\/(apr_[0-9a-f]+))/);
  check(url && url[1].startsWith(base), `the task's status message has no approval URL: ${task.statusMessage}`);
  const id = url[2];
  log(`the stream yielded task ${task.taskId} (working) for ${id}`);

  // Sign in with the token file this mcp-gate created, then open the URL the task carries.
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  watchPage(page);
  await page.goto(`${base}/`);
  await page.locator('input[name="token"]').fill(fs.readFileSync(path.join(taskDir, 'approver-token'), 'utf8').trim());
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.waitForURL((u) => u.pathname === '/');
  await page.goto(url[1]);
  const channel = page.locator('dt', { hasText: /^\s*Channel\s*$/ }).locator('xpath=following-sibling::dd[1]');
  const shown = (await channel.innerText()).trim();
  check(/^task\b/.test(shown), `the request page shows channel ${JSON.stringify(shown)}, not task`);
  check((await statusText()) === 'pending', 'the task-held request is not pending');
  check(seen.every((m) => m.type !== 'result'), `the stream had a result before the approval: ${JSON.stringify(seen)}`);
  const detailShot = await screenshot('task-detail.png');

  const approve = page.getByRole('button', { name: 'Approve', exact: true });
  const clicked = Date.now();
  await approve.click();
  await approve.waitFor({ state: 'detached' });
  await poll('the approval of the task', async () => /\bapproved\b/i.test(await page.getByRole('status').innerText({ timeout: 2_000 })));
  check(await within(RELEASE_MS, streamed.then(() => true)), `the stream did not end ${RELEASE_MS / 1000} s after the approval`);
  const last = seen.at(-1);
  check(
    last?.type === 'result' && !last.result.isError && last.result.content?.[0]?.text === OUTPUT,
    `the stream ended with ${JSON.stringify(last)}`,
  );
  log(`the stream yielded ${JSON.stringify(OUTPUT)} ${((Date.now() - clicked) / 1000).toFixed(1)} s after the click`);
  await poll('status executed on the task-held request', async () => (await statusText()) === 'executed', { reload: true });
  const approvedShot = await screenshot('task-approved.png');
  await context.close();
  await taskClient.close();
  taskClient = undefined;
  return [detailShot, approvedShot];
}

try {
  await main();
  clearTimeout(overall);
  await cleanup();
} catch (e) {
  await fail(e instanceof Failure ? e.message : e.stack || String(e));
}
