/**
 * moi_charts.js: the dashboard's charts, drawn with uPlot (vendor/uplot/, MIT).
 *
 *   moi_charts.init(panel, div[, {lastJobs: 1000, minutes: 60}])
 *
 * Needs uPlot and moi_list.js loaded first; follows a panel made by
 * moi_list.init, so it costs no extra connection.  Two charts:
 *
 * - the task stream: one lane per engine (the info field `engine`, written
 *   when a job starts), each of the last `lastJobs` jobs to start a bar from
 *   its start to its end (to now while it runs), coloured by status; hover
 *   a bar for the job's name, status and duration;
 * - jobs by status over the last `minutes` minutes, one sample a minute,
 *   worked out from every job's date_created, date_start and date_end.
 *
 * Both are redrawn live, at most a few times a second.  Stable hooks:
 * .moi-stream[data-bars][data-lanes], .moi-stream-tip, .moi-history[data-latest].
 */
(function (root) {
  "use strict";

  const COLORS = Object.freeze({
    Queued: "#6b7280",
    Running: "#2563eb",
    Success: "#15803d",
    Failed: "#b91c1c",
    Cancelled: "#c2410c",
    Pending: "#a16207",
    "": "#9ca3af",
  });
  const HISTORY = ["Queued", "Running", "Success", "Failed", "Cancelled", "Pending"];
  const LANE_PX = 22;
  const REDRAW_MS = 250;
  const HISTORY_MS = 2000;
  const MINUTE = 60 * 1000;
  const NO_ENGINE = "(no engine)";

  function element(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  /** One dashboard's charts, fed by `panel`'s job changes. */
  class Charts {
    constructor(panel, div, options) {
      this.panel = panel;
      this.div = div;
      this.lastJobs = options.lastJobs || 1000;
      this.minutes = options.minutes || 60;
      this.jobs = new Map();   // id -> info object of a job that started
      this.parsed = new WeakMap();  // info object -> [created, start, end] (a change is a new object)
      this.lanes = [];
      this.bars = [];
      this.streamTimer = null;
      this.historyTimer = null;
      this.build();
      panel.listeners.push((info, before) => this.onJob(info, before));
      for (const node of panel.nodes.values()) if (!node.isGroup) this.onJob(node.info, null);
      this.scheduleStream();
      this.scheduleHistory();
      // running bars grow and the hour moves on
      this.clock = setInterval(() => {
        this.scheduleStream();
        this.scheduleHistory();
      }, 5000);
      this.resize = () => this.fit();
      root.addEventListener("resize", this.resize);
    }

    build() {
      const div = this.div;
      div.classList.add("moi-charts");
      const stream = element("section", "moi-stream");
      stream.append(element("h3", "moi-chart-title", "Task stream (engines as lanes)"));
      this.streamBox = element("div", "moi-chart");
      this.tip = element("div", "moi-stream-tip");
      this.tip.hidden = true;
      this.streamBox.append(this.tip);
      stream.append(this.streamBox);
      const history = element("section", "moi-history");
      history.append(element("h3", "moi-chart-title", `Jobs by status, last ${this.minutes} minutes`));
      this.historyBox = element("div", "moi-chart");
      history.append(this.historyBox);
      div.replaceChildren(stream, history);
      this.streamEl = stream;
      this.historyEl = history;
      const width = this.width();
      this.stream = new root.uPlot({
        width,
        height: this.streamHeight(),
        scales: {
          x: { time: true },
          y: { auto: false, range: () => [-0.5, Math.max(1, this.lanes.length) - 0.5] },
        },
        axes: [
          {},
          {
            size: 150,
            splits: () => this.lanes.map((_, i) => i),
            values: (u, splits) => splits.map((i) => this.lanes[i] ?? ""),
          },
        ],
        series: [{}, { label: "jobs", paths: () => null, points: { show: false } }],
        legend: { show: false },
        cursor: { drag: { x: false, y: false }, points: { show: false } },
        hooks: {
          draw: [(u) => this.drawBars(u)],
          setCursor: [(u) => this.hover(u)],
        },
      }, [[0, 1], [0, 0]], this.streamBox);
      this.history = new root.uPlot({
        width,
        height: 180,
        scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(1, hi * 1.1)] } },
        series: [{}, ...HISTORY.map((s) => ({ label: s, stroke: COLORS[s], width: 2, points: { show: false } }))],
        axes: [{}, { size: 50 }],
      }, [[], ...HISTORY.map(() => [])], this.historyBox);
    }

    width() {
      return Math.max(300, Math.floor(this.div.clientWidth || 600));
    }

    streamHeight() {
      return 50 + Math.max(1, this.lanes.length) * LANE_PX;
    }

    fit() {
      const width = this.width();
      this.stream.setSize({ width, height: this.streamHeight() });
      this.history.setSize({ width, height: 180 });
    }

    /** Browser time (ms) of a server date string, or null. */
    when(text) {
      const date = root.moi_list.parseDate(text);
      return date ? date.getTime() + this.panel.skew : null;
    }

    /** Note a job's change: only which jobs started (dates are parsed when drawn). */
    onJob(info, before) {
      if (info === null) {
        if (before) this.jobs.delete(before.id);
      } else if (typeof info.date_start === "string" && info.date_start) {
        this.jobs.set(info.id, info);
      } else {
        this.jobs.delete(info.id);
      }
      this.scheduleStream();
      this.scheduleHistory();
    }

    /** [created, start, end] in browser time (ms or null) of an info object, parsed once. */
    times(info) {
      let found = this.parsed.get(info);
      if (found === undefined) {
        found = [this.when(info.date_created), this.when(info.date_start), this.when(info.date_end)];
        this.parsed.set(info, found);
      }
      return found;
    }

    bar(info) {
      const status = info.status === null || info.status === undefined ? "" : String(info.status);
      const [, start, end] = this.times(info);
      return {
        id: info.id,
        name: info.name === null || info.name === undefined ? "(unnamed)" : String(info.name),
        status,
        key: root.moi_list.countKey(status),
        lane: typeof info.engine === "string" && info.engine ? info.engine : NO_ENGINE,
        start,
        end,
      };
    }

    scheduleStream() {
      if (this.streamTimer === null) this.streamTimer = setTimeout(() => this.drawStream(), REDRAW_MS);
    }

    scheduleHistory() {
      if (this.historyTimer === null) this.historyTimer = setTimeout(() => this.drawHistory(), HISTORY_MS);
    }

    /** Keep the last `lastJobs` jobs to start; lanes are their engines. */
    drawStream() {
      this.streamTimer = null;
      let infos = [...this.jobs.values()];
      if (infos.length > this.lastJobs) {
        // the server's date strings sort as text: no parsing of jobs left out
        infos.sort((a, b) => (a.date_start < b.date_start ? 1 : a.date_start > b.date_start ? -1 : 0));
        infos = infos.slice(0, this.lastJobs);
        this.jobs = new Map(infos.map((i) => [i.id, i]));
      }
      const bars = infos.map((i) => this.bar(i)).filter((b) => b.start !== null);
      const lanes = [...new Set(bars.map((b) => b.lane))].sort();
      const index = new Map(lanes.map((l, i) => [l, i]));
      const now = Date.now();
      let lo = Infinity;
      let hi = -Infinity;
      for (const bar of bars) {
        bar.y = index.get(bar.lane);
        bar.to = bar.end === null ? now : bar.end;
        lo = Math.min(lo, bar.start);
        hi = Math.max(hi, bar.to);
      }
      if (!bars.length) {
        lo = now - MINUTE;
        hi = now;
      }
      if (hi - lo < 1000) hi = lo + 1000;
      const laneChange = lanes.length !== this.lanes.length;
      this.lanes = lanes;
      this.bars = bars;
      if (laneChange) this.stream.setSize({ width: this.width(), height: this.streamHeight() });
      // the (invisible) series spans the lanes, so that the y scale is laid out
      this.stream.setData([[lo / 1000, hi / 1000], [0, Math.max(0, lanes.length - 1)]]);
      this.stream.setScale("y", { min: -0.5, max: Math.max(1, lanes.length) - 0.5 });
      this.streamEl.dataset.bars = String(bars.length);
      this.streamEl.dataset.lanes = String(lanes.length);
    }

    drawBars(u) {
      const ctx = u.ctx;
      const height = Math.max(2, Math.abs(u.valToPos(0, "y", true) - u.valToPos(1, "y", true)) * 0.7);
      ctx.save();
      ctx.beginPath();
      ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
      ctx.clip();
      for (const bar of this.bars) {
        const x0 = u.valToPos(bar.start / 1000, "x", true);
        const x1 = u.valToPos(bar.to / 1000, "x", true);
        const yc = u.valToPos(bar.y, "y", true);
        ctx.fillStyle = COLORS[bar.key] || COLORS[""];
        ctx.fillRect(x0, yc - height / 2, Math.max(1, x1 - x0), height);
      }
      ctx.restore();
    }

    /** The bar under the cursor (within 3 px), or null. */
    barAt(u, left, top) {
      if (left === null || left < 0 || top === null || top < 0) return null;
      const lane = Math.round(u.posToVal(top, "y"));
      let best = null;
      let bestGap = 3;
      for (const bar of this.bars) {
        if (bar.y !== lane) continue;
        const x0 = u.valToPos(bar.start / 1000, "x");
        const x1 = Math.max(x0 + 1, u.valToPos(bar.to / 1000, "x"));
        const gap = left < x0 ? x0 - left : left > x1 ? left - x1 : 0;
        if (gap <= bestGap) {
          best = bar;
          bestGap = gap;
        }
      }
      return best;
    }

    hover(u) {
      const bar = this.barAt(u, u.cursor.left, u.cursor.top);
      if (!bar) {
        this.tip.hidden = true;
        return;
      }
      const took = root.moi_list.formatElapsed(bar.to - bar.start, true);
      this.tip.textContent = `${bar.name} · ${bar.status || "unknown"} · ${took}${bar.end === null ? " so far" : ""}`;
      this.tip.dataset.id = bar.id;
      this.tip.hidden = false;
      const box = this.streamBox.getBoundingClientRect();
      const over = u.over.getBoundingClientRect();
      this.tip.style.left = `${over.left - box.left + u.cursor.left + 12}px`;
      this.tip.style.top = `${over.top - box.top + u.cursor.top + 12}px`;
    }

    /** Where bar `id` is drawn, in page (client) coordinates, or null (for tests and tools). */
    barPosition(id) {
      const bar = this.bars.find((b) => b.id === id);
      if (!bar) return null;
      const u = this.stream;
      const over = u.over.getBoundingClientRect();
      const x0 = u.valToPos(bar.start / 1000, "x");
      const x1 = Math.max(x0 + 1, u.valToPos(bar.to / 1000, "x"));
      return { x: over.left + (x0 + x1) / 2, y: over.top + u.valToPos(bar.y, "y") };
    }

    /** Counts by status at each minute of the last hour, from every job's dates. */
    drawHistory() {
      this.historyTimer = null;
      const n = this.minutes + 1;
      const now = Date.now();
      const t0 = now - this.minutes * MINUTE;
      const diff = new Map(HISTORY.map((s) => [s, new Float64Array(n + 1)]));
      const index = (t) => Math.min(n, Math.max(0, Math.ceil((t - t0) / MINUTE)));
      const span = (status, from, to) => {
        const d = diff.get(status);
        if (!d || from === null) return;
        const a = index(from);
        const b = to === null ? n : index(to);
        if (a < b) {
          d[a] += 1;
          d[b] -= 1;
        }
      };
      for (const node of this.panel.nodes.values()) {
        if (node.isGroup) continue;
        const info = node.info;
        const key = root.moi_list.countKey(info.status);
        const [created, start, end] = this.times(info);
        const waiting = key === "Pending" ? "Pending" : "Queued";
        span(waiting, created, start ?? end);
        if (start !== null) span("Running", start, end);
        if (end !== null) span(key, end, null);
        else if (start === null && created === null) span(key, t0, null);
      }
      const xs = [];
      for (let i = 0; i < n; i += 1) xs.push((t0 + i * MINUTE) / 1000);
      xs[n - 1] = now / 1000;
      const data = [xs];
      const latest = {};
      for (const s of HISTORY) {
        const d = diff.get(s);
        const ys = [];
        let run = 0;
        for (let i = 0; i < n; i += 1) {
          run += d[i];
          ys.push(run);
        }
        latest[s] = ys[n - 1];
        data.push(ys);
      }
      this.history.setData(data);
      this.historyEl.dataset.latest = JSON.stringify(latest);
    }

    close() {
      clearInterval(this.clock);
      clearTimeout(this.streamTimer);
      clearTimeout(this.historyTimer);
      root.removeEventListener("resize", this.resize);
      this.stream.destroy();
      this.history.destroy();
    }
  }

  const charts = [];

  root.moi_charts = {
    COLORS,
    /** Every Charts made by init, oldest first. */
    charts,

    /**
     * Draw the task stream and the status history of `panel` inside `div`.
     *
     * @param {Panel} panel  A panel made by moi_list.init.
     * @param {Element|string} div  Element to draw in (or its id).
     * @param {object} [options]  {lastJobs: jobs in the stream (1000), minutes: history span (60)}
     * @returns {Charts}
     */
    init(panel, div, options = {}) {
      if (typeof root.uPlot !== "function") {
        throw new Error("moi_charts.init: load vendor/uplot/uPlot.iife.min.js first");
      }
      if (!panel || !Array.isArray(panel.listeners) || !(panel.nodes instanceof Map)) {
        throw new Error("moi_charts.init: panel must be what moi_list.init returned");
      }
      const el = typeof div === "string" ? document.getElementById(div) : div;
      if (!(el instanceof Element)) throw new Error("moi_charts.init: div must be an element (or its id)");
      const made = new Charts(panel, el, options || {});
      charts.push(made);
      return made;
    },
  };
})(typeof globalThis !== "undefined" ? globalThis : window);
