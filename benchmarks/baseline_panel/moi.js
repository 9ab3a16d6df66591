/**
 * moi.js: the browser end of moi's websocket.
 *
 * One connection per page, shared by everything on it (the job panel of
 * moi_list.js included).  Frames from the server are JSON objects with one
 * action: {"add"|"update"|"remove"|"get": info} or {"error": {message, action, ids}}.
 * Frames to the server: {"get": [ids]}, {"remove": [ids]}, {"cancel": [ids]},
 * {"close": null}.
 *
 *   moi.init(group_id, host, on_open, on_close, on_error[, options])
 *   moi.add_callback("update", info => ...)
 *   moi.send("cancel", [job_id])
 *   moi.events.addEventListener("open" | "close" | "error" | "message" | "reconnect", ...)
 *   moi.close()
 *
 * The connection comes back by itself, waiting longer after each failure
 * (capped exponential back-off with jitter), and after every (re)connect it
 * asks for the whole tree again ({"get": []}) so nothing missed while it was
 * down stays missing.
 */
(function (root) {
  "use strict";

  /**
   * Defaults of moi.init's options; override any of them in its sixth argument.
   * Delays are in milliseconds.
   */
  const DEFAULTS = Object.freeze({
    /** Websocket path on the server. */
    path: "/moi-ws/",
    /** First wait before reconnecting. */
    initialDelay: 500,
    /** Each further failure multiplies the wait by this. */
    factor: 2,
    /** The wait never grows beyond this. */
    maxDelay: 10000,
    /** Each wait is randomised by up to this fraction either way (0 = exact). */
    jitter: 0.25,
    /** Reconnect after the connection is lost. */
    reconnect: true,
    /** Send {"get": []} once the first connection opens. */
    initialGet: true,
    /** Send {"get": []} again after every reconnect. */
    resync: true,
    /** Most frames kept while disconnected, sent once connected. */
    maxQueue: 100,
  });

  /** Actions the server sends; add_callback accepts these. */
  const SERVER_ACTIONS = Object.freeze(["add", "update", "remove", "get", "error"]);

  const events = new EventTarget();
  const callbacks = new Map(SERVER_ACTIONS.map((action) => [action, []]));

  let options = null;     // merged options while initialised, else null
  let url = null;         // websocket URL
  let groupId = null;
  let socket = null;
  let attempt = 0;        // failures since the last successful open
  let timer = null;       // pending reconnect
  let opened = 0;         // successful opens so far
  let queue = [];         // frames waiting for a connection
  let handlers = {};      // on_open / on_close / on_error given to init

  /** The websocket URL for `host` ("name:port", "", a full ws:// URL or "name:port/path/"). */
  function socketUrl(host, path) {
    const scheme = root.location && root.location.protocol === "https:" ? "wss:" : "ws:";
    if (!host) {
      return `${scheme}//${root.location.host}${path}`;
    }
    if (/^wss?:\/\//i.test(host)) {
      return host;
    }
    // the original client took "host:port/moi-ws/"; keep accepting it
    return host.includes("/") ? `${scheme}//${host}` : `${scheme}//${host}${path}`;
  }

  /** Milliseconds to wait before reconnect number `n` (0-based), given `opts`. */
  function backoffDelay(n, opts = DEFAULTS, random = Math.random) {
    const base = Math.min(opts.maxDelay, opts.initialDelay * Math.pow(opts.factor, n));
    const spread = base * opts.jitter * (2 * random() - 1);
    return Math.max(0, Math.round(Math.min(opts.maxDelay, base + spread)));
  }

  function checkFunction(value, what) {
    if (value !== undefined && value !== null && typeof value !== "function") {
      throw new Error(`moi: ${what} must be a function, not ${typeof value}`);
    }
  }

  function emit(type, detail) {
    events.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Call a page's function; an exception is reported but never breaks the connection logic. */
  function safely(func, arg) {
    try {
      func(arg);
    } catch (err) {
      setTimeout(() => { throw err; });
    }
  }

  function connect() {
    timer = null;
    const ws = new WebSocket(url);
    socket = ws;
    ws.addEventListener("open", (event) => {
      if (socket !== ws) return;
      const first = opened === 0;
      attempt = 0;
      opened += 1;
      if (first ? options.initialGet : options.resync) {
        ws.send(JSON.stringify({ get: [] }));
      }
      const waiting = queue;
      queue = [];
      for (const frame of waiting) ws.send(frame);
      emit("open", { first, url });
      if (handlers.on_open) safely(handlers.on_open, event);
    });
    ws.addEventListener("message", (event) => {
      if (socket !== ws) return;
      receive(event.data);
    });
    ws.addEventListener("error", (event) => {
      if (socket !== ws) return;
      emit("error", { event });
      if (handlers.on_error) safely(handlers.on_error, event);
    });
    ws.addEventListener("close", (event) => {
      if (socket !== ws) return;
      socket = null;
      const retry = options !== null && options.reconnect;
      const delay = retry ? backoffDelay(attempt, options) : null;
      emit("close", { code: event.code, reason: event.reason, retryIn: delay });
      if (handlers.on_close) safely(handlers.on_close, event);
      if (retry && options !== null && socket === null && timer === null) {
        attempt += 1;
        timer = setTimeout(connect, delay);
        emit("reconnect", { attempt, delay });
      }
    });
  }

  function receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (err) {
      emit("error", { message: `moi: the server sent a frame that is not JSON: ${err.message}` });
      return;
    }
    if (frame === null || typeof frame !== "object" || Array.isArray(frame)) {
      emit("error", { message: "moi: the server sent a frame that is not an object" });
      return;
    }
    events.dispatchEvent(new MessageEvent("message", { data: frame }));
    for (const [action, data] of Object.entries(frame)) {
      // a copy: a callback may add or remove callbacks; one broken callback starves no other
      for (const func of [...(callbacks.get(action) || [])]) safely(func, data);
    }
  }

  /** Reconnect now instead of waiting (e.g. the browser came back online). */
  function hurry() {
    if (timer !== null) {
      clearTimeout(timer);
      connect();
    }
  }

  if (root.addEventListener) {
    root.addEventListener("online", hurry);
  }

  const moi = {
    VERSION: "1.0.0",
    DEFAULTS,
    SERVER_ACTIONS,
    /** EventTarget firing "open", "close", "error", "reconnect" (CustomEvent, details in .detail) and "message" (MessageEvent, parsed frame in .data). */
    events,

    /**
     * Connect to the server's moi websocket.
     *
     * @param {string} group_id  Group the page shows (kept as moi.group_id).
     * @param {string} [host]    "host:port" of the server; the page's host when empty.
     * @param {function} [on_open]   Called with the event at every (re)connect.
     * @param {function} [on_close]  Called with the event whenever the connection drops.
     * @param {function} [on_error]  Called with the event on websocket errors.
     * @param {object} [opts]    Overrides of moi.DEFAULTS.
     */
    init(group_id, host, on_open, on_close, on_error, opts) {
      if (options !== null) {
        throw new Error("moi.init: already initialised; call moi.close() first");
      }
      if (typeof group_id !== "string" || group_id === "") {
        throw new Error("moi.init: group_id must be a non-empty string");
      }
      if (host !== undefined && host !== null && typeof host !== "string") {
        throw new Error("moi.init: host must be a string like \"127.0.0.1:8886\"");
      }
      checkFunction(on_open, "on_open");
      checkFunction(on_close, "on_close");
      checkFunction(on_error, "on_error");
      if (opts !== undefined && (opts === null || typeof opts !== "object")) {
        throw new Error("moi.init: options must be an object");
      }
      const unknown = Object.keys(opts || {}).filter((k) => !(k in DEFAULTS));
      if (unknown.length) {
        throw new Error(`moi.init: unknown option(s) ${unknown.join(", ")}`);
      }
      options = { ...DEFAULTS, ...opts };
      if (!(options.initialDelay >= 0 && options.factor >= 1 && options.maxDelay >= 0)) {
        throw new Error("moi.init: need initialDelay >= 0, factor >= 1 and maxDelay >= 0");
      }
      groupId = group_id;
      url = socketUrl(host, options.path);
      handlers = { on_open, on_close, on_error };
      attempt = 0;
      opened = 0;
      connect();
    },

    /**
     * Call `func(data)` for every frame carrying `action`; several functions may listen.
     *
     * @param {string} action  One of "add", "update", "remove", "get", "error".
     * @param {function} func  Receives the info object (or the error object).
     */
    add_callback(action, func) {
      if (!callbacks.has(action)) {
        throw new Error(`moi.add_callback: unknown action ${JSON.stringify(action)}; use one of ${SERVER_ACTIONS.join(", ")}`);
      }
      if (typeof func !== "function") {
        throw new Error("moi.add_callback: func must be a function");
      }
      callbacks.get(action).push(func);
    },

    /** Stop calling `func` for `action`. */
    remove_callback(action, func) {
      const list = callbacks.get(action);
      if (list) {
        const at = list.indexOf(func);
        if (at >= 0) list.splice(at, 1);
      }
    },

    /**
     * Send {action: data} to the server; kept until connected when the connection is down.
     *
     * @param {string} action  "get", "remove", "cancel" or "close".
     * @param {*} data         Usually a list of ids.
     */
    send(action, data) {
      if (options === null) {
        throw new Error("moi.send: call moi.init(...) first");
      }
      if (typeof action !== "string" || action === "") {
        throw new Error("moi.send: action must be a non-empty string");
      }
      if (action === "close") {
        moi.close();  // the server closes on request: do not come back
        return;
      }
      const frame = JSON.stringify({ [action]: data === undefined ? null : data });
      if (socket !== null && socket.readyState === WebSocket.OPEN) {
        socket.send(frame);
      } else if (queue.length < options.maxQueue) {
        queue.push(frame);
      } else {
        throw new Error(`moi.send: not connected and ${options.maxQueue} frames already wait`);
      }
    },

    /** Close the connection for good (no reconnect); moi.init may be called again. */
    close() {
      if (options === null) return;
      if (socket !== null && socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ close: null }));
      }
      if (timer !== null) {
        clearTimeout(timer);
        timer = null;
      }
      options = null;
      queue = [];
      const ws = socket;
      socket = null;
      if (ws !== null) {
        ws.close(1000, "closed by the page");
      }
      emit("close", { code: 1000, reason: "closed by the page", retryIn: null });
    },

    /** Whether moi.init was called (and moi.close not since). */
    get initialised() {
      return options !== null;
    },

    /** Whether the websocket is open right now. */
    get connected() {
      return socket !== null && socket.readyState === WebSocket.OPEN;
    },

    /** The group_id given to moi.init. */
    get group_id() {
      return groupId;
    },

    /** The websocket URL in use. */
    get url() {
      return url;
    },

    backoffDelay,
    socketUrl,
  };

  root.moi = moi;
})(typeof globalThis !== "undefined" ? globalThis : window);
