// Gate tasks seen by the official TypeScript SDK client (@modelcontextprotocol/sdk 1.32.2,
// 2025-11-25) through the real binary, in front of @modelcontextprotocol/server-everything, over
// stdio and over `mcp-gate serve`.
//
// Checks: the held tool is listed as taking tasks; `callToolStream` yields `taskCreated` (working,
// the approval URL in its status message); approved through the API, the stream yields the
// upstream's real result and the approval was used once; denied, it yields an isError result with
// the reason; cancelled, then approved, the call never runs; server-everything's own task tool
// still streams through the proxy. Prints PASS/FAIL lines and `tasks-ts: N passed, M failed`;
// exits 1 on failure.
//
// Run: MCP_GATE_BIN=target/release/mcp-gate PEERS_NODE_MODULES=.peers/node/node_modules \
//      EVERYTHING="node .../server-everything/dist/index.js" node tests/interop/tasks_ts.mjs

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const GATE = process.env.MCP_GATE_BIN || path.join(ROOT, 'target', 'release', 'mcp-gate');
const MODULES = process.env.PEERS_NODE_MODULES || path.join(ROOT, '.peers', 'node', 'node_modules');
const EVERYTHING = (process.env.EVERYTHING || '').split(/\s+/).filter(Boolean);
const TOKEN = 'interop-approver-token-0123456789';
const CONFIG = `
[[rules]]
name = "echo needs a person"
tool = "echo"
action = "approve"

[policy]
default = "allow"

[approvals]
listen = "127.0.0.1:0"
`;

const sdk = async (file) => import(pathToFileURL(path.join(MODULES, '@modelcontextprotocol', 'sdk', 'dist', 'esm', file)).href);
const { Client } = await sdk('client/index.js');
const { StdioClientTransport } = await sdk('client/stdio.js');
const { StreamableHTTPClientTransport } = await sdk('client/streamableHttp.js');

const results = [];
function check(name, ok, detail = '') {
  results.push(Boolean(ok));
  console.log(`${ok ? 'PASS' : 'FAIL'} ${name}${ok ? '' : `: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`}`);
}

function env(dataDir) {
  return { ...process.env, MCP_GATE_TOKEN: TOKEN, MCP_GATE_DATA_DIR: dataDir, MCP_GATE_WAIT_SECS: '0', MCP_GATE_LOG: process.env.MCP_GATE_LOG || 'info' };
}

function config(dataDir) {
  const file = path.join(dataDir, 'tasks-ts.toml');
  fs.writeFileSync(file, CONFIG);
  return file;
}

/** The approval id and the approval server's API base, read from a task's status message. */
function approvalOf(task) {
  const m = /(https?:\/\/\S+?)\/approvals\/(apr_[0-9a-f]+)/.exec(task.statusMessage || '');
  return m ? { base: `${m[1]}/api/v1/approvals/`, id: m[2] } : null;
}

