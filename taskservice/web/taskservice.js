// taskservice.js: the browser client of the taskservice gateway.
//
// A plain ES module with no dependencies and no build step. It speaks
// JSON-RPC 2.0 over one websocket, with promises, progress callbacks,
// cancellation through AbortSignal, per-call deadlines and automatic
// reconnection:
//
//     import { TaskService } from "/taskservice.js";
//     const service = await TaskService.connect();
//     const result = await service.call("send_mail", { to: addresses }, {
//       onProgress: ({ done, total }) => console.log(done, total),
//       signal: controller.signal,
//     });
//
// Calls never wait for a connection: a call made while the socket is not
// open rejects at once with UNAVAILABLE (-32006), and calls in flight when
// the socket drops reject at once with UNAVAILABLE too. Whether a call is
// safe to repeat is the caller's business (sending mail twice is not), so
// the client never resends anything by itself; listen for "reconnect" (or
// "open") to know when calls can be made again.
//
// Durable jobs are the other way round: a job lives in the server's journal,
// not on the socket, so following it again is always safe. submit() and
// attach() return a Job handle whose `result` survives a dropped socket:
// the handle attaches again ($/attach) once the socket is back.
//
//     const job = await service.submit("send_mail", { to: addresses });
//     localStorage.setItem("job", job.id);
//     job.onProgress(({ done, total }) => console.log(done, total));
//     const result = await job.result;        // or, after a reload:
//     const again = service.attach(localStorage.getItem("job"));

/**
 * The error codes of the taskservice protocol (JSON-RPC 2.0 plus our own).
 * @readonly
 * @enum {number}
 */
export const ErrorCode = Object.freeze({
  /** The server could not parse the message as JSON. */
  PARSE_ERROR: -32700,
  /** The message is not a valid JSON-RPC request. */
  INVALID_REQUEST: -32600,
  /** No task of that name. */
  METHOD_NOT_FOUND: -32601,
  /** The task's parameters were refused (also: params that are not JSON). */
  INVALID_PARAMS: -32602,
  /** An unexpected error in the server (or a malformed reply). */
  INTERNAL_ERROR: -32603,
  /** The task raised; `data` is `{type, message}`. */
  TASK_FAILED: -32000,
  /** The call outlived its deadline; `data` is `{timeout}`. */
  TIMED_OUT: -32001,
  /** The worker process died; `data` is `{signal}` or `{exitCode}`. */
  WORKER_LOST: -32002,
  /** The server is overloaded; `data.retryAfter` is in seconds. */
  OVERLOADED: -32003,
  /** The message or result is too large; `data` is `{limit}`. */
  TOO_LARGE: -32004,
  /** Not authorised. */
  UNAUTHORISED: -32005,
  /** The gateway or task server cannot be reached (or the socket dropped). */
  UNAVAILABLE: -32006,
  /** No job of that id (never submitted, or purged); `data` is `{job}`. */
  JOB_NOT_FOUND: -32007,
  /**
   * The job was cut short by a server stop and is not run again (its task
   * is not idempotent); `data` is `{job, attempts, reason}`.
   */
  INTERRUPTED: -32008,
  /** The job journal cannot record a job (disk full, read-only). */
  JOURNAL_UNAVAILABLE: -32009,
  /** The call was cancelled. */
  CANCELLED: -32800,
});

const PROGRESS = "$/progress";
const CANCEL = "$/cancelRequest";
const SUBMIT = "$/submit";
const ATTACH = "$/attach";
const JOB = "$/job";
const CANCEL_JOB = "$/cancelJob";
const SUBMIT_OPTIONS = ["key", "delay", "at", "retries", "backoff", "timeout"];

/**
 * An error reported by the task service, or by this client on its behalf.
 *
 * `name` is `"TaskServiceError"`, except for cancelled calls
 * (`code === ErrorCode.CANCELLED`) where it is `"AbortError"`, as for an
 * aborted `fetch()`, so `err.name === "AbortError"` checks work unchanged.
 */
