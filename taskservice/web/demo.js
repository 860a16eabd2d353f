// The demo page: send an e-mail to 1,000 users through the task service,
// as a durable job with live progress and cancel, an echo box that stays
// responsive during the send, and the SMTP sink's count from /stats.
//
// The send is a job ($/submit): its id is kept in localStorage until the
// job ends, so a reload (or a restart of the server) finds it again and the
// progress bar carries on from where the job is.

import { ErrorCode, TaskService } from "./taskservice.js";

const USERS = 1000;
const STATS_INTERVAL = 500;
const STORAGE_KEY = "taskservice.demo.job";
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
  job: $("job"),
  echoForm: $("echo-form"),
  echoInput: $("echo-input"),
  echoSend: $("echo-send"),
  echoOutput: $("echo-output"),
  sinkReceived: $("sink-received"),
  sinkNote: $("sink-note"),
};
const SINK_NOTE = ui.sinkNote.innerHTML;

const service = new TaskService();
let sending = null; // the Job being followed, or "submitting"

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

// -- the job kept across reloads ------------------------------------------

function stored() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE_KEY));
    return typeof saved?.job === "string" ? saved : null;
  } catch {
    return null;
  }
}

function remember(saved) {
  localStorage.setItem(STORAGE_KEY, JSON.stringify(saved));
}

function forget() {
  localStorage.removeItem(STORAGE_KEY);
}

// -- send an e-mail to 1,000 users --------------------------------------

function showProgress(done, total) {
  ui.progress.max = total;
  ui.progress.value = done;
  ui.progressText.textContent = `${numbers.format(done)} / ${numbers.format(total)}`;
}

function running(text) {
  ui.send.disabled = true;
  ui.cancel.disabled = false;
  ui.result.dataset.outcome = "running";
  ui.result.textContent = text;
}

function idle() {
  sending = null;
  ui.cancel.disabled = true;
  ui.send.disabled = !service.connected;
}

async function send() {
  sending = "submitting";
  running("Sending…");
  showProgress(0, USERS);
  const sinkAtStart = await sinkCount();
  let job;
  try {
    job = await service.submit("send_mail", {
      to: ADDRESSES,
      subject: "Hello from taskservice",
      body: "This message was sent by a taskservice worker.",
    });
  } catch (error) {
    ui.result.dataset.outcome = "error";
    ui.result.textContent = describe(error);
    idle();
    return;
  }
  const saved = { job: job.id, startedAt: Date.now(), sinkAtStart };
  remember(saved);
  follow(job, saved);
}

async function follow(job, saved) {
  sending = job;
  ui.job.textContent =
    `Job ${job.id}, kept in this browser until it ends: reload the page` +
    " and it carries on.";
  job.onProgress((update) => showProgress(update.done, update.total ?? USERS));
  try {
    const result = await job.result;
    showProgress(result.sent, USERS);
    const took = await duration(job, saved);
    ui.result.dataset.outcome = "ok";
    ui.result.textContent =
      `Sent ${numbers.format(result.sent)} e-mails in ${took} s.`;
    forget();
    ui.job.textContent = `Job ${job.id} has ended.`;
  } catch (error) {
    if (error.code === ErrorCode.UNAVAILABLE) {
      // The client gave up (it never does on this page): the job goes on,
      // and the next load of the page finds it again.
      ui.result.dataset.outcome = "error";
      ui.result.textContent = describe(error);
      return;
    }
    forget();
    ui.job.textContent = `Job ${job.id} has ended.`;
    if (error.code === ErrorCode.CANCELLED) {
      const { sent, countedBy } = await sentCount(job, saved);
      const took = await duration(job, saved);
      // The outcome and its text change together (a reader of the outcome
      // must not find the text of the send still running).
      ui.result.dataset.outcome = "cancelled";
      ui.result.dataset.countedBy = countedBy;
      ui.result.textContent =
        `Cancelled after ${numbers.format(sent)} e-mails (${took} s).`;
    } else if (error.code === ErrorCode.JOB_NOT_FOUND) {
      ui.result.dataset.outcome = "error";
      ui.result.textContent =
        "The server no longer knows the last send (it kept no journal, or" +
        " purged the job).";
    } else {
      ui.result.dataset.outcome = "error";
      ui.result.textContent = describe(error);
    }
  } finally {
    if (sending === job) idle();
  }
}

/** Seconds from the submit to the end, by the server's clock if it says. */
async function duration(job, saved) {
  const status = await job.status().catch(() => null);
  const seconds =
    typeof status?.createdAt === "number" && typeof status?.finishedAt === "number"
      ? status.finishedAt - status.createdAt
      : (Date.now() - saved.startedAt) / 1000;
  return seconds.toFixed(2);
}

/**
 * How many e-mails a stopped job sent: what the SMTP sink counted since the
 * submit when the sink is there (the progress seen last may be a few
 * behind: the worker is stopped mid-send), else the job's last progress.
 */
async function sentCount(job, saved) {
  const now = await sinkCount();
  if (typeof saved.sinkAtStart === "number" && now !== null) {
    const sent = now - saved.sinkAtStart;
    if (sent >= 0) return { sent, countedBy: "sink" };
  }
  const status = await job.status().catch(() => null);
  const done = status?.progress?.done ?? job.progress?.done ?? 0;
  return { sent: done, countedBy: "job" };
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
ui.cancel.addEventListener("click", async () => {
  if (sending === null || sending === "submitting") return;
  ui.cancel.disabled = true;
  try {
    await sending.cancel();
  } catch (error) {
    // Not connected: say so, and let the user try again.
    ui.result.textContent = `Could not cancel: ${describe(error)}`;
    ui.cancel.disabled = sending === null;
  }
});

const saved = stored();
if (saved !== null) {
  running("Sending… (continuing the send started earlier)");
  follow(service.attach(saved.job), saved);
}

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

async function fetchStats() {
  const response = await fetch("/stats", { cache: "no-store" });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

/** The SMTP sink's count now, or null when there is none to read. */
async function sinkCount() {
  try {
    const received = (await fetchStats())?.smtpSink?.received;
    return typeof received === "number" ? received : null;
  } catch {
    return null;
  }
}

async function pollStats() {
  try {
    const stats = await fetchStats();
    const received = stats?.smtpSink?.received;
    const counted = typeof received === "number";
    ui.sinkReceived.textContent = counted ? numbers.format(received) : "—";
    ui.sinkReceived.title = "";
    const note = counted
      ? SINK_NOTE
      : "This server runs no demo SMTP sink (<code>--smtp</code> sends the" +
        " mail elsewhere): nothing to count here.";
    if (ui.sinkNote.innerHTML !== note) ui.sinkNote.innerHTML = note;
  } catch (error) {
    ui.sinkReceived.textContent = "—";
    ui.sinkReceived.title = `/stats unavailable: ${error.message}`;
  } finally {
    setTimeout(pollStats, STATS_INTERVAL);
  }
}

pollStats();
