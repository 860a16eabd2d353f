// The demo page: send an e-mail to 1,000 users through the task service,
// with live progress and cancel, an echo box that stays responsive during
// the send, and the SMTP sink's count from /stats.

import { ErrorCode, TaskService } from "./taskservice.js";

const USERS = 1000;
const STATS_INTERVAL = 500;
const ADDRESSES = Array.from(
  { length: USERS },
  (_, i) => `user${String(i + 1).padStart(4, "0")}@example.com`,
);
const numbers = new Intl.NumberFormat("en");

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  send: $("send"),
  cancel: $("cancel"),
  progress: $("progress"),
  progressText: $("progress-text"),
  result: $("result"),
  echoForm: $("echo-form"),
  echoInput: $("echo-input"),
  echoSend: $("echo-send"),
  echoOutput: $("echo-output"),
  sinkReceived: $("sink-received"),
};

const service = new TaskService();
let sending = null; // the AbortController of the send in progress

// -- connection state ---------------------------------------------------

function showState(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
  const open = state === "open";
  ui.send.disabled = !open || sending !== null;
  ui.echoSend.disabled = !open;
}

service.addEventListener("open", () => showState("open", "Connected"));
service.addEventListener("close", (event) => {
  const { reconnectIn } = event.detail;
  if (reconnectIn === null) {
    showState("closed", "Disconnected");
  } else {
    const seconds = (reconnectIn / 1000).toFixed(1);
    showState("reconnecting", `Disconnected: retrying in ${seconds} s…`);
  }
});

// -- send an e-mail to 1,000 users --------------------------------------

function showProgress(done, total) {
  ui.progress.max = total;
  ui.progress.value = done;
  ui.progressText.textContent = `${numbers.format(done)} / ${numbers.format(total)}`;
}

function seconds(since) {
  return ((performance.now() - since) / 1000).toFixed(2);
}

async function send() {
  const controller = new AbortController();
  sending = controller;
  ui.send.disabled = true;
  ui.cancel.disabled = false;
  ui.result.dataset.outcome = "running";
  ui.result.textContent = "Sending…";
  showProgress(0, USERS);
  let done = 0;
  const started = performance.now();
  try {
    const result = await service.call(
      "send_mail",
      {
        to: ADDRESSES,
        subject: "Hello from taskservice",
        body: "This message was sent by a taskservice worker.",
      },
      {
        signal: controller.signal,
        onProgress: (update) => {
          done = update.done;
          showProgress(update.done, update.total ?? USERS);
        },
      },
    );
    showProgress(result.sent, USERS);
    ui.result.dataset.outcome = "ok";
    ui.result.textContent =
      `Sent ${numbers.format(result.sent)} e-mails in ${seconds(started)} s.`;
  } catch (error) {
    if (error.name === "AbortError") {
      ui.result.dataset.outcome = "cancelled";
      ui.result.textContent =
        `Cancelled after ${numbers.format(done)} e-mails (${seconds(started)} s).`;
    } else {
      ui.result.dataset.outcome = "error";
      ui.result.textContent = describe(error);
    }
  } finally {
    sending = null;
    ui.cancel.disabled = true;
    ui.send.disabled = !service.connected;
  }
}

function describe(error) {
  if (error.code === undefined) return `Failed: ${error.message}`;
  let text = `Failed: ${error.message} (${error.code})`;
  if (error.code === ErrorCode.TASK_FAILED && error.data) {
    text += `: ${error.data.type}: ${error.data.message}`;
  } else if (error.code === ErrorCode.OVERLOADED && error.data?.retryAfter) {
    text += `: try again in ${error.data.retryAfter} s`;
  }
  return text;
}

ui.send.addEventListener("click", send);
ui.cancel.addEventListener("click", () => sending?.abort());

// -- echo -----------------------------------------------------------------

ui.echoForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = ui.echoInput.value;
  const started = performance.now();
  try {
    const reply = await service.call("echo", [text]);
    const ms = (performance.now() - started).toFixed(1);
    ui.echoOutput.dataset.outcome = "ok";
    ui.echoOutput.textContent = `${JSON.stringify(reply)} in ${ms} ms`;
  } catch (error) {
    ui.echoOutput.dataset.outcome = "error";
    ui.echoOutput.textContent = describe(error);
  }
});

// -- the SMTP sink's count, from /stats ------------------------------------

async function pollStats() {
  try {
    const response = await fetch("/stats", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const stats = await response.json();
    const received = stats?.smtpSink?.received;
    ui.sinkReceived.textContent =
      typeof received === "number" ? numbers.format(received) : "—";
    ui.sinkReceived.title = "";
  } catch (error) {
    ui.sinkReceived.textContent = "—";
    ui.sinkReceived.title = `/stats unavailable: ${error.message}`;
  } finally {
    setTimeout(pollStats, STATS_INTERVAL);
  }
}

pollStats();