export class TaskServiceError extends Error {
  /**
   * @param {number} code - the error code (see {@link ErrorCode}).
   * @param {string} message - the human-readable message.
   * @param {*} [data] - the error's `data` member, if any.
   * @param {{cause?: *}} [options] - standard Error options.
   */
  constructor(code, message, data = undefined, options = undefined) {
    super(message, options);
    /** @type {string} */
    this.name = code === ErrorCode.CANCELLED ? "AbortError" : "TaskServiceError";
    /** @type {number} */
    this.code = code;
    /** @type {*} */
    this.data = data;
  }

  /**
   * Build the error for a JSON-RPC `error` object received from the server.
   * @param {*} error
   * @returns {TaskServiceError}
   */
  static fromWire(error) {
    if (
      error === null ||
      typeof error !== "object" ||
      !Number.isInteger(error.code)
    ) {
      return new TaskServiceError(
        ErrorCode.INTERNAL_ERROR,
        "malformed error from server",
        { error },
      );
    }
    const message =
      typeof error.message === "string" ? error.message : "error " + error.code;
    return new TaskServiceError(error.code, message, error.data);
  }
}

/** The client's connection states, as {@link TaskService#state} reports. */
const State = Object.freeze({
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

const DEFAULTS = Object.freeze({
  reconnect: true,
  minDelay: 500,
  maxDelay: 30000,
  factor: 2,
  jitter: 0.2,
});

/**
 * The default gateway URL: `/ws` on the page's own origin, `wss:` when the
 * page came over https.
 * @returns {string}
 */
function defaultUrl() {
  if (typeof location === "undefined") {
    throw new TypeError("no page location: pass the gateway's URL");
  }
  return resolveUrl("/ws");
}

/**
 * Resolve `url` against the page and turn http(s) into ws(s).
 * @param {string} url
 * @returns {string}
 */
function resolveUrl(url) {
  const base = typeof location === "undefined" ? undefined : location.href;
  const resolved = new URL(url, base);
  if (resolved.protocol === "http:") resolved.protocol = "ws:";
  else if (resolved.protocol === "https:") resolved.protocol = "wss:";
  return resolved.href;
}

/**
 * Options of {@link TaskService}.
 * @typedef {object} TaskServiceOptions
 * @property {boolean} [reconnect=true] - reconnect when the socket drops.
 * @property {number} [minDelay=500] - ms before the first reconnection
 *   attempt.
 * @property {number} [maxDelay=30000] - the longest delay between attempts.
 * @property {number} [factor=2] - each failed attempt multiplies the delay.
 * @property {number} [jitter=0.2] - each delay is randomised by ± this
 *   fraction, so that many pages do not reconnect in lockstep.
 * @property {typeof WebSocket} [WebSocket] - the WebSocket implementation
 *   (default: the global one).
 */

/**
 * A JSON-RPC 2.0 client of the taskservice gateway over one websocket,
 * reconnecting with exponential backoff when the socket drops.
 *
 * Events (it is an EventTarget):
 * - `"open"`: the socket opened (first time and after every reconnection).
 * - `"reconnect"`: the socket opened again after a drop;
 *   `event.detail.attempts` is how many attempts it took.
 * - `"close"`: the socket closed; `event.detail` is
 *   `{code, reason, wasClean, reconnectIn}` (`reconnectIn` is the delay in
 *   ms before the next attempt, or `null` when the client will not retry).
 * - `"notification"`: a notification from the server other than progress;
 *   `event.detail` is `{method, params}`.
 * - `"protocolerror"`: a message that matches no call (a reply to no known
 *   id, an error about a message the server could not read, invalid JSON);
 *   `event.detail` is `{message}` (the message, parsed when possible).
 */
export class TaskService extends EventTarget {
  /**
   * Open a client and wait until its socket is open.
   *
   * Rejects with a {@link TaskServiceError} (UNAVAILABLE) if the first
   * attempt fails; the client is then closed. To keep trying from the start
   * instead, use `new TaskService(url, options)` and listen for `"open"`.
   *
   * @param {string} [url] - the gateway's websocket URL; default `/ws` on
   *   this page's origin (`ws:` or `wss:` following the page's scheme).
   *   Relative URLs and http(s) URLs are accepted and converted.
   * @param {TaskServiceOptions} [options]
   * @returns {Promise<TaskService>}
   */
  static async connect(url = undefined, options = {}) {
    const service = new TaskService(url, options);
    return new Promise((resolve, reject) => {
      const opened = () => {
        service.removeEventListener("close", failed);
        resolve(service);
      };
      const failed = (event) => {
        service.removeEventListener("open", opened);
        service.close();
        reject(
          new TaskServiceError(
            ErrorCode.UNAVAILABLE,
            "could not connect to the gateway",
            { url: service.url, code: event.detail.code },
          ),
        );
      };
      service.addEventListener("open", opened, { once: true });
      service.addEventListener("close", failed, { once: true });
    });
  }

  /**
   * Create a client and start connecting at once (and reconnecting, from
   * the first attempt on). Calls made before the socket opens reject with
   * UNAVAILABLE: wait for the `"open"` event, or use
   * {@link TaskService.connect}.
   *
   * @param {string} [url] - as for {@link TaskService.connect}.
   * @param {TaskServiceOptions} [options]
   */
  constructor(url = undefined, options = {}) {
    super();
    /** The websocket URL in use. @type {string} */
    this.url = url === undefined ? defaultUrl() : resolveUrl(url);
    this._options = { ...DEFAULTS, ...options };
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    /** @type {Map<number|string, Pending>} */
    this._pending = new Map();
    /** Job handles not settled yet. @type {Set<Job>} */
    this._jobs = new Set();
    this._nextId = 1;
    this._socket = null;
    this._timer = null;
    this._attempts = 0;
    this._everOpened = false;
    this._state = State.CONNECTING;
    this._open();
  }

  /**
   * The connection state: `"connecting"` (not open yet: the first attempt,
   * and the retries of a client made with `new` until one succeeds),
   * `"open"`, `"reconnecting"` (dropped; waiting or trying again) or
   * `"closed"` (after {@link TaskService#close}, or when the socket dropped
   * and `reconnect` is off).
   * @type {string}
   */
  get state() {
    return this._state;
  }

  /** Whether calls can be made now. @type {boolean} */
  get connected() {
    return this._state === State.OPEN;
  }

  /** How many calls are waiting for their reply. @type {number} */
  get inFlight() {
    return this._pending.size;
  }

  /**
   * Call `method` with `params`; resolve with its result.
   *
   * Rejects with a {@link TaskServiceError}: the server's error (e.g.
   * TASK_FAILED with `data.type` and `data.message`), CANCELLED (`name`
   * `"AbortError"`) when `signal` aborts, TIMED_OUT when the deadline
   * passes, UNAVAILABLE when the socket is not open or drops before the
   * reply, INVALID_PARAMS when `params` cannot be sent as JSON,
   * INVALID_REQUEST when `timeout` is not a positive number.
   *
   * @param {string} method - the task's name.
   * @param {object|Array|undefined} [params] - named (object) or positional
   *   (array) parameters.
   * @param {object} [options]
   * @param {(progress: {id: number, done: number, total?: number}) => void}
   *   [options.onProgress] - called with each `$/progress` notification's
   *   params (`done`, `total` and any extra keys the task reports).
   * @param {AbortSignal} [options.signal] - aborting it sends
   *   `$/cancelRequest` to the server (which stops the task) and rejects the
   *   call at once with CANCELLED; an already aborted signal rejects without
   *   sending anything.
   * @param {number} [options.timeout] - a deadline in seconds, sent as the
   *   request's `timeout` member: the server stops the task and answers
   *   TIMED_OUT. Should that answer not come 1 s after the deadline, the
   *   call is cancelled and rejected with TIMED_OUT here.
   * @returns {Promise<*>}
   */
  call(method, params = undefined, options = {}) {
    const { onProgress, signal, timeout } = options;
    if (signal?.aborted) {
      return Promise.reject(cancelled(signal));
    }
    if (this._state !== State.OPEN) {
      return Promise.reject(
        new TaskServiceError(
          ErrorCode.UNAVAILABLE,
          "not connected to the gateway",
          { state: this._state },
        ),
      );
    }
    if (
      timeout !== undefined &&
      !(typeof timeout === "number" && timeout > 0 && Number.isFinite(timeout))
    ) {
      return Promise.reject(
        new TaskServiceError(
          ErrorCode.INVALID_REQUEST,
          "timeout must be a positive number of seconds",
          { timeout },
        ),
      );
    }
    const id = this._nextId++;
    const request = { jsonrpc: "2.0", id, method };
    if (params !== undefined) request.params = params;
    if (timeout !== undefined) request.timeout = timeout;
    let text;
    try {
      text = JSON.stringify(request);
    } catch (e) {
      return Promise.reject(
        new TaskServiceError(
          ErrorCode.INVALID_PARAMS,
          "params are not JSON-serialisable",
          String(e),
          { cause: e },
        ),
      );
    }
    return new Promise((resolve, reject) => {
      const pending = new Pending(resolve, reject, onProgress);
      this._pending.set(id, pending);
      if (signal) {
        const abort = () => this._cancel(id, cancelled(signal));
        signal.addEventListener("abort", abort, { once: true });
        pending.cleanups.push(() => signal.removeEventListener("abort", abort));
      }
      if (timeout !== undefined) {
        const timer = setTimeout(
          () =>
            this._cancel(
              id,
              new TaskServiceError(ErrorCode.TIMED_OUT, "timed out", {
                timeout,
              }),
            ),
          timeout * 1000 + 1000,
        );
        pending.cleanups.push(() => clearTimeout(timer));
      }
      this._socket.send(text);
    });
  }

  /**
   * Submit a durable job (`$/submit`): the server records it in its journal
   * and runs `method` with `params` when it is due. Resolves, once the job
   * is committed, with its {@link Job} handle, already following the job.
   *
   * Rejects with a {@link TaskServiceError}: METHOD_NOT_FOUND (no such
   * task), INVALID_PARAMS (bad options), JOURNAL_UNAVAILABLE, OVERLOADED,
   * UNAVAILABLE (not connected, or the socket dropped before the answer:
   * then the job may or may not exist; submitting again with the same `key`
   * is safe, the server answers with the job it already has).
   *
   * @param {string} method - the task's name.
   * @param {object|Array|undefined} [params] - its parameters.
   * @param {object} [options]
   * @param {string} [options.key] - makes the submit idempotent: while a
   *   job of this key is unfinished or kept, submitting again returns it
   *   (with `existing: true`).
   * @param {number} [options.delay] - seconds before the job runs.
   * @param {Date|string} [options.at] - when it runs (a Date, or ISO 8601
   *   with a zone).
   * @param {number} [options.retries] - attempts after a failed first one.
   * @param {number} [options.backoff] - seconds before the first retry
   *   (doubled each time, with jitter).
   * @param {number} [options.timeout] - each attempt's deadline, in seconds.
   * @param {(progress: object) => void} [options.onProgress] - as
   *   {@link Job#onProgress}.
   * @param {boolean} [options.reattach=true] - whether the handle attaches
   *   again after the socket drops (see {@link Job}).
   * @returns {Promise<Job>}
   */
  async submit(method, params = undefined, options = {}) {
    const request = { method };
    if (params !== undefined) request.params = params;
    for (const name of SUBMIT_OPTIONS) {
      const value = options[name];
      if (value === undefined) continue;
      request[name] = value instanceof Date ? value.toISOString() : value;
    }
    const submitted = await this.call(SUBMIT, request);
    if (submitted === null || typeof submitted?.job !== "string") {
      throw new TaskServiceError(
        ErrorCode.INTERNAL_ERROR,
        "malformed reply to $/submit",
        { reply: submitted },
      );
    }
    return new Job(this, submitted.job, {
      ...options,
      state: submitted.state,
      existing: submitted.existing === true,
    });
  }

  /**
   * Follow the job `id` (`$/attach`), as submitted by this page earlier, by
   * another page or by another client. Returns its {@link Job} handle at
   * once; an unknown id makes the handle's `result` reject with
   * JOB_NOT_FOUND. Made while the socket is not open, the handle waits for
   * it (unless `reattach` is false: then `result` rejects with UNAVAILABLE).
   *
   * @param {string} id - the job's id.
   * @param {object} [options]
   * @param {(progress: object) => void} [options.onProgress] - as
   *   {@link Job#onProgress}.
   * @param {boolean} [options.reattach=true] - as for
   *   {@link TaskService#submit}.
   * @returns {Job}
   */
  attach(id, options = {}) {
    return new Job(this, id, options);
  }

  /**
   * Send a notification: a call that gets no reply.
   * @param {string} method
   * @param {object|Array} [params]
   * @throws {TaskServiceError} UNAVAILABLE when the socket is not open.
   */
  notify(method, params = undefined) {
    if (this._state !== State.OPEN) {
      throw new TaskServiceError(
        ErrorCode.UNAVAILABLE,
        "not connected to the gateway",
        { state: this._state },
      );
    }
    const message = { jsonrpc: "2.0", method };
    if (params !== undefined) message.params = params;
    this._socket.send(JSON.stringify(message));
  }

  /**
   * Close the socket for good: no more reconnection; calls in flight reject
   * with UNAVAILABLE. Fires `"close"` (with `reconnectIn: null`) unless the
   * client was closed already.
   */
  close() {
    if (this._state === State.CLOSED) return;
    this._state = State.CLOSED;
    clearTimeout(this._timer);
    this._timer = null;
    this._failAll("the client was closed");
    this._failJobs("the client was closed");
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      detach(socket);
      socket.close(1000, "client closed");
    }
    this._emitClose(1000, "client closed", true, null);
  }

  // -- internals ----------------------------------------------------------

  _open() {
    let socket;
    try {
      socket = new this._WebSocket(this.url);
    } catch (e) {
      // A malformed URL, a blocked port: behave as a failed attempt.
      queueMicrotask(() => this._dropped(1006, String(e), false));
      return;
    }
    this._socket = socket;
    socket.onopen = () => this._opened();
    socket.onmessage = (event) => this._received(event.data);
    socket.onclose = (event) => {
      if (socket !== this._socket) return;
      this._socket = null;
      this._dropped(event.code, event.reason, event.wasClean);
    };
    // Errors are always followed by "close", which does the work.
    socket.onerror = () => {};
  }

  _opened() {
    const attempts = this._attempts;
    const reconnected = this._everOpened;
    this._attempts = 0;
    this._everOpened = true;
    this._state = State.OPEN;
    this.dispatchEvent(new CustomEvent("open"));
    if (reconnected) {
      this.dispatchEvent(new CustomEvent("reconnect", { detail: { attempts } }));
    }
    for (const job of this._jobs) job._connected();
  }

  _dropped(code, reason, wasClean) {
    if (this._state === State.CLOSED) return;
    this._failAll("connection to the gateway lost", { code, reason });
    if (!this._options.reconnect) {
      this._state = State.CLOSED;
      this._failJobs("connection to the gateway lost", { code, reason });
      this._emitClose(code, reason, wasClean, null);
      return;
    }
    this._state = this._everOpened ? State.RECONNECTING : State.CONNECTING;
    const delay = this._backoff();
    this._attempts += 1;
    this._timer = setTimeout(() => {
      this._timer = null;
      this._open();
    }, delay);
    this._emitClose(code, reason, wasClean, delay);
  }

  _backoff(attempts = this._attempts) {
    const { minDelay, maxDelay, factor, jitter } = this._options;
    const base = Math.min(maxDelay, minDelay * factor ** attempts);
    const spread = 1 + jitter * (2 * Math.random() - 1);
    return Math.max(0, Math.round(base * spread));
  }

  _emitClose(code, reason, wasClean, reconnectIn) {
    this.dispatchEvent(
      new CustomEvent("close", {
        detail: { code, reason, wasClean, reconnectIn },
      }),
    );
  }

  _received(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      this._protocolError(text);
      return;
    }
    for (const item of Array.isArray(message) ? message : [message]) {
      this._dispatch(item);
    }
  }

  _dispatch(message) {
    if (message === null || typeof message !== "object") {
      this._protocolError(message);
      return;
    }
    if (typeof message.method === "string") {
      if (message.method === PROGRESS) {
        const pending = this._pending.get(message.params?.id);
        if (pending?.onProgress) {
          try {
            pending.onProgress(message.params);
          } catch (e) {
            rethrowLater(e);
          }
        }
      } else {
        this.dispatchEvent(
          new CustomEvent("notification", {
            detail: { method: message.method, params: message.params },
          }),
        );
      }
      return;
    }
    const pending = this._pending.get(message.id);
    if (pending === undefined) {
      // A late reply to a call that was cancelled or timed out here is
      // expected and dropped; anything else is worth reporting.
      const ours = typeof message.id === "number" && message.id < this._nextId;
      if (!ours) {
        this._protocolError(message);
      }
      return;
    }
    this._pending.delete(message.id);
    if ("error" in message) {
      pending.reject(TaskServiceError.fromWire(message.error));
    } else {
      pending.resolve(message.result);
    }
  }

  _protocolError(message) {
    this.dispatchEvent(new CustomEvent("protocolerror", { detail: { message } }));
  }

  _cancel(id, error) {
    const pending = this._pending.get(id);
    if (pending === undefined) return;
    this._pending.delete(id);
    if (this._state === State.OPEN) {
      this._socket.send(
        JSON.stringify({ jsonrpc: "2.0", method: CANCEL, params: { id } }),
      );
    }
    pending.reject(error);
  }

  _failAll(message, data = undefined) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const call of pending) {
      call.reject(new TaskServiceError(ErrorCode.UNAVAILABLE, message, data));
    }
  }

  _failJobs(message, data = undefined) {
    const jobs = [...this._jobs];
    this._jobs.clear();
    for (const job of jobs) {
      job._settle(new TaskServiceError(ErrorCode.UNAVAILABLE, message, data));
    }
  }
}

