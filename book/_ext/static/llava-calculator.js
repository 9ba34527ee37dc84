// The book's live calculators: Pyodide (vendored, loaded once per page) runs llava_nb's pure-Python core, and
// llava_nb.live.run() returns what `python -m llava_nb memory|compare|tokens|params ... --json` prints. This file
// holds no formula: it draws the form, passes its values to Python and shows what comes back.
//
// Hooks: <div class="llava-calculator" data-kind="memory|compare|tokens|lora">; controls named after the arguments
// (a list of several values, such as lora_targets, is comma-separated); the result
// element .llava-calculator-result carries data-json (the command line's JSON) or data-error (its one-line error);
// the settings live in the URL fragment: #llava:memory.gpus=4&tokens.height=672 ...
const STATIC = new URL(".", import.meta.url);
const VENDOR = new URL("vendor/", STATIC);
const LABELS = {model: "model", method: "method", gpus: "GPUs", micro_batch: "micro-batch", seq_len: "tokens per sample",
  grad_checkpointing: "gradient checkpointing", gpu_memory: "GiB per GPU", height: "image height (px)",
  width: "image width (px)", lora_r: "rank r", lora_targets: "adapted Linears"};
let python = null;

function loadPython() {
  python ??= (async () => {
    const {loadPyodide} = await import(new URL("pyodide/pyodide.mjs", VENDOR).href);
    const py = await loadPyodide({indexURL: new URL("pyodide/", VENDOR).href});
    performance.mark("llava:pyodide-loaded");  // the marks time the start-up (make bench reads them)
    const core = await fetch(new URL("llava_nb_core.zip", VENDOR));
    py.unpackArchive(new Uint8Array(await core.arrayBuffer()), "zip", {extractDir: "/home/pyodide/core"});
    py.runPython("import sys, json; sys.path.insert(0, '/home/pyodide/core'); import llava_nb.live as live");
    performance.mark("llava:core-imported");
    return py;
  })();
  return python;
}

function callPython(py, code, values) {
  for (const [name, value] of Object.entries(values)) py.globals.set(name, value);
  return JSON.parse(py.runPython(code));
}

function fragment() {
  const hash = decodeURIComponent(location.hash.slice(1));
  return new URLSearchParams(hash.startsWith("llava:") ? hash.slice(6) : "");
}

function writeFragment() {
  const params = new URLSearchParams();
  for (const calc of document.querySelectorAll(".llava-calculator")) {
    for (const [name, value] of Object.entries(settingsOf(calc))) params.set(`${calc.dataset.kind}.${name}`, value);
  }
  history.replaceState(null, "", "#llava:" + params.toString());
}

function settingsOf(calc) {
  const settings = {};
  for (const el of calc.querySelectorAll("[name]")) {
    settings[el.name] = el.type === "checkbox" ? String(el.checked)
      : el.multiple ? Array.from(el.selectedOptions, (o) => o.value).join(",") : el.value;
  }
  return settings;
}

function control(name, value, options, multiple) {
  const label = document.createElement("label");
  label.textContent = LABELS[name] ?? name;
  let el;
  if (options) {
    el = document.createElement("select");
    for (const option of options) el.add(new Option(option, option));
    if (multiple) {
      el.multiple = true;
      el.size = options.length;
      const chosen = value.split(",");
      for (const option of el.options) option.selected = chosen.includes(option.value);
      el.name = name;
      label.append(el);
      return label;
    }
  } else if (name === "grad_checkpointing") {
    el = document.createElement("input");
    el.type = "checkbox";
  } else {
    el = document.createElement("input");
    el.type = "text";
    el.inputMode = "decimal";
    el.size = 8;
  }
  el.name = name;
  if (el.type === "checkbox") el.checked = value === "true"; else el.value = value;
  label.append(el);
  return label;
}

function gib(x) { return `${x.toFixed(2)} GiB`; }

function showMemory(out, r) {
  const line = document.createElement("p");
  line.textContent = `${r.fits ? "Fits" : "Out of memory"}: peak ${gib(r.peak_gib)} (${r.peak_phase || "model states"}), ` +
    `steady ${gib(r.steady_gib)} per GPU of ${r.gpu_memory_gib} GiB with ${Math.round(r.headroom * 100)}% kept free; ` +
    `largest micro-batch that fits: ${r.max_micro_batch}` + (r.cpu_gib ? `; host memory ${gib(r.cpu_gib)} per node` : "");
  out.append(line, bars(r, Math.max(r.peak_gib, r.gpu_memory_gib)));
}