async function api(url, body) {
  const res = await fetch(url, {
    method: body ? 'POST' : 'GET',
    headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: await res.json() };
}

const text = (result) => (result?.content || []).map((c) => c.text || '').join(' ');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Streams one call; `onCreated(task)` runs when the task is created. Returns the messages. */
async function stream(client, name, args, onCreated) {
  const seen = [];
  for await (const message of client.experimental.tasks.callToolStream({ name, arguments: args })) {
    seen.push(message);
    if (message.type === 'taskCreated' && onCreated) await onCreated(message.task);
  }
  return seen;
}

async function scenario(label, client) {
  const { tools } = await client.listTools();
  const echo = tools.find((t) => t.name === 'echo');
  check(`${label}/echo-takes-tasks`, echo?.execution?.taskSupport === 'optional', echo);

  // Approved: the real result, and the approval used once.
  let approval = null;
  let seen = await stream(client, 'echo', { message: 'held-1' }, async (task) => {
    approval = approvalOf(task);
    check(`${label}/created-working`, task.status === 'working' && task.taskId.startsWith('mcpg-'), task);
    check(`${label}/created-url`, approval !== null, task.statusMessage);
    if (approval) {
      const r = await api(`${approval.base}${approval.id}/approve`, { notes: 'ok from ts' });
      check(`${label}/api-approve`, r.status === 200 && r.body.status === 'approved', r);
    }
  });
  let last = seen.at(-1);
  check(`${label}/approved-result`, last?.type === 'result' && !last.result.isError && text(last.result).includes('held-1'), last);
  if (approval) {
    const a = await api(`${approval.base}${approval.id}`);
    check(`${label}/ran-once`, a.body.status === 'executed' && a.body.uses === 1, a.body);
  }

  // Denied: an isError result with the reason.
  seen = await stream(client, 'echo', { message: 'held-2' }, async (task) => {
    const a = approvalOf(task);
    if (a) await api(`${a.base}${a.id}/deny`, { reason: 'not from typescript', approver: 'alice' });
  });
  last = seen.at(-1);
  check(`${label}/denied-result`, last?.type === 'result' && last.result.isError && text(last.result).includes('not from typescript'), last);

  // Cancelled, then approved: never run.
  let cancelled = null;
  seen = await stream(client, 'echo', { message: 'held-3' }, async (task) => {
    cancelled = approvalOf(task);
    await client.experimental.tasks.cancelTask(task.taskId);
    if (cancelled) await api(`${cancelled.base}${cancelled.id}/approve`, { notes: 'too late' });
  });
  last = seen.at(-1);
  check(`${label}/cancelled-stream-ends`, last?.type === 'error' && /cancelled/.test(String(last.error?.message)), last);
  if (cancelled) {
    await sleep(500);
    const a = await api(`${cancelled.base}${cancelled.id}`);
    check(`${label}/cancelled-not-run`, a.body.status === 'approved' && a.body.uses === 0, a.body);
  }

  // The upstream's own task tool streams through the proxy.
  seen = await stream(client, 'simulate-research-query', { topic: 'proxies' });
  const created = seen.find((m) => m.type === 'taskCreated');
  last = seen.at(-1);
  check(`${label}/upstream-task-created`, created && !created.task.taskId.startsWith('mcpg-'), seen);
  check(`${label}/upstream-task-result`, last?.type === 'result' && text(last.result).includes('proxies'), last);
}

async function overStdio() {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tasks-ts-'));
  const transport = new StdioClientTransport({
    command: GATE,
    args: ['--config', config(dataDir), '--', ...EVERYTHING, 'stdio'],
    env: env(dataDir),
    stderr: fs.openSync(path.join(dataDir, 'gate.log'), 'w'),
  });
  const client = new Client({ name: 'ts-tasks', version: '1.0.0' }, { capabilities: {} });
  await client.connect(transport);
  try {
    await scenario('stdio', client);
  } finally {
    await client.close();
  }
}

async function overServe() {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tasks-ts-serve-'));
  const logFile = path.join(dataDir, 'serve.log');
  const log = fs.openSync(logFile, 'w');
  const proc = spawn(GATE, ['serve', '--listen', '127.0.0.1:0', '--config', config(dataDir), '--', ...EVERYTHING, 'stdio'], {
    env: env(dataDir),
    stdio: ['ignore', 'ignore', log],
  });
  try {
    let url = null;
    for (let i = 0; i < 200 && !url; i++) {
      await sleep(50);
      const m = /mcp-gate: listening on (http:\/\/\S+\/mcp)/.exec(fs.readFileSync(logFile, 'utf8'));
      if (m) url = m[1];
    }
    check('serve/started', url !== null, 'no listening line in the log');
    if (!url) return;
    const client = new Client({ name: 'ts-tasks', version: '1.0.0' }, { capabilities: {} });
    await client.connect(new StreamableHTTPClientTransport(new URL(url)));
    try {
      await scenario('serve', client);
    } finally {
      await client.close();
    }
  } finally {
    proc.kill('SIGTERM');
  }
}

const timeout = (ms) => new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms));
for (const run of [overStdio, overServe]) {
  try {
    await Promise.race([run(), timeout(120_000)]);
  } catch (e) {
    check(`${run.name}/completed`, false, String(e?.stack || e));
  }
}
const passed = results.filter(Boolean).length;
console.log(`tasks-ts: ${passed} passed, ${results.length - passed} failed`);
process.exit(results.every(Boolean) ? 0 : 1);