/**
 * A handle on one durable job, from {@link TaskService#submit} or
 * {@link TaskService#attach}. It follows the job with `$/attach` from the
 * moment it is made.
 *
 * Re-attaching: when the socket drops, `result` does not reject. The job
 * goes on in the server's journal, so the handle attaches again as soon as
 * the client has reconnected (progress resumes with the latest the server
 * has), and again if the gateway answers UNAVAILABLE while its task server
 * is away (after the client's backoff delays). `result` rejects with
 * UNAVAILABLE only when the client is closed, or stops reconnecting; with
 * JOB_NOT_FOUND if the server no longer knows the job (an in-memory journal
 * after a restart, or a result purged). With `reattach: false` a drop
 * rejects `result` with UNAVAILABLE at once, as for a call.
 */
export class Job {
  /**
   * @param {TaskService} service
   * @param {string} id
   * @param {object} options - `onProgress`, `reattach`, and from a submit
   *   `state` and `existing`.
   */
  constructor(service, id, options = {}) {
    /** The job's id (keep it to attach again later). @type {string} */
    this.id = id;
    /**
     * The job's state in the reply to `$/submit` (`"queued"` or
     * `"scheduled"`, or any state of an existing job), or `null` from
     * {@link TaskService#attach}. {@link Job#status} tells the state now.
     * @type {string|null}
     */
    this.state = options.state ?? null;
    /** Whether `$/submit` found a job of the same `key`. @type {boolean} */
    this.existing = options.existing ?? false;
    /** The latest progress received, or `null`. @type {object|null} */
    this.progress = null;
    /** Whether the job's outcome is known. @type {boolean} */
    this.settled = false;
    this._service = service;
    this._reattach = options.reattach ?? true;
    /** @type {Array<(progress: object) => void>} */
    this._listeners = [];
    this._retries = 0;
    this._timer = null;
    this._attachId = null;
    /**
     * The job's result: resolves with its value when it succeeds; rejects
     * with a {@link TaskServiceError} carrying the job's error (TASK_FAILED,
     * TIMED_OUT, WORKER_LOST, CANCELLED, INTERRUPTED ...), JOB_NOT_FOUND, or
     * UNAVAILABLE (see the class). Leaving it unobserved is not an
     * unhandled rejection: the outcome stays in the journal.
     * @type {Promise<*>}
     */
    this.result = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.result.catch(() => {});
    if (options.onProgress) this.onProgress(options.onProgress);
    service._jobs.add(this);
    this._follow();
  }

