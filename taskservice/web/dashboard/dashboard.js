// The taskservice dashboard: one websocket (/dashboard/ws) on which the
// gateway pushes a sample every second; this page never polls. Plain
// JavaScript, no dependencies; the chart is drawn on a canvas here.

const $ = (id) => document.getElementById(id);
const numbers = new Intl.NumberFormat("en");
const rates = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });
const MAX_DELAY = 5000;

const view = {
  control: false,
  history: 300,
  points: [],
  samples: 0,
  filter: null,
  jobs: [],
  socket: null,
  nextId: 1,
  pending: new Map(),
  retryDelay: 250,
};

function text(id, value) {
  $(id).textContent = value;
}

function count(value) {
  return typeof value === "number" ? numbers.format(value) : "—";
}

function seconds(value) {
  if (typeof value !== "number") return "—";
  if (value < 0.001) return `${(value * 1e6).toFixed(0)} µs`;
  if (value < 1) return `${(value * 1000).toFixed(value < 0.01 ? 2 : 1)} ms`;
  return `${value.toFixed(2)} s`;
}

function bytes(value) {
  if (typeof value !== "number") return "—";
  return `${(value / (1024 * 1024)).toFixed(1)} MiB`;
}

function clock(epoch) {
  if (typeof epoch !== "number") return "—";
  return new Date(epoch * 1000).toLocaleTimeString("en-GB");
}

function cell(row, value, className) {
  const td = document.createElement("td");
  td.textContent = value;
  if (className) td.className = className;
  row.append(td);
  return td;
}

// -- the connection ------------------------------------------------------------

function setStatus(state, label) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = label;
}

function connect() {
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(url);
  view.socket = socket;
  socket.addEventListener("open", () => {
    view.retryDelay = 250;
    setStatus("open", "Live");
  });
  socket.addEventListener("message", (event) => receive(JSON.parse(event.data)));
  socket.addEventListener("close", () => {
    view.socket = null;
    for (const { reject } of view.pending.values()) reject(new Error("connection lost"));
    view.pending.clear();
    setStatus("reconnecting", "Reconnecting…");
    setTimeout(connect, view.retryDelay);
    view.retryDelay = Math.min(MAX_DELAY, view.retryDelay * 2);
  });
}

function request(method, params) {
  return new Promise((resolve, reject) => {
    if (!view.socket || view.socket.readyState !== WebSocket.OPEN) {
      reject(new Error("not connected"));
      return;
    }
    const id = view.nextId++;
    view.pending.set(id, { resolve, reject });
    view.socket.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
  });
}

function receive(message) {
  if (message.id !== undefined && message.method === undefined) {
    const waiting = view.pending.get(message.id);
    if (!waiting) return;
    view.pending.delete(message.id);
    if (message.error) {
      const error = new Error(message.error.message);
      error.data = message.error.data;
      error.code = message.error.code;
      waiting.reject(error);
    } else {
      waiting.resolve(message.result);
    }
    return;
  }
  const params = message.params;
  if (message.method === "hello") hello(params);
  else if (message.method === "sample") sample(params);
  else if (message.method === "jobs") listed(params);
}

// -- what the gateway pushes ---------------------------------------------------

function hello(params) {
  view.control = params.control;
  view.history = params.history;
  view.points = params.points;
  document.body.dataset.control = String(view.control);
  text("mode", view.control ? "control enabled" : "read-only");
  const select = $("job-filter");
  if (select.options.length === 1) {
    for (const state of params.states) {
      const option = document.createElement("option");
      option.value = state;
      option.textContent = state;
      select.append(option);
    }
  }
  text("chart-span", `last ${Math.round(view.history / 60)} minutes, one point per ${params.interval} s`);
  if (view.filter !== null) {
    // After a reconnect: the gateway lists all states until told otherwise.
    chooseFilter(view.filter);
  }
  drawChart();
}