// One method's memory as a bar of its parts (hatched: transient), with the card's memory as a line.
function bars(r, total) {
  const chart = document.createElement("div");
  chart.className = "llava-calculator-bars";
  for (const [name, bytes] of Object.entries(r.breakdown)) {
    const bar = document.createElement("div");
    bar.className = r.transient.includes(name) ? "bar transient" : "bar";
    bar.style.width = `${(100 * bytes / 2 ** 30 / total).toFixed(2)}%`;
    bar.title = `${name}: ${gib(bytes / 2 ** 30)}`;
    bar.dataset.name = name;
    chart.append(bar);
  }
  const limit = document.createElement("div");
  limit.className = "limit";
  limit.style.left = `${(100 * r.gpu_memory_gib / total).toFixed(2)}%`;
  chart.append(limit);
  return chart;
}

function showCompare(out, r) {
  const results = Object.values(r.methods);
  const total = Math.max(...results.map((m) => Math.max(m.peak_gib, m.gpu_memory_gib)));
  const table = document.createElement("table");
  table.className = "llava-calculator-compare";
  for (const [method, m] of Object.entries(r.methods)) {
    const row = table.insertRow();
    row.dataset.method = method;
    row.insertCell().textContent = method;
    row.insertCell().textContent = `peak ${gib(m.peak_gib)}, steady ${gib(m.steady_gib)}: ` +
      `${m.fits ? "fits" : "out of memory"}, largest micro-batch ${m.max_micro_batch}`;
    row.insertCell().append(bars(m, total));
  }
  out.append(table);
}

function showLora(out, r) {
  const line = document.createElement("p");
  line.textContent = `${r.adapter.toLocaleString("en")} adapter parameters (r = ${r.lora_r} on ${r.lora_targets.join(", ")}); ` +
    `trained with the projector: ${r.trainable.toLocaleString("en")} of ${r.total.toLocaleString("en")} ` +
    `(${(100 * r.trainable_share).toFixed(2)}%)`;
  out.append(line);
}

const SHOW = {memory: showMemory, compare: showCompare, tokens: showTokens, lora: showLora};

function showTokens(out, r) {
  const line = document.createElement("p");
  line.textContent = r.grid ? `${r.tokens} image tokens: resized into ${r.pinpoint.join(" x ")}, a ${r.grid.join(" x ")} grid ` +
    `of ${r.tiles} tiles; ${r.base_tokens} base + ${r.grid_tokens} grid + ${r.newline_tokens} newline tokens`
    : `${r.tokens} image tokens, whatever the image's size`;
  out.append(line);
}

async function update(calc) {
  const out = calc.querySelector(".llava-calculator-result");
  const kind = calc.dataset.kind;
  const py = await loadPython();
  const r = callPython(py, "json.dumps(live.run(_kind, json.loads(_settings)))",
                       {_kind: kind, _settings: JSON.stringify(settingsOf(calc))});
  out.replaceChildren();
  if (r.rc === 0) {
    out.dataset.json = r.json;
    delete out.dataset.error;
    SHOW[kind](out, JSON.parse(r.json));
  } else {
    delete out.dataset.json;
    out.dataset.error = r.error;
    const p = document.createElement("p");
    p.className = "llava-calculator-error";
    p.setAttribute("role", "alert");
    p.textContent = r.error;
    out.append(p);
  }
  out.dataset.updates = String(Number(out.dataset.updates || 0) + 1);
}

async function setUp(calc) {
  const kind = calc.dataset.kind;
  const py = await loadPython();
  const {defaults, choices} = callPython(py, "json.dumps({'defaults': live.DEFAULTS[_kind], 'choices': live.choices()})",
                                         {_kind: kind});
  const given = fragment();
  const form = document.createElement("form");
  form.className = "llava-calculator-form";
  for (const name of Object.keys(defaults)) {
    const value = given.get(`${kind}.${name}`) ?? calc.dataset[name] ?? defaults[name];
    form.append(control(name, value, choices[name], choices.multiple.includes(name)));
  }
  const out = document.createElement("div");
  out.className = "llava-calculator-result";
  out.setAttribute("aria-live", "polite");
  calc.replaceChildren(form, out);
  form.addEventListener("submit", (e) => e.preventDefault());
  form.addEventListener("change", () => { writeFragment(); update(calc); });
  await update(calc);
}

window.llavaCalculatorsReady = Promise.all(Array.from(document.querySelectorAll(".llava-calculator"), (calc) =>
  setUp(calc).catch((err) => {
    calc.textContent = `The calculator could not start: ${err}`;
    calc.classList.add("llava-calculator-failed");
    throw err;
  })));