  /**
   * Call `callback(progress)` with each progress update of the job (the
   * `$/progress` params: `done`, `total`, `job`, and any keys the task
   * reports); at once with the latest if one came already. The first update
   * after each (re-)attach is the latest the server has.
   * @param {(progress: object) => void} callback
   * @returns {() => void} a function that removes the callback.
   */
  onProgress(callback) {
    this._listeners.push(callback);
    if (this.progress !== null) {
      try {
        callback(this.progress);
      } catch (e) {
        rethrowLater(e);
      }
    }
    return () => {
      this._listeners = this._listeners.filter((l) => l !== callback);
    };
  }

  /**
   * Cancel the job (`$/cancelJob`): a waiting job is cancelled at once, a
   * running one is stopped; a finished one is left as it is. Resolves with
   * `{job, state}` after; `result` then rejects with CANCELLED (unless the
   * job had finished). Rejects with UNAVAILABLE when not connected.
   * @returns {Promise<{job: string, state: string}>}
   */
  cancel() {
    return this._service.call(CANCEL_JOB, { job: this.id });
  }

  /**
   * The job as the server has it now (`$/job`): `{job, method, state,
   * attempts, maxAttempts, key, createdAt, runAt, startedAt, finishedAt,
   * progress, error, params, result}`.
   * @returns {Promise<object>}
   */
  status() {
    return this._service.call(JOB, { job: this.id });
  }