function sample(params) {
  view.samples += 1;
  document.body.dataset.samples = String(view.samples);
  view.points.push(params.point);
  const oldest = params.point.at - view.history;
  while (view.points.length && view.points[0].at < oldest) view.points.shift();
  drawChart();

  const stats = params.stats;
  const server = stats.taskServer ?? {};
  const upstream = $("upstream");
  if (server.error) {
    upstream.hidden = false;
    upstream.textContent = `Task server unavailable: ${server.error.message}` +
      (server.error.data?.reason ? ` (${server.error.data.reason})` : "");
  } else {
    upstream.hidden = true;
  }
  const point = params.point;
  text("rate", point.rate === null ? "—" : rates.format(point.rate));
  text("failed-rate", point.failedRate === null ? "—" : rates.format(point.failedRate));
  text("queued", count(server.queued));
  text("running", count(server.running));
  text("completed", count(server.completed));
  text("failed", count(server.failed));
  latency(server.latency);
  workers(server);
  failures(server.recentFailures);
  jobCounts(server.jobs);
}

function latency(figures) {
  for (const name of ["p50", "p90", "p99", "max"]) text(name, seconds(figures?.[name]));
  text(
    "latency-note",
    figures
      ? `Submission to outcome, ${numbers.format(figures.calls)} calls that ended in the last ${figures.window} s.`
      : "The task server does not report latency.",
  );
}

function workers(server) {
  const body = $("workers").tBodies[0];
  const rows = [];
  for (const worker of server.workerList ?? []) {
    const row = document.createElement("tr");
    row.dataset.worker = worker.id;
    cell(row, worker.id);
    cell(row, worker.pid ?? "—");
    cell(row, worker.state, `state-${worker.state}`);
    cell(row, bytes(worker.rss));
    cell(row, count(worker.served));
    cell(row, count(worker.holding));
    rows.push(row);
  }
  body.replaceChildren(...rows);
  const size = server.workers?.size;
  text(
    "workers-note",
    typeof size === "number"
      ? `${size} kept; ${server.restarts ?? 0} replaced since start.`
      : "",
  );
}

function failures(list) {
  const body = $("failures").tBodies[0];
  const rows = [];
  for (const failure of list ?? []) {
    const row = document.createElement("tr");
    cell(row, clock(failure.at));
    cell(row, failure.task + (failure.job ? ` (job ${failure.job})` : ""));
    cell(row, failure.outcome);
    cell(row, failure.type ? `${failure.type}: ${failure.message}` : failure.message, "error");
    rows.push(row);
  }
  body.replaceChildren(...rows);
  text("failures-note", rows.length ? `The last ${rows.length} failed calls, newest first.` : "None yet.");
}

function jobCounts(jobs) {
  if (!jobs) {
    text("job-counts", "");
    return;
  }
  const parts = [];
  for (const option of $("job-filter").options) {
    if (option.value && typeof jobs[option.value] === "number") {
      parts.push(`${option.value} ${numbers.format(jobs[option.value])}`);
    }
  }
  text("job-counts", parts.join(" · "));
}

function listed(params) {
  if ((params.state ?? null) !== view.filter) return;
  renderJobs(params);
}

function renderJobs(params) {
  const body = $("jobs").tBodies[0];
  if (params.error) {
    body.replaceChildren();
    text("jobs-note", `No jobs: ${params.error.message}` +
      (typeof params.error.data === "string" ? ` (${params.error.data})` : ""));
    return;
  }
  view.jobs = params.jobs;
  const rows = view.jobs.map(jobRow);
  body.replaceChildren(...rows);
  const which = view.filter === null ? "" : ` ${view.filter}`;
  text("jobs-note", rows.length ? `The newest ${rows.length}${which} jobs.` : `No${which} jobs.`);
}

