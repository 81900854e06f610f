// Drives headless Chromium (Debian's package) through the DevTools protocol
// over a pipe, with no dependency beyond Node: opens URL, waits for the page to
// load, runs the async function body in SCRIPT inside the page (it clicks,
// types and waits like a user, through the page's own elements), and prints
// what it returns as JSON. Used by tests/suite/playground.rs.
//
//   node tests/browser/cdp.mjs URL SCRIPT.js [TIMEOUT_MS]
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, scriptPath, timeoutArg] = process.argv.slice(2);
const script = readFileSync(scriptPath, "utf8");
const timeoutMs = Number(timeoutArg || 60000);
const profile = mkdtempSync(join(tmpdir(), "cdp-profile-"));
const chrome = spawn(process.env.CHROMIUM || "chromium", [
  "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--remote-debugging-pipe", `--user-data-dir=${profile}`,
], { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe"] });
let stderr = "";
chrome.stdio[2].on("data", (d) => { stderr += d; });

const toChrome = chrome.stdio[3];
const fromChrome = chrome.stdio[4];
let nextId = 1;
const waiting = new Map();
const listeners = [];
let buffer = "";
fromChrome.on("data", (chunk) => {
  buffer += chunk.toString("utf8");
  let end;
  while ((end = buffer.indexOf("\0")) >= 0) {
    const message = JSON.parse(buffer.slice(0, end));
    buffer = buffer.slice(end + 1);
    if (message.id && waiting.has(message.id)) {
      const { resolve, reject } = waiting.get(message.id);
      waiting.delete(message.id);
      message.error ? reject(new Error(JSON.stringify(message.error))) : resolve(message.result);
    } else if (message.method) {
      listeners.forEach((l) => l(message));
    }
  }
});

function send(method, params = {}, sessionId) {
  const id = nextId++;
  toChrome.write(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }) + "\0");
  return new Promise((resolve, reject) => waiting.set(id, { resolve, reject }));
}

function once(method, sessionId) {
  return new Promise((resolve) => {
    const listener = (m) => {
      if (m.method === method && m.sessionId === sessionId) {
        listeners.splice(listeners.indexOf(listener), 1);
        resolve(m.params);
      }
    };
    listeners.push(listener);
  });
}

const timer = setTimeout(() => fail(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);

function removeProfile() {
  try {
    rmSync(profile, { recursive: true, force: true, maxRetries: 5 });
  } catch {
    // Chromium may still be writing it as it exits; a leftover temp folder is harmless.
  }
}

function fail(error) {
  console.error(`cdp: ${error.message}\n${stderr.slice(-2000)}`);
  chrome.kill("SIGKILL");
  removeProfile();
  process.exit(1);
}

try {
  const { targetId } = await send("Target.createTarget", { url: "about:blank" });
  const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
  const consoleLines = [];
  listeners.push((m) => {
    if (m.sessionId === sessionId && m.method === "Runtime.consoleAPICalled") {
      consoleLines.push(m.params.args.map((a) => a.value ?? a.description).join(" "));
    }
    if (m.sessionId === sessionId && m.method === "Runtime.exceptionThrown") {
      consoleLines.push("exception: " + m.params.exceptionDetails.text);
    }
  });
  await send("Page.enable", {}, sessionId);
  await send("Runtime.enable", {}, sessionId);
  const loaded = once("Page.loadEventFired", sessionId);
  await send("Page.navigate", { url }, sessionId);
  await loaded;
  const result = await send("Runtime.evaluate", {
    expression: `(async () => {\n${script}\n})()`,
    awaitPromise: true,
    returnByValue: true,
    userGesture: true,
  }, sessionId);
  if (result.exceptionDetails) {
    throw new Error(`the script threw: ${JSON.stringify(result.exceptionDetails.exception?.description || result.exceptionDetails.text)}; console: ${consoleLines.join(" | ")}`);
  }
  process.stdout.write(JSON.stringify({ value: result.result.value, console: consoleLines }) + "\n");
  clearTimeout(timer);
  const exited = new Promise((resolve) => chrome.once("exit", resolve));
  await send("Browser.close").catch(() => {});
  await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 5000))]);
  chrome.kill("SIGKILL");
  removeProfile();
  process.exit(0);
} catch (error) {
  fail(error);
}