  // -- internals ----------------------------------------------------------

  _follow() {
    if (this.settled) return;
    const service = this._service;
    if (!service.connected) {
      if (!this._reattach) {
        this._settle(
          new TaskServiceError(
            ErrorCode.UNAVAILABLE,
            "not connected to the gateway",
            { state: service.state },
          ),
        );
      }
      // Otherwise: _connected() follows once the socket is open.
      return;
    }
    const attachId = {};
    this._attachId = attachId;
    service
      .call(ATTACH, { job: this.id }, {
        onProgress: (update) => this._progressed(update),
      })
      .then(
        (value) => this._settle(undefined, value),
        (error) => this._lost(attachId, error),
      );
  }

  _connected() {
    if (this._attachId === null && this._timer === null) this._follow();
  }

  _lost(attachId, error) {
    if (this.settled || attachId !== this._attachId) return;
    this._attachId = null;
    const service = this._service;
    if (
      error.code !== ErrorCode.UNAVAILABLE ||
      !this._reattach ||
      service.state === State.CLOSED
    ) {
      this._settle(error);
      return;
    }
    if (service.connected) {
      // The gateway answered: its task server is away. Try again later.
      const delay = service._backoff(this._retries);
      this._retries += 1;
      this._timer = setTimeout(() => {
        this._timer = null;
        this._follow();
      }, delay);
    }
    // Not connected: _connected() follows again once the socket is back.
  }