function jobRow(job) {
  const row = document.createElement("tr");
  row.dataset.job = job.job;
  row.dataset.state = job.state;
  cell(row, job.job).classList.add("mono");
  cell(row, job.method);
  cell(row, job.state, `state-${job.state}`);
  cell(row, `${job.attempts} / ${job.maxAttempts}`);
  cell(row, clock(job.createdAt));
  if (job.error) {
    const data = job.error.data;
    const detail = data && typeof data === "object" && data.type ? `${data.type}: ${data.message}` : job.error.message;
    cell(row, detail, "error");
  } else if (job.progress && typeof job.progress.done === "number") {
    cell(row, `${numbers.format(job.progress.done)} / ${numbers.format(job.progress.total ?? 0)}`);
  } else {
    cell(row, "");
  }
  const actions = cell(row, "");
  if (view.control) {
    if (["queued", "scheduled", "running"].includes(job.state)) {
      actions.append(actionButton("Cancel", "cancel", job, "cancelJob"));
    }
    if (["failed", "cancelled", "interrupted"].includes(job.state)) {
      actions.append(actionButton("Retry", "retry", job, "retryJob"));
    }
  }
  return row;
}

function actionButton(label, className, job, method) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.className = className;
  button.dataset.job = job.job;
  button.addEventListener("click", async () => {
    button.disabled = true;
    const result = $("action-result");
    try {
      const answer = await request(method, { job: job.job });
      result.dataset.outcome = "ok";
      result.textContent = method === "cancelJob"
        ? `Job ${job.job}: ${answer.state}.`
        : `Job ${job.job} submitted again as job ${answer.job} (${answer.state}).`;
    } catch (error) {
      result.dataset.outcome = "error";
      result.textContent = `${label} ${job.job} failed: ${error.message}` +
        (typeof error.data === "string" ? ` (${error.data})` : "");
      button.disabled = false;
    }
  });
  return button;
}

async function chooseFilter(state) {
  view.filter = state;
  try {
    renderJobs({ state, jobs: await request("jobs", { state }) });
  } catch (error) {
    renderJobs({ state, error: { message: error.message, data: error.data } });
  }
}

// -- the chart -------------------------------------------------------------------

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(width * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const colour = (name) => style.getPropertyValue(name).trim();
  const left = 48;
  const right = 48;
  const top = 10;
  const bottom = 22;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const points = view.points;
  const now = points.length ? points[points.length - 1].at : Date.now() / 1000;
  const start = now - view.history;
  const rateMax = niceMax(Math.max(0, ...points.map((p) => p.rate ?? 0)));
  const queuedMax = niceMax(Math.max(0, ...points.map((p) => p.queued ?? 0)));
  const x = (at) => left + ((at - start) / view.history) * plotW;

  g.font = "11px system-ui, sans-serif";
  g.lineWidth = 1;
  g.strokeStyle = colour("--border");
  g.fillStyle = colour("--muted");
  for (let i = 0; i <= 4; i += 1) {
    const y = top + (plotH * i) / 4;
    g.beginPath();
    g.moveTo(left, y);
    g.lineTo(left + plotW, y);
    g.stroke();
    g.textAlign = "right";
    g.fillText(numbers.format((rateMax * (4 - i)) / 4), left - 6, y + 4);
    g.textAlign = "left";
    g.fillText(numbers.format((queuedMax * (4 - i)) / 4), left + plotW + 6, y + 4);
  }
  g.textAlign = "center";
  for (let ago = 0; ago <= view.history; ago += 60) {
    g.fillText(ago ? `-${ago / 60} min` : "now", x(now - ago), height - 6);
  }

  const series = (key, max, name) => {
    g.strokeStyle = colour(name);
    g.lineWidth = 2;
    g.beginPath();
    let drawing = false;
    for (const point of points) {
      const value = point[key];
      if (typeof value !== "number") {
        drawing = false;
        continue;
      }
      const px = x(point.at);
      const py = top + plotH - (Math.min(value, max) / max) * plotH;
      if (drawing) g.lineTo(px, py);
      else g.moveTo(px, py);
      drawing = true;
    }
    g.stroke();
  };
  series("queued", queuedMax, "--queued");
  series("rate", rateMax, "--accent");
  canvas.dataset.points = String(points.filter((p) => typeof p.rate === "number").length);
}

// -- start -------------------------------------------------------------------------

$("job-filter").addEventListener("change", (event) => {
  chooseFilter(event.target.value || null);
});
window.addEventListener("resize", drawChart);
connect();