  _progressed(update) {
    this._retries = 0;
    this.progress = update;
    for (const listener of this._listeners) {
      try {
        listener(update);
      } catch (e) {
        rethrowLater(e);
      }
    }
  }

  _settle(error, value = undefined) {
    if (this.settled) return;
    this.settled = true;
    this._attachId = null;
    clearTimeout(this._timer);
    this._timer = null;
    this._service._jobs.delete(this);
    if (error === undefined) this._resolve(value);
    else this._reject(error);
  }
}

/** One call waiting for its reply. */
class Pending {
  constructor(resolve, reject, onProgress) {
    this.onProgress = onProgress;
    /** @type {Array<() => void>} */
    this.cleanups = [];
    this.resolve = (value) => {
      this._cleanup();
      resolve(value);
    };
    this.reject = (error) => {
      this._cleanup();
      reject(error);
    };
  }

  _cleanup() {
    for (const cleanup of this.cleanups) cleanup();
    this.cleanups = [];
  }
}

function cancelled(signal) {
  return new TaskServiceError(ErrorCode.CANCELLED, "cancelled", undefined, {
    cause: signal.reason,
  });
}

function detach(socket) {
  socket.onopen = socket.onmessage = socket.onclose = null;
  socket.onerror = () => {};
}

/** Report an exception thrown by a callback without breaking the client. */
function rethrowLater(error) {
  if (typeof globalThis.reportError === "function") {
    globalThis.reportError(error);
  } else {
    setTimeout(() => {
      throw error;
    });
  }
}
